//! Apply a layer to a directory, confined to it, with the OCI whiteout rules.
//!
//! OCI image-spec, layer.md: "Whiteout files MUST only apply to resources in lower/parent
//! layers. Files that are present in the same layer as a whiteout file can only be hidden by
//! whiteout files in subsequent layers." Whiteouts and opaque markers are therefore collected
//! while the entries are written and carried out at the end, removing only what this layer did
//! not write: the order of entries inside one layer never changes the result.
//!
//! Every path is resolved inside the target with [`Root`]; the last component is never followed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, Read, Seek};
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};

use crate::cancel::Cancel;
use crate::decompress::{read_past_archive, with_decompressed};
use crate::digest::Sha256Hasher;
use crate::entry::{Timestamp, base_name, join, os_path, parent};
use crate::error::{Error, Result};
use crate::lower::{self, Lowers};
use crate::root::{self, Root};
use crate::tar::reader::{EntryKind, Header, TarReader};
use crate::whiteout::{
    AUFS_LINK_DIR, Due, LayerName, Pending, WHITEOUT_PREFIX, aufs_link_source, classify_layer_name,
    is_overlay_xattr,
};

/// Default limit on the uncompressed bytes of one layer: generous, but a decompression bomb
/// stops long before it fills a disk.
pub const DEFAULT_MAX_SIZE: u64 = 256 << 30;

/// Longest path (bytes) of an entry: the kernel's PATH_MAX.
pub(crate) const PATH_MAX: usize = 4096;

/// How to apply.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Set numeric owners from the layer (needs privilege).
    pub chown: bool,
    /// Write the result in overlayfs upper-dir form: whiteouts as 0/0 character devices,
    /// opaque directories as an xattr.
    pub overlay: bool,
    /// In overlay form, mark opaque directories with `user.overlay.opaque` (rootless overlayfs
    /// with `userxattr`) instead of `trusted.overlay.opaque`.
    pub userxattr: bool,
    /// Limit on the uncompressed size of the layer stream.
    pub max_size: u64,
    /// In overlay form, the directories of the layers below this one (top first), in the
    /// same form: what the layer passes through that only they hold is copied up (see
    /// [`crate::lower`]), so that the merged tree is the layers applied in order. Whiteouts
    /// and opaque markers are then written only where they hide something below. `None`:
    /// the layer is applied by itself, its parents made up where it has no entry for them.
    pub lowers: Option<Vec<std::path::PathBuf>>,
    /// Hash the whole uncompressed stream (sha256) into [`ApplyStats::diff_id`], to check it
    /// against the image config's `rootfs.diff_ids`.
    pub diff_id: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            chown: true,
            overlay: false,
            userxattr: false,
            max_size: DEFAULT_MAX_SIZE,
            lowers: None,
            diff_id: false,
        }
    }
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Entries read from the layer.
    pub entries: u64,
    /// Uncompressed bytes read.
    pub bytes: u64,
    /// Things skipped (device nodes without privilege, unsupported xattrs), one line each.
    pub warnings: Vec<String>,
    /// `sha256:` of the whole uncompressed stream, when [`ApplyOptions::diff_id`] asked for it.
    pub diff_id: Option<String>,
}

/// Counts bytes and fails past a limit: the decompression-bomb guard. Hashes them too, when
/// the diff_id is wanted.
struct Limited<R> {
    inner: R,
    read: u64,
    limit: u64,
    hasher: Option<Sha256Hasher>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        self.check()?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Limited<R> {
    /// At most one byte past the limit is handed out: taking it makes the next call fail.
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.check()?;
        let allowed = usize::try_from(self.limit - self.read + 1).unwrap_or(usize::MAX);
        let data = self.inner.fill_buf()?;
        Ok(&data[..data.len().min(allowed)])
    }

    fn consume(&mut self, n: usize) {
        if let Some(h) = &mut self.hasher {
            // The bytes the last `fill_buf` handed out: still buffered, so no read happens.
            if let Ok(data) = self.inner.fill_buf() {
                h.update(&data[..n.min(data.len())]);
            }
        }
        self.inner.consume(n);
        self.read += n as u64;
    }
}

impl<R> Limited<R> {
    fn check(&self) -> io::Result<()> {
        if self.read > self.limit {
            return Err(io::Error::other(format!(
                "layer larger than the limit of {} bytes (raise --max-size if it is genuine)",
                self.limit
            )));
        }
        Ok(())
    }
}

/// A directory whose mode and mtime are set after everything else.
struct DirMeta {
    path: Vec<u8>,
    /// Where it really was when the entry was applied: its parent's real path (see
    /// [`Applier::real_path`]) and its name.
    real: Vec<u8>,
    mode: u32,
    mtime: Timespec,
    /// Its [`dir_identity`] when the entry was applied (or the directory copied up): a
    /// directory found at that path at the end that is another one (made later once the
    /// layer removed this one, or reached through a link a later entry put on the way, where
    /// the kernel cannot give the real path) is not given this metadata.
    id: DirIdentity,
}

/// A directory's device, inode and birth time (where the file system keeps one): an inode
/// number freed by a removal is given to the next directory made.
type DirIdentity = (u64, u64, i64, u32);

fn dir_identity(dir: impl AsFd, name: &[u8]) -> io::Result<DirIdentity> {
    use rustix::fs::{StatxFlags, statx};
    let flags = if name.is_empty() {
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    let st = statx(
        dir,
        os_path(name),
        flags,
        StatxFlags::INO | StatxFlags::BTIME,
    )?;
    let dev = rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor);
    let (sec, nsec) = if st.stx_mask & StatxFlags::BTIME.bits() != 0 {
        (st.stx_btime.tv_sec, st.stx_btime.tv_nsec)
    } else {
        (0, 0)
    };
    Ok((dev, st.stx_ino, sec, nsec))
}

/// Apply the layer read from `blob` (compressed or not) onto `root`.
pub fn apply_layer<R: Read + Send>(
    root: &Root,
    blob: R,
    opts: &ApplyOptions,
    cancel: &Cancel,
) -> Result<ApplyStats> {
    with_decompressed(blob, |stream| {
        let stream = Limited {
            inner: stream,
            read: 0,
            limit: opts.max_size,
            hasher: opts.diff_id.then(Sha256Hasher::new),
        };
        let mut reader = TarReader::new(stream);
        let lowers = match (&opts.lowers, opts.overlay) {
            (Some(dirs), true) => Some(Lowers::open(dirs)?),
            _ => None,
        };
        let mut state = Applier {
            root,
            opts,
            lowers,
            copied_dirs: std::cell::RefCell::new(Vec::new()),
            created: HashSet::new(),
            pending: Pending::default(),
            dirs: Vec::new(),
            stats: ApplyStats::default(),
            parent: None,
            aufs: HashMap::new(),
            skipped_devices: HashSet::new(),
            cancel,
        };
        while let Some(header) = reader.next_header()? {
            cancel.check()?;
            state.stats.entries += 1;
            state.entry(&header, &mut reader)?;
        }
        state.finish()?;
        let mut rest = reader.into_inner();
        // What follows the archive's end counts: against the limit, and in the diff_id.
        read_past_archive(&mut rest)?;
        state.stats.bytes = rest.read;
        state.stats.diff_id = rest.hasher.map(|h| h.finish().0);
        Ok(state.stats)
    })
}

fn bad(entry: &str, reason: impl Into<String>) -> Error {
    let mut reason = reason.into();
    // The OS's message says it all: "No such file or directory", not "... (os error 2)".
    if let Some(at) = reason.rfind(" (os error ")
        && reason.ends_with(')')
    {
        reason.truncate(at);
    }
    Error::Archive {
        entry: entry.to_string(),
        reason,
    }
}

/// The normalised relative path of an entry name: leading `/` and `.` components dropped; `..`
/// refused. Empty means the root itself.
pub fn clean_path(name: &[u8], entry: &str) -> Result<Vec<u8>> {
    if name.len() > PATH_MAX {
        return Err(bad(entry, format!("name longer than {PATH_MAX} bytes")));
    }
    if name.contains(&0) {
        return Err(bad(entry, "name contains a NUL byte"));
    }
    let mut out = Vec::with_capacity(name.len());
    let mut under_whiteout_name = false;
    for comp in name.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(bad(entry, "name contains a '..' component")),
            c => {
                // A whiteout is a file: as a directory its name reads as a whiteout to one
                // tool and as a directory to another (commit refuses such a tree too).
                if under_whiteout_name {
                    return Err(bad(entry, root::WHITEOUT_DIR));
                }
                under_whiteout_name = c.starts_with(WHITEOUT_PREFIX);
                out = join(&out, c);
            }
        }
    }
    Ok(out)
}

struct Applier<'a> {
    root: &'a Root,
    /// Checked between entries and while a file's content is copied: a large file does not
    /// hold off a Ctrl-C.
    cancel: &'a Cancel,
    opts: &'a ApplyOptions,
    /// The layers below, when applied over them in overlay form.
    lowers: Option<Lowers<'a>>,
    /// The directories copied up from them, whose mode and mtime are set at the end.
    copied_dirs: std::cell::RefCell<Vec<DirMeta>>,
    /// Paths this layer wrote, and every ancestor of them: what whiteouts must not remove.
    created: HashSet<Vec<u8>>,
    /// Whiteouts and opaque markers, carried out at the end, unless an entry goes below one
    /// first: then at once, so that the entry lands in a directory of its own there, never
    /// through what it hides (`.wh.l` and `l/passwd` over a lower `l -> /etc`).
    pending: Pending,
    dirs: Vec<DirMeta>,
    stats: ApplyStats,
    /// The parent directory of the last entry, still open: entries of one directory come
    /// together, so most need no lookup of their parent. Every entry takes it and leaves its
    /// own parent here, so an entry that replaces a directory (its own parent lies above that
    /// directory) never leaves the replaced one behind; whiteouts act only at the end.
    parent: Option<(Vec<u8>, OwnedFd, Vec<u8>)>,
    /// The regular files of the layer's aufs link directory, by name, for the hardlinks that
    /// point at them.
    aufs: HashMap<Vec<u8>, AufsFile>,
    /// Device nodes of this layer that could not be made (no privilege), by path: the
    /// hardlinks to them are skipped with them.
    skipped_devices: HashSet<Vec<u8>>,
}

/// A regular file of a layer's aufs link directory: the file its hardlinks become (content and
/// header set), and the header to make it again.
struct AufsFile {
    /// An unnamed file in the target at first; once it can no longer be linked (every link to
    /// it replaced, or the file system cannot link an unnamed file), the file a hardlink was
    /// made as instead.
    file: File,
    meta: Header,
}

/// Raise the soft limit on open files to the hard limit, once per process: each file of a
/// layer's aufs link directory is held open while the layer is applied, and such a layer may
/// hold more of them than the usual soft limit of 1024 allows (Go programs, docker and
/// containerd among them, raise the limit so at start).
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(|| {
        let limit = getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            let raised = rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            // Best effort: at the old limit, a layer with many such files fails with EMFILE.
            let _ = setrlimit(Resource::Nofile, raised);
        }
    });
}

/// The (device, inode) of the entry `name` in `dir`, if there is one.
fn id_at(dir: impl AsFd, name: &[u8]) -> Option<(u64, u64)> {
    let st = rustix::fs::statat(dir, os_path(name), AtFlags::SYMLINK_NOFOLLOW).ok()?;
    Some((st.st_dev, st.st_ino))
}

/// Give the open `file` the name `leaf` in `dir` (a hardlink made from a descriptor):
/// `AT_EMPTY_PATH` where permitted, else through `/proc/self/fd`. `NOENT` when the file cannot
/// be linked (no link left to it and not an `O_TMPFILE` file, or neither way is open).
fn link_open_file(file: &File, dir: &OwnedFd, leaf: &[u8]) -> rustix::io::Result<()> {
    use std::os::fd::AsRawFd;
    match rustix::fs::linkat(file, "", dir, os_path(leaf), AtFlags::EMPTY_PATH) {
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM) => {
            let by_proc = format!("/proc/self/fd/{}", file.as_raw_fd());
            rustix::fs::linkat(
                rustix::fs::CWD,
                by_proc.as_str(),
                dir,
                os_path(leaf),
                AtFlags::SYMLINK_FOLLOW,
            )
        }
        other => other,
    }
}

impl Applier<'_> {
    fn entry<R: BufRead>(&mut self, h: &Header, content: &mut TarReader<R>) -> Result<()> {
        let name = &h.display();
        if let Some(source) = aufs_link_source(&h.path) {
            // Kept aside for the hardlinks to it; anything else there means nothing.
            if h.kind == EntryKind::File {
                raise_open_file_limit();
                let mut file =
                    unnamed_file(self.root.fd()).map_err(|e| bad(name, e.to_string()))?;
                copy_content(content, &mut file, self.cancel, (self.root, b""), name)?;
                self.file_meta(&file, h, name)?;
                let kept = AufsFile {
                    file,
                    meta: h.clone(),
                };
                self.aufs.insert(source.to_vec(), kept);
            }
            return Ok(());
        }
        let path = clean_path(&h.path, name)?;
        let base = base_name(&path);
        if base.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(&path, name);
        }
        if path.is_empty() {
            // The root entry (`./`): the target directory is the caller's; leave it as it is.
            return Ok(());
        }
        let meta = h;
        let root = self.root;
        let io = |e: io::Error| written(root, &path, name, e);
        self.hide_before_entry(parent(&path))?;
        if h.kind != EntryKind::Dir {
            self.pending.drop_replaced(&path);
        }
        let (dir, real_parent, cacheable) = match self.parent.take() {
            Some((p, fd, real)) if p == parent(&path) => (fd, real, true),
            _ => {
                let fd = self.dir_for_entry(parent(&path)).map_err(io)?;
                let known = self.root.real_path_of(&fd);
                // Kept for the next entry only when the way to it is its own name, no link
                // followed: then nothing an entry makes in it lies on that way. (Through a
                // link, `d/s -> ..`, the entry `d/s/d` replaces the `d` the way went through.)
                let cacheable = known.as_deref() == Some(parent(&path));
                (
                    fd,
                    known.unwrap_or_else(|| parent(&path).to_vec()),
                    cacheable,
                )
            }
        };
        let leaf = base.to_vec();
        let real = join(&real_parent, &leaf);
        // Set when the entry takes the place of a symlink, which the parent's path (cached
        // below for the next entry) may have been resolved through.
        let mut replaced_link = false;
        match h.kind {
            EntryKind::Dir => {
                let found = root::type_at(&dir, &leaf).map_err(io)?;
                if found != Some(FileType::Directory) {
                    replaced_link = found == Some(FileType::Symlink);
                    root::remove_all(&dir, &leaf).map_err(io)?;
                    rustix::fs::mkdirat(&dir, os_path(&leaf), Mode::from_raw_mode(0o700))
                        .map_err(|e| io(e.into()))?;
                }
                let fd = rustix::fs::openat(
                    &dir,
                    os_path(&leaf),
                    OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io(e.into()))?;
                if self.opts.overlay && found.is_some_and(|t| t != FileType::Directory) {
                    // What this layer wrote here before replaced whatever lay below: in
                    // overlay form the new directory must not merge with a lower one.
                    self.set_opaque(&fd, name)?;
                }
                self.owner_and_xattrs_fd(&fd, meta, name)?;
                drop_stale_xattrs(&fd, meta, name)?;
                self.dirs.push(DirMeta {
                    path: path.clone(),
                    real: real.clone(),
                    mode: meta.mode,
                    mtime: timespec(meta.mtime),
                    id: dir_identity(&fd, b"").map_err(io)?,
                });
            }
            EntryKind::File => {
                let mut file = create_file(&dir, &leaf, &mut replaced_link, false).map_err(io)?;
                copy_content(content, &mut file, self.cancel, (self.root, &path), name)?;
                self.file_meta(&file, meta, name)?;
            }
            EntryKind::Hardlink if aufs_link_source(&h.link).is_some() => {
                let source = aufs_link_source(&h.link).unwrap_or_default();
                let Some(kept) = self.aufs.get(source) else {
                    return Err(bad(
                        name,
                        format!(
                            "hardlink target {} is not in the layer before it",
                            String::from_utf8_lossy(&h.link)
                        ),
                    ));
                };
                // Every hardlink to it is a link to the one file, as in the aufs branch (its
                // inode is held open, so its number is never another file's meanwhile).
                let st = rustix::fs::fstat(&kept.file).map_err(|e| io(e.into()))?;
                if id_at(&dir, &leaf) != Some((st.st_dev, st.st_ino)) {
                    let linked = create_replacing(&dir, &leaf, &mut replaced_link, || {
                        link_open_file(&kept.file, &dir, &leaf)
                    });
                    match linked {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            let mut file =
                                create_file(&dir, &leaf, &mut replaced_link, true).map_err(io)?;
                            (&kept.file).rewind().map_err(io)?;
                            io::copy(&mut &kept.file, &mut file).map_err(io)?;
                            let meta = kept.meta.clone();
                            self.file_meta(&file, &meta, name)?;
                            if let Some(kept) = self.aufs.get_mut(source) {
                                kept.file = file;
                            }
                        }
                        Err(e) => return Err(io(e)),
                    }
                }
            }
            EntryKind::Symlink => {
                let target = &h.link;
                create_replacing(&dir, &leaf, &mut replaced_link, || {
                    rustix::fs::symlinkat(os_path(target), &dir, os_path(&leaf))
                })
                .map_err(io)?;
                self.leaf_meta(&dir, &leaf, meta, name, false)?;
            }
            EntryKind::Hardlink => {
                let target = clean_path(&h.link, name)?;
                if target.is_empty() {
                    return Err(bad(name, "hardlink to the root directory"));
                }
                let tdir = self
                    .merged_path(parent(&target), false)
                    .and_then(|p| {
                        let dir = self.root.open_dir(&p)?;
                        self.copy_up_link_target(&dir, &p, base_name(&target))?;
                        Ok(dir)
                    })
                    .map_err(|e| {
                        bad(
                            name,
                            format!("hardlink target {}: {e}", String::from_utf8_lossy(&target)),
                        )
                    })?;
                let tname = base_name(&target);
                let mut found = root::type_at(&tdir, tname).map_err(io)?;
                if self.opts.overlay && found == Some(FileType::CharacterDevice) {
                    // In this form a 0/0 device is a whiteout (one the layer carried out, say):
                    // nothing is there to link to, not even what it hides below.
                    let st = rustix::fs::statat(&tdir, os_path(tname), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| io(e.into()))?;
                    if crate::lower::is_whiteout(&st) {
                        found = None;
                    }
                } else if let (None, Some(lowers)) = (found, &self.lowers) {
                    // Not copied up: a directory, or nothing.
                    let real = join(&self.real_path(&tdir, parent(&target)), tname);
                    found = self
                        .lower_lookup(lowers, &real)
                        .map_err(io)?
                        .map(|f| f.kind());
                }
                match found {
                    None if self.skipped_devices.contains(&target) => {
                        self.stats.warnings.push(format!(
                            "{name}: hardlink to device node {} skipped (not permitted)",
                            String::from_utf8_lossy(&target)
                        ));
                        return Ok(());
                    }
                    None => {
                        return Err(bad(
                            name,
                            format!(
                                "hardlink target {} does not exist",
                                String::from_utf8_lossy(&target)
                            ),
                        ));
                    }
                    Some(FileType::Directory) => return Err(bad(name, "hardlink to a directory")),
                    Some(_) => {}
                }
                // The entry may name its target by another path (through a symlink): then
                // it is there already.
                if target != path && id_at(&dir, &leaf) != id_at(&tdir, tname) {
                    create_replacing(&dir, &leaf, &mut replaced_link, || {
                        rustix::fs::linkat(
                            &tdir,
                            os_path(tname),
                            &dir,
                            os_path(&leaf),
                            AtFlags::empty(),
                        )
                    })
                    .map_err(io)?;
                }
            }
            EntryKind::Fifo | EntryKind::CharDevice | EntryKind::BlockDevice => {
                let (ft, dev) = match h.kind {
                    EntryKind::Fifo => (FileType::Fifo, 0),
                    EntryKind::CharDevice => (
                        FileType::CharacterDevice,
                        rustix::fs::makedev(h.dev_major, h.dev_minor),
                    ),
                    _ => (
                        FileType::BlockDevice,
                        rustix::fs::makedev(h.dev_major, h.dev_minor),
                    ),
                };
                replaced_link = root::type_at(&dir, &leaf).map_err(io)? == Some(FileType::Symlink);
                root::remove_all(&dir, &leaf).map_err(io)?;
                match rustix::fs::mknodat(
                    &dir,
                    os_path(&leaf),
                    ft,
                    Mode::from_raw_mode(meta.mode),
                    dev,
                ) {
                    Ok(()) => self.leaf_meta(&dir, &leaf, meta, name, true)?,
                    Err(rustix::io::Errno::PERM) if ft != FileType::Fifo => {
                        self.stats
                            .warnings
                            .push(format!("{name}: device node skipped (not permitted)"));
                        self.skipped_devices.insert(path);
                        return Ok(());
                    }
                    Err(e) => return Err(io(e.into())),
                }
            }
        }
        self.mark_created(&real);
        if cacheable && !replaced_link {
            self.parent = Some((parent(&path).to_vec(), dir, real_parent));
        }
        Ok(())
    }

    /// The name the directory open as `dir` (opened as `path`) has below the root, with the
    /// symbolic links on `path` followed: what this layer wrote is known by that name, so that
    /// a whiteout reaching it through another path still spares it.
    fn real_path(&self, dir: &OwnedFd, path: &[u8]) -> Vec<u8> {
        self.root.real_path_of(dir).unwrap_or_else(|| path.to_vec())
    }

    /// Record `path` (a real one, see [`Self::real_path`]) and its ancestors as written by
    /// this layer.
    fn mark_created(&mut self, path: &[u8]) {
        let mut p = path;
        while !p.is_empty() && self.created.insert(p.to_vec()) {
            p = parent(p);
        }
    }

    fn whiteout(&mut self, path: &[u8], name: &str) -> Result<()> {
        let dir = parent(path);
        match classify_layer_name(base_name(path)) {
            LayerName::Opaque => self.pending.opaque(dir),
            LayerName::Whiteout(target) => self.pending.whiteout(&join(dir, target)),
            // The link directory's files are used (see `entry`); the directory is not made.
            LayerName::AufsMeta if path == AUFS_LINK_DIR => {}
            LayerName::AufsMeta => {
                self.stats
                    .warnings
                    .push(format!("{name}: aufs metadata entry ignored"));
            }
            LayerName::Malformed | LayerName::Plain => {
                return Err(bad(name, "malformed whiteout name"));
            }
        }
        Ok(())
    }

    /// Owner, xattrs, mode and mtime of a regular file just written.
    fn file_meta(&mut self, file: &File, meta: &Header, name: &str) -> Result<()> {
        let io = |e: rustix::io::Errno| bad(name, io::Error::from(e).to_string());
        self.owner_and_xattrs_fd(file, meta, name)?;
        rustix::fs::fchmod(file, Mode::from_raw_mode(meta.mode)).map_err(io)?;
        rustix::fs::futimens(file, &times(timespec(meta.mtime))).map_err(io)
    }

    fn owner_and_xattrs_fd(&mut self, fd: impl AsFd, meta: &Header, name: &str) -> Result<()> {
        let fd = fd.as_fd();
        if self.opts.chown {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            )
            .map_err(|e| bad(name, format!("chown: {}", io::Error::from(e))))?;
        }
        for (k, v) in &meta.xattrs {
            if is_overlay_xattr(k) {
                continue;
            }
            if let Err(e) = rustix::fs::fsetxattr(fd, os_path(k), v, XattrFlags::empty()) {
                self.xattr_failed(name, k, e)?;
            }
        }
        Ok(())
    }

    fn xattr_failed(&mut self, name: &str, key: &[u8], e: rustix::io::Errno) -> Result<()> {
        if matches!(e, rustix::io::Errno::NOTSUP | rustix::io::Errno::PERM) {
            self.stats.warnings.push(format!(
                "{name}: xattr {} not applied ({})",
                String::from_utf8_lossy(key),
                io::Error::from(e)
            ));
            Ok(())
        } else {
            Err(bad(
                name,
                format!(
                    "setting xattr {}: {}",
                    String::from_utf8_lossy(key),
                    io::Error::from(e)
                ),
            ))
        }
    }

    /// Owner, xattrs, mode (when `chmod`) and mtime of a leaf that cannot be opened (symlink,
    /// device, fifo), without following it.
    fn leaf_meta(
        &mut self,
        dir: &OwnedFd,
        leaf: &[u8],
        meta: &Header,
        name: &str,
        chmod: bool,
    ) -> Result<()> {
        let io = |e: rustix::io::Errno| bad(name, io::Error::from(e).to_string());
        if self.opts.chown {
            rustix::fs::chownat(
                dir,
                os_path(leaf),
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io)?;
        }
        if !meta.xattrs.is_empty() {
            // lsetxattr through the directory's /proc entry: the leaf itself is not followed.
            let p = crate::walk::proc_entry_path(dir.as_fd(), leaf);
            for (k, v) in &meta.xattrs {
                if is_overlay_xattr(k) {
                    continue;
                }
                if let Err(e) =
                    rustix::fs::lsetxattr(os_path(&p), os_path(k), v, XattrFlags::empty())
                {
                    self.xattr_failed(name, k, e)?;
                }
            }
        }
        if chmod {
            // fchmodat cannot skip links, but the leaf was just made by mknodat: not a link.
            rustix::fs::chmodat(
                dir,
                os_path(leaf),
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(io)?;
        }
        rustix::fs::utimensat(
            dir,
            os_path(leaf),
            &times(timespec(meta.mtime)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io)?;
        Ok(())
    }

    /// Carry out, now, the whiteouts and opaque markers read so far on the way to `dir`: an
    /// entry is about to go there ([`Pending::due`]), not through a symbolic link, into a
    /// directory's old owner and mode, or onto a file that lay there below this layer.
    fn hide_before_entry(&mut self, dir: &[u8]) -> Result<()> {
        let due = self.pending.due(dir);
        if !due.is_empty() {
            // The parent kept open may lead through what is removed.
            self.parent = None;
        }
        for what in due {
            self.carry_out(&what)?;
        }
        Ok(())
    }

    fn carry_out(&mut self, what: &Due) -> Result<()> {
        match what {
            Due::Whiteout(name) => self.carry_out_whiteout(name),
            Due::Opaque(name) => self.carry_out_opaque(name),
        }
    }

    /// Hide what lies below this layer in the directory `name`, which an opaque marker names.
    fn carry_out_opaque(&mut self, name: &[u8]) -> Result<()> {
        let Some(dir) = self.merged_dir(name, name)? else {
            return Ok(());
        };
        self.hide_children(&dir, name)?;
        if self.opts.overlay {
            self.overlay_opaque(&dir)?;
        }
        Ok(())
    }

    /// Hide what lies below this layer at `name`, a path a whiteout names.
    fn carry_out_whiteout(&mut self, name: &[u8]) -> Result<()> {
        // Over lower layers, the whiteout acts where its parent leads in the merged tree.
        let Some(dir) = self.merged_dir(parent(name), name)? else {
            return Ok(());
        };
        let path = join(&dir, base_name(name));
        let written_here = self.hide(&path, name)?;
        if self.opts.overlay && !written_here {
            self.overlay_whiteout(&path)?;
        } else if self.opts.overlay {
            // A directory this layer writes into and whites out keeps only what the
            // layer wrote in it: in overlay form, an opaque directory.
            self.overlay_opaque_if_dir(&path)?;
        }
        Ok(())
    }

    /// Carry out whiteouts and opaque markers, then directory modes and mtimes (deepest first,
    /// so later changes inside do not disturb them).
    fn finish(&mut self) -> Result<()> {
        // Each once, and not again when an entry below it had it carried out already.
        for what in self.pending.rest() {
            self.carry_out(&what)?;
        }
        // Copied-up directories first: an entry of the layer for one of them comes after, and
        // its metadata is applied last.
        let mut dirs = self.copied_dirs.take();
        dirs.append(&mut self.dirs);
        // Deepest first, where they really are; of two entries for one directory, the later
        // one's metadata last.
        dirs.sort_by(|a, b| crate::entry::cmp_paths(&b.real, &a.real));
        for d in dirs {
            let what = String::from_utf8_lossy(&d.path).into_owned();
            // Reached by where its parent really was, not by the entry's name: a link on the
            // name that a later entry replaced no longer leads there.
            let real_parent = parent(&d.real);
            let dfd = match self.root.open_dir(real_parent) {
                Ok(fd) => fd,
                Err(_) => continue, // replaced or removed later in the layer
            };
            // A parent that now leads elsewhere (made a symlink later in the layer) is not
            // where the directory was made: the metadata is not applied through it.
            if self.real_path(&dfd, real_parent) != real_parent {
                continue;
            }
            let fd = match rustix::fs::openat(
                &dfd,
                os_path(base_name(&d.real)),
                OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                // A later entry turned it into something else (a symlink, say): its metadata
                // belongs to that entry now, and is never applied through the link.
                Err(
                    rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP,
                ) => continue,
                Err(e) => return Err(bad(&what, io::Error::from(e).to_string())),
            };
            let now = dir_identity(&fd, b"").map_err(|e| bad(&what, e.to_string()))?;
            if now != d.id {
                continue;
            }
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(d.mode))
                .map_err(|e| bad(&what, io::Error::from(e).to_string()))?;
            rustix::fs::futimens(&fd, &times(d.mtime))
                .map_err(|e| bad(&what, io::Error::from(e).to_string()))?;
        }
        Ok(())
    }

    /// Remove what lies at `path` from lower layers, keeping whatever this layer wrote there;
    /// true when this layer wrote `path` (reached through links or not).
    fn hide(&self, path: &[u8], why: &[u8]) -> Result<bool> {
        let what = || String::from_utf8_lossy(why).into_owned();
        let Some(dir) = self.existing_dir(parent(path), &what())? else {
            return Ok(false);
        };
        let real = join(&self.real_path(&dir, parent(path)), base_name(path));
        if !self.created.contains(&real) {
            root::remove_all(&dir, base_name(path)).map_err(|e| bad(&what(), e.to_string()))?;
            return Ok(false);
        }
        // This layer wrote `path`. Anything but a directory replaced what lay there whole, so
        // nothing lower is left; and a link is never followed (what it points at is not what
        // the whiteout names).
        if root::type_at(&dir, base_name(path)).map_err(|e| bad(&what(), e.to_string()))?
            != Some(FileType::Directory)
        {
            return Ok(true);
        }
        self.hide_children(&real, why)?;
        Ok(true)
    }

    fn hide_children(&self, dir: &[u8], why: &[u8]) -> Result<()> {
        let what = || String::from_utf8_lossy(why).into_owned();
        let Some(fd) = self.existing_dir(dir, &what())? else {
            return Ok(());
        };
        let real_dir = self.real_path(&fd, dir);
        for child in root::list_dir(&fd).map_err(|e| bad(&what(), e.to_string()))? {
            let child_path = join(&real_dir, &child);
            // Only descend into real directories: never through a link.
            if self.created.contains(&child_path)
                && root::type_at(&fd, &child).map_err(|e| bad(&what(), e.to_string()))?
                    != Some(FileType::Directory)
            {
                continue;
            }
            self.hide(&child_path, why)?;
        }
        Ok(())
    }

    /// The directory an entry at `rel/…` goes into, made where missing. In overlay form, it is
    /// where `rel` leads in the merged tree ([`Self::merged_path`]).
    fn dir_for_entry(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        if self.opts.overlay {
            match self.root.open_dir(rel) {
                // Everything on the way is in this layer: the merged tree resolves it alike.
                Ok(fd) => return Ok(fd),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    let made = self
                        .merged_path(rel, true)
                        .and_then(|merged| self.root.open_dir(&merged));
                    return match made {
                        // Followed links may make a longer path than the one they stand for:
                        // by itself, the layer's directory resolves it as a plain apply does.
                        Err(e)
                            if e.raw_os_error() == Some(libc::ENAMETOOLONG)
                                && self.lowers.is_none() =>
                        {
                            self.root.create_dir_all(rel)
                        }
                        other => other,
                    };
                }
                Err(e) => return Err(e),
            }
        }
        self.root.create_dir_all(rel)
    }

    /// Where the directory `rel` leads in the merged tree ([`Self::merged_path`], nothing
    /// made), for a whiteout or an opaque marker (`why`) there; `None` when it leads through
    /// a file, or to nothing: nothing there to hide, as on one directory.
    fn merged_dir(&self, rel: &[u8], why: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.merged_path(rel, false) {
            Ok(dir) => Ok(Some(dir)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ENOENT)) => Ok(None),
            Err(e) => Err(bad(&String::from_utf8_lossy(why), e.to_string())),
        }
    }

    /// The directory at `rel` if there is one, `None` when it is missing or not a directory.
    fn existing_dir(&self, rel: &[u8], what: &str) -> Result<Option<OwnedFd>> {
        match self.root.open_dir(rel) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(None),
            Err(e) => Err(bad(what, e.to_string())),
        }
    }

    /// In overlay form over known lower layers: where `rel` leads in the merged tree, every
    /// symbolic link on the way followed (the last component's too), whether this layer or a
    /// lower one holds it; the directories on the way that only lower layers hold are copied
    /// up, so the path can be opened in this layer's directory. Links are never copied up: as
    /// with overlayfs, passing through one leaves it where it is (a hardlink to it stays one).
    ///
    /// With `make`, what the merged tree does not hold is made on the way (0755, as
    /// [`Root::create_dir_all`] makes it), and a whiteout of this layer in the way becomes an
    /// opaque directory; without, such a path is `ENOENT`. Without lower layers, `make` works
    /// the same in this layer's directory alone, and otherwise `rel` is given back as it is.
    fn merged_path(&self, rel: &[u8], make: bool) -> io::Result<Vec<u8>> {
        if self.lowers.is_none() && !make {
            return Ok(rel.to_vec());
        }
        let mut todo: std::collections::VecDeque<Vec<u8>> =
            rel.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
        let mut cur: Vec<u8> = Vec::new();
        let mut links = 0;
        while let Some(comp) = todo.pop_front() {
            match comp.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    cur = parent(&cur).to_vec();
                    continue;
                }
                _ => {}
            }
            let dir = self.root.open_dir(&cur)?;
            let path = join(&cur, &comp);
            let here = rustix::fs::statat(&dir, os_path(&comp), AtFlags::SYMLINK_NOFOLLOW);
            let (kind, target) = match here {
                Ok(st) if make && lower::is_whiteout(&st) => {
                    // Something below is hidden here: a directory made in its place must
                    // not show it again.
                    rustix::fs::unlinkat(&dir, os_path(&comp), AtFlags::empty())?;
                    let fd = self.make_dir(&dir, &comp)?;
                    self.set_opaque(&fd, &String::from_utf8_lossy(&path))
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    (FileType::Directory, None)
                }
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => (
                    FileType::Symlink,
                    Some(rustix::fs::readlinkat(&dir, os_path(&comp), Vec::new())?),
                ),
                Ok(st) => (FileType::from_raw_mode(st.st_mode), None),
                Err(rustix::io::Errno::NOENT) => {
                    let found = match &self.lowers {
                        Some(lowers) => self.lower_lookup(lowers, &path)?,
                        None => None,
                    };
                    match found {
                        Some(found) if found.kind() == FileType::Directory => {
                            self.copy_up_dir(&found, &comp, &dir, &path)?;
                            (FileType::Directory, None)
                        }
                        Some(found) if found.kind() == FileType::Symlink => (
                            FileType::Symlink,
                            Some(rustix::fs::readlinkat(
                                &found.parent,
                                os_path(&comp),
                                Vec::new(),
                            )?),
                        ),
                        Some(found) => (found.kind(), None),
                        None if make => {
                            self.make_dir(&dir, &comp)?;
                            (FileType::Directory, None)
                        }
                        None => return Err(rustix::io::Errno::NOENT.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            };
            match (kind, target) {
                (FileType::Directory, _) => cur = path,
                (FileType::Symlink, Some(target)) => {
                    links += 1;
                    if links > root::MAX_LINKS {
                        return Err(rustix::io::Errno::LOOP.into());
                    }
                    let target = target.as_bytes();
                    if target.starts_with(b"/") {
                        cur.clear();
                    }
                    for c in target.split(|&b| b == b'/').rev() {
                        todo.push_front(c.to_vec());
                    }
                }
                // Every caller needs a directory here.
                _ => return Err(rustix::io::Errno::NOTDIR.into()),
            }
        }
        Ok(cur)
    }

    /// A directory `name` made in `dir` as [`Root::create_dir_all`] makes one
    /// ([`root::settle_made_dir`]).
    fn make_dir(&self, dir: &OwnedFd, name: &[u8]) -> io::Result<OwnedFd> {
        root::refuse_whiteout_dir(name)?;
        rustix::fs::mkdirat(dir, os_path(name), Mode::from_raw_mode(0o755))?;
        let fd = rustix::fs::openat(
            dir,
            os_path(name),
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        root::settle_made_dir(&fd)?;
        Ok(fd)
    }

    /// Copy up the lower directory `found` as `name` in `dir` (at `path`): writable by its
    /// owner while the layer is applied, its own mode and mtime set at the end with the
    /// other directories' (a read-only lower directory stays writable for a caller without
    /// privilege until then).
    fn copy_up_dir(
        &self,
        found: &lower::Found,
        name: &[u8],
        dir: &OwnedFd,
        path: &[u8],
    ) -> io::Result<()> {
        lower::copy_up(found, name, dir, self.opts.chown)?;
        let mode = found.stat.st_mode & 0o7777;
        if mode & 0o700 == 0o700 || rustix::process::geteuid().is_root() {
            return Ok(()); // writable as it is
        }
        // Only then: a chmod by its owner may clear setgid, which directories made inside it
        // would no longer inherit.
        let writable = Mode::from_raw_mode(mode | 0o700);
        rustix::fs::chmodat(dir, os_path(name), writable, AtFlags::empty())?;
        self.copied_dirs.borrow_mut().push(DirMeta {
            path: path.to_vec(),
            real: path.to_vec(),
            mode,
            mtime: Timespec {
                tv_sec: found.stat.st_mtime,
                tv_nsec: found.stat.st_mtime_nsec as _,
            },
            id: dir_identity(dir, name)?,
        });
        Ok(())
    }

    /// What the lower layers show at the real path `real` through this layer's directory:
    /// nothing below a directory this layer made opaque, or below anything else it holds
    /// on the way that is not a directory.
    fn lower_lookup(&self, lowers: &Lowers, real: &[u8]) -> io::Result<Option<lower::Found>> {
        let mut dir = self.root.open_dir(b"")?;
        for comp in parent(real).split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            match root::type_at(&dir, comp)? {
                None => break, // this layer holds nothing further down
                Some(FileType::Directory) => {}
                Some(_) => return Ok(None),
            }
            dir = rustix::fs::openat(
                &dir,
                os_path(comp),
                OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let mut value = [0u8; 2];
            if matches!(rustix::fs::fgetxattr(&dir, self.opaque_key(), &mut value), Ok(1) if value[0] == b'y')
            {
                return Ok(None);
            }
        }
        lowers.found(real).map_err(|e| match e {
            // The path in the layer named, the error's kind kept.
            Error::Io { ref source, .. } => io::Error::new(source.kind(), e.to_string()),
            other => io::Error::other(other.to_string()),
        })
    }

    /// Over known lower layers: the entry `name` of the directory `dir` (at `rel`), a
    /// hardlink's target, is copied up if only they hold it, as overlayfs does before it
    /// links.
    fn copy_up_link_target(&self, dir: &OwnedFd, rel: &[u8], name: &[u8]) -> io::Result<()> {
        let Some(lowers) = &self.lowers else {
            return Ok(());
        };
        if root::type_at(dir, name)?.is_some() {
            return Ok(());
        }
        let real = join(&self.real_path(dir, rel), name);
        let found = match self.lower_lookup(lowers, &real)? {
            Some(found) if found.kind() != FileType::Directory => found,
            _ => return Ok(()),
        };
        lower::copy_up(&found, name, dir, self.opts.chown)?;
        // The file's other names that the merged tree shows go along, linked to the copy, so
        // that it stays one file (overlayfs without its inode index breaks such links).
        let id = (found.stat.st_dev, found.stat.st_ino);
        for other in lowers.other_links(&found, &real)? {
            match self.lower_lookup(lowers, &other)? {
                Some(f) if (f.stat.st_dev, f.stat.st_ino) == id => {}
                _ => continue, // hidden or replaced above its layer
            }
            match self.merged_path(parent(&other), false) {
                Ok(p) if p == parent(&other) => {}
                _ => continue, // reached through a link now, or not at all
            }
            let odir = self.root.open_dir(parent(&other))?;
            if root::type_at(&odir, base_name(&other))?.is_none() {
                rustix::fs::linkat(
                    dir,
                    os_path(name),
                    &odir,
                    os_path(base_name(&other)),
                    AtFlags::empty(),
                )?;
            }
        }
        Ok(())
    }

    fn overlay_whiteout(&self, path: &[u8]) -> Result<()> {
        let what = String::from_utf8_lossy(path).into_owned();
        let dir = match &self.lowers {
            Some(lowers) => {
                // Only where the merged tree below holds something to hide.
                let Some(dir) = self.existing_dir(parent(path), &what)? else {
                    return Ok(());
                };
                let real = join(&self.real_path(&dir, parent(path)), base_name(path));
                if self
                    .lower_lookup(lowers, &real)
                    .map_err(|e| bad(&what, e.to_string()))?
                    .is_none()
                {
                    return Ok(());
                }
                dir
            }
            None => self
                .root
                .create_dir_all(parent(path))
                .map_err(|e| bad(&what, e.to_string()))?,
        };
        self.make_whiteout(&dir, base_name(path), &what)
    }

    /// An overlayfs whiteout (a 0/0 character device) named `name` in `dir`.
    fn make_whiteout(&self, dir: &OwnedFd, name: &[u8], what: &str) -> Result<()> {
        rustix::fs::mknodat(
            dir,
            os_path(name),
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(|e| {
            bad(
                what,
                format!("making overlay whiteout: {}", io::Error::from(e)),
            )
        })
    }

    /// Make `path` opaque if it is a directory (never following it when it is a link).
    fn overlay_opaque_if_dir(&self, path: &[u8]) -> Result<()> {
        let what = String::from_utf8_lossy(path).into_owned();
        let Some(dir) = self.existing_dir(parent(path), &what)? else {
            return Ok(());
        };
        match root::type_at(&dir, base_name(path)) {
            Ok(Some(FileType::Directory)) => {
                let fd = rustix::fs::openat(
                    &dir,
                    os_path(base_name(path)),
                    OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| bad(&what, io::Error::from(e).to_string()))?;
                self.set_opaque(&fd, &what)
            }
            Ok(_) => Ok(()),
            Err(e) => Err(bad(&what, e.to_string())),
        }
    }

    fn overlay_opaque(&self, dir: &[u8]) -> Result<()> {
        let what = String::from_utf8_lossy(dir).into_owned();
        let fd = if self.lowers.is_some() {
            // A directory the merged tree does not hold has nothing to hide.
            match self.existing_dir(dir, &what)? {
                Some(fd) => fd,
                None => return Ok(()),
            }
        } else {
            match self.root.create_dir_all(dir) {
                Ok(fd) => fd,
                // This layer made it something else, which hides whatever lies below anyway.
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(()),
                Err(e) => return Err(bad(&what, e.to_string())),
            }
        };
        if self.real_path(&fd, dir).is_empty() {
            self.overlay_opaque_root(&fd, &what)?;
        }
        self.set_opaque(&fd, &what)
    }

    /// overlayfs reads no opaque xattr on a layer's root directory: the directories at the
    /// top of this layer are made opaque instead, and over known lower layers, what they
    /// hold at the top that this layer does not is whited out.
    fn overlay_opaque_root(&self, root: &OwnedFd, what: &str) -> Result<()> {
        let fail = |e: io::Error| bad(what, e.to_string());
        for name in root::list_dir(root).map_err(fail)? {
            if root::type_at(root, &name).map_err(fail)? == Some(FileType::Directory) {
                let fd = rustix::fs::openat(
                    root,
                    os_path(&name),
                    OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| fail(e.into()))?;
                self.set_opaque(&fd, what)?;
            }
        }
        let Some(lowers) = &self.lowers else {
            return Ok(());
        };
        for name in lowers.root_names().map_err(fail)? {
            if root::type_at(root, &name).map_err(fail)?.is_none()
                && self.lower_lookup(lowers, &name).map_err(fail)?.is_some()
            {
                self.make_whiteout(root, &name, what)?;
            }
        }
        Ok(())
    }

    /// The xattr that marks an opaque directory in this form.
    fn opaque_key(&self) -> &'static str {
        if self.opts.userxattr {
            "user.overlay.opaque"
        } else {
            "trusted.overlay.opaque"
        }
    }

    fn set_opaque(&self, fd: &OwnedFd, what: &str) -> Result<()> {
        let key = self.opaque_key();
        rustix::fs::fsetxattr(fd, key, b"y", XattrFlags::empty())
            .map_err(|e| bad(what, format!("setting {key}: {}", io::Error::from(e))))
    }
}

/// Make `leaf` in `dir` with `create`; if something is already there (a link included), remove
/// it and create again. Usually nothing is, so no lookup comes first.
/// `replaced_link` is set when what was there was a symlink.
fn create_replacing<T>(
    dir: &OwnedFd,
    leaf: &[u8],
    replaced_link: &mut bool,
    create: impl Fn() -> rustix::io::Result<T>,
) -> io::Result<T> {
    match create() {
        Err(rustix::io::Errno::EXIST) => {
            *replaced_link |= root::type_at(dir, leaf)? == Some(FileType::Symlink);
            root::remove_all(dir, leaf)?;
            Ok(create()?)
        }
        other => Ok(other?),
    }
}

/// Make the regular file `leaf` in `dir`, replacing what is there (see [`create_replacing`]),
/// open for writing (and reading, with `read`).
fn create_file(
    dir: &OwnedFd,
    leaf: &[u8],
    replaced_link: &mut bool,
    read: bool,
) -> io::Result<File> {
    let access = if read { OFlags::RDWR } else { OFlags::WRONLY };
    let fd = create_replacing(dir, leaf, replaced_link, || {
        rustix::fs::openat(
            dir,
            os_path(leaf),
            OFlags::CREATE | OFlags::EXCL | access | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
    })?;
    Ok(File::from(fd))
}

/// A file without a name in the directory `dir` (on its file system), for content kept only
/// while the layer is applied: `O_TMPFILE`, or where the file system has none, a file created
/// and unlinked at once.
fn unnamed_file(dir: impl AsFd) -> io::Result<File> {
    let dir = dir.as_fd();
    let mode = Mode::from_raw_mode(0o600);
    match rustix::fs::openat(
        dir,
        ".",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        mode,
    ) {
        Ok(fd) => return Ok(File::from(fd)),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL) => {
        }
        Err(e) => return Err(e.into()),
    }
    for n in 0u32.. {
        let name = format!(".layerdiff-kept-{}-{n}", std::process::id());
        let flags =
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(dir, name.as_str(), flags, mode) {
            Ok(fd) => {
                rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty())?;
                return Ok(File::from(fd));
            }
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("a free name is found before the counter wraps")
}

/// Write the rest of the current entry's content (`name` in errors) into `to`, straight from
/// the stream's buffers; stopped as soon as `cancel` is set.
fn copy_content(
    from: &mut impl BufRead,
    to: &mut File,
    cancel: &Cancel,
    (root, path): (&Root, &[u8]),
    name: &str,
) -> Result<()> {
    use std::io::Write;
    let broke = |e: io::Error| bad(name, format!("reading content: {e}"));
    loop {
        cancel.check()?;
        let data = from.fill_buf().map_err(broke)?;
        if data.is_empty() {
            return Ok(());
        }
        let n = data.len();
        to.write_all(data)
            .map_err(|e| written(root, path, name, e))?;
        from.consume(n);
    }
}

/// An error writing the entry `name` into the target: the system's own, with its errno and
/// the target's path, where the system and not the layer is at fault (a full disk, a quota,
/// no permission, a read-only file system); else the layer's, as the entry names it (a path
/// through a file, say).
fn written(root: &Root, path: &[u8], name: &str, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(
            libc::ENOSPC
            | libc::EDQUOT
            | libc::EROFS
            | libc::EIO
            | libc::EACCES
            | libc::EPERM
            | libc::EMFILE
            | libc::ENFILE
            | libc::ENOMEM
            | libc::EFBIG,
        ) => Error::Io {
            path: root.display(path),
            source: e,
        },
        _ => bad(name, e.to_string()),
    }
}

fn timespec(t: Timestamp) -> Timespec {
    Timespec {
        tv_sec: t.sec,
        tv_nsec: i64::from(t.nsec),
    }
}

/// A directory kept from a lower layer takes the layer's xattrs: the ones the layer does not
/// list go (overlayfs' own excepted: they are not the layer's to touch).
fn drop_stale_xattrs(fd: &OwnedFd, meta: &Header, name: &str) -> Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let n = match rustix::fs::flistxattr(fd, &mut buf) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(bad(name, format!("listing xattrs: {}", io::Error::from(e)))),
    };
    for key in buf[..n].split(|&b| b == 0).filter(|k| !k.is_empty()) {
        if is_overlay_xattr(key) || meta.xattrs.iter().any(|(k, _)| k == key) {
            continue;
        }
        match rustix::fs::fremovexattr(fd, os_path(key)) {
            Ok(()) | Err(rustix::io::Errno::NODATA) => {}
            Err(e) => {
                return Err(bad(name, format!("removing xattr: {}", io::Error::from(e))));
            }
        }
    }
    Ok(())
}

fn times(mtime: Timespec) -> Timestamps {
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
