//! Fd-relative, no-follow, sorted, parallel tree walk.
//!
//! Every directory is opened relative to its parent's file descriptor with `O_NOFOLLOW`, and
//! every entry is looked at with `AT_SYMLINK_NOFOLLOW`, so a symlink (or a rename racing the
//! walk) can never lead outside the root. Directories are read in parallel (rayon tasks, one per
//! directory); the result is sorted at the end, so thread count and readdir order never show.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rayon::prelude::*;
use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags, ResolveFlags, Statx, StatxFlags};
use rustix::io::Errno;

use crate::cancel::{Cancel, NEVER};
use crate::entry::{self, Entry, Kind, Timestamp};
use crate::error::{Error, IoContext, Result};

/// Extended attributes of one entry: (name, value), sorted by name.
pub(crate) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Flags of every directory the walk opens: readable for getdents, never through a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Set when `openat2` turned out to be unavailable (kernel before 5.6, or a seccomp filter).
pub(crate) static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Open `path` (relative, plain: no empty, `.` or `..` component) below `root` with `flags`,
/// resolving no symlink and no `..` on the way; with `O_NOFOLLOW` in `flags` a final symlink
/// is refused too (or, with `O_PATH`, opened itself).
///
/// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` does it in
/// one call. Without `openat2`, and for a path longer than the kernel takes in one call
/// (`PATH_MAX`, 4096 bytes, which a deep tree exceeds), it is one `openat(O_NOFOLLOW)` per
/// component.
pub(crate) fn open_beneath(
    root: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlags,
) -> io::Result<OwnedFd> {
    if path.is_empty()
        || path
            .split(|&b| b == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a plain relative path",
        ));
    }
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(root, entry::os_path(path), flags, Mode::empty(), resolve) {
            Err(Errno::NOSYS | Errno::PERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
            Err(Errno::NAMETOOLONG) => {}
            other => return other.map_err(Into::into),
        }
    }
    let mut comps = path.split(|&b| b == b'/').peekable();
    let mut dir: Option<OwnedFd> = None;
    while let Some(c) = comps.next() {
        let at = dir.as_ref().map_or(root, AsFd::as_fd);
        if comps.peek().is_none() {
            return Ok(rustix::fs::openat(
                at,
                entry::os_path(c),
                flags,
                Mode::empty(),
            )?);
        }
        let d = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        dir = Some(rustix::fs::openat(at, entry::os_path(c), d, Mode::empty())?);
    }
    unreachable!("a non-empty path has a last component")
}

/// Below this many names a directory's entries are looked at on one thread: splitting tiny
/// directories costs more in task overhead than the `statx` calls it would spread.
const PAR_STAT_MIN: usize = 64;

/// Walk the tree under `root` (not following symlinks, never leaving the tree) and return every
/// object below it — the root itself excluded — in [`crate::entry::cmp_paths`] order.
///
/// `root` must be a directory, or a symlink to one (followed, as `tar -C` does; nothing below
/// the root is). An entry that
/// disappears between reading its directory and looking at it is left out (it is no longer part
/// of the tree); any other failure, such as a permission error, is an [`Error::Io`] naming the
/// full path.
pub fn walk(root: &Path) -> Result<Vec<Entry>> {
    let fd = open_root(root)?;
    walk_fd(fd.as_fd(), root, &NEVER)
}

/// Open `root` as the directory a walk starts from: a symlink given as the root is followed,
/// as `tar -C`, `rsync` and `umoci repack` follow theirs; a non-directory is refused.
pub(crate) fn open_root(root: &Path) -> Result<OwnedFd> {
    let flags = DIR_FLAGS.difference(OFlags::NOFOLLOW);
    rustix::fs::openat(CWD, root, flags, Mode::empty()).at(root)
}

/// Walk the directory open as `root_fd`; `root` is only used to name paths in errors. Once
/// `cancel` is set the walk stops, before the next directory, with [`Error::Interrupted`].
pub(crate) fn walk_fd(root_fd: BorrowedFd<'_>, root: &Path, cancel: &Cancel) -> Result<Vec<Entry>> {
    // Without the `*xattrat` calls xattrs are read through /proc/self/fd (see `entry_xattrs`);
    // say so plainly if it is absent instead of reporting every entry as vanished.
    if !xattrat_available(root_fd) {
        rustix::fs::statat(CWD, "/proc/self/fd", AtFlags::empty()).at("/proc/self/fd")?;
    }
    // A fresh descriptor: getdents moves the file offset, and `root_fd` belongs to the caller.
    let dir = rustix::fs::openat(root_fd, c".", DIR_FLAGS, Mode::empty()).at(root)?;
    let walk = Walk {
        root,
        cancel,
        entries: Mutex::new(Vec::new()),
        error: Mutex::new(None),
        failed: AtomicBool::new(false),
    };
    crate::parallel::in_pool(|| rayon::scope(|scope| visit_dir(scope, &walk, dir, Vec::new())));
    if let Some((_, e)) = walk
        .error
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        return Err(e);
    }
    let mut entries = walk
        .entries
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    entries.par_sort_unstable_by(|a, b| entry::cmp_paths(&a.path, &b.path));
    Ok(entries)
}

/// The state shared by the tasks of one walk.
struct Walk<'r> {
    root: &'r Path,
    cancel: &'r Cancel,
    entries: Mutex<Vec<Entry>>,
    /// The failure with the smallest path, so the error reported does not depend on timing.
    error: Mutex<Option<(Vec<u8>, Error)>>,
    /// Set on the first failure so the other tasks stop early.
    failed: AtomicBool,
}

impl Walk<'_> {
    /// The full path of `rel` for error messages.
    fn full_path(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(entry::os_path(rel))
        }
    }

    fn fail(&self, rel: Vec<u8>, error: Error) {
        self.failed.store(true, Ordering::Relaxed);
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        let smaller = match &*slot {
            Some((p, _)) => entry::cmp_paths(&rel, p).is_lt(),
            None => true,
        };
        if smaller {
            *slot = Some((rel, error));
        }
    }
}

/// Read the directory `fd` (at `rel`), record its entries and spawn one task per subdirectory.
fn visit_dir<'s>(scope: &rayon::Scope<'s>, walk: &'s Walk<'s>, fd: OwnedFd, rel: Vec<u8>) {
    if walk.failed.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = walk.cancel.check() {
        return walk.fail(rel, e);
    }
    let (dir, entries) = match read_dir(walk, fd, &rel) {
        Ok(found) => found,
        Err(e) => return walk.fail(rel, e),
    };
    let subdirs: Vec<(Vec<u8>, CString)> = entries
        .iter()
        .filter(|e| e.kind == Kind::Dir)
        .map(|e| (e.path.clone(), c_name(e.name())))
        .collect();
    walk.entries
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(entries);
    // Children open themselves relative to this directory's descriptor when they run; the
    // descriptor closes when the last of them has. Opening them all here instead would hold one
    // descriptor per subdirectory at once (EMFILE on wide trees).
    let dir = Arc::new(dir);
    for (sub, name) in subdirs {
        let parent = Arc::clone(&dir);
        scope.spawn(move |scope| match open_subdir(walk, &parent, &sub, &name) {
            Ok(Some(fd)) => {
                drop(parent);
                visit_dir(scope, walk, fd, sub);
            }
            Ok(None) => {}
            Err(e) => walk.fail(sub, e),
        });
    }
}

/// Open the subdirectory `rel` of `parent`; `None` if it vanished since it was listed.
fn open_subdir(walk: &Walk<'_>, parent: &Dir, rel: &[u8], name: &CStr) -> Result<Option<OwnedFd>> {
    let parent_fd = parent.fd().at(walk.full_path(entry::parent(rel)))?;
    match rustix::fs::openat(parent_fd, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e).at(walk.full_path(rel)),
    }
}

/// List the directory and look at each of its entries.
fn read_dir(walk: &Walk<'_>, fd: OwnedFd, rel: &[u8]) -> Result<(Dir, Vec<Entry>)> {
    let mut dir = Dir::new(fd).at(walk.full_path(rel))?;
    let mut names = Vec::new();
    while let Some(item) = dir.read() {
        let item = item.at(walk.full_path(rel))?;
        let name = item.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    let dir_fd = dir.fd().at(walk.full_path(rel))?;
    let found: Vec<Option<Entry>> = names
        .par_iter()
        .with_min_len(PAR_STAT_MIN)
        .map(|name| {
            let path = entry::join(rel, name.to_bytes());
            read_entry(dir_fd, name, path.clone()).at(walk.full_path(&path))
        })
        .collect::<Result<_>>()?;
    Ok((dir, found.into_iter().flatten().collect()))
}

/// Everything about the entry at `path` (relative, plain) below the directory `root`, reached
/// without following any symlink; `None` if it is not there.
pub(crate) fn entry_at(root: BorrowedFd<'_>, path: &[u8]) -> io::Result<Option<Entry>> {
    let dir = entry::parent(path);
    let opened;
    let dir_fd = if dir.is_empty() {
        root
    } else {
        match open_beneath(root, dir, DIR_FLAGS) {
            Ok(fd) => {
                opened = fd;
                opened.as_fd()
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        }
    };
    let name = CString::new(entry::base_name(path)).map_err(|_| Errno::INVAL)?;
    read_entry(dir_fd, &name, path.to_vec())
}

/// Everything about one entry of the directory `dir_fd`; `None` if it vanished (ENOENT).
fn read_entry(
    dir_fd: BorrowedFd<'_>,
    name: &CStr,
    path: Vec<u8>,
) -> std::io::Result<Option<Entry>> {
    let st = match rustix::fs::statx(
        dir_fd,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    ) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut entry = entry_from_statx(&st, path);
    if entry.kind == Kind::Symlink {
        match rustix::fs::readlinkat(dir_fd, name, Vec::new()) {
            Ok(target) => entry.link_target = target.into_bytes(),
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    match entry_xattrs(dir_fd, name) {
        Ok(xattrs) => entry.xattrs = xattrs,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    Ok(Some(entry))
}

/// The attributes a layer records, from `statx` (never followed).
fn entry_from_statx(st: &Statx, path: Vec<u8>) -> Entry {
    let kind = match FileType::from_raw_mode(st.stx_mode.into()) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        FileType::CharacterDevice => Kind::CharDevice,
        FileType::BlockDevice => Kind::BlockDevice,
        // Sockets and anything the kernel may add later: never layer content.
        _ => Kind::Socket,
    };
    let is_device = matches!(kind, Kind::CharDevice | Kind::BlockDevice);
    Entry {
        path,
        kind,
        mode: u32::from(st.stx_mode) & 0o7777,
        uid: st.stx_uid,
        gid: st.stx_gid,
        mtime: Timestamp {
            sec: st.stx_mtime.tv_sec,
            nsec: st.stx_mtime.tv_nsec,
        },
        size: if kind == Kind::File { st.stx_size } else { 0 },
        xattrs: Vec::new(),
        link_target: Vec::new(),
        rdev_major: if is_device { st.stx_rdev_major } else { 0 },
        rdev_minor: if is_device { st.stx_rdev_minor } else { 0 },
        dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
        nlink: u64::from(st.stx_nlink),
    }
}

/// Set when `listxattrat`/`getxattrat` turned out to be unavailable (kernel before 6.13, or a
/// seccomp filter).
static NO_XATTRAT: AtomicBool = AtomicBool::new(false);

/// `getxattrat(2)` and `listxattrat(2)`: one number on every architecture that has them.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
mod xattrat {
    pub(super) const GET: libc::c_long = 464;
    pub(super) const LIST: libc::c_long = 465;
}

/// Whether the `*xattrat` calls work here, asked of the directory `dir_fd`: both of them, as a
/// seccomp filter may know one and not the other.
fn xattrat_available(dir_fd: BorrowedFd<'_>) -> bool {
    if !NO_XATTRAT.load(Ordering::Relaxed) {
        let list = list_xattrat(dir_fd, c".", &mut []);
        let get = get_xattrat(dir_fd, c".", c"user.layerdiff.probe", &mut []);
        if [list, get]
            .iter()
            .any(|r| matches!(r, Err(Errno::NOSYS | Errno::PERM)))
        {
            NO_XATTRAT.store(true, Ordering::Relaxed);
        } else {
            return true;
        }
    }
    false
}

/// The xattrs of entry `name` in `dir_fd`, without following it if it is a symlink.
///
/// `listxattrat`/`getxattrat` (Linux 6.13) take the directory and the name. Before them there
/// is no `*at` form, and `fgetxattr` refuses the `O_PATH` descriptor that is the only way to
/// open a symlink itself; so the `l*xattr` calls get the path `/proc/self/fd/<dir_fd>/<name>`:
/// the magic link pins the directory already opened (no path walk from the root, nothing to
/// race), and the `l` form does not follow the last component. The direct calls save that
/// lookup of three more components on every entry.
pub(crate) fn entry_xattrs(dir_fd: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<Xattrs> {
    if !NO_XATTRAT.load(Ordering::Relaxed) {
        let xattrs = read_xattrs(
            |buf| list_xattrat(dir_fd, name, buf),
            |n, buf| get_xattrat(dir_fd, name, n, buf),
        );
        match xattrs {
            Err(Errno::NOSYS | Errno::PERM) => {
                NO_XATTRAT.store(true, Ordering::Relaxed);
                // Refused after the walk's probe passed: /proc was not checked then, and
                // without it every entry would look vanished (ENOENT).
                if rustix::fs::statat(CWD, "/proc/self/fd", AtFlags::empty()).is_err() {
                    return Err(Errno::NOSYS);
                }
            }
            other => return other,
        }
    }
    proc_entry_xattrs(dir_fd, name)
}

/// `/proc/self/fd/<dir_fd>/<name>`: the entry `name` of the open directory `dir_fd`, as a path
/// the `l*xattr` calls take without following the entry itself (see [`entry_xattrs`]).
pub(crate) fn proc_entry_path(dir_fd: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    let mut path = format!("/proc/self/fd/{}/", dir_fd.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    path
}

/// [`entry_xattrs`] through `/proc/self/fd`.
fn proc_entry_xattrs(dir_fd: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<Xattrs> {
    let path = CString::new(proc_entry_path(dir_fd, name.to_bytes())).map_err(|_| Errno::INVAL)?;
    read_xattrs(
        |buf| {
            if buf.is_empty() {
                rustix::fs::llistxattr_query(&path)
            } else {
                rustix::fs::llistxattr(&path, buf)
            }
        },
        |n, buf| {
            if buf.is_empty() {
                rustix::fs::lgetxattr_query(&path, n)
            } else {
                rustix::fs::lgetxattr(&path, n, buf)
            }
        },
    )
}

/// `listxattrat(dir_fd, name, AT_SYMLINK_NOFOLLOW)` into `buf` (an empty `buf` asks the size).
fn list_xattrat(dir_fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    ))]
    {
        // SAFETY: the kernel reads the NUL-terminated `name` and writes at most `buf.len()`
        // bytes into `buf`, both valid for the call.
        let n = unsafe {
            libc::syscall(
                xattrat::LIST,
                dir_fd.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        syscall_result(n)
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )))]
    {
        let _ = (dir_fd, name, buf);
        Err(Errno::NOSYS)
    }
}

/// `getxattrat(dir_fd, name, AT_SYMLINK_NOFOLLOW, attr)` into `buf` (an empty `buf` asks the
/// size).
fn get_xattrat(
    dir_fd: BorrowedFd<'_>,
    name: &CStr,
    attr: &CStr,
    buf: &mut [u8],
) -> rustix::io::Result<usize> {
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    ))]
    {
        /// `struct xattr_args` of the kernel's uapi.
        #[repr(C, align(8))]
        struct XattrArgs {
            value: u64,
            size: u32,
            flags: u32,
        }
        let mut args = XattrArgs {
            value: buf.as_mut_ptr() as u64,
            size: u32::try_from(buf.len()).map_err(|_| Errno::RANGE)?,
            flags: 0,
        };
        // SAFETY: the kernel reads the NUL-terminated `name` and `attr` and `args`, and writes
        // at most `args.size` bytes at `args.value`, which is `buf`; all valid for the call.
        let n = unsafe {
            libc::syscall(
                xattrat::GET,
                dir_fd.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                attr.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        syscall_result(n)
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )))]
    {
        let _ = (dir_fd, name, attr, buf);
        Err(Errno::NOSYS)
    }
}

/// A raw syscall's return: a count, or the errno it set.
fn syscall_result(n: libc::c_long) -> rustix::io::Result<usize> {
    if n < 0 {
        Err(Errno::from_raw_os_error(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ))
    } else {
        Ok(n as usize)
    }
}

/// List and read every xattr, sorted by name, with `list(buf)` and `get(name, buf)` (an empty
/// `buf` asks the size). A filesystem without xattr support has none; an xattr removed between
/// listing and reading is left out.
fn read_xattrs(
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
    get: impl Fn(&CStr, &mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Xattrs> {
    let names = match read_sized(|| list(&mut []), |buf| list(buf)) {
        Ok(names) => names,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut xattrs = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).map_err(|_| Errno::INVAL)?;
        match read_sized(|| get(&cname, &mut []), |buf| get(&cname, buf)) {
            Ok(value) => xattrs.push((name.to_vec(), value)),
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e),
        }
    }
    xattrs.sort_unstable();
    Ok(xattrs)
}

/// Read a value whose size must be asked first, asking again if it grew in between (ERANGE).
fn read_sized(
    len: impl Fn() -> rustix::io::Result<usize>,
    read: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    loop {
        let n = len()?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0; n];
        match read(&mut buf) {
            Ok(got) => {
                buf.truncate(got);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A name from the walk as a C string. It came from a `CStr` (getdents), so it holds no NUL
/// and the conversion cannot fail; an empty name would only make the open fail with ENOENT.
fn c_name(name: &[u8]) -> CString {
    CString::new(name).unwrap_or_default()
}

/// Helpers shared by the tests of this module and of [`crate::diff`].
#[cfg(test)]
pub(crate) mod testutil {
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, XattrFlags};

    /// True when the tests run as root; root-only tests call this and say why they skip.
    pub(crate) fn is_root(test: &str) -> bool {
        let root = rustix::process::geteuid().is_root();
        if !root {
            eprintln!("{test}: skipped, needs root");
        }
        root
    }

    /// Write a file, creating its parent directories.
    pub(crate) fn write(path: &Path, data: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    /// Set the mtime (and atime) of `path` without following a symlink.
    pub(crate) fn set_mtime(path: &Path, sec: i64, nsec: u32) {
        let t = Timespec {
            tv_sec: sec,
            tv_nsec: nsec.into(),
        };
        let times = Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }

    /// Set an xattr without following a symlink; false when the filesystem has no xattrs.
    pub(crate) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> bool {
        match rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()) {
            Ok(()) => true,
            Err(rustix::io::Errno::NOTSUP) => {
                eprintln!(
                    "{}: xattrs unsupported here, assertion skipped",
                    path.display()
                );
                false
            }
            Err(e) => panic!("setxattr {name} on {}: {e}", path.display()),
        }
    }

    /// Paths of entries as strings, for readable assertions.
    pub(crate) fn paths(entries: &[crate::entry::Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect()
    }

    /// Create `levels` nested directories of 250-byte names under `root` (each call the same
    /// names), and in the deepest a file `name` holding `data`; returns the file's relative path.
    /// Each step is relative to the directory before it: the whole path is beyond `PATH_MAX`
    /// once `levels` is 17 or more. Everything made gets the mtime 1,600,000,000.
    pub(crate) fn deep_file(root: &Path, levels: usize, name: &str, data: &[u8]) -> Vec<u8> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::RDONLY | OFlags::DIRECTORY;
        let mut dirs = vec![rustix::fs::open(root, flags, Mode::empty()).unwrap()];
        let mut rel = Vec::new();
        for i in 0..levels {
            let c = format!("d{i:02}{}", "x".repeat(247));
            let at = dirs.last().unwrap();
            match rustix::fs::mkdirat(at, c.as_str(), Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => panic!("mkdir {c}: {e}"),
            }
            dirs.push(rustix::fs::openat(at, c.as_str(), flags, Mode::empty()).unwrap());
            rel.extend_from_slice(c.as_bytes());
            rel.push(b'/');
        }
        let f = rustix::fs::openat(
            dirs.last().unwrap(),
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&f, data).unwrap();
        let t = Timespec {
            tv_sec: 1_600_000_000,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::futimens(&f, &times).unwrap();
        for d in dirs.iter().skip(1).rev() {
            rustix::fs::futimens(d, &times).unwrap();
        }
        rel.extend_from_slice(name.as_bytes());
        rel
    }

    /// A relative path of raw bytes under `root`.
    pub(crate) fn at(root: &Path, rel: &[u8]) -> std::path::PathBuf {
        root.join(std::ffi::OsStr::from_bytes(rel))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::testutil::*;
    use super::*;

    fn find<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
        entries
            .iter()
            .find(|e| e.path == path.as_bytes())
            .unwrap_or_else(|| panic!("{path} missing"))
    }

    #[test]
    fn walks_sorted_without_following_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(&r.join("a-b"), b"x");
        write(&r.join("a/z"), b"hello");
        write(&r.join("a/b/c"), b"");
        symlink("/etc", r.join("a/etc")).unwrap();
        symlink("../../nowhere", r.join("dangling")).unwrap();
        std::fs::hard_link(r.join("a/z"), r.join("a/z2")).unwrap();
        rustix::fs::mkfifoat(CWD, r.join("fifo"), Mode::from_raw_mode(0o600)).unwrap();
        write(&at(r, b"\xffname"), b"raw");

        let entries = walk(r).unwrap();
        assert_eq!(
            paths(&entries),
            [
                "a",
                "a/b",
                "a/b/c",
                "a/etc",
                "a/z",
                "a/z2",
                "a-b",
                "dangling",
                "fifo",
                "\u{fffd}name"
            ]
        );
        let link = find(&entries, "a/etc");
        assert_eq!(
            (link.kind, link.link_target.as_slice()),
            (Kind::Symlink, &b"/etc"[..])
        );
        assert_eq!(find(&entries, "dangling").link_target, b"../../nowhere");
        let (z, z2) = (find(&entries, "a/z"), find(&entries, "a/z2"));
        assert_eq!((z.kind, z.size, z.nlink), (Kind::File, 5, 2));
        assert_eq!((z.dev, z.ino), (z2.dev, z2.ino));
        assert!(z.is_hardlinked());
        assert_eq!(find(&entries, "fifo").kind, Kind::Fifo);
        assert_eq!(find(&entries, "a").size, 0);
    }

    #[test]
    fn records_mode_bits_owner_and_mtime() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(&r.join("suid"), b"");
        std::fs::set_permissions(r.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::create_dir(r.join("tmp")).unwrap();
        std::fs::set_permissions(r.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        set_mtime(&r.join("suid"), 1_234_567_890, 123_456_789);
        let entries = walk(r).unwrap();
        let suid = find(&entries, "suid");
        assert_eq!(suid.mode, 0o4755);
        assert_eq!(
            suid.mtime,
            Timestamp {
                sec: 1_234_567_890,
                nsec: 123_456_789
            }
        );
        assert_eq!(find(&entries, "tmp").mode, 0o1777);
        assert_eq!(suid.uid, rustix::process::geteuid().as_raw());
    }

    #[test]
    fn root_must_be_a_directory_or_a_symlink_to_one() {
        let t = tempfile::tempdir().unwrap();
        write(&t.path().join("file"), b"");
        std::fs::create_dir(t.path().join("dir")).unwrap();
        write(&t.path().join("dir/x"), b"");
        symlink("dir/x", t.path().join("dir/to-x")).unwrap();
        symlink("dir", t.path().join("link")).unwrap();
        symlink("file", t.path().join("link-to-file")).unwrap();
        for name in ["file", "link-to-file"] {
            let root = t.path().join(name);
            match walk(&root) {
                Err(Error::Io { path, source }) => {
                    assert_eq!(path, root);
                    assert_eq!(source.raw_os_error(), Some(libc::ENOTDIR));
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        // The root's own link is followed, and none below it.
        let through_link = walk(&t.path().join("link")).unwrap();
        assert_eq!(through_link, walk(&t.path().join("dir")).unwrap());
        assert_eq!(find(&through_link, "to-x").kind, Kind::Symlink);
        let missing = t.path().join("missing");
        assert!(matches!(walk(&missing), Err(Error::Io { path, .. }) if path == missing));
    }

    #[test]
    fn reads_xattrs_sorted() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        write(&f, b"");
        if !set_xattr(&f, "user.b", b"2") {
            return;
        }
        set_xattr(&f, "user.a", b"1");
        set_xattr(&f, "user.empty", b"");
        let entries = walk(t.path()).unwrap();
        let names: Vec<_> = entries[0]
            .xattrs
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        assert_eq!(
            names,
            [
                (&b"user.a"[..], &b"1"[..]),
                (b"user.b", b"2"),
                (b"user.empty", b"")
            ]
        );
    }

    #[test]
    fn reads_symlink_xattrs_without_following() {
        if !is_root("reads_symlink_xattrs_without_following") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        write(&t.path().join("target"), b"");
        symlink("target", t.path().join("link")).unwrap();
        // user.* is not allowed on symlinks; trusted.* is (for root).
        if !set_xattr(&t.path().join("link"), "trusted.mark", b"on-link") {
            return;
        }
        let entries = walk(t.path()).unwrap();
        assert_eq!(
            find(&entries, "link").xattrs,
            [(b"trusted.mark".to_vec(), b"on-link".to_vec())]
        );
        assert!(find(&entries, "target").xattrs.is_empty());
    }

    #[test]
    fn xattrat_and_proc_paths_read_the_same_xattrs() {
        if !is_root("xattrat_and_proc_paths_read_the_same_xattrs") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        write(&t.path().join("file"), b"");
        symlink("file", t.path().join("link")).unwrap();
        let big = vec![b'v'; 3000];
        if !set_xattr(&t.path().join("file"), "user.big", &big) {
            return;
        }
        set_xattr(&t.path().join("file"), "user.a", b"1");
        set_xattr(&t.path().join("link"), "trusted.mark", b"on-link");
        let dir = rustix::fs::open(t.path(), DIR_FLAGS, Mode::empty()).unwrap();
        let file = vec![
            (b"user.a".to_vec(), b"1".to_vec()),
            (b"user.big".to_vec(), big),
        ];
        let link = vec![(b"trusted.mark".to_vec(), b"on-link".to_vec())];
        for (name, expected) in [(c"file", &file), (c"link", &link)] {
            assert_eq!(&proc_entry_xattrs(dir.as_fd(), name).unwrap(), expected);
            assert_eq!(&entry_xattrs(dir.as_fd(), name).unwrap(), expected);
        }
        assert_eq!(proc_entry_xattrs(dir.as_fd(), c"gone"), Err(Errno::NOENT));
        assert_eq!(entry_xattrs(dir.as_fd(), c"gone"), Err(Errno::NOENT));
        if xattrat_available(dir.as_fd()) {
            let mut small = [0u8; 4];
            assert_eq!(list_xattrat(dir.as_fd(), c"file", &mut []), Ok(16));
            assert_eq!(
                get_xattrat(dir.as_fd(), c"file", c"user.big", &mut small),
                Err(Errno::RANGE)
            );
        } else {
            eprintln!("listxattrat/getxattrat unavailable: only the /proc path was compared");
        }
    }

    #[test]
    fn records_device_numbers() {
        if !is_root("records_device_numbers") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let dev = rustix::fs::makedev(1, 3);
        rustix::fs::mknodat(
            CWD,
            t.path().join("null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            dev,
        )
        .unwrap();
        let e = &walk(t.path()).unwrap()[0];
        assert_eq!(
            (e.kind, e.rdev_major, e.rdev_minor, e.size),
            (Kind::CharDevice, 1, 3, 0)
        );
    }

    #[test]
    fn parallel_walk_is_deterministic() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..40 {
            std::fs::create_dir(t.path().join(format!("d{i}"))).unwrap();
            for j in 0..(i % 7) {
                write(&t.path().join(format!("d{i}/s{j}/f")), b"x");
            }
            write(&t.path().join(format!("d{i}-f")), b"y");
        }
        let first = walk(t.path()).unwrap();
        for _ in 0..3 {
            assert_eq!(walk(t.path()).unwrap(), first);
        }
        assert!(
            first
                .windows(2)
                .all(|w| entry::cmp_paths(&w[0].path, &w[1].path).is_lt())
        );
        let want = 40 + 40 + (0..40).map(|i| 2 * (i % 7)).sum::<usize>();
        assert_eq!(first.len(), want);
    }

    #[test]
    fn permission_errors_name_the_path() {
        let t = tempfile::tempdir().unwrap();
        write(&t.path().join("ok/f"), b"");
        write(&t.path().join("locked/secret"), b"");
        std::fs::set_permissions(
            t.path().join("locked"),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        // Root reads anything through CAP_DAC_*; capabilities are per thread, so drop them on
        // the threads of a pool of our own and walk there.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .start_handler(|_| {
                use rustix::thread::{CapabilitySet, capabilities, set_capabilities};
                let mut caps = capabilities(None).unwrap();
                caps.effective -= CapabilitySet::DAC_OVERRIDE | CapabilitySet::DAC_READ_SEARCH;
                set_capabilities(None, caps).unwrap();
            })
            .build()
            .unwrap();
        match pool.install(|| walk(t.path())) {
            Err(Error::Io { path, source }) => {
                assert_eq!(path, t.path().join("locked"));
                assert_eq!(source.raw_os_error(), Some(libc::EACCES));
            }
            other => panic!("{other:?}"),
        }
        std::fs::set_permissions(
            t.path().join("locked"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
}
