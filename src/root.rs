//! A directory that every path is confined to: the target of an apply.
//!
//! Every lookup goes through `openat2(RESOLVE_IN_ROOT)` on a file descriptor of the root, so a
//! symlink anywhere in the tree — absolute, relative, chained, or named `.` — resolves inside the
//! root, as it would for a process chrooted there. The last component of a path is never
//! followed: operations on it use `*at` calls with the parent's descriptor and no-follow flags.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::entry::{join, os_path};
use crate::error::{IoContext, Result};

/// The path the kernel gives for the open file `fd` (its `/proc/self/fd` link), if it can.
fn kernel_path(fd: std::os::fd::BorrowedFd<'_>) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

/// Open flags for a directory we read or change the metadata of.
const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

/// A directory just made for entries below it (one a layer implies without holding it): 0755
/// whatever the umask, owned by the caller, its group included — not the group and
/// set-group-ID bit a set-group-ID parent gives a new directory. The same tree for every
/// caller and every lower tree, as squash writes such a directory.
pub(crate) fn settle_made_dir(fd: &OwnedFd) -> io::Result<()> {
    let gid = rustix::process::getegid();
    if rustix::fs::fstat(fd)?.st_gid != gid.as_raw() {
        rustix::fs::fchown(fd, None, Some(gid))?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(0o755))?;
    Ok(())
}

/// An open directory that paths are resolved inside of.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    /// Where the kernel says the root is (see [`Root::real_path_of`]), read once, on first use.
    kernel_path: std::sync::OnceLock<Option<PathBuf>>,
}

impl Root {
    /// Open (and create, if missing) the directory at `path`.
    pub fn open(path: &Path) -> Result<Root> {
        match std::fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).at(path),
        }
        let fd = rustix::fs::open(path, DIR_FLAGS, Mode::empty()).at(path)?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
            kernel_path: std::sync::OnceLock::new(),
        })
    }

    /// The root's own path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root's descriptor.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The host path of `rel` as far as messages go (never used to open anything).
    pub fn display(&self, rel: &[u8]) -> PathBuf {
        self.path.join(os_path(rel))
    }

    /// Open the directory at `rel` (empty: the root), resolving every component inside the root.
    pub fn open_dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        if rel.is_empty() {
            return rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty()).map_err(Into::into);
        }
        rustix::fs::openat2(
            &self.fd,
            os_path(rel),
            DIR_FLAGS,
            Mode::empty(),
            ResolveFlags::IN_ROOT,
        )
        .map_err(Into::into)
    }

    /// Where the directory open as `dir` lies below the root, every symbolic link on the way
    /// followed (empty: the root itself): the name it has, whatever path opened it. `None`
    /// when the kernel cannot say (no `/proc`) or it is not below the root.
    pub fn real_path_of(&self, dir: impl AsFd) -> Option<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let root = self
            .kernel_path
            .get_or_init(|| kernel_path(self.fd.as_fd()))
            .as_ref()?;
        let path = kernel_path(dir.as_fd())?;
        let rel = path.strip_prefix(root).ok()?;
        let rel = rel.as_os_str().as_bytes();
        // A directory removed since it was opened reads "… (deleted)": not a name it has. A
        // directory may also be named so: only one without links is gone.
        if rel.ends_with(b" (deleted)")
            && rustix::fs::fstat(dir.as_fd()).map_or(true, |st| st.st_nlink == 0)
        {
            return None;
        }
        Some(rel.to_vec())
    }

    /// Open the directory at `rel`, creating missing components (see [`settle_made_dir`])
    /// the way `mkdir -p` would, each inside the root. A component that is a symbolic link to
    /// nothing yet has its target made the same way (as umoci does), inside the root too.
    pub fn create_dir_all(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        self.create_dir_all_following(rel, 0)
    }

    /// [`Root::create_dir_all`], `links` symbolic links deep.
    fn create_dir_all_following(&self, rel: &[u8], links: u32) -> io::Result<OwnedFd> {
        match self.open_dir(rel) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            other => return other,
        }
        let mut prefix: Vec<u8> = Vec::with_capacity(rel.len());
        let mut dir = self.open_dir(b"")?;
        for comp in rel.split(|&b| b == b'/') {
            if comp.is_empty() || comp == b"." {
                continue; // a link target's "a//b" or "./b"
            }
            prefix = join(&prefix, comp);
            dir = match self.open_dir(&prefix) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    refuse_whiteout_dir(comp)?;
                    let mut made = false;
                    match rustix::fs::mkdirat(&dir, os_path(comp), Mode::from_raw_mode(0o755)) {
                        Ok(()) => made = true,
                        Err(rustix::io::Errno::EXIST) => {
                            // Made since, or a symbolic link to a directory that does not exist.
                            if let Ok(target) = rustix::fs::readlinkat(&dir, os_path(comp), vec![])
                            {
                                if links >= MAX_LINKS {
                                    return Err(rustix::io::Errno::LOOP.into());
                                }
                                let target = target.as_bytes();
                                // Absolute targets start at the root; relative ones beside the
                                // link, through the same path (whose links the kernel follows).
                                let made = match target.strip_prefix(b"/") {
                                    Some(abs) => abs.to_vec(),
                                    None => join(crate::entry::parent(&prefix), target),
                                };
                                self.create_dir_all_following(&made, links + 1)?;
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                    let fd = self.open_dir(&prefix)?;
                    if made {
                        settle_made_dir(&fd)?;
                    }
                    fd
                }
                Err(e) => return Err(e),
            };
        }
        Ok(dir)
    }
}

/// A directory is never made under a whiteout's name (a symbolic link's target can name one):
/// as a directory, another tool reads it as a whiteout or an opaque marker, and a layer
/// written from the tree would delete what it names.
pub(crate) fn refuse_whiteout_dir(name: &[u8]) -> io::Result<()> {
    if crate::whiteout::is_reserved_name(name) {
        return Err(io::Error::other(WHITEOUT_DIR));
    }
    Ok(())
}

/// Why a directory under a whiteout's name is refused.
pub(crate) const WHITEOUT_DIR: &str = "a whiteout name (.wh.) is used as a directory";

/// Most symbolic links followed to make one directory (the kernel's own limit on a lookup).
pub(crate) const MAX_LINKS: u32 = 40;

/// The type of `name` in `dir`, without following it; `None` when absent.
pub fn type_at(dir: impl AsFd, name: &[u8]) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, os_path(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Remove `name` in `dir` and, for a directory, everything below it; never follows a link.
/// Absent is fine.
pub fn remove_all(dir: impl AsFd, name: &[u8]) -> io::Result<()> {
    let dir = dir.as_fd();
    match type_at(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            empty_dir(dir, name)?;
            ignore_absent(rustix::fs::unlinkat(dir, os_path(name), AtFlags::REMOVEDIR))
        }
        Some(_) => ignore_absent(rustix::fs::unlinkat(dir, os_path(name), AtFlags::empty())),
    }
}

/// Remove everything below the directory `name` of `dir`, depth first, with one directory open
/// at a time and no recursion (as `fts` does for `rm -r`): a tree of any depth costs neither
/// stack nor a descriptor per level. The way back up is `..`, checked against the device and
/// inode seen on the way down.
fn empty_dir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    /// A directory left for a subdirectory: its identity, the subdirectory's name in it, and
    /// its subdirectories still to remove.
    struct Up {
        dev: u64,
        ino: u64,
        child: Vec<u8>,
        rest: Vec<Vec<u8>>,
    }
    let open = |at: BorrowedFd<'_>, name: &[u8]| {
        rustix::fs::openat(
            at,
            os_path(name),
            DIR_FLAGS.union(OFlags::NOFOLLOW),
            Mode::empty(),
        )
    };
    let mut cur = open(dir, name)?;
    let mut todo = remove_files(&cur)?;
    let mut ups: Vec<Up> = Vec::new();
    loop {
        if let Some(child) = todo.pop() {
            match open(cur.as_fd(), &child) {
                Ok(sub) => {
                    let st = rustix::fs::fstat(&cur)?;
                    ups.push(Up {
                        dev: st.st_dev,
                        ino: st.st_ino,
                        child,
                        rest: std::mem::take(&mut todo),
                    });
                    cur = sub;
                    todo = remove_files(&cur)?;
                }
                Err(rustix::io::Errno::NOENT) => {}
                // No longer a directory: removed as what it is now.
                Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => ignore_absent(
                    rustix::fs::unlinkat(&cur, os_path(&child), AtFlags::empty()),
                )?,
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        let Some(up) = ups.pop() else {
            return Ok(());
        };
        let parent = open(cur.as_fd(), b"..")?;
        let st = rustix::fs::fstat(&parent)?;
        if (st.st_dev, st.st_ino) != (up.dev, up.ino) {
            return Err(io::Error::other(
                "a directory was moved away while its tree was being removed",
            ));
        }
        ignore_absent(rustix::fs::unlinkat(
            &parent,
            os_path(&up.child),
            AtFlags::REMOVEDIR,
        ))?;
        cur = parent;
        todo = up.rest;
    }
}

/// Remove what is not a directory in `dir`; return the names of its subdirectories.
fn remove_files(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut subdirs = Vec::new();
    for child in list_dir(dir)? {
        match type_at(dir, &child)? {
            None => {}
            Some(FileType::Directory) => subdirs.push(child),
            Some(_) => ignore_absent(rustix::fs::unlinkat(dir, os_path(&child), AtFlags::empty()))?,
        }
    }
    Ok(subdirs)
}

fn ignore_absent(r: rustix::io::Result<()>) -> io::Result<()> {
    match r {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The names in an open directory, without `.` and `..`.
pub fn list_dir(dir: impl AsFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for ent in rustix::fs::Dir::read_from(dir)? {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn remove_all_takes_a_tree_of_any_depth_on_a_small_stack() {
        let tmp = tempfile::tempdir().unwrap();
        let top = rustix::fs::open(tmp.path(), DIR_FLAGS, Mode::empty()).unwrap();
        // 2,000 levels, each with a file and a link beside the next level (a path of 4,000
        // bytes, and more than a recursive removal could take on this stack).
        rustix::fs::mkdirat(&top, "t", Mode::from_raw_mode(0o755)).unwrap();
        let mut cur = rustix::fs::openat(&top, "t", DIR_FLAGS, Mode::empty()).unwrap();
        for _ in 0..2_000 {
            rustix::fs::mkdirat(&cur, "a", Mode::from_raw_mode(0o755)).unwrap();
            rustix::fs::symlinkat("/", &cur, "l").unwrap();
            drop(
                rustix::fs::openat(&cur, "f", OFlags::CREATE | OFlags::WRONLY, Mode::empty())
                    .unwrap(),
            );
            cur = rustix::fs::openat(&cur, "a", DIR_FLAGS, Mode::empty()).unwrap();
        }
        drop(cur);
        let removed = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || remove_all(&top, b"t"))
            .unwrap()
            .join()
            .unwrap();
        removed.unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn create_dir_all_makes_what_a_dangling_link_points_to_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::open(&tmp.path().join("r")).unwrap();
        let r = root.path().to_path_buf();
        // Absolute, relative, a chain, and one that climbs above the root.
        symlink("/abs/a", r.join("l1")).unwrap();
        symlink("rel/b", r.join("l2")).unwrap();
        symlink("l1", r.join("l3")).unwrap();
        symlink("../../../../up", r.join("l4")).unwrap();
        for (path, made) in [
            (&b"l1/x"[..], "abs/a/x"),
            (b"l2/y", "rel/b/y"),
            (b"l3/z", "abs/a/z"),
            (b"l4/w", "up/w"),
        ] {
            root.create_dir_all(path).unwrap();
            let st = std::fs::symlink_metadata(r.join(made)).unwrap();
            assert!(st.is_dir(), "{made}");
        }
        assert!(!tmp.path().join("up").exists());
        // A loop is an error, not a recursion without end; a link to a file is not a directory.
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        let e = root.create_dir_all(b"loop1/x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        std::fs::write(r.join("file"), b"").unwrap();
        symlink("file", r.join("to-file")).unwrap();
        let e = root.create_dir_all(b"to-file/x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
        // 41 links deep is past the limit of 40 a lookup follows.
        for i in 0..41 {
            symlink(format!("/c{}", i + 1), r.join(format!("c{i}"))).unwrap();
        }
        let e = root.create_dir_all(b"c0/x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }
}
