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
use std::sync::Arc;

use rayon::prelude::*;
use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::cancel::{Cancel, NEVER};
use crate::entry::{self, Entry, Kind, cmp_paths};
use crate::error::{Error, IoContext, Result};
use crate::lower::Lowers;
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
    /// Compare regular-file contents (blake3) when the rest matches but the mtime may differ:
    /// a touched but identical file is not reported, a rewritten one of the same size and
    /// mtime is.
    pub content: bool,
    /// Checked between directories and between files hashed: once set, the diff stops with
    /// [`Error::Interrupted`].
    pub cancel: Option<Arc<Cancel>>,
}

impl DiffOptions {
    fn cancel(&self) -> &Cancel {
        self.cancel.as_deref().unwrap_or(&NEVER)
    }
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
/// - With [`DiffOptions::content`], a regular file that differs at most in mtime is compared by
///   blake3 of its contents: left out when equal, a change when not (also with the same size
///   and mtime). Without it, contents are never read: a file rewritten with the same size,
///   mtime and metadata is not seen (as in `docker diff`).
/// - Hardlinks: when any member of an upper hardlink set is added or modified, or the set's
///   members differ from the lower's (compared as path sets, never inode numbers), every member
///   of the set is listed, so the layer can express the link.
/// - Unix sockets are changes like any other entry (as in `docker diff`); a layer leaves them
///   out with a warning, and whites out what a socket replaced.
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
    diff_trees(lower, upper, opts, &HashSet::new())
}

/// Changes recorded by an overlayfs upper directory, in [`crate::entry::cmp_paths`] order.
/// `lowers` (top first) are used to tell added from modified and as the fallback when the upper
/// dir was written with `redirect_dir` or `metacopy`.
///
/// - A whiteout (0/0 character device, or a zero-size file with `overlay.whiteout`, in any
///   directory: see [`whiteout::is_overlay_whiteout`]) is [`ChangeKind::Deleted`]. Whiteouts below an
///   opaque directory hide nothing the opaque marker does not, and are left out.
/// - An opaque directory (`overlay.opaque=y`) has [`Change::opaque`] set.
/// - Every other entry is [`ChangeKind::Modified`] when its path exists in one of `lowers`
///   (looked up without following any symlink: a path below a symlink in a lower does not
///   exist there), [`ChangeKind::Added`] otherwise. With no `lowers` nothing can be looked up:
///   directories are `Modified` (in an upper dir they are usually parents created by copy-up)
///   and everything else `Added`. The layer is the same either way; only the letter differs.
/// - A Unix socket is a change like any other entry; a layer leaves it out with a warning, and
///   whites out the lower path it hides.
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
///
/// A file copied up as one name of a lower hard-link set with `index=on` (its
/// `overlay.nlink` xattr says so) changed its other names too, which the upper dir does not
/// record: that is an [`Error::Overlay`] as well, unless `lowers` show the file had one name.
///
/// A layer of these changes must read its files from the same merged tree: use
/// [`diff_overlay_view`], which keeps it.
pub fn diff_overlay(upper: &Path, lowers: &[PathBuf], opts: &DiffOptions) -> Result<Vec<Change>> {
    Ok(diff_overlay_view(upper, lowers, opts)?.changes)
}

/// Whether this process can read `trusted.*` xattrs, which takes `CAP_SYS_ADMIN` in the
/// initial user namespace: a user namespace's root cannot, and the kernel then lists none and
/// reads each as absent.
fn reads_trusted_xattrs() -> bool {
    use rustix::thread::{CapabilitySet, capabilities};
    let admin = capabilities(None).is_ok_and(|c| c.effective.contains(CapabilitySet::SYS_ADMIN));
    // The initial namespace maps every id to itself; without /proc, assume it.
    let initial = std::fs::read_to_string("/proc/self/uid_map").map_or(true, |map| {
        map.split_whitespace().eq(["0", "0", "4294967295"])
    });
    admin && initial
}

/// The changes of an overlayfs upper directory and the tree their contents are in.
#[derive(Debug)]
pub struct OverlayDiff {
    /// As [`diff_overlay`] gives them.
    pub changes: Vec<Change>,
    /// The read-only merged mount the changes were computed from, when the upper dir was
    /// written with `redirect_dir` or `metacopy`: a metacopy file in the upper dir has no data
    /// and a renamed directory's files are still in a lower, so a layer's file contents must
    /// be read from here. `None`: the upper dir itself holds them. The mount lives as long as
    /// this descriptor.
    pub view: Option<OwnedFd>,
}

/// [`diff_overlay`], with the tree the changes' contents are to be read from.
pub fn diff_overlay_view(
    upper: &Path,
    lowers: &[PathBuf],
    opts: &DiffOptions,
) -> Result<OverlayDiff> {
    let upper_fd = walk::open_root(upper)?;
    let mut entries = walk::walk_fd(upper_fd.as_fd(), upper, opts.cancel())?;
    let root_xattrs = walk::entry_xattrs(upper_fd.as_fd(), c".").at(upper)?;
    if !whiteout::shows_user_overlay_xattrs(&entries, &root_xattrs) && !reads_trusted_xattrs() {
        return Err(Error::Overlay {
            path: upper.to_path_buf(),
            reason: "shows no user.overlay.* xattr of a rootless (userxattr) overlay mount, \
                     and without privilege the trusted.overlay.* ones a mount by root writes \
                     cannot be read: its opaque directories, renamed directories and \
                     metadata-only copies would go unseen; read it as root"
                .into(),
        });
    }
    whiteout::keep_one_overlay_namespace(&mut entries, &root_xattrs);
    check_indexed_links(upper, &entries, lowers)?;
    if let Some(moved) = entries.iter().find(|e| needs_merged_view(e)) {
        let (changes, merged) = diff_through_merged_view(upper, lowers, &entries, moved, opts)?;
        return Ok(OverlayDiff {
            changes,
            view: Some(merged),
        });
    }
    let lowers = Lowers::open(lowers)?;
    let decisions = classify_upper(&entries, &lowers)?;
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
    Ok(OverlayDiff {
        changes,
        view: None,
    })
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
    /// A regular file equal in every attribute: content mode decides, where the caller may read
    /// it (else its metadata does, as without content mode).
    SameMeta,
}

/// The result of merging the two sorted entry lists.
struct Merge {
    /// For each upper entry (same index): its state and the lower entry at its path.
    upper: Vec<(State, Option<usize>)>,
    /// Lower entries gone from the upper tree (not their descendants).
    deleted: Vec<usize>,
}

/// `written` are paths of regular files known to have been written in `upper` whatever their
/// metadata says: their content decides (with `opts.content`; else they are changed).
fn diff_trees(
    lower: Tree<'_>,
    upper: Tree<'_>,
    opts: &DiffOptions,
    written: &HashSet<&[u8]>,
) -> Result<Vec<Change>> {
    crate::parallel::in_pool(|| diff_trees_in_pool(lower, upper, opts, written))
}

fn diff_trees_in_pool(
    lower: Tree<'_>,
    upper: Tree<'_>,
    opts: &DiffOptions,
    written: &HashSet<&[u8]>,
) -> Result<Vec<Change>> {
    let cancel = opts.cancel();
    let (l, u) = rayon::join(
        || walk_for_diff(lower, cancel),
        || walk_for_diff(upper, cancel),
    );
    let (l, u) = (l?, u?);
    let mut merge = merge(&l, &u);
    for ((state, _), e) in merge.upper.iter_mut().zip(&u) {
        if *state == State::Same && e.kind == Kind::File && written.contains(e.path.as_slice()) {
            *state = State::MtimeOnly;
        }
    }
    if opts.content {
        // Contents decide for every regular file on both sides with the same metadata too: one
        // rewritten with its size and mtime kept (a tree whose mtimes are all normalised, as
        // reproducible builds leave them) is a change all the same.
        for ((state, _), e) in merge.upper.iter_mut().zip(&u) {
            if *state == State::Same && e.kind == Kind::File {
                *state = State::SameMeta;
            }
        }
        settle_by_content(&mut merge, &l, &u, (lower, upper), cancel)?;
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

/// Walk one side, without overlayfs' xattrs.
fn walk_for_diff(tree: Tree<'_>, cancel: &Cancel) -> Result<Vec<Entry>> {
    let mut entries = walk::walk_fd(tree.fd, tree.path, cancel)?;
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
    (lower, upper): (Tree<'_>, Tree<'_>),
    cancel: &Cancel,
) -> Result<()> {
    let todo: Vec<(usize, usize)> = m
        .upper
        .iter()
        .enumerate()
        .filter_map(|(j, &(state, i))| {
            matches!(state, State::MtimeOnly | State::SameMeta).then_some((j, i?))
        })
        .collect();
    let equal: Vec<bool> = todo
        .par_iter()
        .map(|&(j, i)| {
            let hashed =
                (|| Ok(hash_file(lower, &l[i], cancel)? == hash_file(upper, &u[j], cancel)?))();
            match hashed {
                // Unreadable to the caller (a file of mode 0000 in a tree not its own): its
                // attributes, all equal, decide, as they do without content mode.
                Err(Error::Io { ref source, .. })
                    if m.upper[j].0 == State::SameMeta
                        && matches!(source.raw_os_error(), Some(libc::EACCES | libc::EPERM)) =>
                {
                    Ok(true)
                }
                other => other,
            }
        })
        .collect::<Result<_>>()?;
    for (&(j, _), equal) in todo.iter().zip(equal) {
        m.upper[j].0 = if equal { State::Same } else { State::Modified };
    }
    Ok(())
}

/// blake3 of a regular file of `tree`, opened beneath its root without following any symlink;
/// `cancel` is checked between chunks.
fn hash_file(tree: Tree<'_>, e: &Entry, cancel: &Cancel) -> Result<blake3::Hash> {
    use std::io::Read;
    let path = tree.full_path(&e.path);
    // NONBLOCK: should the file have been swapped for a FIFO meanwhile, do not hang on it.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = walk::open_beneath(tree.fd, &e.path, flags).at(&path)?;
    let mut file = std::fs::File::from(fd);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0; HASH_CHUNK];
    let mut found = 0u64;
    loop {
        cancel.check()?;
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).at(&path),
        };
        hasher.update(&buf[..n]);
        found += n as u64;
    }
    if found != e.size {
        return Err(Error::FileChanged {
            path,
            expected: e.size,
            found,
        });
    }
    Ok(hasher.finalize())
}

/// Bytes read per step while hashing a file.
const HASH_CHUNK: usize = 256 << 10;

/// The (dev, ino) of every hardlinked entry, with its members (indices, in path order).
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
    // Sets to look at: every upper set, plus entries linked in the lower but not in the upper
    // (their membership changed too).
    let mut groups: Vec<Vec<usize>> = upper_sets.values().cloned().collect();
    groups.extend(
        (0..u.len())
            .filter(|&j| {
                let lower_linked = m.upper[j].1.is_some_and(|i| l[i].is_hardlinked());
                u[j].kind != Kind::Dir && !u[j].is_hardlinked() && lower_linked
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
                State::Same | State::SameMeta => return None,
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

/// Refuse an upper dir that does not record all of a change: with `index=on` a write to one name
/// of a lower hard-link set changes every name in the merged tree, but only the name written
/// is copied up (with an `overlay.nlink` xattr). The other names' change is recorded nowhere in
/// the upper dir, nor seen by a merged mount built without the index. A file whose lower
/// counterpart has a single name is fine; without `lowers` that cannot be told.
fn check_indexed_links(upper: &Path, entries: &[Entry], lowers: &[PathBuf]) -> Result<()> {
    if !entries.iter().any(whiteout::is_overlay_indexed_link) {
        return Ok(());
    }
    let lowers = Lowers::open(lowers)?;
    for e in entries
        .iter()
        .filter(|e| whiteout::is_overlay_indexed_link(e))
    {
        // Only the lower file it was copied up from tells: the one at its path may be another
        // (it was renamed, maybe over that one).
        let why = match lowers.find(&e.path)? {
            None if lowers.is_empty() => "give its lower directories to check it".to_string(),
            None => "its lower file is not at its path: it was renamed, or linked to by a new name"
                .to_string(),
            Some((f, _)) if !is_origin(&f, e) => "the lower file at its path is another: it was \
                 renamed, or linked to by a new name"
                .to_string(),
            Some((f, root)) => match rustix::fs::fstat(&f)
                .at(root.join(entry::os_path(&e.path)))?
                .st_nlink
            {
                1 => continue,
                n => format!("its lower file has {n} names"),
            },
        };
        return Err(Error::Overlay {
            path: upper.join(entry::os_path(&e.path)),
            reason: format!(
                "is a copied-up hard link (overlay.nlink xattr): the upper directory was written \
                 with index=on, so a change to it also changed its other names in the lower \
                 directories, which the upper directory does not record ({why}); mount with \
                 index=off to commit an upper directory, as docker and podman do, or commit the \
                 mounted merged directory against its lower (--lower LOWER --upper MERGED)"
            ),
        });
    }
    Ok(())
}

/// True when `file` (open `O_PATH`) is the lower file the upper entry `e` was copied up from:
/// its file handle is the one `e`'s `overlay.origin` records.
fn is_origin(file: &OwnedFd, e: &Entry) -> bool {
    use std::os::fd::AsRawFd;
    let Some((kind, handle)) = whiteout::overlay_origin(e) else {
        return false;
    };
    /// `struct file_handle` with room for the largest handle (`MAX_HANDLE_SZ`).
    #[repr(C)]
    struct FileHandle {
        bytes: u32,
        kind: i32,
        data: [u8; 128],
    }
    let mut fh = FileHandle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `fh` is a `struct file_handle` whose `handle_bytes` is the room after its header,
    // and the path is a NUL-terminated empty string naming `file` itself (AT_EMPTY_PATH).
    let rc = unsafe {
        libc::name_to_handle_at(
            file.as_raw_fd(),
            c"".as_ptr(),
            (&raw mut fh).cast::<libc::file_handle>(),
            &raw mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    let len = usize::try_from(fh.bytes).unwrap_or(usize::MAX);
    rc == 0 && fh.kind == i32::from(kind) && fh.data.get(..len) == Some(handle)
}

/// For each upper entry: its change (kind and opaque flag), or `None` to leave it out.
fn classify_upper(
    entries: &[Entry],
    lowers: &Lowers<'_>,
) -> Result<Vec<Option<(ChangeKind, bool)>>> {
    let dirs_where = |pred: fn(&Entry) -> bool| -> HashSet<&[u8]> {
        entries
            .iter()
            .filter(|e| e.kind == Kind::Dir && pred(e))
            .map(|e| e.path.as_slice())
            .collect()
    };
    let opaque = dirs_where(whiteout::is_overlay_opaque);
    let existed = |e: &Entry| -> Result<bool> {
        if lowers.is_empty() {
            // Without the lowers, a socket (never stored) is taken to replace something: its
            // whiteout hides that, and is harmless where there was nothing.
            Ok(matches!(e.kind, Kind::Dir | Kind::Socket))
        } else {
            lowers.contains(&e.path)
        }
    };
    crate::parallel::in_pool(|| {
        entries
            .par_iter()
            .map(|e| {
                if whiteout::is_overlay_whiteout(e) {
                    let hidden = below_any(&e.path, &opaque);
                    return Ok((!hidden).then_some((ChangeKind::Deleted, false)));
                }
                let kind = if existed(e)? {
                    ChangeKind::Modified
                } else {
                    ChangeKind::Added
                };
                Ok(Some((kind, whiteout::is_overlay_opaque(e))))
            })
            .collect()
    })
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
/// merged tree the kernel builds, which is returned with the changes. `entries` are the upper
/// dir's, `moved` the first of them that required it. A file the upper dir holds whole was
/// written (or copied up) in the merged tree: equal metadata does not prove it unchanged
/// (`cp -p`, `tar x` and `rsync -t` restore the mtime), so its content decides.
fn diff_through_merged_view(
    upper: &Path,
    lowers: &[PathBuf],
    entries: &[Entry],
    moved: &Entry,
    opts: &DiffOptions,
) -> Result<(Vec<Change>, OwnedFd)> {
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
    let written: HashSet<&[u8]> = entries
        .iter()
        .filter(|e| {
            e.kind == Kind::File
                && !whiteout::is_overlay_metacopy(e)
                && !whiteout::is_overlay_whiteout(e)
        })
        .map(|e| e.path.as_slice())
        .collect();
    let changes = diff_trees(lower, merged_tree, opts, &written)?;
    Ok((changes, merged))
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
/// Once `cancel` is set the walk stops with [`Error::Interrupted`].
pub fn full_tree(upper: &Path, cancel: &Cancel) -> Result<Vec<Change>> {
    let fd = walk::open_root(upper)?;
    Ok(walk::walk_fd(fd.as_fd(), upper, cancel)?
        .into_iter()
        .map(|e| Change {
            kind: ChangeKind::Added,
            path: e.path.clone(),
            entry: Some(e),
            opaque: false,
        })
        .collect())
}

/// `changes` with every directory above a change that is not a change itself, as
/// [`ChangeKind::Modified`] with its entry read from `tree` (the diff's upper tree, found at
/// `tree_path`).
///
/// A layer holds these directories, as docker's do: whatever applies a layer into a directory
/// of its own (an overlayfs layer, as docker, containerd and our layer cache keep them) would
/// otherwise make them up, and their made-up mode and owner would hide the lower ones' in the
/// merged tree (`/tmp`'s 1777 turned 0755 by a file changed in it).
pub fn with_parent_dirs(
    tree: BorrowedFd<'_>,
    tree_path: &Path,
    changes: Vec<Change>,
) -> Result<Vec<Change>> {
    let missing: Vec<Vec<u8>> = {
        let listed: HashSet<&[u8]> = changes.iter().map(|c| c.path.as_slice()).collect();
        let mut missing: HashSet<&[u8]> = HashSet::new();
        for c in &changes {
            let mut p = entry::parent(&c.path);
            while !p.is_empty() && !listed.contains(p) && missing.insert(p) {
                p = entry::parent(p);
            }
        }
        missing.into_iter().map(<[u8]>::to_vec).collect()
    };
    if missing.is_empty() {
        return Ok(changes);
    }
    let mut all = changes;
    for p in missing {
        let full = || tree_path.join(entry::os_path(&p));
        let Some(entry) = walk::entry_at(tree, &p).at(full())? else {
            // Vanished since the diff.
            return Err(Error::io(
                full(),
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ));
        };
        all.push(Change {
            kind: ChangeKind::Modified,
            path: p,
            entry: Some(entry),
            opaque: false,
        });
    }
    all.sort_by(|a, b| cmp_paths(&a.path, &b.path));
    Ok(all)
}

/// `changes` without those at the paths `exclude` names (with or without a leading `/`), and
/// without anything below them: the files a container runtime manages, which never belong in
/// a commit, or the image layout a commit writes into when it is inside the tree.
pub fn without_paths(changes: Vec<Change>, exclude: &[String]) -> Vec<Change> {
    if exclude.is_empty() {
        return changes;
    }
    let skip: Vec<&[u8]> = exclude
        .iter()
        .map(|p| p.trim_matches('/').as_bytes())
        .collect();
    let skipped = |path: &[u8]| {
        skip.iter()
            .any(|s| path.starts_with(s) && (path.len() == s.len() || path[s.len()] == b'/'))
    };
    changes.into_iter().filter(|c| !skipped(&c.path)).collect()
}

/// `changes` with the owner `(uid, gid)` recorded as root: a rootless container's files
/// belong to the caller on disk but to root inside the container, and the layer records them
/// as the container sees them.
pub fn with_root_owner(mut changes: Vec<Change>, ids: Option<(u32, u32)>) -> Vec<Change> {
    let Some((uid, gid)) = ids else {
        return changes;
    };
    for entry in changes.iter_mut().filter_map(|c| c.entry.as_mut()) {
        if entry.uid == uid {
            entry.uid = 0;
        }
        if entry.gid == gid {
            entry.gid = 0;
        }
    }
    changes
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
