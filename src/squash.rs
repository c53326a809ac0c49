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
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::apply::clean_path;
use crate::cancel::Cancel;
use crate::compress::{Compression, resolve_threads};
use crate::decompress::{
    MemberSeen, SeenMembers, decompress, decompress_in_background, with_decompressed_seen,
};
use crate::entry::{Timestamp, base_name, cmp_paths, join, parent};
use crate::error::{Error, IoContext, Result};
use crate::layer::{LayerInfo, LayerOptions, Pipeline, write_blob_file};
use crate::members::MemberIndex;
use crate::tar::reader::{EntryKind, TarReader};
use crate::tar::writer::{Meta, TarWriter};
use crate::whiteout::{LayerName, classify_layer_name};

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
}

/// One member of a layer as the fold sees it.
#[derive(Debug, Clone)]
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

/// Paths (and whether each is a directory) of the tree the layers below the range make.
#[derive(Debug, Default)]
pub struct LowerTree(BTreeMap<Key, bool>);

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

impl LowerTree {
    /// Fold one layer's operations into the tree (apply semantics, paths only).
    pub fn apply(&mut self, ops: &[Op]) {
        let mut created = HashSet::new();
        for op in ops {
            match op {
                Op::Put(p, r) => {
                    let is_dir = r.kind == Kind::Dir;
                    if !(is_dir && self.0.get(&Key(p.clone())) == Some(&true)) {
                        for k in subtree(&self.0, p) {
                            self.0.remove(&k);
                        }
                    }
                    self.0.insert(Key(p.clone()), is_dir);
                    mark_with_parents(&mut self.0, &mut created, p);
                }
                Op::Link(p, _) => {
                    for k in subtree(&self.0, p) {
                        self.0.remove(&k);
                    }
                    self.0.insert(Key(p.clone()), false);
                    mark_with_parents(&mut self.0, &mut created, p);
                }
                _ => {}
            }
        }
        for op in ops {
            let doomed = match op {
                Op::Whiteout(p) => subtree(&self.0, p),
                Op::Opaque(d) => children_only(&self.0, d),
                _ => continue,
            };
            for k in doomed {
                if !created.contains(&k.0) {
                    self.0.remove(&k);
                }
            }
        }
    }

    fn is_dir(&self, p: &[u8]) -> Option<bool> {
        self.0.get(&Key(p.to_vec())).copied()
    }

    fn has_children(&self, p: &[u8]) -> bool {
        !children_only(&self.0, p).is_empty()
    }
}

/// Record `p` and its missing parents (implied directories) as written by this layer.
fn mark_with_parents(tree: &mut BTreeMap<Key, bool>, created: &mut HashSet<Vec<u8>>, p: &[u8]) {
    created.insert(p.to_vec());
    let mut q = parent(p);
    while !q.is_empty() {
        tree.entry(Key(q.to_vec())).or_insert(true);
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
    }
}

impl Folder {
    /// Start from the tree of the layers below the range.
    pub fn new(lower: LowerTree) -> Self {
        Folder {
            lower,
            ..Folder::default()
        }
    }

    /// Is `p` of the lower tree still visible (neither it nor an ancestor hidden)?
    fn lower_visible(&self, p: &[u8]) -> bool {
        if self.lower.is_dir(p).is_none() {
            return false;
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

    fn put(&mut self, p: &[u8], rec: Record, created: &mut HashSet<Vec<u8>>) {
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
            created.insert(q.to_vec());
            let qk = Key(q.to_vec());
            if !self.merged.contains_key(&qk) && !self.lower_visible(q) {
                self.merged.insert(qk, implied_dir());
            }
            q = parent(q);
        }
    }

    /// Fold one layer of the range.
    pub fn layer(&mut self, ops: &[Op]) {
        let mut created = HashSet::new();
        for op in ops {
            match op {
                Op::Put(p, rec) => self.put(p, rec.clone(), &mut created),
                Op::Link(p, target) => {
                    let rec = match self.merged.get(&Key(target.clone())) {
                        Some(r) => r.clone(),
                        // Not written in the range: the link stays a link into the lower tree.
                        None => Record {
                            kind: Kind::LinkToLower(target.clone()),
                            ..implied_dir()
                        },
                    };
                    self.put(p, rec, &mut created);
                }
                _ => {}
            }
        }
        for op in ops {
            match op {
                Op::Whiteout(p) => {
                    for k in subtree(&self.merged, p) {
                        if !created.contains(&k.0) {
                            self.merged.remove(&k);
                        }
                    }
                    self.kill(p);
                }
                Op::Opaque(d) => {
                    for k in children_only(&self.merged, d) {
                        if !created.contains(&k.0) {
                            self.merged.remove(&k);
                        }
                    }
                    let lower_children: Vec<Key> = children_only(&self.lower.0, d)
                        .into_iter()
                        .filter(|k| parent(&k.0) == d.as_slice())
                        .collect();
                    for k in lower_children {
                        self.kill(&k.0);
                    }
                }
                _ => {}
            }
        }
    }

    /// The squashed layer: records plus the whiteouts and opaque markers still needed.
    pub fn finish(self) -> Squashed {
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
        out
    }
}

/// Read the operations of one layer (`layer` is its index in the range, used for content
/// references) without extracting anything: headers are parsed, contents skipped.
fn read_ops_from(stream: &mut dyn Read, layer: usize) -> Result<Vec<Op>> {
    let mut reader = TarReader::new(stream);
    let mut ops = Vec::new();
    while let Some(h) = reader.next_header()? {
        let name = h.display();
        let path = clean_path(&h.path, &name)?;
        match classify_layer_name(base_name(&path)) {
            LayerName::Plain => {}
            LayerName::Opaque => {
                ops.push(Op::Opaque(parent(&path).to_vec()));
                continue;
            }
            LayerName::Whiteout(target) => {
                ops.push(Op::Whiteout(join(parent(&path), target)));
                continue;
            }
            LayerName::AufsMeta => continue,
            LayerName::Malformed => {
                return Err(Error::Archive {
                    entry: name,
                    reason: "malformed whiteout name".into(),
                });
            }
        }
        if path.is_empty() {
            continue;
        }
        let kind = match h.kind {
            EntryKind::Dir => Kind::Dir,
            EntryKind::File => Kind::File {
                layer,
                offset: h.data_offset,
                size: h.size,
            },
            EntryKind::Symlink => Kind::Symlink(h.link.clone()),
            EntryKind::Fifo => Kind::Fifo,
            EntryKind::CharDevice => Kind::Char(h.dev_major, h.dev_minor),
            EntryKind::BlockDevice => Kind::Block(h.dev_major, h.dev_minor),
            EntryKind::Hardlink => {
                ops.push(Op::Link(path, clean_path(&h.link, &name)?));
                continue;
            }
        };
        ops.push(Op::Put(
            path,
            Record {
                kind,
                mode: h.mode,
                uid: h.uid,
                gid: h.gid,
                mtime: (h.mtime.sec, h.mtime.nsec),
                xattrs: h.xattrs,
            },
        ));
    }
    Ok(ops)
}

/// A layer's operations, and the gzip members seen while it was read (when asked for).
type LayerOps = (Vec<Op>, Option<Vec<MemberSeen>>);

fn layer_ops(path: &Path, layer: usize, members: bool, cancel: &Cancel) -> Result<LayerOps> {
    cancel.check()?;
    let file = File::open(path).at(path)?;
    let seen = members.then(SeenMembers::default);
    let ops = with_decompressed_seen(file, seen.clone(), |s| read_ops_from(s, layer))?;
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
    // Every layer's headers are read at once, one layer per thread (each inflates on a thread
    // of its own as well); the folding that follows is in order and cheap.
    let (lower_ops, range_ops) = pool.install(|| {
        use rayon::prelude::*;
        let lower_ops: Vec<Result<LayerOps>> = lower
            .par_iter()
            .map(|p| layer_ops(p, usize::MAX, false, cancel))
            .collect();
        let range_ops: Vec<Result<LayerOps>> = range
            .par_iter()
            .enumerate()
            .map(|(i, p)| layer_ops(p, i, index.is_some(), cancel))
            .collect();
        (lower_ops, range_ops)
    });
    let mut tree = LowerTree::default();
    for ops in lower_ops {
        tree.apply(&ops?.0);
    }
    let mut folder = Folder::new(tree);
    for (p, ops) in range.iter().zip(range_ops) {
        let (ops, seen) = ops?;
        folder.layer(&ops);
        if let (Some(index), Some(seen)) = (index.as_mut(), seen) {
            index.add_seen(p, &seen)?;
        }
    }
    let squashed = folder.finish();
    let mut opts = opts.clone();
    if let Some(index) = index.filter(|i| !i.is_empty()) {
        opts.reuse = Some(std::sync::Arc::new(index));
    }
    let opts = &opts;
    write_blob_file(blobs_dir, |blob, tmp| {
        let mut out = Pipeline::new(blob, opts, resolve_threads(opts.threads), tmp)?;
        write_squashed(out.tar(), &squashed, range, cancel)?;
        out.finish(Vec::new())
    })
}

/// One member of the squashed layer, in the order it is written.
enum Item<'a> {
    Opaque(&'a [u8]),
    Whiteout(&'a [u8]),
    Rec(&'a [u8], &'a Record),
}

/// Layer order: path components compared by bytes, except that inside a directory its opaque
/// marker (rank 0) and whiteouts (rank 1) come before its other children (rank 2).
fn order_key(item: &Item<'_>) -> Vec<(u8, Vec<u8>)> {
    let comps = |p: &[u8]| -> Vec<(u8, Vec<u8>)> {
        if p.is_empty() {
            Vec::new()
        } else {
            p.split(|&b| b == b'/').map(|c| (2, c.to_vec())).collect()
        }
    };
    match item {
        Item::Rec(p, _) => comps(p),
        Item::Opaque(d) => {
            let mut k = comps(d);
            k.push((0, Vec::new()));
            k
        }
        Item::Whiteout(p) => {
            let mut k = comps(parent(p));
            k.push((1, base_name(p).to_vec()));
            k
        }
    }
}

/// A decompressed source layer, read forward. Layers we write are sorted, so their contents are
/// asked for in order; a layer that is not gets spooled, decompressed, to an unlinked temporary
/// file the first time a content lies behind the cursor, and is read from there by seeking, so
/// an unsorted (or hostile) layer costs one extra pass, never one per file.
struct Cursor {
    reader: Box<dyn Read>,
    spool: Option<File>,
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
    let mut stream = decompress(File::open(path).at(path)?)?;
    io::copy(&mut stream, &mut file).at(path)?;
    file.seek(io::SeekFrom::Start(0)).at(&tmp)?;
    Ok(file)
}

fn content<'c>(
    cursors: &'c mut [Option<Cursor>],
    range: &[PathBuf],
    layer: usize,
    offset: u64,
) -> Result<&'c mut Cursor> {
    use std::io::Seek;
    let path = &range[layer];
    let slot = &mut cursors[layer];
    let cursor = match slot {
        Some(c) => c,
        None => slot.insert(Cursor {
            reader: Box::new(decompress_in_background(File::open(path).at(path)?)?),
            spool: None,
            pos: 0,
        }),
    };
    if cursor.pos > offset && cursor.spool.is_none() {
        cursor.spool = Some(spool(path)?);
    }
    if let Some(f) = &mut cursor.spool {
        f.seek(io::SeekFrom::Start(offset)).at(path)?;
        cursor.pos = offset;
    }
    let gap = offset - cursor.pos;
    io::copy(&mut (&mut *cursor).take(gap), &mut io::sink()).at(path)?;
    if cursor.pos != offset {
        return Err(Error::Archive {
            entry: path.display().to_string(),
            reason: "layer changed while it was squashed".into(),
        });
    }
    Ok(cursor)
}

fn write_squashed<W: Write>(
    tar: &mut TarWriter<W>,
    squashed: &Squashed,
    range: &[PathBuf],
    cancel: &Cancel,
) -> Result<()> {
    let mut items: Vec<Item<'_>> = squashed
        .records
        .iter()
        .map(|(k, r)| Item::Rec(&k.0, r))
        .chain(squashed.opaque.iter().map(|d| Item::Opaque(d)))
        .chain(squashed.whiteouts.iter().map(|p| Item::Whiteout(p)))
        .collect();
    items.sort_by_cached_key(order_key);
    let mut cursors: Vec<Option<Cursor>> = (0..range.len()).map(|_| None).collect();
    // The first path written for each content identity; later ones become hardlinks to it.
    let mut first: HashMap<(usize, u64), &[u8]> = HashMap::new();
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
        match &rec.kind {
            Kind::Dir => tar.append_dir(&meta)?,
            Kind::File {
                layer,
                offset,
                size,
            } => match first.get(&(*layer, *offset)) {
                Some(target) => tar.append_hardlink(&meta, target)?,
                None => {
                    first.insert((*layer, *offset), path);
                    let cursor = content(&mut cursors, range, *layer, *offset)?;
                    tar.append_file(&meta, *size, cursor.take(*size))?;
                }
            },
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
