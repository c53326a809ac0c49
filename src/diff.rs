//! Changes between two trees, or read from an overlayfs upper directory.
//!
//! Both diffs walk with [`crate::walk`], decide over the entries (pure functions: merge,
//! comparison, hardlink sets, overlay classification) and touch the filesystem again only to
//! hash contents, to look paths up in lower directories, and — for an upper directory written
//! with `redirect_dir` or `metacopy` — to mount the merged tree read-only.
//!
//! Overlayfs' own xattrs (`trusted.overlay.*`, `user.overlay.*`) are used for the decisions and
//! then stripped here, so a [`Change::entry`] never carries them.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::entry::{self, Entry, Kind, cmp_paths};
use crate::error::{Error, IoContext, Result};
use crate::{walk, whiteout};

/// What happened to a path, in `docker diff` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// `A`: new in the upper tree.
    Added,
    /// `C`: present in both, different.
    Modified,
    /// `D`: gone from the upper tree (becomes a whiteout).
    Deleted,
}

impl ChangeKind {
    /// The `docker diff` letter.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Modified => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One change: what the layer must hold for `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Added, modified or deleted.
    pub kind: ChangeKind,
    /// Relative path (see [`Entry::path`]).
    pub path: Vec<u8>,
    /// The upper tree's entry; `None` for [`ChangeKind::Deleted`].
    pub entry: Option<Entry>,
    /// For a directory: its lower contents are hidden (written as an opaque marker).
    pub opaque: bool,
}

/// Options of a diff.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Compare regular-file contents (blake3) when size matches but mtime differs, so a touched
    /// but identical file is not reported.
    pub content: bool,
}

/// Changes that turn the tree `lower` into the tree `upper`, in [`crate::entry::cmp_paths`] order.
///
/// Compared: kind, mode (with setuid/setgid/sticky), owner, size, mtime (ns), xattrs (except
/// overlayfs' own), symlink target, device numbers, and hardlink structure. Not compared: inode
/// and device numbers themselves, atime/ctime, the link count as a number. So two copies of one
/// tree diff as empty wherever they live and in whatever order they were written.
///
/// - A path only in `lower` is one [`ChangeKind::Deleted`]; a deleted directory's descendants
///   are implied and not listed.
/// - A path whose kind changed is [`ChangeKind::Modified`]. Directory → other: the directory's
///   lower subtree is implied gone and not listed. Other → directory: the directory's children
///   are all [`ChangeKind::Added`]. A two-tree diff never sets [`Change::opaque`].
/// - A directory is listed only when its own attributes changed (its mtime included), not
///   because something below it did.
/// - With [`DiffOptions::content`], a regular file that differs only in mtime is compared by
///   blake3 of its contents and left out when equal. Without it, contents are never read: a
///   file rewritten with the same size, mtime and metadata is not seen (as in `docker diff`).
/// - Hardlinks: when any member of an upper hardlink set is added or modified, or the set's
///   members differ from the lower's (compared as path sets, never inode numbers), every member
///   of the set is listed, so the layer can express the link.
/// - Unix sockets never enter a layer: to the diff they are absent.
pub fn diff_dirs(lower: &Path, upper: &Path, opts: &DiffOptions) -> Result<Vec<Change>> {
    let lower_fd = walk::open_root(lower)?;
    let upper_fd = walk::open_root(upper)?;
    let lower = Tree {
        fd: lower_fd.as_fd(),
        path: lower,
    };
    let upper = Tree {
        fd: upper_fd.as_fd(),
        path: upper,
    };
    diff_trees(lower, upper, opts)
}

/// Changes recorded by an overlayfs upper directory, in [`crate::entry::cmp_paths`] order.
/// `lowers` (top first) are used to tell added from modified and as the fallback when the upper
/// dir was written with `redirect_dir` or `metacopy`.
///
/// - A whiteout (0/0 character device, or a zero-size file with `overlay.whiteout` in a
///   directory marked for xattr whiteouts) is [`ChangeKind::Deleted`]. Whiteouts below an
///   opaque directory hide nothing the opaque marker does not, and are left out.
/// - An opaque directory (`overlay.opaque=y`) has [`Change::opaque`] set.
/// - Every other entry is [`ChangeKind::Modified`] when its path exists in one of `lowers`
///   (looked up without following any symlink: a path below a symlink in a lower does not
///   exist there), [`ChangeKind::Added`] otherwise. With no `lowers` nothing can be looked up:
///   directories are `Modified` (in an upper dir they are usually parents created by copy-up)
///   and everything else `Added`. The layer is the same either way; only the letter differs.
/// - A Unix socket never enters a layer; one that hides a lower path is `Deleted`.
/// - Every entry of the upper directory is listed, hardlink sets included (all their members
///   are in the upper directory). Contents are never compared, so `opts` only matters for the
///   fallback below.
///
/// An upper directory with an `overlay.redirect` or `overlay.metacopy` xattr does not hold its
/// change by itself (a renamed directory's contents stay in the lower, a metacopy file has no
/// data). Then the change is computed as [`diff_dirs`] between the lowers and a read-only
/// overlay mount of the upper (as the top lower layer, so it is not modified) over the lowers.
/// Without `lowers`, or if that mount fails, the answer is [`Error::Overlay`] naming the entry:
/// never a wrong layer.
pub fn diff_overlay(upper: &Path, lowers: &[PathBuf], opts: &DiffOptions) -> Result<Vec<Change>> {
    let upper_fd = walk::open_root(upper)?;
    let entries = walk::walk_fd(upper_fd.as_fd(), upper)?;
    if let Some(moved) = entries.iter().find(|e| needs_merged_view(e)) {
        return diff_through_merged_view(upper, lowers, moved, opts);
    }
    let root_marked = whiteout::has_xattr_whiteouts(&walk::dir_xattrs(upper_fd.as_fd(), upper)?);
    let lowers = open_lowers(lowers)?;
    let decisions = classify_upper(&entries, root_marked, &lowers)?;
    let mut changes = Vec::new();
    for (mut e, decision) in entries.into_iter().zip(decisions) {
        let Some((kind, opaque)) = decision else {
            continue;
        };
        whiteout::strip_overlay_xattrs(&mut e);
        let path = e.path.clone();
        let entry = (kind != ChangeKind::Deleted).then_some(e);
        changes.push(Change {
            kind,
            path,
            entry,
            opaque,
        });
    }
    Ok(changes)
}

// ---------------------------------------------------------------------------------------------
// Two-tree diff

/// An open tree root and the path that names it in errors.
#[derive(Clone, Copy)]
struct Tree<'a> {
    fd: BorrowedFd<'a>,
    path: &'a Path,
}

impl Tree<'_> {
    fn full_path(&self, rel: &[u8]) -> PathBuf {
        self.path.join(entry::os_path(rel))
    }
}

/// How an upper entry compares with the lower entry at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Same,
    Added,
    Modified,
    /// A regular file equal in everything but mtime: content mode decides.
    MtimeOnly,
}

/// The result of merging the two sorted entry lists.
struct Merge {
    /// For each upper entry (same index): its state and the lower entry at its path.
    upper: Vec<(State, Option<usize>)>,
    /// Lower entries gone from the upper tree (not their descendants).
    deleted: Vec<usize>,
}

fn diff_trees(lower: Tree<'_>, upper: Tree<'_>, opts: &DiffOptions) -> Result<Vec<Change>> {
    let (l, u) = rayon::join(|| walk_for_diff(lower), || walk_for_diff(upper));
    let (l, u) = (l?, u?);
    let mut merge = merge(&l, &u);
    if opts.content {
        settle_by_content(&mut merge, &l, &u, lower, upper)?;
    } else {
        for (state, _) in &mut merge.upper {
            if *state == State::MtimeOnly {
                *state = State::Modified;
            }
        }
    }
    mark_hardlink_sets(&mut merge, &l, &u);
    Ok(into_changes(merge, &l, u))
}

/// Walk one side, without sockets (never layer content) and without overlayfs' xattrs.
fn walk_for_diff(tree: Tree<'_>) -> Result<Vec<Entry>> {
    let mut entries = walk::walk_fd(tree.fd, tree.path)?;
    entries.retain(|e| e.kind != Kind::Socket);
    entries.iter_mut().for_each(whiteout::strip_overlay_xattrs);
    Ok(entries)
}

/// Merge two lists sorted in [`cmp_paths`] order, in one pass.
fn merge(lower: &[Entry], upper: &[Entry]) -> Merge {
    let mut out = Merge {
        upper: vec![(State::Added, None); upper.len()],
        deleted: Vec::new(),
    };
    let (mut i, mut j) = (0, 0);
    while i < lower.len() || j < upper.len() {
        let order = match (lower.get(i), upper.get(j)) {
            (Some(l), Some(u)) => cmp_paths(&l.path, &u.path),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.deleted.push(i);
                i = skip_subtree(lower, i);
            }
            std::cmp::Ordering::Greater => j += 1, // Added, the default.
            std::cmp::Ordering::Equal => {
                out.upper[j] = (compare(&lower[i], &upper[j]), Some(i));
                // A directory replaced by something else takes its subtree with it.
                let replaced = lower[i].kind == Kind::Dir && upper[j].kind != Kind::Dir;
                i = if replaced {
                    skip_subtree(lower, i)
                } else {
                    i + 1
                };
                j += 1;
            }
        }
    }
    out
}

/// The index after `entries[i]` and its descendants (they follow it in [`cmp_paths`] order).
fn skip_subtree(entries: &[Entry], i: usize) -> usize {
    let dir = &entries[i].path;
    let below = |p: &[u8]| p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/';
    i + 1
        + entries[i + 1..]
            .iter()
            .take_while(|e| below(&e.path))
            .count()
}

/// Compare the attributes a layer records (see [`diff_dirs`]).
fn compare(l: &Entry, u: &Entry) -> State {
    let same_but_mtime = l.kind == u.kind
        && l.mode == u.mode
        && l.uid == u.uid
        && l.gid == u.gid
        && l.size == u.size
        && l.xattrs == u.xattrs
        && l.link_target == u.link_target
        && l.rdev_major == u.rdev_major
        && l.rdev_minor == u.rdev_minor;
    match (same_but_mtime, l.mtime == u.mtime) {
        (false, _) => State::Modified,
        (true, true) => State::Same,
        (true, false) if u.kind == Kind::File => State::MtimeOnly,
        (true, false) => State::Modified,
    }
}

/// Decide every [`State::MtimeOnly`] file by hashing both sides (in parallel).
fn settle_by_content(
    m: &mut Merge,
    l: &[Entry],
    u: &[Entry],
    lower: Tree<'_>,
    upper: Tree<'_>,
) -> Result<()> {
    let todo: Vec<(usize, usize)> = m
        .upper
        .iter()
        .enumerate()
        .filter_map(|(j, &(state, i))| (state == State::MtimeOnly).then_some((j, i?)))
        .collect();
    let equal: Vec<bool> = todo
        .par_iter()
        .map(|&(j, i)| Ok(hash_file(lower, &l[i])? == hash_file(upper, &u[j])?))
        .collect::<Result<_>>()?;
    for (&(j, _), equal) in todo.iter().zip(equal) {
        m.upper[j].0 = if equal { State::Same } else { State::Modified };
    }
    Ok(())
}

/// blake3 of a regular file of `tree`, opened beneath its root without following any symlink.
fn hash_file(tree: Tree<'_>, e: &Entry) -> Result<blake3::Hash> {
    let path = tree.full_path(&e.path);
    // NONBLOCK: should the file have been swapped for a FIFO meanwhile, do not hang on it.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
    let fd = rustix::fs::openat2(
        tree.fd,
        entry::os_path(&e.path),
        flags,
        Mode::empty(),
        resolve,
    )
    .at(&path)?;
    let mut hasher = blake3::Hasher::new();
    let found = std::io::copy(&mut std::fs::File::from(fd), &mut hasher).at(&path)?;
    if found != e.size {
        return Err(Error::FileChanged {
            path,
            expected: e.size,
            found,
        });
    }
    Ok(hasher.finalize())
}

/// The (dev, ino) of every hardlinked regular file, with its members (indices, in path order).
fn link_sets(entries: &[Entry]) -> HashMap<(u64, u64), Vec<usize>> {
    let mut sets: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
    for (i, e) in entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.is_hardlinked())
    {
        sets.entry((e.dev, e.ino)).or_default().push(i);
    }
    sets
}

/// The paths linked to `entries[i]` within its tree (itself included), in path order.
fn linked_paths<'a>(
    entries: &'a [Entry],
    sets: &HashMap<(u64, u64), Vec<usize>>,
    i: usize,
) -> Vec<&'a [u8]> {
    let e = &entries[i];
    match sets.get(&(e.dev, e.ino)).filter(|_| e.is_hardlinked()) {
        Some(members) => members
            .iter()
            .map(|&k| entries[k].path.as_slice())
            .collect(),
        None => vec![e.path.as_slice()],
    }
}

/// Apply the hardlink rule (see [`diff_dirs`]): list every member of an upper set that has a
/// changed member or whose membership differs from the lower's.
fn mark_hardlink_sets(m: &mut Merge, l: &[Entry], u: &[Entry]) {
    let (lower_sets, upper_sets) = (link_sets(l), link_sets(u));
    // Sets to look at: every upper set, plus files linked in the lower but not in the upper
    // (their membership changed too).
    let mut groups: Vec<Vec<usize>> = upper_sets.values().cloned().collect();
    groups.extend(
        (0..u.len())
            .filter(|&j| {
                let lower_linked = m.upper[j].1.is_some_and(|i| l[i].is_hardlinked());
                u[j].kind == Kind::File && !u[j].is_hardlinked() && lower_linked
            })
            .map(|j| vec![j]),
    );
    for group in groups {
        let upper_paths = linked_paths(u, &upper_sets, group[0]);
        let changed = group.iter().any(|&j| match m.upper[j] {
            (State::Same, Some(i)) => linked_paths(l, &lower_sets, i) != upper_paths,
            _ => true,
        });
        if changed {
            for &j in &group {
                if m.upper[j].0 == State::Same {
                    m.upper[j].0 = State::Modified;
                }
            }
        }
    }
}

/// The change list, sorted in [`cmp_paths`] order.
fn into_changes(m: Merge, lower: &[Entry], upper: Vec<Entry>) -> Vec<Change> {
    let deleted = m.deleted.iter().map(|&i| Change {
        kind: ChangeKind::Deleted,
        path: lower[i].path.clone(),
        entry: None,
        opaque: false,
    });
    let kept = upper
        .into_iter()
        .zip(m.upper)
        .filter_map(|(e, (state, _))| {
            let kind = match state {
                State::Same => return None,
                State::Added => ChangeKind::Added,
                State::Modified | State::MtimeOnly => ChangeKind::Modified,
            };
            Some(Change {
                kind,
                path: e.path.clone(),
                entry: Some(e),
                opaque: false,
            })
        });
    let mut changes: Vec<Change> = deleted.chain(kept).collect();
    changes.par_sort_unstable_by(|a, b| cmp_paths(&a.path, &b.path));
    changes
}

// ---------------------------------------------------------------------------------------------
// Overlay upper directory

/// True when overlayfs recorded the entry relative to somewhere else (see [`diff_overlay`]).
fn needs_merged_view(e: &Entry) -> bool {
    whiteout::overlay_redirect(e).is_some() || whiteout::is_overlay_metacopy(e)
}

/// Open each lower directory (top first) for lookups.
fn open_lowers(lowers: &[PathBuf]) -> Result<Vec<(OwnedFd, &Path)>> {
    lowers
        .iter()
        .map(|p| Ok((walk::open_root(p)?, p.as_path())))
        .collect()
}

/// True when `rel` exists in one of `lowers`, found without following any symlink: a path
/// below a symlink in a lower is not there (overlayfs does not merge a symlink with a directory).
fn in_lowers(lowers: &[(OwnedFd, &Path)], rel: &[u8]) -> Result<bool> {
    // O_PATH|O_NOFOLLOW opens a final symlink itself; NO_SYMLINKS refuses one anywhere else.
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
    for (fd, root) in lowers {
        match rustix::fs::openat2(fd, entry::os_path(rel), flags, Mode::empty(), resolve) {
            Ok(_) => return Ok(true),
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {}
            Err(e) => return Err(e).at(root.join(entry::os_path(rel))),
        }
    }
    Ok(false)
}

/// For each upper entry: its change (kind and opaque flag), or `None` to leave it out.
fn classify_upper(
    entries: &[Entry],
    root_marked: bool,
    lowers: &[(OwnedFd, &Path)],
) -> Result<Vec<Option<(ChangeKind, bool)>>> {
    let dirs_where = |pred: fn(&Entry) -> bool| -> HashSet<&[u8]> {
        entries
            .iter()
            .filter(|e| e.kind == Kind::Dir && pred(e))
            .map(|e| e.path.as_slice())
            .collect()
    };
    let mut marked = dirs_where(|e| whiteout::has_xattr_whiteouts(&e.xattrs));
    if root_marked {
        marked.insert(b"");
    }
    let opaque = dirs_where(whiteout::is_overlay_opaque);
    let existed = |e: &Entry| -> Result<bool> {
        if lowers.is_empty() {
            Ok(e.kind == Kind::Dir)
        } else {
            in_lowers(lowers, &e.path)
        }
    };
    entries
        .par_iter()
        .map(|e| {
            if whiteout::is_overlay_whiteout(e, marked.contains(entry::parent(&e.path))) {
                let hidden = below_any(&e.path, &opaque);
                return Ok((!hidden).then_some((ChangeKind::Deleted, false)));
            }
            if e.kind == Kind::Socket {
                let hides = !lowers.is_empty() && in_lowers(lowers, &e.path)?;
                return Ok(hides.then_some((ChangeKind::Deleted, false)));
            }
            let kind = if existed(e)? {
                ChangeKind::Modified
            } else {
                ChangeKind::Added
            };
            Ok(Some((kind, whiteout::is_overlay_opaque(e))))
        })
        .collect()
}

/// True when a proper ancestor of `path` is in `dirs`.
fn below_any(path: &[u8], dirs: &HashSet<&[u8]>) -> bool {
    let mut p = entry::parent(path);
    while !p.is_empty() {
        if dirs.contains(p) {
            return true;
        }
        p = entry::parent(p);
    }
    false
}

/// The [`diff_overlay`] fallback for a redirect or metacopy upper: diff the lowers against the
/// merged tree the kernel builds. `moved` is the first entry that required it.
fn diff_through_merged_view(
    upper: &Path,
    lowers: &[PathBuf],
    moved: &Entry,
    opts: &DiffOptions,
) -> Result<Vec<Change>> {
    let key = if whiteout::overlay_redirect(moved).is_some() {
        "redirect"
    } else {
        "metacopy"
    };
    let fail = |why: &str| Error::Overlay {
        path: upper.join(entry::os_path(&moved.path)),
        reason: format!(
            "has an overlay {key} xattr: upper directory was written with redirect_dir/metacopy; \
             {why}"
        ),
    };
    if lowers.is_empty() {
        return Err(fail(
            "give its lower directories so the change can be computed from the merged tree",
        ));
    }
    if whiteout::overlay_xattr_is_user(moved, key.as_bytes()) {
        // Overlayfs refuses redirect_dir and metacopy together with userxattr.
        return Err(fail(
            "it is a user.overlay.* xattr, which overlayfs never follows, so the merged tree \
             cannot be built",
        ));
    }
    let mount_failed = |e: std::io::Error| {
        fail(&format!(
            "mounting the merged tree read-only to compute the change failed: {e}"
        ))
    };
    let layers: Vec<&Path> = std::iter::once(upper)
        .chain(lowers.iter().map(PathBuf::as_path))
        .collect();
    let merged = mount_overlay_ro(&layers).map_err(mount_failed)?;
    let lower_view = match lowers {
        [only] => walk::open_root(only)?,
        _ => mount_overlay_ro(&layers[1..]).map_err(mount_failed)?,
    };
    // Errors inside the views name the paths the caller gave.
    let lower = Tree {
        fd: lower_view.as_fd(),
        path: &lowers[0],
    };
    let merged_tree = Tree {
        fd: merged.as_fd(),
        path: upper,
    };
    diff_trees(lower, merged_tree, opts)
}

/// A read-only overlay of `layers` (top first), with redirects and metacopy followed.
///
/// The mount is never attached to the filesystem tree: it is reachable only through the
/// returned descriptor and goes away when that is closed, so it is "unmounted" on every way out
/// of the caller, errors and panics included, and nobody else ever sees it. `lowerdir+` (one
/// layer per call, Linux 6.8) takes each path as is: no `:`/`,` escaping to get wrong.
fn mount_overlay_ro(layers: &[&Path]) -> std::io::Result<OwnedFd> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, fsconfig_set_string};
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    let fs_ref = &fs;
    let failed = |step: String| move |e| with_fs_log(fs_ref, &step, e);
    for layer in layers {
        fsconfig_set_string(&fs, "lowerdir+", *layer)
            .map_err(failed(format!("lower layer {}", layer.display())))?;
    }
    let options = || -> rustix::io::Result<()> {
        fsconfig_set_string(&fs, "redirect_dir", "follow")?;
        fsconfig_set_string(&fs, "metacopy", "on")?;
        rustix::mount::fsconfig_create(&fs)
    };
    options().map_err(failed(
        "overlay options redirect_dir=follow,metacopy=on".into(),
    ))?;
    let attrs = MountAttrFlags::MOUNT_ATTR_RDONLY;
    rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(failed("fsmount".into()))
}

/// An error from the mount API, with the step that failed and the messages the kernel logged on
/// the fs context (often the only explanation of a bare EINVAL).
fn with_fs_log(fs: &OwnedFd, step: &str, errno: Errno) -> std::io::Error {
    let mut log = Vec::new();
    let mut buf = [0u8; 512];
    // Each read returns one message; a few are plenty and the log is bounded by the kernel.
    for _ in 0..8 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => log.push(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
            _ => break,
        }
    }
    let errno = std::io::Error::from(errno);
    let kernel_says = log.iter().map(|m| format!(" ({m})")).collect::<String>();
    std::io::Error::new(errno.kind(), format!("{step}: {errno}{kernel_says}"))
}

/// Every object of the tree at `upper` as an added change: the layer of a whole root filesystem.
pub fn full_tree(upper: &Path) -> Result<Vec<Change>> {
    Ok(crate::walk::walk(upper)?
        .into_iter()
        .map(|e| Change {
            kind: ChangeKind::Added,
            path: e.path.clone(),
            entry: Some(e),
            opaque: false,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, lchown, symlink};
    use std::path::Path;

    use super::*;
    use crate::walk::testutil::*;

    /// The mtime every test tree is frozen at, so trees written at different moments compare.
    const T0: (i64, u32) = (1_600_000_000, 500);

    /// Set the mtime of everything under `root` (not following symlinks) to [`T0`].
    fn freeze(root: &Path) {
        for entry in std::fs::read_dir(root).unwrap() {
            let path = entry.unwrap().path();
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                freeze(&path);
            }
            set_mtime(&path, T0.0, T0.1);
        }
    }

    fn summary(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| format!("{} {}", c.kind.letter(), String::from_utf8_lossy(&c.path)))
            .collect()
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Two trees built by the same function, then `change` applied to the upper; both frozen.
    fn pair(
        build: impl Fn(&Path),
        change: impl FnOnce(&Path),
    ) -> (tempfile::TempDir, tempfile::TempDir) {
        let (lower, upper) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        build(lower.path());
        build(upper.path());
        change(upper.path());
        freeze(lower.path());
        freeze(upper.path());
        (lower, upper)
    }

    fn diff(lower: &Path, upper: &Path) -> Vec<String> {
        summary(&diff_dirs(lower, upper, &DiffOptions::default()).unwrap())
    }

    fn base(r: &Path) {
        write(&r.join("a/f1"), b"one");
        write(&r.join("a/f2"), b"two");
        write(&r.join("d/sub/x"), b"x");
        write(&r.join("d/y"), b"y");
        write(&r.join("keep"), b"keep");
        symlink("a/f1", r.join("link")).unwrap();
    }

    #[test]
    fn added_modified_deleted() {
        let (l, u) = pair(base, |r| {
            write(&r.join("a/f1"), b"one!");
            std::fs::remove_file(r.join("a/f2")).unwrap();
            write(&r.join("a/f3"), b"three");
            std::fs::remove_dir_all(r.join("d")).unwrap();
        });
        assert_eq!(
            diff(l.path(), u.path()),
            ["C a/f1", "D a/f2", "A a/f3", "D d"]
        );
        let changes = diff_dirs(l.path(), u.path(), &DiffOptions::default()).unwrap();
        let f1 = changes[0].entry.as_ref().unwrap();
        assert_eq!((f1.path.as_slice(), f1.size), (&b"a/f1"[..], 4));
        assert!(changes[1].entry.is_none() && changes.iter().all(|c| !c.opaque));
        // The reverse diff mirrors it.
        assert_eq!(
            diff(u.path(), l.path()),
            [
                "C a/f1",
                "A a/f2",
                "D a/f3",
                "A d",
                "A d/sub",
                "A d/sub/x",
                "A d/y"
            ]
        );
    }

    #[test]
    fn identical_trees_diff_empty() {
        let (l, u) = pair(base, |_| {});
        assert_eq!(diff(l.path(), u.path()), Vec::<String>::new());
    }

    #[test]
    fn copies_written_in_other_orders_diff_empty() {
        let names: Vec<String> = (0..30).map(|i| format!("dir{}/file{}", i % 4, i)).collect();
        let build = |r: &Path, order: &mut dyn Iterator<Item = &String>| {
            for n in order {
                write(&r.join(n), n.as_bytes());
            }
            // Hardlinks and symlinks made in a different order too, to other inodes.
            std::fs::hard_link(r.join("dir1/file1"), r.join("dir2/hl")).unwrap();
            symlink("../dir0/file0", r.join("dir3/sl")).unwrap();
            set_xattr(&r.join("dir0/file0"), "user.tag", b"v");
            freeze(r);
        };
        let (l, u) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        build(l.path(), &mut names.iter());
        build(u.path(), &mut names.iter().rev());
        assert_eq!(diff(l.path(), u.path()), Vec::<String>::new());
        assert_eq!(diff(u.path(), l.path()), Vec::<String>::new());
    }

    #[test]
    fn mode_bits_are_compared() {
        let (l, u) = pair(base, |r| {
            chmod(&r.join("keep"), 0o4755);
            chmod(&r.join("d"), 0o1777);
            chmod(&r.join("a/f2"), 0o2644);
        });
        let changes = diff_dirs(l.path(), u.path(), &DiffOptions::default()).unwrap();
        assert_eq!(summary(&changes), ["C a/f2", "C d", "C keep"]);
        let modes: Vec<u32> = changes
            .iter()
            .map(|c| c.entry.as_ref().unwrap().mode)
            .collect();
        assert_eq!(modes, [0o2644, 0o1777, 0o4755]);
    }

    #[test]
    fn owner_is_compared() {
        if !is_root("owner_is_compared") {
            return;
        }
        let (l, u) = pair(base, |r| {
            lchown(r.join("keep"), Some(1000), None).unwrap();
            lchown(r.join("link"), None, Some(1000)).unwrap();
        });
        assert_eq!(diff(l.path(), u.path()), ["C keep", "C link"]);
    }

    #[test]
    fn mtime_only_change_and_content_mode() {
        let (l, u) = pair(base, |r| write(&r.join("a/f2"), b"TWO"));
        // a/f2: same size, different bytes. keep: same bytes, only the mtime differs.
        set_mtime(&u.path().join("a/f2"), T0.0 + 1, 0);
        set_mtime(&u.path().join("keep"), T0.0, T0.1 + 1);
        assert_eq!(diff(l.path(), u.path()), ["C a/f2", "C keep"]);
        let content = DiffOptions { content: true };
        assert_eq!(
            summary(&diff_dirs(l.path(), u.path(), &content).unwrap()),
            ["C a/f2"]
        );
        // Same size and mtime but other bytes: not seen (contents are only read to clear a touch).
        let (l, u) = pair(base, |r| write(&r.join("a/f2"), b"TWO"));
        assert_eq!(
            summary(&diff_dirs(l.path(), u.path(), &content).unwrap()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn xattrs_are_compared_except_overlay_ones() {
        let probe = tempfile::tempdir().unwrap();
        write(&probe.path().join("p"), b"");
        if !set_xattr(&probe.path().join("p"), "user.probe", b"1") {
            return;
        }
        let (l, u) = pair(base, |r| {
            set_xattr(&r.join("keep"), "user.new", b"1");
            set_xattr(&r.join("a"), "user.overlay.origin", b"ignored");
        });
        let changes = diff_dirs(l.path(), u.path(), &DiffOptions::default()).unwrap();
        assert_eq!(summary(&changes), ["C keep"]);
        assert_eq!(
            changes[0].entry.as_ref().unwrap().xattrs,
            [(b"user.new".to_vec(), b"1".to_vec())]
        );
    }

    #[test]
    fn symlink_retarget() {
        // Same target length, so only the target itself differs.
        let (l, u) = pair(base, |r| {
            std::fs::remove_file(r.join("link")).unwrap();
            symlink("a/f2", r.join("link")).unwrap();
        });
        let changes = diff_dirs(l.path(), u.path(), &DiffOptions::default()).unwrap();
        assert_eq!(summary(&changes), ["C link"]);
        assert_eq!(changes[0].entry.as_ref().unwrap().link_target, b"a/f2");
    }

    #[test]
    fn kind_changes() {
        let (l, u) = pair(base, |r| {
            // file -> dir with children
            std::fs::remove_file(r.join("keep")).unwrap();
            write(&r.join("keep/inner/c"), b"c");
            // dir -> file (its lower subtree is implied gone)
            std::fs::remove_dir_all(r.join("d")).unwrap();
            write(&r.join("d"), b"now a file");
            // symlink -> file, file -> symlink
            std::fs::remove_file(r.join("link")).unwrap();
            write(&r.join("link"), b"a/f1");
            std::fs::remove_file(r.join("a/f1")).unwrap();
            symlink("f2", r.join("a/f1")).unwrap();
        });
        let changes = diff_dirs(l.path(), u.path(), &DiffOptions::default()).unwrap();
        assert_eq!(
            summary(&changes),
            [
                "C a/f1",
                "C d",
                "C keep",
                "A keep/inner",
                "A keep/inner/c",
                "C link"
            ]
        );
        let kinds: Vec<Kind> = changes
            .iter()
            .map(|c| c.entry.as_ref().unwrap().kind)
            .collect();
        assert_eq!(
            kinds,
            [
                Kind::Symlink,
                Kind::File,
                Kind::Dir,
                Kind::Dir,
                Kind::File,
                Kind::File
            ]
        );
        assert!(changes.iter().all(|c| !c.opaque));
    }

    #[test]
    fn deleted_directory_is_one_change() {
        let (l, u) = pair(base, |r| std::fs::remove_dir_all(r.join("a")).unwrap());
        assert_eq!(diff(l.path(), u.path()), ["D a"]);
    }

    #[test]
    fn emptied_directory_lists_each_child() {
        let (l, u) = pair(base, |r| {
            std::fs::remove_dir_all(r.join("d")).unwrap();
            std::fs::create_dir(r.join("d")).unwrap();
        });
        assert_eq!(diff(l.path(), u.path()), ["D d/sub", "D d/y"]);
    }

    #[test]
    fn hardlink_structure_is_compared() {
        let separate = |r: &Path| {
            write(&r.join("p"), b"same");
            write(&r.join("q"), b"same");
            write(&r.join("other"), b"o");
        };
        let link = |r: &Path| {
            std::fs::remove_file(r.join("q")).unwrap();
            std::fs::hard_link(r.join("p"), r.join("q")).unwrap();
        };
        // Linked in the upper only, and the other way round: both paths listed.
        let (l, u) = pair(separate, link);
        assert_eq!(diff(l.path(), u.path()), ["C p", "C q"]);
        assert_eq!(diff(u.path(), l.path()), ["C p", "C q"]);
        // Same structure on both sides: nothing.
        let (l, u) = pair(
            |r: &Path| {
                separate(r);
                link(r)
            },
            |_| {},
        );
        assert_eq!(diff(l.path(), u.path()), Vec::<String>::new());
        // A new link to an unchanged file: the file is listed with it.
        let (l, u) = pair(separate, |r| {
            std::fs::hard_link(r.join("other"), r.join("new")).unwrap()
        });
        assert_eq!(diff(l.path(), u.path()), ["A new", "C other"]);
        // One member modified: every member listed.
        let (l, u) = pair(
            |r: &Path| {
                separate(r);
                link(r)
            },
            |r| chmod(&r.join("q"), 0o600),
        );
        assert_eq!(diff(l.path(), u.path()), ["C p", "C q"]);
    }

    #[test]
    fn sockets_are_absent() {
        let (l, u) = pair(base, |r| {
            std::fs::remove_file(r.join("keep")).unwrap();
            std::os::unix::net::UnixListener::bind(r.join("keep")).unwrap();
            std::os::unix::net::UnixListener::bind(r.join("sock")).unwrap();
        });
        assert_eq!(diff(l.path(), u.path()), ["D keep"]);
    }

    #[test]
    fn roots_must_be_directories() {
        let t = tempfile::tempdir().unwrap();
        write(&t.path().join("f"), b"");
        let err = diff_dirs(t.path(), &t.path().join("f"), &DiffOptions::default()).unwrap_err();
        assert!(
            matches!(err, Error::Io { ref path, .. } if path == &t.path().join("f")),
            "{err}"
        );
    }

    // -----------------------------------------------------------------------------------------
    // Overlay upper directories

    /// An overlay mounted for a test: `upper` and `merged` under one temp dir; unmounted on drop.
    struct Overlay {
        _dir: tempfile::TempDir,
        upper: PathBuf,
        merged: PathBuf,
        mounted: bool,
    }

    impl Overlay {
        fn mount(lowers: &[&Path], options: &str) -> Overlay {
            let dir = tempfile::tempdir().unwrap();
            let [upper, work, merged] = ["upper", "work", "merged"].map(|n| dir.path().join(n));
            for d in [&upper, &work, &merged] {
                std::fs::create_dir(d).unwrap();
            }
            let lowerdir: Vec<_> = lowers.iter().map(|l| l.display().to_string()).collect();
            let data = format!(
                "lowerdir={},upperdir={},workdir={},{options}",
                lowerdir.join(":"),
                upper.display(),
                work.display()
            );
            let data = std::ffi::CString::new(data).unwrap();
            rustix::mount::mount(
                "overlay",
                &merged,
                "overlay",
                rustix::mount::MountFlags::empty(),
                &*data,
            )
            .unwrap_or_else(|e| panic!("mount overlay {data:?}: {e}"));
            Overlay {
                _dir: dir,
                upper,
                merged,
                mounted: true,
            }
        }

        fn unmount(&mut self) {
            rustix::mount::unmount(&self.merged, rustix::mount::UnmountFlags::empty()).unwrap();
            self.mounted = false;
        }
    }

    impl Drop for Overlay {
        fn drop(&mut self) {
            if self.mounted {
                // Best effort: a failed test must not leave the mount behind.
                let _ = rustix::mount::unmount(&self.merged, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }

    fn overlay_diff(upper: &Path, lowers: &[&Path]) -> Result<Vec<Change>> {
        let lowers: Vec<PathBuf> = lowers.iter().map(|l| l.to_path_buf()).collect();
        diff_overlay(upper, &lowers, &DiffOptions::default())
    }

    fn opaque_paths(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .filter(|c| c.opaque)
            .map(|c| String::from_utf8_lossy(&c.path).into_owned())
            .collect()
    }

    fn no_overlay_xattrs(changes: &[Change]) -> bool {
        changes
            .iter()
            .flat_map(|c| &c.entry)
            .all(|e| e.xattrs.iter().all(|(n, _)| !whiteout::is_overlay_xattr(n)))
    }

    fn mknod_whiteout(path: &Path) {
        let (kind, mode) = (
            rustix::fs::FileType::CharacterDevice,
            Mode::from_raw_mode(0o000),
        );
        rustix::fs::mknodat(rustix::fs::CWD, path, kind, mode, rustix::fs::makedev(0, 0)).unwrap();
    }

    #[test]
    fn real_overlay_changes() {
        if !is_root("real_overlay_changes") {
            return;
        }
        let lower = tempfile::tempdir().unwrap();
        let l = lower.path();
        for f in ["a/f1", "a/f2", "b/dir/x", "c/old", "keep", "ren/src"] {
            write(&l.join(f), f.as_bytes());
        }
        let mut ovl = Overlay::mount(&[l], "redirect_dir=nofollow,metacopy=off,index=off");
        let m = ovl.merged.clone();
        write(&m.join("new"), b"new");
        write(&m.join("a/f1"), b"changed");
        std::fs::remove_file(m.join("a/f2")).unwrap();
        std::fs::remove_dir_all(m.join("b/dir")).unwrap();
        std::fs::remove_dir_all(m.join("c")).unwrap();
        std::fs::create_dir(m.join("c")).unwrap();
        write(&m.join("c/n"), b"n");
        std::fs::rename(m.join("ren/src"), m.join("ren/dst")).unwrap();
        ovl.unmount();

        let with_lower = overlay_diff(&ovl.upper, &[l]).unwrap();
        assert_eq!(
            summary(&with_lower),
            [
                "C a",
                "C a/f1",
                "D a/f2",
                "C b",
                "D b/dir",
                "C c",
                "A c/n",
                "A new",
                "C ren",
                "A ren/dst",
                "D ren/src"
            ]
        );
        assert_eq!(opaque_paths(&with_lower), ["c"]);
        assert!(no_overlay_xattrs(&with_lower));
        let f1 = with_lower[1].entry.as_ref().unwrap();
        assert_eq!((f1.kind, f1.size), (Kind::File, 7));

        // Without lowers: directories C, everything else A.
        let alone = overlay_diff(&ovl.upper, &[]).unwrap();
        assert_eq!(
            summary(&alone),
            [
                "C a",
                "A a/f1",
                "D a/f2",
                "C b",
                "D b/dir",
                "C c",
                "A c/n",
                "A new",
                "C ren",
                "A ren/dst",
                "D ren/src"
            ]
        );
        assert_eq!(opaque_paths(&alone), ["c"]);
    }

    #[test]
    fn hand_made_upper_forms() {
        if !is_root("hand_made_upper_forms") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let u = t.path().join("upper");
        std::fs::create_dir(&u).unwrap();
        // 0/0 whiteouts, two of them sharing one inode as overlayfs does.
        mknod_whiteout(&u.join("gone"));
        std::fs::hard_link(u.join("gone"), u.join("gone2")).unwrap();
        // Opaque directories in both namespaces; a whiteout inside one hides nothing more.
        write(&u.join("o/f"), b"f");
        set_xattr(&u.join("o"), "trusted.overlay.opaque", b"y");
        mknod_whiteout(&u.join("o/w"));
        std::fs::create_dir(u.join("uo")).unwrap();
        set_xattr(&u.join("uo"), "user.overlay.opaque", b"y");
        // xattr whiteouts: only in a directory marked opaque=x (which is not opaque), the root too.
        write(&u.join("x/f"), b"f");
        write(&u.join("x/w"), b"");
        set_xattr(&u.join("x/w"), "trusted.overlay.whiteout", b"");
        set_xattr(&u.join("x"), "trusted.overlay.opaque", b"x");
        write(&u.join("plain/w"), b"");
        set_xattr(&u.join("plain/w"), "trusted.overlay.whiteout", b"");
        write(&u.join("rw"), b"");
        set_xattr(&u.join("rw"), "trusted.overlay.whiteout", b"");
        set_xattr(&u, "trusted.overlay.opaque", b"x");
        // A hardlink set: every member is in the upper.
        write(&u.join("h1"), b"h");
        std::fs::hard_link(u.join("h1"), u.join("h2")).unwrap();

        let alone = overlay_diff(&u, &[]).unwrap();
        assert_eq!(
            summary(&alone),
            [
                "D gone",
                "D gone2",
                "A h1",
                "A h2",
                "C o",
                "A o/f",
                "C plain",
                "A plain/w",
                "D rw",
                "C uo",
                "C x",
                "A x/f",
                "D x/w"
            ]
        );
        assert_eq!(opaque_paths(&alone), ["o", "uo"]);
        assert!(no_overlay_xattrs(&alone));

        // With a lower: letters follow existence there; a path below a lower symlink is not there.
        let lower = tempfile::tempdir().unwrap();
        write(&lower.path().join("o/old"), b"");
        write(&lower.path().join("h1"), b"");
        std::fs::create_dir(lower.path().join("elsewhere")).unwrap();
        symlink("elsewhere", lower.path().join("x")).unwrap();
        write(&lower.path().join("elsewhere/f"), b"");
        let with_lower = overlay_diff(&u, &[lower.path()]).unwrap();
        assert_eq!(
            summary(&with_lower),
            [
                "D gone",
                "D gone2",
                "C h1",
                "A h2",
                "C o",
                "A o/f",
                "A plain",
                "A plain/w",
                "D rw",
                "A uo",
                "C x",
                "A x/f",
                "D x/w"
            ]
        );
    }

    #[test]
    fn redirect_without_lowers_is_refused() {
        if !is_root("redirect_without_lowers_is_refused") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("moved")).unwrap();
        set_xattr(
            &t.path().join("moved"),
            "trusted.overlay.redirect",
            b"/orig",
        );
        match overlay_diff(t.path(), &[]) {
            Err(Error::Overlay { path, reason }) => {
                assert_eq!(path, t.path().join("moved"));
                assert!(reason.contains("give its lower directories"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // user.overlay.* redirects are never followed by the kernel: refused even with lowers.
        let u = tempfile::tempdir().unwrap();
        std::fs::create_dir(u.path().join("moved")).unwrap();
        set_xattr(&u.path().join("moved"), "user.overlay.redirect", b"/orig");
        let err = overlay_diff(u.path(), &[t.path()]).unwrap_err();
        assert!(
            matches!(&err, Error::Overlay { reason, .. } if reason.contains("user.overlay")),
            "{err}"
        );
        // A merged tree that cannot be mounted: refused, with the kernel's reason.
        let missing = t.path().join("missing");
        let err = overlay_diff(t.path(), &[&missing]).unwrap_err();
        eprintln!("{err}");
        assert!(
            matches!(&err, Error::Overlay { reason, .. } if reason.contains("mounting")),
            "{err}"
        );
    }

    /// A lower tree with a directory to rename.
    fn lower_with_dir(r: &Path) {
        write(&r.join("olddir/f1"), b"1");
        write(&r.join("olddir/sub/f2"), b"2");
        write(&r.join("other/keep"), b"k");
    }

    #[test]
    fn redirect_falls_back_to_merged_tree() {
        if !is_root("redirect_falls_back_to_merged_tree") {
            return;
        }
        let lower = tempfile::tempdir().unwrap();
        lower_with_dir(lower.path());
        let mut ovl = Overlay::mount(&[lower.path()], "redirect_dir=on,index=off");
        std::fs::rename(ovl.merged.join("olddir"), ovl.merged.join("newdir")).unwrap();
        ovl.unmount();
        let moved = crate::walk::walk(&ovl.upper).unwrap();
        assert!(
            moved
                .iter()
                .any(|e| whiteout::overlay_redirect(e).is_some()),
            "no redirect written"
        );

        let want = [
            "A newdir",
            "A newdir/f1",
            "A newdir/sub",
            "A newdir/sub/f2",
            "D olddir",
        ];
        let changes = overlay_diff(&ovl.upper, &[lower.path()]).unwrap();
        assert_eq!(summary(&changes), want);
        assert!(no_overlay_xattrs(&changes));
        assert_eq!(changes[3].entry.as_ref().unwrap().size, 1);
        assert!(matches!(
            overlay_diff(&ovl.upper, &[]),
            Err(Error::Overlay { .. })
        ));
    }

    #[test]
    fn redirect_fallback_with_two_lowers() {
        if !is_root("redirect_fallback_with_two_lowers") {
            return;
        }
        let (top, bottom) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        lower_with_dir(bottom.path());
        write(&top.path().join("olddir/from_top"), b"t");
        let mut ovl = Overlay::mount(&[top.path(), bottom.path()], "redirect_dir=on,index=off");
        std::fs::rename(ovl.merged.join("olddir"), ovl.merged.join("newdir")).unwrap();
        ovl.unmount();
        let changes = overlay_diff(&ovl.upper, &[top.path(), bottom.path()]).unwrap();
        assert_eq!(
            summary(&changes),
            [
                "A newdir",
                "A newdir/f1",
                "A newdir/from_top",
                "A newdir/sub",
                "A newdir/sub/f2",
                "D olddir"
            ]
        );
    }

    #[test]
    fn metacopy_falls_back_to_merged_tree() {
        if !is_root("metacopy_falls_back_to_merged_tree") {
            return;
        }
        let lower = tempfile::tempdir().unwrap();
        write(&lower.path().join("data"), b"0123456789");
        freeze(lower.path());
        let mut ovl = Overlay::mount(&[lower.path()], "redirect_dir=on,metacopy=on,index=off");
        chmod(&ovl.merged.join("data"), 0o600);
        ovl.unmount();
        let upper = crate::walk::walk(&ovl.upper).unwrap();
        assert!(
            upper.iter().any(whiteout::is_overlay_metacopy),
            "no metacopy written"
        );

        let changes = overlay_diff(&ovl.upper, &[lower.path()]).unwrap();
        assert_eq!(summary(&changes), ["C data"]);
        let e = changes[0].entry.as_ref().unwrap();
        assert_eq!((e.mode, e.size), (0o600, 10));
        match overlay_diff(&ovl.upper, &[]) {
            Err(Error::Overlay { path, reason }) => {
                assert_eq!(path, ovl.upper.join("data"));
                assert!(reason.contains("metacopy"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
