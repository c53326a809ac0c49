//! Squash: N layers into one, by reading their tar headers — nothing is extracted to disk.
//!
//! The layers are folded over a map of path → record with the rules of apply (last writer
//! wins; a directory over a directory keeps its children; anything else replaces the path and
//! its subtree; whiteouts and opaque markers remove what lies below them in earlier layers only).
//! The paths of the layers *below* the squashed range are tracked too, so that a whiteout
//! survives only where it still hides something there. Regular-file contents are referred to by
//! (layer, offset of the content in its tar) and streamed from the source layers when the result is written;
//! hardlinks resolve to the content they pointed at when they were made.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

use crate::apply::clean_path;
use crate::cancel::Cancel;
use crate::compress::{Compression, resolve_threads};
use crate::decompress::{
    BackgroundReader, MemberSeen, SeenMembers, decompress, decompress_in_background,
    read_past_archive, with_decompressed_seen,
};
use crate::entry::{Timestamp, base_name, cmp_paths, join, parent};
use crate::error::{Error, IoContext, Result};
use crate::layer::{LayerInfo, LayerOptions, Pipeline, write_blob_file};
use crate::members::{MemberIndex, Taken};
use crate::squash_index::{self, LayerIndex};
use crate::tar::reader::{EntryKind, Header, TarReader};
use crate::tar::writer::{Meta, TarWriter};
use crate::whiteout::{Due, LayerName, Pending, aufs_link_source, classify_layer_name};

/// A path key ordered component by component ([`cmp_paths`]), so a subtree is one range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(pub Vec<u8>);

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_paths(&self.0, &other.0)
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What a squashed layer holds at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Directory.
    Dir,
    /// Regular file whose bytes start at `offset` of the uncompressed tar of layer `layer`
    /// (0 = first squashed). The pair is also the file's identity for hardlinks.
    File {
        /// Index of the source layer within the squashed range.
        layer: usize,
        /// Offset of the content in the layer's uncompressed tar stream.
        offset: u64,
        /// Content size.
        size: u64,
    },
    /// Hardlink to a path that lies below the squashed range.
    LinkToLower(Vec<u8>),
    /// Symbolic link.
    Symlink(Vec<u8>),
    /// Named pipe.
    Fifo,
    /// Character device (major, minor).
    Char(u32, u32),
    /// Block device (major, minor).
    Block(u32, u32),
}

/// One path of the squashed layer with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What it is.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, u32),
    /// Extended attributes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The hardlink set of a symlink, FIFO or device that a layer of the range linked: the
    /// records of one set are one inode, written once and linked at its other paths. (A
    /// regular file's identity is its content.) Given by the fold, never read from a layer.
    pub link_set: Option<u64>,
}

/// One member of a layer as the fold sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Whiteout of a path.
    Whiteout(Vec<u8>),
    /// The lower children of a directory are hidden.
    Opaque(Vec<u8>),
    /// An entry; hardlinks carry their target.
    Put(Vec<u8>, Record),
    /// Hardlink: path, target, metadata.
    Link(Vec<u8>, Vec<u8>),
}

/// The squash result before it is written: records in path order plus the markers needed to
/// hide what lies below the squashed range.
#[derive(Debug, Default)]
pub struct Squashed {
    /// Final records.
    pub records: BTreeMap<Key, Record>,
    /// Paths to write a whiteout for.
    pub whiteouts: Vec<Vec<u8>>,
    /// Directories to write an opaque marker in.
    pub opaque: Vec<Vec<u8>>,
}

/// What the layers below the range leave at a path, as far as the fold needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LowerNode {
    /// A directory.
    Dir,
    /// A symbolic link, with its target: paths through it lead elsewhere.
    Symlink(Vec<u8>),
    /// Anything else.
    Other,
}

/// Paths (and what each is) of the tree the layers below the range make.
#[derive(Debug, Default)]
pub struct LowerTree(BTreeMap<Key, LowerNode>, Links);

/// Every path a symbolic link was put at, in the lower tree or the range, still there or not:
/// a path none of whose parents is in it needs no resolving (most paths, and cheaply told).
#[derive(Debug, Default, Clone)]
struct Links(HashSet<Vec<u8>>);

impl Links {
    /// Whether a parent of `p` may be a symbolic link.
    fn below_one(&self, p: &[u8]) -> bool {
        !self.0.is_empty()
            && p.iter()
                .enumerate()
                .any(|(i, &b)| b == b'/' && self.0.contains(&p[..i]))
    }

    /// `p` with the symbolic links among its parents followed ([`resolve_parents`]), `tree`
    /// telling what is at a path; as it is when none of its parents ever was one.
    fn resolve(&self, p: &[u8], tree: &impl PathKinds, walk: Walk) -> Result<Resolved> {
        if !self.below_one(p) {
            return Ok(Resolved {
                path: p.to_vec(),
                ..Resolved::default()
            });
        }
        resolve_parents(p, tree, walk)
    }

    /// The directory `d` with every symbolic link on its path followed, itself included: where
    /// an opaque marker `d/.wh..wh..opq` takes effect.
    fn resolve_dir(&self, d: &[u8], tree: &impl PathKinds) -> Result<Resolved> {
        if d.is_empty() {
            return Ok(Resolved::default());
        }
        let mut marker = self.resolve(&join(d, b".wh..wh..opq"), tree, Walk::Lookup)?;
        marker.path.truncate(parent(&marker.path).len());
        Ok(marker)
    }
}

/// How a path is walked: to find what is there, or to make an entry there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// A whiteout's, an opaque marker's or a hardlink target's: the walk stops at the first
    /// directory on the way that is not there (or is not a directory), as the kernel's does.
    Lookup,
    /// An entry's: apply makes the directories on the way that are not there.
    Make,
}

/// What a tree holds at a path, as [`resolve_parents`] needs to know it.
trait PathKinds {
    /// The target of the symbolic link at `p`, if one is there.
    fn symlink(&self, p: &[u8]) -> Option<Vec<u8>>;
    /// Whether `p` is a directory; `None` when nothing is there.
    fn is_dir(&self, p: &[u8]) -> Option<bool>;
}

impl PathKinds for BTreeMap<Key, LowerNode> {
    fn symlink(&self, p: &[u8]) -> Option<Vec<u8>> {
        match self.get(&Key(p.to_vec())) {
            Some(LowerNode::Symlink(t)) => Some(t.clone()),
            _ => None,
        }
    }

    fn is_dir(&self, p: &[u8]) -> Option<bool> {
        self.get(&Key(p.to_vec())).map(|n| *n == LowerNode::Dir)
    }
}

impl PathKinds for Folder {
    fn symlink(&self, p: &[u8]) -> Option<Vec<u8>> {
        Folder::symlink(self, p)
    }

    fn is_dir(&self, p: &[u8]) -> Option<bool> {
        match self.merged.get(&Key(p.to_vec())) {
            Some(r) => Some(r.kind == Kind::Dir),
            None if self.lower_visible(p) => self.lower.is_dir(p),
            None => None,
        }
    }
}

/// The error of an entry whose path walks through something that is not a directory.
fn not_a_directory(p: &[u8]) -> Error {
    Error::Archive {
        entry: String::from_utf8_lossy(p).into_owned(),
        reason: "Not a directory".into(),
    }
}

/// A path with the symbolic links among its parents followed, and what the walk met on the
/// way besides: `..` in a link's target steps back out of a directory, which must be there, as
/// the kernel's lookup has it.
#[derive(Debug, Default)]
struct Resolved {
    path: Vec<u8>,
    /// Directories `..` stepped out of that do not exist: apply makes them for an entry, and a
    /// whiteout through them finds nothing.
    missing: Vec<Vec<u8>>,
    /// `..` stepped out of something that is not a directory: `ENOTDIR`.
    through_file: bool,
}

impl Resolved {
    /// Whether a lookup (not making anything) reaches the path.
    fn reachable(&self) -> bool {
        self.missing.is_empty() && !self.through_file
    }
}

/// Most symbolic links followed while resolving one path (the kernel's limit, ELOOP).
const MAX_SYMLINK_HOPS: usize = 40;

/// `path` with every symbolic link among its parents followed inside the root, as apply finds
/// it (`openat2` with `RESOLVE_IN_ROOT`): an absolute target starts at the root and `..` stops
/// there. The last component is not followed. `link` gives the target of the symbolic link at
/// a resolved path, if there is one there.
fn resolve_parents(path: &[u8], tree: &impl PathKinds, walk: Walk) -> Result<Resolved> {
    let split =
        |p: &[u8]| -> Vec<Vec<u8>> { p.split(|&b| b == b'/').map(<[u8]>::to_vec).collect() };
    let mut todo: std::collections::VecDeque<Vec<u8>> = split(path).into();
    let mut out = Resolved::default();
    let mut done: Vec<u8> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        if todo.is_empty() {
            out.path = join(&done, &c);
            return Ok(out);
        }
        match c.as_slice() {
            b"" | b"." => continue,
            b".." => {
                if !done.is_empty() {
                    match tree.is_dir(&done) {
                        Some(true) => {}
                        Some(false) => out.through_file = true,
                        None => out.missing.push(done.clone()),
                    }
                    if walk == Walk::Lookup && !out.reachable() {
                        return Ok(out);
                    }
                }
                done.truncate(parent(&done).len());
                continue;
            }
            _ => {}
        }
        let next = join(&done, &c);
        let Some(target) = tree.symlink(&next) else {
            if walk == Walk::Lookup {
                match tree.is_dir(&next) {
                    Some(true) => {}
                    Some(false) => out.through_file = true,
                    None => out.missing.push(next.clone()),
                }
                if !out.reachable() {
                    return Ok(out);
                }
            }
            done = next;
            continue;
        };
        hops += 1;
        if hops > MAX_SYMLINK_HOPS {
            return Err(Error::Archive {
                entry: String::from_utf8_lossy(path).into_owned(),
                reason: format!("more than {MAX_SYMLINK_HOPS} symbolic links in the path"),
            });
        }
        if target.starts_with(b"/") {
            done.clear();
        }
        for comp in split(&target).into_iter().rev() {
            todo.push_front(comp);
        }
    }
    out.path = done;
    Ok(out)
}

/// Record `p` and its parents as written by the layer (what its whiteouts spare).
fn mark_written(created: &mut HashSet<Vec<u8>>, p: &[u8]) {
    let mut q = p;
    while !q.is_empty() && created.insert(q.to_vec()) {
        q = parent(q);
    }
}

fn subtree<V>(map: &BTreeMap<Key, V>, path: &[u8]) -> Vec<Key> {
    let start = Key(path.to_vec());
    map.range(start..)
        .take_while(|(k, _)| {
            k.0 == path
                || k.0.starts_with(path) && k.0.get(path.len()) == Some(&b'/')
                || path.is_empty()
        })
        .map(|(k, _)| k.clone())
        .collect()
}

fn children_only<V>(map: &BTreeMap<Key, V>, path: &[u8]) -> Vec<Key> {
    subtree(map, path)
        .into_iter()
        .filter(|k| k.0 != path)
        .collect()
}

/// What a layer's `op` needs carried out first: nothing for a whiteout or an opaque marker,
/// which waits in `pending`; for an entry, what was read before it on its way (see
/// [`Pending::due`]); one that is no directory drops those below its path
/// ([`Pending::drop_replaced`]).
fn due_before(pending: &mut Pending, op: &Op) -> Vec<Due> {
    match op {
        Op::Whiteout(p) => {
            pending.whiteout(p);
            Vec::new()
        }
        Op::Opaque(d) => {
            pending.opaque(d);
            Vec::new()
        }
        Op::Put(p, rec) if rec.kind == Kind::Dir => pending.due(parent(p)),
        Op::Put(p, _) | Op::Link(p, _) => {
            let due = pending.due(parent(p));
            pending.drop_replaced(p);
            due
        }
    }
}

impl LowerTree {
    /// Fold one layer's operations into the tree (apply semantics, paths only).
    pub fn apply(&mut self, ops: &[Op]) -> Result<()> {
        let mut created = HashSet::new();
        let mut pending = Pending::default();
        for op in ops {
            for due in due_before(&mut pending, op) {
                self.hide(&due, &created)?;
            }
            let (p, node) = match op {
                Op::Put(p, r) => (
                    p,
                    match &r.kind {
                        Kind::Dir => LowerNode::Dir,
                        Kind::Symlink(t) => LowerNode::Symlink(t.clone()),
                        _ => LowerNode::Other,
                    },
                ),
                Op::Link(p, target) => {
                    // A hardlink to a symbolic link is one too: paths through it follow it.
                    let target = self.1.resolve(target, &self.0, Walk::Lookup)?.path;
                    match self.0.get(&Key(target)) {
                        Some(LowerNode::Symlink(t)) => (p, LowerNode::Symlink(t.clone())),
                        _ => (p, LowerNode::Other),
                    }
                }
                _ => continue,
            };
            let resolved = self.1.resolve(p, &self.0, Walk::Make)?;
            if resolved.through_file {
                return Err(not_a_directory(p));
            }
            for dir in &resolved.missing {
                let std::collections::btree_map::Entry::Vacant(e) = self.0.entry(Key(dir.clone()))
                else {
                    continue;
                };
                e.insert(LowerNode::Dir);
                mark_with_parents(&mut self.0, &mut created, dir);
            }
            let p = resolved.path;
            if let LowerNode::Symlink(_) = node {
                self.1.0.insert(p.clone());
            }
            let key = Key(p.clone());
            if !(node == LowerNode::Dir && self.0.get(&key) == Some(&LowerNode::Dir)) {
                for k in subtree(&self.0, &p) {
                    self.0.remove(&k);
                }
            }
            self.0.insert(key, node);
            mark_with_parents(&mut self.0, &mut created, &p);
        }
        // As apply carries them out: those no entry went below, at the end ([`Pending::rest`]).
        for due in pending.rest() {
            self.hide(&due, &created)?;
        }
        Ok(())
    }

    /// Carry out a whiteout or an opaque marker of the layer that wrote `created`.
    fn hide(&mut self, due: &Due, created: &HashSet<Vec<u8>>) -> Result<()> {
        let (resolved, all) = match due {
            Due::Whiteout(p) => (self.1.resolve(p, &self.0, Walk::Lookup)?, true),
            Due::Opaque(d) => (self.1.resolve_dir(d, &self.0)?, false),
        };
        if !resolved.reachable() {
            return Ok(()); // the lookup fails: nothing is hidden
        }
        let doomed = if all {
            subtree(&self.0, &resolved.path)
        } else {
            children_only(&self.0, &resolved.path)
        };
        for k in doomed {
            if !created.contains(&k.0) {
                self.0.remove(&k);
            }
        }
        Ok(())
    }

    fn symlink(&self, p: &[u8]) -> Option<Vec<u8>> {
        self.0.symlink(p)
    }

    fn is_dir(&self, p: &[u8]) -> Option<bool> {
        PathKinds::is_dir(&self.0, p)
    }

    fn has_children(&self, p: &[u8]) -> bool {
        !children_only(&self.0, p).is_empty()
    }
}

/// Record `p` and its missing parents (implied directories) as written by this layer.
fn mark_with_parents(
    tree: &mut BTreeMap<Key, LowerNode>,
    created: &mut HashSet<Vec<u8>>,
    p: &[u8],
) {
    created.insert(p.to_vec());
    let mut q = parent(p);
    while !q.is_empty() {
        let key = Key(q.to_vec());
        // A parent this layer wrote that is still there has its own parents marked and there
        // too (a path leaves the tree only with its subtree): most entries stop at once.
        if tree.contains_key(&key) && created.contains(q) {
            break;
        }
        tree.entry(key).or_insert(LowerNode::Dir);
        created.insert(q.to_vec());
        q = parent(q);
    }
}

/// The fold over the squashed range.
#[derive(Debug, Default)]
pub struct Folder {
    lower: LowerTree,
    merged: BTreeMap<Key, Record>,
    /// Lower paths hidden by the range (each hides its subtree).
    killed: HashSet<Vec<u8>>,
    /// Where symbolic links were put, below the range (taken from the lower tree) and in it.
    links: Links,
    /// Hardlink sets of records other than files made so far ([`Record::link_set`]).
    link_sets: u64,
    /// A directory none of whose ancestors, nor itself, is anything but a directory (or
    /// absent), as [`Self::put`] last checked: the next entry in it is not checked again.
    checked: Vec<u8>,
}

/// Metadata of a directory the layer implied but did not hold (apply makes it 0755, root).
fn implied_dir() -> Record {
    Record {
        kind: Kind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: (0, 0),
        xattrs: Vec::new(),
        link_set: None,
    }
}

impl Folder {
    /// Start from the tree of the layers below the range.
    pub fn new(mut lower: LowerTree) -> Self {
        Folder {
            links: std::mem::take(&mut lower.1),
            lower,
            ..Folder::default()
        }
    }

    /// Is `p` of the lower tree still visible (neither it nor an ancestor hidden)?
    fn lower_visible(&self, p: &[u8]) -> bool {
        if self.lower.is_dir(p).is_none() {
            return false;
        }
        if self.killed.is_empty() {
            return true;
        }
        let mut q = p;
        loop {
            if self.killed.contains(q) {
                return false;
            }
            if q.is_empty() {
                return true;
            }
            q = parent(q);
        }
    }

    fn kill(&mut self, p: &[u8]) {
        if self.lower_visible(p) {
            self.killed.insert(p.to_vec());
        }
    }

    /// Put `rec` at `p`. A parent there that is not a directory is an error, as apply finds it
    /// (`ENOTDIR`): the symbolic links among the parents are already followed.
    fn put(&mut self, p: &[u8], rec: Record, created: &mut HashSet<Vec<u8>>) -> Result<()> {
        let dir = parent(p);
        if self.checked != dir {
            // What `dir` shares with the directory checked last was checked with it.
            let shared = crate::entry::common_dir(&self.checked, dir).len();
            let mut q = dir;
            while q.len() > shared {
                if self.is_dir(q) == Some(false) {
                    return Err(not_a_directory(p));
                }
                q = parent(q);
            }
            self.checked = dir.to_vec();
        }
        let on_checked_way = self.checked.starts_with(p)
            && (self.checked.len() == p.len() || self.checked[p.len()] == b'/');
        if rec.kind != Kind::Dir && on_checked_way {
            self.checked.clear(); // not a directory any more: checked again next time
        }
        let key = Key(p.to_vec());
        let existing_dir = match self.merged.get(&key) {
            Some(r) => r.kind == Kind::Dir,
            None => self.lower_visible(p) && self.lower.is_dir(p) == Some(true),
        };
        if !(existing_dir && rec.kind == Kind::Dir) {
            for k in subtree(&self.merged, p) {
                self.merged.remove(&k);
            }
            self.kill(p);
        }
        self.merged.insert(key, rec);
        created.insert(p.to_vec());
        let mut q = parent(p);
        while !q.is_empty() {
            let qk = Key(q.to_vec());
            let present = self.merged.contains_key(&qk) || self.lower_visible(q);
            // Made by an earlier entry of this layer and still there: so are its parents (a
            // path leaves only with its subtree, or is hidden only with it).
            if present && created.contains(q) {
                break;
            }
            created.insert(q.to_vec());
            if !present {
                self.merged.insert(qk, implied_dir());
            }
            q = parent(q);
        }
        Ok(())
    }

    /// The target of the symbolic link at `p` in the tree so far (range over lower), if any.
    fn symlink(&self, p: &[u8]) -> Option<Vec<u8>> {
        match self.merged.get(&Key(p.to_vec())) {
            Some(rec) => self.record_symlink(rec),
            None if self.lower_visible(p) => self.lower.symlink(p),
            None => None,
        }
    }

    /// `p` with the symbolic links among its parents followed, as apply would find it now.
    fn resolve(&self, p: &[u8], walk: Walk) -> Result<Resolved> {
        self.links.resolve(p, self, walk)
    }

    /// Where an entry at `p` goes, as apply makes it: the directories its way steps out of with
    /// `..` that are not there are made, and one that is not a directory is an error.
    fn resolve_for_entry(&mut self, p: &[u8], created: &mut HashSet<Vec<u8>>) -> Result<Vec<u8>> {
        let resolved = self.resolve(p, Walk::Make)?;
        if resolved.through_file {
            return Err(not_a_directory(p));
        }
        // A link's target may lead under a whiteout's name, which would be written as a
        // directory: apply refuses to make one.
        let dirs = parent(&resolved.path);
        if dirs
            .split(|&b| b == b'/')
            .any(crate::whiteout::is_reserved_name)
        {
            return Err(Error::Archive {
                entry: String::from_utf8_lossy(p).into_owned(),
                reason: crate::root::WHITEOUT_DIR.into(),
            });
        }
        for dir in resolved.missing {
            if self.is_dir(&dir).is_none() {
                self.put(&dir, implied_dir(), created)?;
            }
        }
        Ok(resolved.path)
    }

    /// Fold one layer of the range. Paths go where apply would put them: through the symbolic
    /// links among their parents (the range's own, or the lower tree's).
    pub fn layer(&mut self, ops: &[Op]) -> Result<()> {
        let mut created = HashSet::new();
        let mut pending = Pending::default();
        for op in ops {
            for due in due_before(&mut pending, op) {
                self.carry_out(&due, &created)?;
            }
            match op {
                Op::Put(p, rec) => {
                    let p = self.resolve_for_entry(p, &mut created)?;
                    if let Kind::Symlink(_) = rec.kind {
                        self.links.0.insert(p.clone());
                    }
                    self.put(&p, rec.clone(), &mut created)?;
                }
                Op::Link(p, target) => {
                    let p = self.resolve_for_entry(p, &mut created)?;
                    let refused = |reason: String| Error::Archive {
                        entry: String::from_utf8_lossy(&p).into_owned(),
                        reason,
                    };
                    let target = match self.resolve(target, Walk::Lookup)? {
                        t if t.through_file => {
                            return Err(refused(format!(
                                "hardlink target {}: Not a directory",
                                String::from_utf8_lossy(target)
                            )));
                        }
                        t if !t.missing.is_empty() => {
                            return Err(refused(format!(
                                "hardlink target {}: No such file or directory",
                                String::from_utf8_lossy(target)
                            )));
                        }
                        t => t.path,
                    };
                    if target.len() > p.len() && target.starts_with(&p) && target[p.len()] == b'/' {
                        // Made in place of what holds its target, which goes first.
                        return Err(refused(format!(
                            "hardlink target {}: No such file or directory",
                            String::from_utf8_lossy(&target)
                        )));
                    }
                    match self.is_dir(&target) {
                        None => {
                            return Err(refused(format!(
                                "hardlink target {} does not exist",
                                String::from_utf8_lossy(&target)
                            )));
                        }
                        Some(true) => return Err(refused("hardlink to a directory".into())),
                        Some(false) => {}
                    }
                    if p == target {
                        mark_written(&mut created, &p); // a link to itself: as it is
                        continue;
                    }
                    let rec = match self.merged.get_mut(&Key(target.clone())) {
                        Some(r) => {
                            // A file is identified by its content, a link into the lower
                            // tree by its target; anything else by the set it now starts.
                            let other = matches!(
                                r.kind,
                                Kind::Symlink(_) | Kind::Fifo | Kind::Char(..) | Kind::Block(..)
                            );
                            if other && r.link_set.is_none() {
                                r.link_set = Some(self.link_sets);
                                self.link_sets += 1;
                            }
                            r.clone()
                        }
                        // Not written in the range: the link stays a link into the lower tree.
                        None => Record {
                            kind: Kind::LinkToLower(target),
                            ..implied_dir()
                        },
                    };
                    // A hardlink to a symbolic link is one too: paths through it follow it.
                    if self.record_symlink(&rec).is_some() {
                        self.links.0.insert(p.clone());
                    }
                    self.put(&p, rec, &mut created)?;
                }
                _ => {}
            }
        }
        // As apply carries them out: those no entry went below, at the end ([`Pending::rest`]).
        for due in pending.rest() {
            self.carry_out(&due, &created)?;
        }
        Ok(())
    }

    /// Carry out a whiteout or an opaque marker of the layer that wrote `created`.
    fn carry_out(&mut self, due: &Due, created: &HashSet<Vec<u8>>) -> Result<()> {
        match due {
            Due::Whiteout(p) => {
                let p = self.resolve(p, Walk::Lookup)?;
                if p.reachable() {
                    self.hide(&p.path, created);
                }
            }
            Due::Opaque(d) => {
                let d = self.links.resolve_dir(d, self)?;
                if d.reachable() {
                    self.hide_children(&d.path, created);
                }
            }
        }
        Ok(())
    }

    /// Hide `p` as a whiteout of the layer that wrote `created` does: what the layer did not
    /// write goes whole; where it wrote `p` (or below it), only what lies below and is not its
    /// own goes, and only inside a directory (a link is never followed).
    fn hide(&mut self, p: &[u8], created: &HashSet<Vec<u8>>) {
        if !created.contains(p) {
            for k in subtree(&self.merged, p) {
                self.merged.remove(&k);
            }
            self.kill(p);
            return;
        }
        if self.is_dir(p) == Some(true) {
            self.hide_children(p, created);
        }
    }

    /// Hide the children of the directory `d` that the layer did not write (see [`Self::hide`]).
    fn hide_children(&mut self, d: &[u8], created: &HashSet<Vec<u8>>) {
        let mut children: Vec<Vec<u8>> = children_only(&self.merged, d)
            .into_iter()
            .chain(children_only(&self.lower.0, d))
            .map(|k| k.0)
            .filter(|k| parent(k) == d)
            .collect();
        children.sort();
        children.dedup();
        for child in children {
            if self.is_dir(&child).is_some() {
                self.hide(&child, created);
            }
        }
    }

    /// The target of `rec` as a symbolic link: its own, or for a hardlink into the lower tree
    /// the lower link's.
    fn record_symlink(&self, rec: &Record) -> Option<Vec<u8>> {
        match &rec.kind {
            Kind::Symlink(t) => Some(t.clone()),
            Kind::LinkToLower(t) => self.lower.symlink(t),
            _ => None,
        }
    }

    /// The squashed layer: records plus the whiteouts and opaque markers still needed.
    ///
    /// A hardlink made in the range to a file below it that a later layer of the range
    /// replaces or removes is refused: applied in order, the link keeps the old content, which
    /// only the layers below hold; in one layer it would take the new one.
    pub fn finish(self) -> Result<Squashed> {
        for (k, r) in &self.merged {
            if let Kind::LinkToLower(t) = &r.kind
                && (self.merged.contains_key(&Key(t.clone())) || !self.lower_visible(t))
            {
                return Err(Error::InvalidArgument(format!(
                    "cannot squash: {} is a hardlink to {}, which is below the squashed layers \
                     and replaced or removed by a later one of them; squash more layers, down \
                     to the one that holds {}",
                    String::from_utf8_lossy(&k.0),
                    String::from_utf8_lossy(t),
                    String::from_utf8_lossy(t),
                )));
            }
        }
        let mut killed: Vec<&Vec<u8>> = self.killed.iter().collect();
        killed.sort_by(|a, b| cmp_paths(a, b));
        let mut out = Squashed::default();
        for p in killed {
            // A hidden ancestor already hides this path.
            let mut q = p.as_slice();
            let mut covered = false;
            while !q.is_empty() && !covered {
                q = parent(q);
                covered = self.killed.contains(q);
            }
            if covered {
                continue;
            }
            match self.merged.get(&Key(p.clone())) {
                Some(r) if r.kind == Kind::Dir && self.lower.is_dir(p) == Some(true) => {
                    if self.lower.has_children(p) {
                        out.opaque.push(p.clone());
                    }
                }
                Some(_) => {}
                None => out.whiteouts.push(p.clone()),
            }
        }
        out.records = self.merged;
        Ok(out)
    }
}

/// Read the operations of one layer (`layer` is its index in the range, used for content
/// references) without extracting anything: headers are parsed, contents skipped.
fn read_ops_from(stream: &mut dyn Read, layer: usize) -> Result<Vec<Op>> {
    let mut reader = TarReader::new(stream);
    let mut ops = Vec::new();
    let mut header_ops = HeaderOps::default();
    while let Some(h) = reader.next_header()? {
        ops.extend(header_ops.op(h, layer)?);
    }
    Ok(ops)
}

/// The operations of one layer's headers, read in order: [`header_op`], and the hardlinks into
/// the aufs link directory made the records of the files kept there (see `aufs_link_source`):
/// one file, the record's identity, as apply makes it.
#[derive(Default)]
struct HeaderOps {
    /// The regular files of the aufs link directory so far, by name.
    aufs: HashMap<Vec<u8>, Record>,
}

impl HeaderOps {
    /// The operation of the next header of the layer, if any.
    fn op(&mut self, h: Header, layer: usize) -> Result<Option<Op>> {
        if let Some(source) = aufs_link_source(&h.path) {
            if h.kind == EntryKind::File {
                let kind = file_kind(&h, layer);
                self.aufs.insert(source.to_vec(), record(h, kind));
            }
            return Ok(None);
        }
        if h.kind == EntryKind::Hardlink
            && let Some(source) = aufs_link_source(&h.link)
        {
            let Some(kept) = self.aufs.get(source) else {
                return Err(Error::Archive {
                    entry: h.display(),
                    reason: format!(
                        "hardlink target {} is not in the layer before it",
                        String::from_utf8_lossy(&h.link)
                    ),
                });
            };
            // The entry's own name follows the rules of any other (a whiteout name stays one).
            let as_file = Header {
                kind: EntryKind::File,
                ..h
            };
            return Ok(header_op(as_file, layer)?.map(|op| match op {
                Op::Put(path, _) => Op::Put(path, kept.clone()),
                other => other,
            }));
        }
        header_op(h, layer)
    }
}

/// The operation one tar header stands for, if any (the root and aufs metadata stand for none).
pub(crate) fn header_op(h: Header, layer: usize) -> Result<Option<Op>> {
    let name = h.display();
    let path = clean_path(&h.path, &name)?;
    match classify_layer_name(base_name(&path)) {
        LayerName::Plain => {}
        LayerName::Opaque => return Ok(Some(Op::Opaque(parent(&path).to_vec()))),
        LayerName::Whiteout(target) => {
            return Ok(Some(Op::Whiteout(join(parent(&path), target))));
        }
        LayerName::AufsMeta => return Ok(None),
        LayerName::Malformed => {
            return Err(Error::Archive {
                entry: name,
                reason: "malformed whiteout name".into(),
            });
        }
    }
    if path.is_empty() {
        return Ok(None);
    }
    let kind = match h.kind {
        EntryKind::Dir => Kind::Dir,
        EntryKind::File => file_kind(&h, layer),
        EntryKind::Symlink => Kind::Symlink(h.link.clone()),
        EntryKind::Fifo => Kind::Fifo,
        EntryKind::CharDevice => Kind::Char(h.dev_major, h.dev_minor),
        EntryKind::BlockDevice => Kind::Block(h.dev_major, h.dev_minor),
        EntryKind::Hardlink => {
            let target = clean_path(&h.link, &name)?;
            return Ok(Some(Op::Link(path, target)));
        }
    };
    Ok(Some(Op::Put(path, record(h, kind))))
}

/// The content reference of the regular file `h` of layer `layer`.
fn file_kind(h: &Header, layer: usize) -> Kind {
    Kind::File {
        layer,
        offset: h.data_offset,
        size: h.size,
    }
}

/// The record of the entry `h`, as `kind`.
fn record(h: Header, kind: Kind) -> Record {
    Record {
        kind,
        mode: h.mode,
        uid: h.uid,
        gid: h.gid,
        mtime: (h.mtime.sec, h.mtime.nsec),
        xattrs: h.xattrs,
        link_set: None,
    }
}

/// A layer's operations, and the gzip members seen while it was read (when asked for).
type LayerOps = (Vec<Op>, Option<Vec<MemberSeen>>);

/// A file's content read from a source blob, whose read errors name the blob: the writer names
/// the entry being written, and a damaged source is not that entry's fault.
/// It stops, with an error, as soon as `cancel` is set: a large file does not hold off a
/// Ctrl-C.
struct FromBlob<'a, R> {
    inner: R,
    blob: &'a Path,
    cancel: &'a Cancel,
}

/// `e`, a read error of the blob at `blob`, naming it.
fn blob_error(blob: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", blob.display()))
}

impl<R> FromBlob<'_, R> {
    fn stopped(&self) -> io::Result<()> {
        match self.cancel.check() {
            Ok(()) => Ok(()),
            Err(_) => Err(io::Error::other("interrupted")),
        }
    }
}

impl<R: Read> Read for FromBlob<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stopped()?;
        let blob = self.blob;
        self.inner.read(buf).map_err(|e| blob_error(blob, e))
    }
}

impl<R: BufRead> BufRead for FromBlob<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.stopped()?;
        let blob = self.blob;
        self.inner.fill_buf().map_err(|e| blob_error(blob, e))
    }

    fn consume(&mut self, n: usize) {
        self.inner.consume(n);
    }
}

/// `e`, an error about an entry of the layer blob at `path`, saying which blob: with several
/// layers, the entry's name alone does not tell.
fn in_blob(path: &Path, e: Error) -> Error {
    match e {
        Error::Archive { entry, reason } => Error::Archive {
            entry: format!("{}: {entry}", path.display()),
            reason,
        },
        other => other,
    }
}

fn layer_ops(path: &Path, layer: usize, members: bool, cancel: &Cancel) -> Result<LayerOps> {
    cancel.check()?;
    let file = crate::verify::open_blob(path)?;
    let seen = members.then(SeenMembers::default);
    let ops = with_decompressed_seen(file, seen.clone(), |s| read_ops_from(s, layer))
        .map_err(|e| in_blob(path, e))?;
    let seen = seen.map(|s| std::mem::take(&mut *s.lock().expect("not poisoned")));
    Ok((ops, seen))
}

/// Squash the layer blobs `range`, which sit on top of the blobs `lower`, into one layer blob
/// written into `blobs_dir`. Nothing is extracted: headers are read once, contents are streamed
/// from the sources while the result is written.
pub fn squash_files(
    lower: &[PathBuf],
    range: &[PathBuf],
    opts: &LayerOptions,
    blobs_dir: &Path,
    cancel: &Cancel,
) -> Result<LayerInfo> {
    squash_once(lower, range, None, opts, blobs_dir, cancel)
}

/// [`squash_files`], with `indexes[i]` the file of the layer index of `range[i]`
/// ([`crate::squash_index`]). A layer with a usable index is not read for its headers; it is
/// checked against its index while its contents are streamed, and any difference starts the
/// squash over without indexes (the result is the same, only slower). Layers read for their
/// headers get their index written.
pub fn squash_files_indexed(
    lower: &[PathBuf],
    range: &[PathBuf],
    indexes: &[PathBuf],
    opts: &LayerOptions,
    blobs_dir: &Path,
    cancel: &Cancel,
) -> Result<LayerInfo> {
    if indexes.len() != range.len() {
        return Err(Error::InvalidArgument(format!(
            "{} layer indexes for {} layers",
            indexes.len(),
            range.len()
        )));
    }
    match squash_once(lower, range, Some((indexes, true)), opts, blobs_dir, cancel) {
        Err(Error::StaleIndex(path)) => {
            // Written again, from the layer, by the squash that follows.
            let _ = std::fs::remove_file(&path);
            squash_once(
                lower,
                range,
                Some((indexes, false)),
                opts,
                blobs_dir,
                cancel,
            )
        }
        other => other,
    }
}

/// Whether the contents the operations `ops` of range layer `layer` refer to lie in the layer
/// in path order, as the squashed layer is written: only then is the layer read forward, its
/// headers checked against an index as it streams. A file whose content another path already
/// took is a hardlink to it, read once. A layer whose files are not sorted, or whose aufs link
/// files are taken at other paths, is read without an index (once, its contents spooled when
/// asked for out of order) rather than found stale at every squash.
fn contents_in_path_order(ops: &[Op], layer: usize) -> bool {
    // What each path holds at the end of the layer: its last entry.
    let mut last_entry: HashMap<&[u8], Option<u64>> = HashMap::new();
    for op in ops {
        let (p, offset) = match op {
            Op::Put(p, r) => match r.kind {
                Kind::File {
                    layer: l, offset, ..
                } if l == layer => (p, Some(offset)),
                _ => (p, None),
            },
            Op::Link(p, _) => (p, None),
            Op::Whiteout(_) | Op::Opaque(_) => continue,
        };
        last_entry.insert(p.as_slice(), offset);
    }
    let mut files: Vec<(&[u8], u64)> = last_entry
        .into_iter()
        .filter_map(|(p, offset)| Some((p, offset?)))
        .collect();
    files.sort_by(|a, b| cmp_paths(a.0, b.0));
    let mut taken = HashSet::new();
    let mut last = None;
    for (_, offset) in files {
        if taken.insert(offset) {
            if last.is_some_and(|l| offset < l) {
                return false;
            }
            last = Some(offset);
        }
    }
    true
}

/// A source layer read from its index in pass 1, to be checked in pass 2.
struct Claimed {
    /// The operations the index gave, checked against the layer's headers.
    ops: Vec<Op>,
    /// The gzip members the index gave.
    members: Vec<MemberSeen>,
    /// Where the index is, named in errors.
    index: PathBuf,
    /// The layer's number in the member index, if it lent members to it.
    blob: Option<usize>,
}

/// One squash attempt: `indexes` are the index files and whether to use them (else they are
/// only written).
fn squash_once(
    lower: &[PathBuf],
    range: &[PathBuf],
    indexes: Option<(&[PathBuf], bool)>,
    opts: &LayerOptions,
    blobs_dir: &Path,
    cancel: &Cancel,
) -> Result<LayerInfo> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(resolve_threads(opts.threads))
        .thread_name(|i| format!("layerdiff-squash-{i}"))
        .build()
        .map_err(|e| Error::InvalidArgument(format!("squash thread pool: {e}")))?;
    // Runs of entries taken whole from one source layer come out as the same bytes, cut into
    // the same gzip members: those members are taken rather than compressed again. They are
    // indexed (and checked) while the headers are read.
    let mut index = match (opts.compression, &opts.reuse) {
        (Compression::Gzip { level }, None) => Some(MemberIndex::new(level)),
        _ => None,
    };
    let loaded: Vec<Option<LayerIndex>> = match indexes {
        Some((files, true)) => files
            .iter()
            .enumerate()
            .map(|(i, f)| squash_index::load(f, i))
            .collect(),
        _ => range.iter().map(|_| None).collect(),
    };
    // Members are recorded when the result is gzip (to take them) or an index is written.
    let members = index.is_some() || indexes.is_some();
    // Every layer's headers are read at once, one layer per thread (each inflates on a thread
    // of its own as well); the folding that follows is in order and cheap.
    let (lower_ops, range_ops) = pool.install(|| {
        use rayon::prelude::*;
        let lower_ops: Vec<Result<LayerOps>> = lower
            .par_iter()
            .map(|p| layer_ops(p, usize::MAX, false, cancel))
            .collect();
        let range_ops: Vec<Result<Option<LayerOps>>> = range
            .par_iter()
            .zip(&loaded)
            .enumerate()
            .map(|(i, (p, known))| match known {
                Some(_) => Ok(None),
                None => layer_ops(p, i, members, cancel).map(Some),
            })
            .collect();
        (lower_ops, range_ops)
    });
    let mut tree = LowerTree::default();
    for (ops, p) in lower_ops.into_iter().zip(lower) {
        tree.apply(&ops?.0).map_err(|e| in_blob(p, e))?;
    }
    let mut folder = Folder::new(tree);
    let mut claimed: Vec<Option<Claimed>> = Vec::with_capacity(range.len());
    for (i, (read, known)) in range_ops.into_iter().zip(loaded).enumerate() {
        let p = &range[i];
        let (ops, seen, from_index) = match (read?, known) {
            (Some((ops, seen)), _) => {
                if let Some((files, _)) = indexes {
                    let written = LayerIndex {
                        ops,
                        members: seen.clone().unwrap_or_default(),
                    };
                    // A cache: failing to write it only costs the next squash time. An index
                    // that could not be checked while its layer streams is not kept.
                    if contents_in_path_order(&written.ops, i) {
                        let _ = squash_index::store(&files[i], &written);
                    } else {
                        let _ = std::fs::remove_file(&files[i]);
                    }
                    (written.ops, seen, false)
                } else {
                    (ops, seen, false)
                }
            }
            (None, Some(known)) => (known.ops, Some(known.members), true),
            (None, None) => unreachable!("a layer is read unless its index was loaded"),
        };
        folder.layer(&ops).map_err(|e| in_blob(p, e))?;
        let blob = match (index.as_mut(), &seen) {
            (Some(index), Some(seen)) => index.add_seen(p, seen)?,
            _ => None,
        };
        claimed.push(from_index.then(|| Claimed {
            ops,
            members: seen.unwrap_or_default(),
            index: indexes.expect("loaded from an index").0[i].clone(),
            blob,
        }));
    }
    let squashed = folder.finish()?;
    let mut opts = opts.clone();
    if let Some(index) = index.filter(|i| !i.is_empty()) {
        opts.reuse = Some(std::sync::Arc::new(index));
    }
    let opts = &opts;
    write_blob_file(blobs_dir, cancel, |blob, tmp| {
        let mut out = Pipeline::new(blob, opts, resolve_threads(opts.threads), 0, tmp)?;
        let mut sources = Sources {
            range,
            claimed: &mut claimed,
            open: (0..range.len()).map(|_| None).collect(),
        };
        write_squashed(out.tar(), &squashed, &mut sources, cancel)
            .map_err(|e| cancel.check().err().unwrap_or(e))?;
        // Every layer taken from its index is read to its end and found to hold what the
        // index says, and every member its index lent to the result is one it really holds.
        let mut checked = Vec::new();
        for (layer, blob) in range.iter().enumerate() {
            if sources.claimed[layer].is_none() && sources.open[layer].is_none() {
                continue; // not needed and not from an index: nothing to check
            }
            if let Source::Checked(c) = sources.get(layer)? {
                c.finish().map_err(|e| in_blob(blob, e))?;
                checked.push(c.lent());
                if !c.members_match() {
                    // Rebuilt by the next squash that reads the layer.
                    let _ = std::fs::remove_file(&c.index);
                }
            }
        }
        drop(sources);
        let (info, sink) = out.finish(Vec::new())?;
        if let Some(reuse) = &opts.reuse {
            check_taken(&reuse.taken(), &checked)?;
            // An index that offered a member for bytes it does not hold is rebuilt next time.
            let refused = reuse.refused();
            for (blob, _, index) in &checked {
                if blob.is_some_and(|b| refused.contains(&b)) {
                    let _ = std::fs::remove_file(index);
                }
            }
        }
        Ok((info, sink))
    })
}

/// One member of the squashed layer, in the order it is written.
enum Item<'a> {
    Opaque(&'a [u8]),
    Whiteout(&'a [u8]),
    Rec(&'a [u8], &'a Record),
}

/// Layer order: path components compared by bytes, except that inside a directory its opaque
/// marker (rank 0) and whiteouts (rank 1) come before its other children (rank 2). Compared
/// in place: a key made for every item would hold a copy of every component of every path.
fn layer_order(a: &Item<'_>, b: &Item<'_>) -> Ordering {
    fn key<'a>(item: &'a Item<'_>) -> impl Iterator<Item = (u8, &'a [u8])> {
        let (dir, last): (&[u8], Option<(u8, &[u8])>) = match item {
            Item::Rec(p, _) => (p, None),
            Item::Opaque(d) => (d, Some((0, b""))),
            Item::Whiteout(p) => (parent(p), Some((1, base_name(p)))),
        };
        dir.split(|&b| b == b'/')
            .filter(move |_| !dir.is_empty())
            .map(|c| (2, c))
            .chain(last)
    }
    key(a).cmp(key(b))
}

/// A decompressed source layer, read forward. Layers we write are sorted, so their contents are
/// asked for in order; a layer that is not gets spooled, decompressed, to an unlinked temporary
/// file the first time a content lies behind the cursor, and is read from there by seeking, so
/// an unsorted (or hostile) layer costs one extra pass, never one per file.
struct Cursor {
    reader: BackgroundReader,
    spool: Option<io::BufReader<File>>,
    pos: u64,
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.spool {
            Some(f) => f.read(buf)?,
            None => self.reader.read(buf)?,
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl BufRead for Cursor {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match &mut self.spool {
            Some(f) => f.fill_buf(),
            None => self.reader.fill_buf(),
        }
    }

    fn consume(&mut self, n: usize) {
        match &mut self.spool {
            Some(f) => f.consume(n),
            None => self.reader.consume(n),
        }
        self.pos += n as u64;
    }
}

impl Cursor {
    /// Position at `offset` of the decompressed stream of `path`.
    fn seek(&mut self, path: &Path, offset: u64) -> Result<()> {
        use std::io::Seek;
        if self.pos > offset && self.spool.is_none() {
            self.spool = Some(io::BufReader::with_capacity(1 << 20, spool(path)?));
        }
        if let Some(f) = &mut self.spool {
            f.seek(io::SeekFrom::Start(offset)).at(path)?;
            self.pos = offset;
        }
        let gap = offset - self.pos;
        io::copy(&mut self.take(gap), &mut io::sink()).at(path)?;
        if self.pos != offset {
            return Err(Error::Archive {
                entry: path.display().to_string(),
                reason: "layer changed while it was squashed".into(),
            });
        }
        Ok(())
    }
}

/// A source layer whose headers came from its index: read through its tar headers, each
/// checked against the index, with the gzip members inflated recorded.
struct Checked {
    reader: TarReader<BackgroundReader>,
    expected: Vec<Op>,
    /// The members the index gave.
    members: Vec<MemberSeen>,
    next: usize,
    layer: usize,
    /// The layer's headers read as pass 1 reads them, to compare with the index.
    ops: HeaderOps,
    seen: SeenMembers,
    index: PathBuf,
    /// The layer's number in the member index, if it lent members to it.
    blob: Option<usize>,
}

impl Checked {
    fn stale(&self) -> Error {
        Error::StaleIndex(self.index.clone())
    }

    /// Check the next header against the index; its content offset if it is a file.
    fn step(&mut self) -> Result<Option<Option<u64>>> {
        let h = match self.reader.next_header() {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            // The layer may be broken rather than the index: a read without the index tells.
            Err(_) => return Err(self.stale()),
        };
        let file = (h.kind == EntryKind::File).then_some(h.data_offset);
        if let Some(op) = self.ops.op(h, self.layer).map_err(|_| self.stale())? {
            if self.expected.get(self.next) != Some(&op) {
                return Err(self.stale());
            }
            self.next += 1;
        }
        Ok(Some(file))
    }

    /// Position at the content starting at `offset`, checking every header on the way.
    fn seek(&mut self, offset: u64) -> Result<()> {
        loop {
            match self.step()? {
                None => return Err(self.stale()),
                Some(Some(at)) if at == offset => return Ok(()),
                Some(Some(at)) if at > offset => return Err(self.stale()),
                Some(_) => {}
            }
        }
    }

    /// Check the rest of the layer: every header, and nothing missing.
    fn finish(&mut self) -> Result<()> {
        while self.step()?.is_some() {}
        if self.next != self.expected.len() {
            return Err(self.stale());
        }
        // On to the end of the stream, as apply reads a layer.
        read_past_archive(self.reader.get_mut())
    }

    /// The member-index number of the layer, the members inflated from it, and its index.
    fn lent(&self) -> (Option<usize>, Vec<MemberSeen>, PathBuf) {
        let seen = self.seen.lock().expect("not poisoned").clone();
        (self.blob, seen, self.index.clone())
    }

    /// Whether the members the index gave are the ones the layer has. A wrong one that was
    /// taken fails the squash (see [`check_taken`]); one that was not only makes the index
    /// worth rebuilding.
    fn members_match(&self) -> bool {
        *self.seen.lock().expect("not poisoned") == self.members
    }
}

/// A source layer being read for its contents.
enum Source {
    /// Read without an index: its headers were read in pass 1.
    Plain(Cursor),
    /// Read with its index: checked as it goes.
    Checked(Box<Checked>),
}

/// The source layers of pass 2, opened on first use.
struct Sources<'a> {
    range: &'a [PathBuf],
    claimed: &'a mut [Option<Claimed>],
    open: Vec<Option<Source>>,
}

impl Sources<'_> {
    fn get(&mut self, layer: usize) -> Result<&mut Source> {
        let slot = &mut self.open[layer];
        if let Some(source) = slot {
            return Ok(source);
        }
        let path = &self.range[layer];
        let file = crate::verify::open_blob(path)?;
        let source = match self.claimed[layer].take() {
            None => Source::Plain(Cursor {
                reader: decompress_in_background(file, None)?,
                spool: None,
                pos: 0,
            }),
            Some(c) => {
                let seen = SeenMembers::default();
                let stream = decompress_in_background(file, Some(seen.clone()))?;
                Source::Checked(Box::new(Checked {
                    reader: TarReader::new(stream),
                    expected: c.ops,
                    members: c.members,
                    next: 0,
                    layer,
                    ops: HeaderOps::default(),
                    seen,
                    index: c.index,
                    blob: c.blob,
                }))
            }
        };
        Ok(slot.insert(source))
    }

    /// The content of layer `layer` starting at `offset`, to be read from the returned reader.
    fn content(&mut self, layer: usize, offset: u64) -> Result<&mut dyn BufRead> {
        let path = &self.range[layer];
        Ok(match self.get(layer)? {
            Source::Plain(cursor) => {
                cursor.seek(path, offset)?;
                cursor
            }
            Source::Checked(checked) => {
                checked.seek(offset)?;
                &mut checked.reader
            }
        })
    }
}

/// Every member taken from a layer checked in pass 2 must be one that layer was seen to hold:
/// same place, length, size and content key, the key computed from what pass 2 inflated. An
/// index may not lend what is not there: a blob found under a digest is not proof that it is
/// the blob the index was made from (layouts from elsewhere are not checked against their
/// digests), so what the index says of a member counts only once the layer itself confirms it.
fn check_taken(
    taken: &[Taken],
    checked: &[(Option<usize>, Vec<MemberSeen>, PathBuf)],
) -> Result<()> {
    for &(blob, offset, len, key, size) in taken {
        let Some((_, seen, index)) = checked.iter().find(|(b, _, _)| *b == Some(blob)) else {
            continue; // read in pass 1: its members were checked then
        };
        let ok = seen
            .binary_search_by_key(&offset, |m| m.offset)
            .ok()
            .map(|i| &seen[i])
            .is_some_and(|m| m.len == len && m.key == key && m.size == size as usize);
        if !ok {
            return Err(Error::StaleIndex(index.clone()));
        }
    }
    Ok(())
}

/// The decompressed stream of `path` in an unlinked temporary file.
fn spool(path: &Path) -> Result<File> {
    use std::io::Seek;
    let tmp = std::env::temp_dir().join(format!(
        ".layerdiff-squash-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let mut file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .at(&tmp)?;
    // Unlinked at once: the space is freed when the file is closed, whatever happens.
    std::fs::remove_file(&tmp).at(&tmp)?;
    let mut stream = decompress(crate::verify::open_blob(path)?)?;
    io::copy(&mut stream, &mut file).at(path)?;
    file.seek(io::SeekFrom::Start(0)).at(&tmp)?;
    Ok(file)
}

/// What makes records of the squashed layer one inode, written once and linked at its other
/// paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Inode {
    /// A regular file: its content, in its source layer at this offset.
    Content(usize, u64),
    /// Anything else a layer of the range linked ([`Record::link_set`]).
    Set(u64),
}

fn write_squashed<W: Write>(
    tar: &mut TarWriter<W>,
    squashed: &Squashed,
    sources: &mut Sources<'_>,
    cancel: &Cancel,
) -> Result<()> {
    let mut items: Vec<Item<'_>> = squashed
        .records
        .iter()
        .map(|(k, r)| Item::Rec(&k.0, r))
        .chain(squashed.opaque.iter().map(|d| Item::Opaque(d)))
        .chain(squashed.whiteouts.iter().map(|p| Item::Whiteout(p)))
        .collect();
    items.sort_by(layer_order);
    // The first path written of each inode; later ones become hardlinks to it.
    let mut first: HashMap<Inode, &[u8]> = HashMap::new();
    for item in items {
        cancel.check()?;
        let (path, rec) = match item {
            Item::Opaque(d) => {
                tar.append_opaque(d)?;
                continue;
            }
            Item::Whiteout(p) => {
                tar.append_whiteout(parent(p), base_name(p))?;
                continue;
            }
            Item::Rec(p, r) => (p, r),
        };
        let meta = Meta {
            path,
            mode: rec.mode,
            uid: rec.uid,
            gid: rec.gid,
            mtime: Timestamp {
                sec: rec.mtime.0,
                nsec: rec.mtime.1,
            },
            xattrs: &rec.xattrs,
        };
        let inode = match rec.kind {
            Kind::File { layer, offset, .. } => Some(Inode::Content(layer, offset)),
            _ => rec.link_set.map(Inode::Set),
        };
        if let Some(inode) = inode {
            if let Some(target) = first.get(&inode) {
                tar.append_hardlink(&meta, target)?;
                continue;
            }
            first.insert(inode, path);
        }
        match &rec.kind {
            Kind::Dir => tar.append_dir(&meta)?,
            Kind::File {
                layer,
                offset,
                size,
            } => {
                let range = sources.range;
                let content = sources.content(*layer, *offset)?;
                let content = FromBlob {
                    inner: content.take(*size),
                    blob: &range[*layer],
                    cancel,
                };
                tar.append_file(&meta, *size, content)?;
            }
            Kind::LinkToLower(target) => tar.append_hardlink(&meta, target)?,
            Kind::Symlink(target) => tar.append_symlink(&meta, target)?,
            Kind::Fifo => tar.append_fifo(&meta)?,
            Kind::Char(major, minor) => tar.append_char_device(&meta, *major, *minor)?,
            Kind::Block(major, minor) => tar.append_block_device(&meta, *major, *minor)?,
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "squash_tests.rs"]
mod tests;
