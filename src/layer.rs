//! The single-pass pipeline: changes → tar → sha256 (diff_id) → compress → sha256 (digest) → blob.
//!
//! ```text
//!  reader thread ──(file contents, bounded channel)──▶ caller's thread
//!   small files: read in parallel batches              TarWriter
//!   large files: 1 MiB chunks                           → Sha256Writer (diff_id)
//!                                                       → Compressor (gzip/zstd workers)
//!                                                       → sha256 (digest) → sink
//! ```
//!
//! A blob file in a layout is written by a thread of its own ([`BlobFile`]).
//!
//! Reading overlaps with hashing and compression, and memory is bounded by the reader's
//! buffers, which the writer hands back for reuse, and the compressor's blocks in flight, not by
//! file or layer size.
//!
//! Layer order ([`plan`]): the changes come in [`crate::entry::cmp_paths`] order and the tar
//! keeps it, except that inside each directory its opaque marker comes right after the
//! directory's own entry, then the whiteouts of its deleted children (sorted), then its other
//! children, depth first — whiteouts before their siblings, as the OCI layer spec asks.
//!
//! Entries keep their full mtime: nanoseconds are written as a PAX `mtime` record (see
//! [`crate::tar::writer`]), and `SOURCE_DATE_EPOCH` clamps them.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use rayon::prelude::*;
use rustix::fs::{Mode, OFlags};

use crate::apply::PATH_MAX;
use crate::cancel::{Cancel, NEVER};
use crate::compress::{Compression, Compressor, resolve_threads};
use crate::diff::{Change, ChangeKind};
use crate::digest::Sha256Hasher;
use crate::entry::{Kind, cmp_paths, os_path, parent};
use crate::error::{Error, IoContext, Result};
use crate::squash_index::{IndexBuilder, LayerIndex};
use crate::tar::reader::read_full;
use crate::tar::writer::{Meta, TarWriter, storable_xattr_name};
use crate::walk::open_beneath;
use crate::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX, is_overlay_xattr};

/// Options for writing one layer (default: gzip at the default level, one thread per core, no
/// clamp).
#[derive(Debug, Clone, Default)]
pub struct LayerOptions {
    /// Blob compression.
    pub compression: Compression,
    /// Worker threads (0: one per core). Never changes the output bytes.
    pub threads: usize,
    /// Clamp every mtime to this time (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
    /// Checked between entries: a cancelled token stops the write with [`Error::Interrupted`].
    pub cancel: Option<std::sync::Arc<crate::cancel::Cancel>>,
    /// gzip members of existing blobs to take where the layer holds the same bytes (faster,
    /// same output).
    pub reuse: Option<std::sync::Arc<crate::members::MemberIndex>>,
    /// Write the blob's layer index ([`crate::squash_index`]) into this directory, named by
    /// the hex of its digest, so a later squash of the layer need not read its headers.
    pub index_dir: Option<PathBuf>,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// `sha256:<hex>` of the stored (compressed) blob.
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// Size of the stored blob in bytes.
    pub size: u64,
    /// Size of the uncompressed tar in bytes.
    pub tar_size: u64,
    /// OCI media type of the blob.
    pub media_type: &'static str,
    /// Where the blob is (for [`write_layer_file`]).
    pub path: Option<PathBuf>,
    /// What was left out, one line each (sockets, which a layer cannot hold).
    pub warnings: Vec<String>,
}

/// Files up to this size are read whole, in parallel batches; larger ones are streamed.
const SMALL_FILE: u64 = 1 << 20;
/// Chunk size of streamed files. A chunk fills a quarter of a reader buffer, whose other pages
/// a large file then never touches: a layer of one large file keeps to 6 MiB of them.
const CHUNK: u64 = 1 << 20;
/// A batch of small files holds at most this many bytes ...
const BATCH_BYTES: u64 = 4 << 20;
/// ... and a batch at most this many files.
const BATCH_FILES: usize = 256;
/// Batches the reader may run ahead of the writer.
const AHEAD: usize = 4;
/// Reader buffers: those in the channel, the one the writer is on and the one being filled.
/// They are made as needed and then used over and over, so file contents take at most
/// `(AHEAD + 2) × 4 MiB` and each page of it is new to the process once. A new buffer for
/// every file cost a page fault for every page the allocator handed out fresh: on the Debian
/// rootfs 6,000–8,000 more faults a commit, a third of them all.
const READ_BUFFERS: usize = AHEAD + 2;
/// Size of a reader buffer: a batch, with one byte after each file (see [`Reader::batch`]).
/// Made zeroed, so that its pages are mapped only once something is read into them.
const READ_BUFFER: usize = BATCH_BYTES as usize + BATCH_FILES;
/// Buffer in front of the sink.
const SINK_BUFFER: usize = 256 << 10;

/// One tar entry of the layer, pointing into the change list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The change's entry itself (its content read from the upper tree for a regular file).
    Entry(usize),
    /// A hardlink from change `.0` to change `.1`, written earlier in the same layer.
    Link(usize, usize),
    /// The whiteout of a deleted change.
    Whiteout(usize),
    /// The opaque marker of a directory change.
    Opaque(usize),
}

/// The tar entries of a layer, in layer order (see the module docs), and warnings about what
/// was left out. Checks the input: sorted without duplicates, an entry on every change but
/// deletions, no reserved (`.wh.`) names, nothing below a deleted path.
pub fn plan(upper: &Path, changes: &[Change]) -> Result<(Vec<Op>, Vec<String>)> {
    for (i, c) in changes.iter().enumerate() {
        if i > 0 && cmp_paths(&changes[i - 1].path, &c.path) != std::cmp::Ordering::Less {
            return Err(Error::InvalidArgument(format!(
                "changes out of order or duplicated at {:?}",
                os_path(&c.path)
            )));
        }
        if c.path
            .split(|&b| b == b'/')
            .any(|n| n.starts_with(WHITEOUT_PREFIX))
        {
            return Err(Error::ReservedName {
                path: upper.join(os_path(&c.path)),
            });
        }
        // The longest name the change puts in the layer: a directory's ends in '/', a
        // whiteout adds ".wh." and an opaque marker "/.wh..wh..opq".
        let extra = match &c.entry {
            None => WHITEOUT_PREFIX.len(),
            Some(_) if c.opaque => 1 + OPAQUE_MARKER.len(),
            Some(e) => usize::from(e.kind == Kind::Dir),
        };
        // Checked by the tar writer too, but here before anything is written, and with the
        // whole path.
        let unstorable = c
            .entry
            .iter()
            .flat_map(|e| &e.xattrs)
            .find(|(name, _)| !is_overlay_xattr(name) && !storable_xattr_name(name));
        if let Some((name, _)) = unstorable {
            return Err(Error::InvalidArgument(format!(
                "{}: xattr name {:?} cannot be stored in a PAX record",
                upper.join(os_path(&c.path)).display(),
                String::from_utf8_lossy(name)
            )));
        }
        if c.path.len() + extra > PATH_MAX {
            return Err(Error::PathTooLong {
                path: upper.join(os_path(&c.path)),
                max: PATH_MAX,
            });
        }
        let ok = match (&c.entry, c.kind) {
            (None, ChangeKind::Deleted) => !c.opaque,
            (Some(e), ChangeKind::Added | ChangeKind::Modified) => {
                e.path == c.path && (!c.opaque || e.kind == Kind::Dir)
            }
            _ => false,
        };
        if !ok {
            return Err(Error::InvalidArgument(format!(
                "{:?}: inconsistent change (kind {:?}, entry {}, opaque {})",
                os_path(&c.path),
                c.kind,
                if c.entry.is_some() {
                    "present"
                } else {
                    "absent"
                },
                c.opaque
            )));
        }
    }
    let mut ops = Vec::with_capacity(changes.len() + 8);
    let mut warnings = Vec::new();
    plan_level(changes, 0, changes.len(), 0, &mut ops, &mut warnings)?;
    // An empty value is kept (GNU tar and our applier restore it), but a PAX record with an
    // empty value reads as "no such record" to Go's archive/tar, so other tools lose it.
    for c in changes {
        let Some(e) = &c.entry else { continue };
        for (name, _) in e.xattrs.iter().filter(|(_, v)| v.is_empty()) {
            warnings.push(format!(
                "{}: xattr {} has an empty value, which tools reading layers with Go's tar \
                 (docker, containerd, podman, umoci) drop",
                os_path(&c.path).display(),
                String::from_utf8_lossy(name)
            ));
        }
    }

    // Hardlinks: the first member of a set in layer order carries the content.
    let mut first: HashMap<(u64, u64), usize> = HashMap::new();
    for op in &mut ops {
        if let Op::Entry(i) = *op {
            let e = changes[i].entry.as_ref().expect("checked above");
            if e.is_hardlinked() {
                match first.get(&(e.dev, e.ino)) {
                    Some(&t) => *op = Op::Link(i, t),
                    None => {
                        first.insert((e.dev, e.ino), i);
                    }
                }
            }
        }
    }
    Ok((ops, warnings))
}

/// Lay out `changes[lo..hi]`: all below one directory whose path is `prefix_len` bytes long
/// (0: the root).
fn plan_level(
    changes: &[Change],
    lo: usize,
    hi: usize,
    prefix_len: usize,
    ops: &mut Vec<Op>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let start = if prefix_len == 0 { 0 } else { prefix_len + 1 };
    // Children of the directory: runs of changes sharing the next path component. A run starts
    // with the child itself when it is a change, or with a deeper path when it is not.
    let mut groups = Vec::new();
    let mut i = lo;
    while i < hi {
        let rest = &changes[i].path[start..];
        let name_len = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        let name = &rest[..name_len];
        let mut j = i + 1;
        while j < hi && {
            let r = &changes[j].path[start..];
            r.starts_with(name) && r.get(name_len) == Some(&b'/')
        } {
            j += 1;
        }
        groups.push((i, j, start + name_len, name_len == rest.len()));
        i = j;
    }
    // Whiteouts first (a socket, never stored, leaves one for what it replaced) ...
    for &(g, end, _, real) in &groups {
        let c = &changes[g];
        let replaced_by_socket = c.kind == ChangeKind::Modified
            && c.entry.as_ref().is_some_and(|e| e.kind == Kind::Socket);
        if real && (c.kind == ChangeKind::Deleted || replaced_by_socket) {
            if end > g + 1 {
                return Err(Error::InvalidArgument(format!(
                    "{:?}: changes below a deleted path",
                    os_path(&changes[g + 1].path)
                )));
            }
            ops.push(Op::Whiteout(g));
        }
    }
    // ... then the other children, each followed by what is below it.
    for &(g, end, child_len, real) in &groups {
        if !real {
            plan_level(changes, g, end, child_len, ops, warnings)?;
            continue;
        }
        let c = &changes[g];
        match &c.entry {
            None => continue, // a whiteout, above
            Some(e) if e.kind == Kind::Socket => {
                warnings.push(format!(
                    "{}: socket not stored in the layer",
                    os_path(&c.path).display()
                ));
            }
            Some(_) => {
                ops.push(Op::Entry(g));
                if c.opaque {
                    ops.push(Op::Opaque(g));
                }
            }
        }
        plan_level(changes, g + 1, end, child_len, ops, warnings)?;
    }
    Ok(())
}

/// The tree a layer's file contents are read from.
#[derive(Debug, Clone, Copy)]
pub struct Contents<'a> {
    /// The tree's path: opened when there is no `fd`, and what errors name either way.
    pub path: &'a Path,
    /// The tree, already open: a view that has no path of its own, such as the merged overlay
    /// mount [`crate::diff::diff_overlay_view`] computed the changes from.
    pub fd: Option<BorrowedFd<'a>>,
}

impl<'a> From<&'a Path> for Contents<'a> {
    fn from(path: &'a Path) -> Self {
        Contents { path, fd: None }
    }
}

impl<'a> From<&'a PathBuf> for Contents<'a> {
    fn from(path: &'a PathBuf) -> Self {
        Contents { path, fd: None }
    }
}

/// Write the layer for `changes` (contents read from the tree `upper`) into `sink`.
pub fn write_layer<'a, W: Write + Send>(
    upper: impl Into<Contents<'a>>,
    changes: &[Change],
    opts: &LayerOptions,
    sink: W,
) -> Result<LayerInfo> {
    let contents = upper.into();
    let (info, sink) = write_layer_into(
        contents,
        changes,
        opts,
        sink,
        SINK_BUFFER,
        Path::new("<layer>"),
    )?;
    drop(sink);
    Ok(info)
}

/// [`write_layer`], giving the (flushed) sink back; write errors are reported on `output`.
/// `buffer` bytes are buffered in front of the sink (see [`Pipeline::new`]).
fn write_layer_into<W: Write + Send>(
    contents: Contents<'_>,
    changes: &[Change],
    opts: &LayerOptions,
    sink: W,
    buffer: usize,
    output: &Path,
) -> Result<(LayerInfo, W)> {
    let upper = contents.path;
    let (ops, warnings) = plan(upper, changes)?;
    let threads = resolve_threads(opts.threads);
    let opened: OwnedFd;
    let root = match contents.fd {
        Some(fd) => fd,
        None => {
            opened = rustix::fs::open(
                upper,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .at(upper)?;
            opened.as_fd()
        }
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("layerdiff-read-{i}"))
        .build()
        .map_err(|e| Error::InvalidArgument(format!("reader thread pool: {e}")))?;

    // Regular files whose content goes into the layer, in layer order.
    let files: Vec<usize> = ops
        .iter()
        .filter_map(|op| match *op {
            Op::Entry(i)
                if changes[i]
                    .entry
                    .as_ref()
                    .is_some_and(|e| e.kind == Kind::File) =>
            {
                Some(i)
            }
            _ => None,
        })
        .collect();

    let mut out = Pipeline::new(sink, opts, threads, buffer, output)?;

    let (tx, rx) = mpsc::sync_channel::<Batch>(AHEAD);
    let (back, spare) = mpsc::channel::<Vec<u8>>();
    let result = std::thread::scope(|s| {
        let mut reader = Reader {
            tree: Tree { root, changes },
            pool: &pool,
            spare,
            made: 0,
        };
        let reader = s.spawn(move || reader.run(&files, tx));
        let incoming = Incoming {
            rx,
            back,
            batch: Batch::default(),
            next: 0,
        };
        let result = write_ops(
            out.tar(),
            upper,
            changes,
            &ops,
            incoming,
            opts.cancel.as_deref(),
        );
        // `incoming` is dropped by now, and with it both ends the reader waits on: a reader
        // blocked on a full channel or waiting for a buffer back wakes up and stops. Join it
        // here, so that it has exited, not just returned, when the layer is written.
        if let Err(panic) = reader.join() {
            std::panic::resume_unwind(panic);
        }
        result
    });
    result?;
    out.finish(warnings)
}

/// The tar writer of a layer with the rest of the one-pass chain behind it:
/// tar → sha256 (diff_id) → compressor → sha256 (digest) → sink.
pub struct Pipeline<W: Write> {
    tar: TarWriter<crate::digest::Sha256Writer<Compressor<HashingWriter<BufWriter<W>>>>>,
    compression: Compression,
    output: PathBuf,
    /// The layer index being built, and where it goes.
    index: Option<(PathBuf, Arc<Mutex<IndexBuilder>>)>,
}

impl<W: Write> Pipeline<W> {
    /// Start a layer into `sink`; `output` names the sink in errors. `buffer` bytes are
    /// buffered in front of the sink: none for a [`BlobFile`], which buffers itself.
    pub fn new(
        sink: W,
        opts: &LayerOptions,
        threads: usize,
        buffer: usize,
        output: &Path,
    ) -> Result<Self> {
        let blob_hasher = match opts.compression {
            // The blob is the tar: its digest is the diff_id, no need to hash it twice.
            Compression::None => None,
            _ => Some(Sha256Hasher::new()),
        };
        let blob = HashingWriter {
            inner: BufWriter::with_capacity(buffer, sink),
            hasher: blob_hasher,
            len: 0,
        };
        let mut compressor =
            Compressor::with_reuse(blob, opts.compression, threads, opts.reuse.clone())?;
        let mut index = None;
        if let Some(dir) = &opts.index_dir {
            compressor.record_members();
            index = Some((dir.clone(), Arc::new(Mutex::new(IndexBuilder::default()))));
        }
        let mut tar = TarWriter::new(crate::digest::Sha256Writer::new(compressor))
            .with_source_date_epoch(opts.source_date_epoch)
            .with_output_name(output);
        if let Some((_, builder)) = &index {
            let builder = builder.clone();
            tar = tar.with_header_observer(Box::new(move |offset, bytes| {
                builder.lock().expect("not poisoned").header(offset, bytes);
            }));
        }
        Ok(Pipeline {
            tar,
            compression: opts.compression,
            output: output.to_path_buf(),
            index,
        })
    }

    /// The tar writer to append entries to.
    pub fn tar(&mut self) -> &mut TarWriter<impl Write + use<W>> {
        &mut self.tar
    }

    /// End the tar, flush the chain and return the layer's digests and the sink.
    pub fn finish(self, warnings: Vec<String>) -> Result<(LayerInfo, W)> {
        let output = self.output.as_path();
        let hashed = self.tar.finish()?;
        let (compressor, diff_id, tar_size) = hashed.finish();
        let (blob, members) = compressor.finish_members().at(output)?;
        let (digest, size) = match blob.hasher {
            Some(h) => h.finish(),
            None => (diff_id.clone(), tar_size),
        };
        if let Some((dir, builder)) = self.index {
            let ops = Arc::try_unwrap(builder)
                .ok()
                .and_then(|b| b.into_inner().ok())
                .and_then(IndexBuilder::finish);
            if let (Some(ops), Some(hex)) = (ops, digest.strip_prefix("sha256:")) {
                // A cache: failing to write it only costs a later squash time.
                let _ = crate::squash_index::store(&dir.join(hex), &LayerIndex { ops, members });
            }
        }
        let sink = blob
            .inner
            .into_inner()
            .map_err(|e| Error::io(output, e.into_error()))?;
        let info = LayerInfo {
            digest,
            diff_id,
            size,
            tar_size,
            media_type: self.compression.media_type(),
            path: None,
            warnings,
        };
        Ok((info, sink))
    }
}

/// Write every entry; file contents come from the reader, in the same order.
fn write_ops<W: Write>(
    tar: &mut TarWriter<W>,
    upper: &Path,
    changes: &[Change],
    ops: &[Op],
    mut incoming: Incoming,
    cancel: Option<&crate::cancel::Cancel>,
) -> Result<()> {
    for op in ops {
        if let Some(c) = cancel {
            c.check()?;
        }
        match *op {
            Op::Whiteout(i) => {
                let p = &changes[i].path;
                tar.append_whiteout(parent(p), &p[p.len() - name_len(p)..])?;
            }
            Op::Opaque(i) => tar.append_opaque(&changes[i].path)?,
            Op::Link(i, target) => {
                let e = changes[i].entry.as_ref().expect("planned");
                tar.append_hardlink(&Meta::of(e), &changes[target].path)?;
            }
            Op::Entry(i) => {
                let e = changes[i].entry.as_ref().expect("planned");
                let meta = Meta::of(e);
                match e.kind {
                    Kind::Dir => tar.append_dir(&meta)?,
                    Kind::Symlink => tar.append_symlink(&meta, &e.link_target)?,
                    Kind::Fifo => tar.append_fifo(&meta)?,
                    Kind::CharDevice => {
                        tar.append_char_device(&meta, e.rdev_major, e.rdev_minor)?
                    }
                    Kind::BlockDevice => {
                        tar.append_block_device(&meta, e.rdev_major, e.rdev_minor)?
                    }
                    Kind::Socket => unreachable!("sockets are left out by plan()"),
                    Kind::File => {
                        let mut body = tar.begin_file(&meta, e.size)?;
                        loop {
                            // Also between the chunks of a big file.
                            if let Some(c) = cancel {
                                c.check()?;
                            }
                            let data = incoming.next(i).map_err(|err| relocate(err, upper))?;
                            body.write(data)?;
                            if body.remaining() == 0 {
                                break;
                            }
                        }
                        body.finish()?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn name_len(path: &[u8]) -> usize {
    path.len() - path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1)
}

/// Errors the reader makes name the file relative to the tree; name it in full.
fn relocate(err: Error, upper: &Path) -> Error {
    match err {
        Error::FileChanged {
            path,
            expected,
            found,
        } => Error::FileChanged {
            path: upper.join(path),
            expected,
            found,
        },
        Error::Io { path, source } => Error::Io {
            path: upper.join(path),
            source,
        },
        other => other,
    }
}

/// What the reader sends: file contents in one of its buffers, in layer order.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    pieces: Vec<Piece>,
}

/// Content of one file, or part of it: the pieces of a file add up to its size exactly, or end
/// with an error. An empty file is one empty piece.
struct Piece {
    /// Index of the change.
    file: usize,
    /// Where the bytes are in the batch's buffer.
    data: Result<std::ops::Range<usize>>,
}

/// The writer's side of the reader's channel: the batch being written, and the way its buffer
/// goes back to the reader.
struct Incoming {
    rx: mpsc::Receiver<Batch>,
    back: mpsc::Sender<Vec<u8>>,
    batch: Batch,
    /// The next piece of `batch`.
    next: usize,
}

impl Incoming {
    /// The next piece of content, which is of change `file`.
    fn next(&mut self, file: usize) -> Result<&[u8]> {
        while self.next == self.batch.pieces.len() {
            // The reader only hangs up early after an error, which it sends first.
            let batch = self.rx.recv().map_err(|_| Error::Interrupted)?;
            let done = std::mem::replace(&mut self.batch, batch);
            if !done.buf.is_empty() {
                // Gone once the reader has stopped, and with it the need for buffers.
                let _ = self.back.send(done.buf);
            }
            self.next = 0;
        }
        let piece = &mut self.batch.pieces[self.next];
        self.next += 1;
        debug_assert_eq!(piece.file, file, "reader out of step");
        let range = std::mem::replace(&mut piece.data, Ok(0..0))?;
        Ok(&self.batch.buf[range])
    }
}

/// The reader side: opens each file under the root, no symlink followed, and sends its bytes.
struct Reader<'a> {
    tree: Tree<'a>,
    pool: &'a rayon::ThreadPool,
    /// Buffers the writer is done with.
    spare: mpsc::Receiver<Vec<u8>>,
    /// Buffers made so far (at most [`READ_BUFFERS`]).
    made: usize,
}

/// The tree file contents are read from, and its changes.
#[derive(Clone, Copy)]
struct Tree<'a> {
    root: BorrowedFd<'a>,
    changes: &'a [Change],
}

impl Reader<'_> {
    fn size(&self, i: usize) -> u64 {
        self.tree.size(i)
    }

    /// A buffer of [`READ_BUFFER`] bytes to fill: a spare one, a new one while fewer than
    /// [`READ_BUFFERS`] exist, else the next the writer gives back. `None` once the writer is
    /// gone.
    fn buffer(&mut self) -> Option<Vec<u8>> {
        if let Ok(buf) = self.spare.try_recv() {
            return Some(buf);
        }
        if self.made < READ_BUFFERS {
            self.made += 1;
            return Some(vec![0; READ_BUFFER]);
        }
        self.spare.recv().ok()
    }

    /// Send every file of `files`, in order. Stops at the first error (after sending it) or
    /// when the writer hangs up.
    fn run(&mut self, files: &[usize], tx: mpsc::SyncSender<Batch>) {
        let mut k = 0;
        while k < files.len() {
            let Some(buf) = self.buffer() else { return };
            if self.size(files[k]) > SMALL_FILE {
                if !self.stream(files[k], buf, &tx) {
                    return;
                }
                k += 1;
                continue;
            }
            // A batch of consecutive small files, read in parallel.
            let mut end = k;
            let mut bytes = 0;
            while end < files.len()
                && end - k < BATCH_FILES
                && self.size(files[end]) <= SMALL_FILE
                && (end == k || bytes + self.size(files[end]) <= BATCH_BYTES)
            {
                bytes += self.size(files[end]);
                end += 1;
            }
            let batch = self.batch(&files[k..end], buf);
            let failed = batch.pieces.iter().any(|p| p.data.is_err());
            if tx.send(batch).is_err() || failed {
                return;
            }
            k = end;
        }
    }

    /// Read the small files `files` into `buf` in parallel. Each gets its size and one byte
    /// more, so that a file that grew is caught by the same reads.
    fn batch(&self, files: &[usize], mut buf: Vec<u8>) -> Batch {
        let mut regions = Vec::with_capacity(files.len());
        let mut rest = &mut buf[..];
        let mut offset = 0;
        for &i in files {
            let len = self.size(i) as usize + 1;
            let (region, tail) = rest.split_at_mut(len);
            regions.push((i, offset, region));
            rest = tail;
            offset += len;
        }
        let tree = self.tree;
        let pieces = self.pool.install(|| {
            regions
                .into_par_iter()
                .map(|(i, offset, region)| Piece {
                    file: i,
                    data: tree
                        .read_small(i, region)
                        .map(|()| offset..offset + region.len() - 1),
                })
                .collect()
        });
        Batch { buf, pieces }
    }

    /// Stream a large file in chunks of [`CHUNK`] bytes, the first into `buf`. The last chunk
    /// is read with a byte of room more, so that a file that grew while it was read is caught
    /// by the same reads, and reported in place of that chunk. False if the writer is gone or
    /// an error was sent.
    fn stream(&mut self, i: usize, buf: Vec<u8>, tx: &mpsc::SyncSender<Batch>) -> bool {
        let path = &self.tree.changes[i].path;
        let size = self.size(i);
        let send = |buf: Vec<u8>, data: Result<std::ops::Range<usize>>| {
            let failed = data.is_err();
            let pieces = vec![Piece { file: i, data }];
            tx.send(Batch { buf, pieces }).is_ok() && !failed
        };
        let file = match self.tree.open(path, size) {
            Ok(f) => f,
            Err(e) => return send(buf, Err(e)),
        };
        let mut buf = Some(buf);
        let mut left = size;
        while left > 0 {
            let Some(mut chunk) = buf.take().or_else(|| self.buffer()) else {
                return false;
            };
            let want = left.min(CHUNK) as usize;
            let room = want + usize::from(want as u64 == left);
            let n = match read_full(&mut &file, &mut chunk[..room]) {
                Ok(n) => n,
                Err(e) => return send(chunk, Err(Error::io(os_path(path), e))),
            };
            if n != want {
                let found = size - left + n as u64;
                return send(chunk, Err(changed(path, size, found)));
            }
            left -= want as u64;
            if !send(chunk, Ok(0..want)) {
                return false;
            }
        }
        true
    }
}

impl Tree<'_> {
    fn size(&self, i: usize) -> u64 {
        self.changes[i].entry.as_ref().map_or(0, |e| e.size)
    }

    /// Read file `i` into `region`, one byte longer than the file should be.
    fn read_small(&self, i: usize, region: &mut [u8]) -> Result<()> {
        let path = &self.changes[i].path;
        let size = self.size(i);
        let file = self.open(path, size)?;
        let n = read_full(&mut &file, region).at(os_path(path))?;
        if n as u64 != size {
            return Err(changed(path, size, n as u64));
        }
        Ok(())
    }

    /// Open the regular file `path` below the root for reading, following no symlink in any
    /// component, and check it still has the size the walk saw.
    fn open(&self, path: &[u8], size: u64) -> Result<File> {
        let fd = open_beneath(self.root, path, READ_FLAGS).at(os_path(path))?;
        let st = rustix::fs::fstat(&fd).at(os_path(path))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(Error::io(
                os_path(path),
                io::Error::new(io::ErrorKind::InvalidInput, "no longer a regular file"),
            ));
        }
        if st.st_size as u64 != size {
            return Err(changed(path, size, st.st_size as u64));
        }
        Ok(File::from(fd))
    }
}

/// How a file's contents are opened: `O_NONBLOCK` so that a FIFO put where the walk saw a file
/// does not block the open (the caller checks the type).
const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

fn changed(path: &[u8], expected: u64, found: u64) -> Error {
    Error::FileChanged {
        path: os_path(path).to_path_buf(),
        expected,
        found,
    }
}

/// Hashes (when asked) and counts what goes to the sink.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Option<Sha256Hasher>,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Write the layer into `blobs_dir` (an OCI layout's `blobs/sha256`): temporary file, fsync,
/// rename to the digest's hex name.
pub fn write_layer_file<'a>(
    upper: impl Into<Contents<'a>>,
    changes: &[Change],
    opts: &LayerOptions,
    blobs_dir: &Path,
) -> Result<LayerInfo> {
    let contents = upper.into();
    let cancel = opts.cancel.as_deref().unwrap_or(&NEVER);
    write_blob_file(blobs_dir, cancel, |blob, tmp_path| {
        write_layer_into(contents, changes, opts, blob, 0, tmp_path)
    })
}

/// A blob file being written by [`write_blob_file`]: a buffered writer whose `write(2)` calls
/// run on a thread of its own. Writing into the page cache costs about a third of the time it
/// takes to hash the same bytes, and the thread that hashes the tar is the one every layer
/// waits on; with no compression it would otherwise do both.
pub struct BlobFile {
    /// Being filled; sent whole to the writer thread.
    buf: Vec<u8>,
    /// Full buffers to the writer thread (`None` once it is stopped).
    full: Option<mpsc::SyncSender<Vec<u8>>>,
    /// Buffers the writer thread has written, for reuse.
    empty: mpsc::Receiver<Vec<u8>>,
    /// Buffers made so far: at most [`BLOB_BUFFERS`], then `send` waits for the thread to give
    /// one back.
    made: usize,
    /// The writer thread: gives the file back, or the first write error it met.
    thread: Option<std::thread::JoinHandle<io::Result<EarlyWriteback>>>,
}

/// Size of a [`BlobFile`] buffer, and of its writes. Measured on the Debian rootfs: with 1 MiB
/// writes the first squashes after a few commits spent several times longer copying into the
/// page cache (0.6 s against 0.44 s, reproducibly, for no reason found); 256 KiB writes made an
/// uncompressed commit 5 % slower; 512 KiB has neither cost.
const BLOB_BUFFER: usize = 512 << 10;
/// Buffers of a [`BlobFile`]: one being filled, the others queued or being written. They are
/// made as needed, then used over and over.
const BLOB_BUFFERS: usize = 6;

impl BlobFile {
    /// Write `file` from a new writer thread.
    fn new(file: File) -> io::Result<Self> {
        let mut file = EarlyWriteback {
            file,
            written: 0,
            started: 0,
            synced: 0,
            syncer: None,
        };
        // Both hold every buffer there can be: sending never blocks, only waiting for an
        // empty buffer does.
        let (full, to_write) = mpsc::sync_channel::<Vec<u8>>(BLOB_BUFFERS);
        let (written, empty) = mpsc::sync_channel::<Vec<u8>>(BLOB_BUFFERS);
        let thread = std::thread::Builder::new()
            .name("layerdiff-write".into())
            .spawn(move || {
                for mut buf in to_write {
                    file.write_all(&buf)?;
                    buf.clear();
                    // Fails only once the writer is gone.
                    let _ = written.send(buf);
                }
                Ok(file)
            })?;
        Ok(BlobFile {
            buf: Vec::with_capacity(BLOB_BUFFER),
            full: Some(full),
            empty,
            made: 1,
            thread: Some(thread),
        })
    }

    /// Hand the buffer to the writer thread. Fails with the thread's error if it stopped.
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let sent = self.full.as_ref().is_some_and(|tx| tx.send(buf).is_ok());
        if sent {
            let next = match self.empty.try_recv() {
                Ok(b) => Some(b),
                Err(_) if self.made < BLOB_BUFFERS => {
                    self.made += 1;
                    Some(Vec::with_capacity(BLOB_BUFFER))
                }
                // All in use: wait for the writer thread to give one back.
                Err(_) => self.empty.recv().ok(),
            };
            if let Some(next) = next {
                self.buf = next;
                return Ok(());
            }
        }
        // The thread only hangs up after an error.
        match self.stop() {
            Err(e) => Err(e),
            Ok(_) => Err(io::Error::other("blob writer stopped")),
        }
    }

    /// Stop the writer thread once it has written everything sent, and take the file back.
    fn stop(&mut self) -> io::Result<EarlyWriteback> {
        self.full = None;
        let thread = self
            .thread
            .take()
            .ok_or_else(|| io::Error::other("blob writer stopped"))?;
        thread
            .join()
            .map_err(|_| io::Error::other("blob writer thread panicked"))?
    }

    /// Write out what is buffered and make the file durable.
    fn sync(mut self) -> io::Result<()> {
        self.send()?;
        self.stop()?.sync()
    }
}

impl Drop for BlobFile {
    fn drop(&mut self) {
        // An abandoned blob: what the thread meets is of no use to anyone.
        if self.thread.is_some() {
            let _ = self.stop();
        }
    }
}

impl Write for BlobFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = BLOB_BUFFER - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BLOB_BUFFER {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Durability is `sync`'s; a flush only passes the bytes on.
        self.send()
    }
}

/// Write a layer blob into `blobs_dir` with `produce` (given the file and its temporary path):
/// temporary file, fsync, rename to the digest's hex name, fsync of the directory. On error the
/// temporary file is removed and nothing else changes; so too when `cancel` is set by the time
/// the blob is written (the caller is going away: a finished blob would be left to nobody).
pub fn write_blob_file(
    blobs_dir: &Path,
    cancel: &Cancel,
    produce: impl FnOnce(BlobFile, &Path) -> Result<(LayerInfo, BlobFile)>,
) -> Result<LayerInfo> {
    let (tmp_path, file) = create_temp(blobs_dir)?;
    let res = (|| {
        let blob = BlobFile::new(file).at(&tmp_path)?;
        let (mut info, blob) = produce(blob, &tmp_path)?;
        blob.sync().at(&tmp_path)?;
        cancel.check()?;
        let hex = info.digest.strip_prefix("sha256:").expect("sha256 digest");
        let final_path = blobs_dir.join(hex);
        std::fs::rename(&tmp_path, &final_path).at(&final_path)?;
        info.path = Some(final_path);
        Ok(info)
    })();
    match res {
        Ok(info) => {
            // The rename is durable once the directory is.
            File::open(blobs_dir)
                .and_then(|d| d.sync_all())
                .at(blobs_dir)?;
            Ok(info)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp_path);
            Err(e)
        }
    }
}

/// Start writeback this often while writing a blob.
const WRITEBACK_EVERY: u64 = 8 << 20;
/// Ask for a background `fdatasync` this often while writing a blob.
const SYNC_EVERY: u64 = 16 << 20;

/// A blob file that asks the kernel to start writing its pages out as they come, and has a
/// helper thread `fdatasync` it now and then, so the final `fsync` has little left to wait
/// for: disk I/O, and the device cache flushes that make it durable, overlap the hashing and
/// compression instead of following them.
struct EarlyWriteback {
    file: File,
    written: u64,
    started: u64,
    synced: u64,
    syncer: Option<Syncer>,
}

/// The helper thread of [`EarlyWriteback`]: one `fdatasync` per request, its first error kept
/// for [`EarlyWriteback::sync`] (an error a sync reports is not reported again to a later one
/// on the same open file, so it must not be dropped).
struct Syncer {
    requests: mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<io::Result<()>>,
}

impl EarlyWriteback {
    fn request_sync(&mut self) {
        if self.syncer.is_none() {
            let Ok(file) = self.file.try_clone() else {
                return; // the final fsync does it all
            };
            let (requests, rx) = mpsc::sync_channel::<()>(1);
            let spawned = std::thread::Builder::new()
                .name("layerdiff-sync".into())
                .spawn(move || {
                    for () in rx {
                        file.sync_data()?;
                    }
                    Ok(())
                });
            let Ok(thread) = spawned else { return };
            self.syncer = Some(Syncer { requests, thread });
        }
        if let Some(s) = &self.syncer {
            // Full: a sync is pending and will cover these bytes too.
            let _ = s.requests.try_send(());
        }
    }

    /// Stop the helper, if there is one, and give what it met.
    fn stop_syncer(&mut self) -> io::Result<()> {
        let Some(Syncer { requests, thread }) = self.syncer.take() else {
            return Ok(());
        };
        drop(requests);
        thread
            .join()
            .map_err(|_| io::Error::other("sync thread panicked"))?
    }

    /// Make the file durable: stop the helper (reporting what it met), then `fsync`.
    fn sync(&mut self) -> io::Result<()> {
        self.stop_syncer()?;
        self.file.sync_all()
    }
}

impl Drop for EarlyWriteback {
    fn drop(&mut self) {
        // An error here is of a blob being abandoned.
        let _ = self.stop_syncer();
    }
}

impl Write for EarlyWriteback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_EVERY {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on a descriptor we own, over a range of it we wrote;
            // SYNC_FILE_RANGE_WRITE only initiates writeback and does not wait for it. It is a
            // hint: its errors are not ours to handle (fsync reports any that matter).
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.started as libc::off64_t,
                    (self.written - self.started) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.started = self.written;
        }
        if self.written - self.synced >= SYNC_EVERY {
            self.synced = self.written;
            self.request_sync();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A new, exclusive temporary file `.tmp-layer-<pid>-<random>` in `dir`.
fn create_temp(dir: &Path) -> Result<(PathBuf, File)> {
    use std::hash::{BuildHasher, RandomState};
    let pid = std::process::id();
    for attempt in 0u32.. {
        // RandomState is seeded randomly per process and per instance: enough to avoid
        // collisions between writers; O_EXCL settles the rest.
        let r = RandomState::new().hash_one((pid, attempt, std::time::SystemTime::now()));
        let path = dir.join(format!(".tmp-layer-{pid}-{r:016x}"));
        match File::options().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => continue,
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    unreachable!()
}

#[cfg(test)]
#[path = "layer_tests.rs"]
mod tests;
