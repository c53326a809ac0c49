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
//! Reading overlaps with hashing and compression, and memory is bounded by the channel and the
//! compressor's blocks in flight, not by file or layer size.
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
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use rayon::prelude::*;
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::compress::{Compression, Compressor, resolve_threads};
use crate::diff::{Change, ChangeKind};
use crate::digest::Sha256Hasher;
use crate::entry::{Kind, cmp_paths, os_path, parent};
use crate::error::{Error, IoContext, Result};
use crate::tar::writer::{Meta, TarWriter};
use crate::whiteout::WHITEOUT_PREFIX;

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
/// Chunk size of streamed files.
const CHUNK: usize = 1 << 20;
/// A batch of small files holds at most this many bytes ...
const BATCH_BYTES: u64 = 4 << 20;
/// ... and this many files.
const BATCH_FILES: usize = 256;
/// Messages the reader may run ahead of the writer: with the limits above, at most
/// `(AHEAD + 2) × 4 MiB` of file content is in memory.
const AHEAD: usize = 4;
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
    // Whiteouts first ...
    for &(g, end, _, real) in &groups {
        if real && changes[g].kind == ChangeKind::Deleted {
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

/// Write the layer for `changes` (contents read from the tree at `upper`) into `sink`.
pub fn write_layer<W: Write + Send>(
    upper: &Path,
    changes: &[Change],
    opts: &LayerOptions,
    sink: W,
) -> Result<LayerInfo> {
    let (info, sink) = write_layer_into(upper, changes, opts, sink, Path::new("<layer>"))?;
    drop(sink);
    Ok(info)
}

/// [`write_layer`], giving the (flushed) sink back; write errors are reported on `output`.
fn write_layer_into<W: Write + Send>(
    upper: &Path,
    changes: &[Change],
    opts: &LayerOptions,
    sink: W,
    output: &Path,
) -> Result<(LayerInfo, W)> {
    let (ops, warnings) = plan(upper, changes)?;
    let threads = resolve_threads(opts.threads);
    let root: OwnedFd = rustix::fs::open(
        upper,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .at(upper)?;
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

    let mut out = Pipeline::new(sink, opts, threads, output)?;

    let (tx, rx) = mpsc::sync_channel::<Vec<Piece>>(AHEAD);
    let result = std::thread::scope(|s| {
        let reader = Reader {
            root: &root,
            changes,
            pool: &pool,
        };
        s.spawn(move || reader.run(&files, tx));
        let result = write_ops(out.tar(), upper, changes, &ops, rx, opts.cancel.as_deref());
        // `rx` is dropped by now: a reader blocked on a full channel wakes up and stops.
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
}

impl<W: Write> Pipeline<W> {
    /// Start a layer into `sink`; `output` names the sink in errors.
    pub fn new(sink: W, opts: &LayerOptions, threads: usize, output: &Path) -> Result<Self> {
        let blob_hasher = match opts.compression {
            // The blob is the tar: its digest is the diff_id, no need to hash it twice.
            Compression::None => None,
            _ => Some(Sha256Hasher::new()),
        };
        let blob = HashingWriter {
            inner: BufWriter::with_capacity(SINK_BUFFER, sink),
            hasher: blob_hasher,
            len: 0,
        };
        let compressor = Compressor::new(blob, opts.compression, threads)?;
        let tar = TarWriter::new(crate::digest::Sha256Writer::new(compressor))
            .with_source_date_epoch(opts.source_date_epoch)
            .with_output_name(output);
        Ok(Pipeline {
            tar,
            compression: opts.compression,
            output: output.to_path_buf(),
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
        let blob = compressor.finish().at(output)?;
        let (digest, size) = match blob.hasher {
            Some(h) => h.finish(),
            None => (diff_id.clone(), tar_size),
        };
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
    rx: mpsc::Receiver<Vec<Piece>>,
    cancel: Option<&crate::cancel::Cancel>,
) -> Result<()> {
    let mut pieces = Vec::new().into_iter();
    let mut next_piece = || -> Result<Piece> {
        loop {
            if let Some(p) = pieces.next() {
                return Ok(p);
            }
            // The reader only hangs up early after an error, which it sends first.
            pieces = rx.recv().map_err(|_| Error::Interrupted)?.into_iter();
        }
    };
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
                            let piece = next_piece()?;
                            debug_assert_eq!(piece.file, i, "reader out of step");
                            let data = piece.data.map_err(|err| relocate(err, upper))?;
                            body.write(&data)?;
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

/// Content of one file, or part of it: the pieces of a file add up to its size exactly, or end
/// with an error. An empty file is one empty piece.
struct Piece {
    /// Index of the change.
    file: usize,
    data: Result<Vec<u8>>,
}

/// The reader side: opens each file under the root, no symlink followed, and sends its bytes.
struct Reader<'a> {
    root: &'a OwnedFd,
    changes: &'a [Change],
    pool: &'a rayon::ThreadPool,
}

impl Reader<'_> {
    fn size(&self, i: usize) -> u64 {
        self.changes[i].entry.as_ref().map_or(0, |e| e.size)
    }

    /// Send every file of `files`, in order. Stops at the first error (after sending it) or
    /// when the writer hangs up.
    fn run(&self, files: &[usize], tx: mpsc::SyncSender<Vec<Piece>>) {
        let mut k = 0;
        while k < files.len() {
            if self.size(files[k]) > SMALL_FILE {
                if !self.stream(files[k], &tx) {
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
            let batch: Vec<Piece> = self.pool.install(|| {
                files[k..end]
                    .par_iter()
                    .map(|&i| Piece {
                        file: i,
                        data: self.read_small(i),
                    })
                    .collect()
            });
            let failed = batch.iter().any(|p| p.data.is_err());
            if tx.send(batch).is_err() || failed {
                return;
            }
            k = end;
        }
    }

    fn read_small(&self, i: usize) -> Result<Vec<u8>> {
        let path = &self.changes[i].path;
        let size = self.size(i);
        let file = self.open(path, size)?;
        let mut data = Vec::with_capacity(size as usize + 1);
        // One byte more than expected: a file that grew is caught here.
        (&file)
            .take(size + 1)
            .read_to_end(&mut data)
            .at(os_path(path))?;
        if data.len() as u64 != size {
            return Err(changed(path, size, data.len() as u64));
        }
        Ok(data)
    }

    /// Stream a large file in chunks. False if the writer is gone or an error was sent.
    fn stream(&self, i: usize, tx: &mpsc::SyncSender<Vec<Piece>>) -> bool {
        let path = &self.changes[i].path;
        let size = self.size(i);
        let send = |data: Result<Vec<u8>>| {
            let failed = data.is_err();
            tx.send(vec![Piece { file: i, data }]).is_ok() && !failed
        };
        let file = match self.open(path, size) {
            Ok(f) => f,
            Err(e) => return send(Err(e)),
        };
        let mut left = size;
        while left > 0 {
            let want = left.min(CHUNK as u64);
            let mut buf = Vec::with_capacity(want as usize);
            if let Err(e) = (&file).take(want).read_to_end(&mut buf) {
                return send(Err(Error::io(os_path(path), e)));
            }
            if (buf.len() as u64) < want {
                return send(Err(changed(path, size, size - left + buf.len() as u64)));
            }
            left -= want;
            if !send(Ok(buf)) {
                return false;
            }
        }
        let mut extra = [0u8; 1];
        match (&file).read(&mut extra) {
            Ok(0) => true,
            Ok(n) => send(Err(changed(path, size, size + n as u64))),
            Err(e) => send(Err(Error::io(os_path(path), e))),
        }
    }

    /// Open the regular file `path` below the root for reading, following no symlink in any
    /// component, and check it still has the size the walk saw.
    fn open(&self, path: &[u8], size: u64) -> Result<File> {
        let fd = open_beneath(self.root, path).at(os_path(path))?;
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

fn changed(path: &[u8], expected: u64, found: u64) -> Error {
    Error::FileChanged {
        path: os_path(path).to_path_buf(),
        expected,
        found,
    }
}

/// Set when `openat2` turned out to be unavailable (kernel before 5.6, or a seccomp filter).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Open `path` (relative) below `root` read-only, resolving no symlink and no `..`.
///
/// `O_NONBLOCK`: a FIFO put where the walk saw a file must not block the open (the caller
/// checks the type). `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_MAGICLINKS` does it in one call; without it, one `openat(O_NOFOLLOW)` per
/// component.
fn open_beneath(root: &OwnedFd, path: &[u8]) -> io::Result<OwnedFd> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
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
        match rustix::fs::openat2(root, os_path(path), flags, Mode::empty(), resolve) {
            Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
            }
            other => return other.map_err(Into::into),
        }
    }
    let mut comps = path.split(|&b| b == b'/').peekable();
    let mut dir: Option<OwnedFd> = None;
    while let Some(c) = comps.next() {
        let at = dir.as_ref().unwrap_or(root);
        if comps.peek().is_none() {
            return Ok(rustix::fs::openat(at, os_path(c), flags, Mode::empty())?);
        }
        let d = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        dir = Some(rustix::fs::openat(at, os_path(c), d, Mode::empty())?);
    }
    unreachable!("a non-empty path has a last component")
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
pub fn write_layer_file(
    upper: &Path,
    changes: &[Change],
    opts: &LayerOptions,
    blobs_dir: &Path,
) -> Result<LayerInfo> {
    write_blob_file(blobs_dir, |blob, tmp_path| {
        write_layer_into(upper, changes, opts, blob, tmp_path)
    })
}

/// A blob file being written by [`write_blob_file`].
pub struct BlobFile(EarlyWriteback);

impl Write for BlobFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Write a layer blob into `blobs_dir` with `produce` (given the file and its temporary path):
/// temporary file, fsync, rename to the digest's hex name, fsync of the directory. On error the
/// temporary file is removed and nothing else changes.
pub fn write_blob_file(
    blobs_dir: &Path,
    produce: impl FnOnce(BlobFile, &Path) -> Result<(LayerInfo, BlobFile)>,
) -> Result<LayerInfo> {
    let (tmp_path, file) = create_temp(blobs_dir)?;
    let res = (|| {
        let blob = BlobFile(EarlyWriteback {
            file,
            written: 0,
            started: 0,
        });
        let (mut info, blob) = produce(blob, &tmp_path)?;
        blob.0.file.sync_all().at(&tmp_path)?;
        drop(blob);
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

/// A blob file that asks the kernel to start writing its pages out as they come, so the final
/// `fsync` has little left to wait for: disk I/O overlaps the hashing and compression instead
/// of following them.
struct EarlyWriteback {
    file: File,
    written: u64,
    started: u64,
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
mod tests {
    use super::*;
    use crate::entry::{Entry, Timestamp};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    /// An entry for `rel` below `root`, as a walk would report it.
    fn stat(root: &Path, rel: &[u8]) -> Entry {
        let md = std::fs::symlink_metadata(root.join(os_path(rel))).unwrap();
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else if ft.is_char_device() {
            Kind::CharDevice
        } else if ft.is_block_device() {
            Kind::BlockDevice
        } else {
            Kind::File
        };
        let link_target = if kind == Kind::Symlink {
            std::fs::read_link(root.join(os_path(rel)))
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec()
        } else {
            Vec::new()
        };
        Entry {
            path: rel.to_vec(),
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: Timestamp {
                sec: md.mtime(),
                nsec: md.mtime_nsec() as u32,
            },
            size: if kind == Kind::File { md.size() } else { 0 },
            xattrs: Vec::new(),
            link_target,
            rdev_major: rustix::fs::major(md.rdev()),
            rdev_minor: rustix::fs::minor(md.rdev()),
            dev: md.dev(),
            ino: md.ino(),
            nlink: md.nlink(),
        }
    }

    fn added(e: Entry) -> Change {
        Change {
            kind: ChangeKind::Added,
            path: e.path.clone(),
            entry: Some(e),
            opaque: false,
        }
    }

    fn deleted(p: &[u8]) -> Change {
        Change {
            kind: ChangeKind::Deleted,
            path: p.to_vec(),
            entry: None,
            opaque: false,
        }
    }

    /// A hand-made entry (no file behind it).
    fn entry(path: &[u8], kind: Kind) -> Entry {
        Entry {
            path: path.to_vec(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: Timestamp {
                sec: 1_700_000_000,
                nsec: 0,
            },
            size: 0,
            xattrs: Vec::new(),
            link_target: Vec::new(),
            rdev_major: 0,
            rdev_minor: 0,
            dev: 1,
            ino: 0,
            nlink: 1,
        }
    }

    fn sorted(mut v: Vec<Change>) -> Vec<Change> {
        v.sort_by(|a, b| cmp_paths(&a.path, &b.path));
        v
    }

    /// The tar paths `plan` gives for `changes`.
    fn planned(changes: &[Change]) -> Vec<String> {
        let (ops, _) = plan(Path::new("/up"), changes).unwrap();
        ops.iter()
            .map(|op| match *op {
                Op::Entry(i) => String::from_utf8_lossy(&changes[i].path).into_owned(),
                Op::Link(i, t) => format!(
                    "{} => {}",
                    String::from_utf8_lossy(&changes[i].path),
                    String::from_utf8_lossy(&changes[t].path)
                ),
                Op::Whiteout(i) => {
                    let p = &changes[i].path;
                    let (d, n) = (parent(p), &p[p.len() - name_len(p)..]);
                    String::from_utf8_lossy(&crate::entry::join(d, &[b".wh.", n].concat()))
                        .into_owned()
                }
                Op::Opaque(i) => {
                    format!("{}/.wh..wh..opq", String::from_utf8_lossy(&changes[i].path))
                }
            })
            .collect()
    }

    #[test]
    fn whiteouts_and_opaque_markers_come_before_siblings() {
        let mut opq = added(entry(b"b", Kind::Dir));
        opq.opaque = true;
        let changes = sorted(vec![
            added(entry(b"a", Kind::Dir)),
            added(entry(b"a/a1", Kind::File)),
            deleted(b"a/z"),
            deleted(b"a/b"),
            added(entry(b"a/c", Kind::Dir)),
            deleted(b"a/c/x"),
            added(entry(b"a/c/y", Kind::File)),
            opq,
            added(entry(b"b/k", Kind::File)),
            deleted(b"c"),
            // No change for "d" or "d/e": the whiteout still goes before its siblings.
            added(entry(b"d/e/f", Kind::File)),
            deleted(b"d/e/g"),
            added(entry(b"d/h", Kind::File)),
            deleted(b"d/0"),
            added(entry(b"a-b", Kind::File)),
        ]);
        assert_eq!(
            planned(&changes),
            [
                ".wh.c",
                "a",
                ".wh.b",
                "a/.wh.z",
                "a/a1",
                "a/c",
                "a/c/.wh.x",
                "a/c/y",
                "a-b",
                "b",
                "b/.wh..wh..opq",
                "b/k",
                "d/.wh.0",
                "d/e/.wh.g",
                "d/e/f",
                "d/h",
            ]
            .map(|s| s.replace(".wh.b", "a/.wh.b"))
        );
    }

    #[test]
    fn plan_checks_its_input() {
        let up = Path::new("/up");
        let bad = |c: Vec<Change>| plan(up, &c).unwrap_err();
        assert!(matches!(
            bad(vec![
                added(entry(b"b", Kind::Dir)),
                added(entry(b"a", Kind::Dir))
            ]),
            Error::InvalidArgument(_)
        ));
        assert!(matches!(
            bad(vec![deleted(b"a"), deleted(b"a")]),
            Error::InvalidArgument(_)
        ));
        assert!(matches!(
            bad(vec![deleted(b"a"), added(entry(b"a/b", Kind::File))]),
            Error::InvalidArgument(_)
        ));
        let mut opaque_file = added(entry(b"f", Kind::File));
        opaque_file.opaque = true;
        assert!(matches!(bad(vec![opaque_file]), Error::InvalidArgument(_)));
        match bad(vec![
            added(entry(b"x", Kind::Dir)),
            added(entry(b"x/.wh.y", Kind::File)),
        ]) {
            Error::ReservedName { path } => assert_eq!(path, Path::new("/up/x/.wh.y")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            bad(vec![deleted(b".wh..wh..opq")]),
            Error::ReservedName { .. }
        ));
    }

    #[test]
    fn hardlinks_point_at_the_first_path_and_sockets_are_left_out() {
        let mut f1 = entry(b"z", Kind::File);
        f1.nlink = 2;
        f1.ino = 42;
        let mut f2 = f1.clone();
        f2.path = b"a/x".to_vec();
        let changes = sorted(vec![
            added(entry(b"a", Kind::Dir)),
            added(f2),
            added(f1),
            added(entry(b"s", Kind::Socket)),
        ]);
        assert_eq!(planned(&changes), ["a", "a/x", "z => a/x"]);
        let (_, warnings) = plan(Path::new("/up"), &changes).unwrap();
        assert_eq!(warnings, ["s: socket not stored in the layer"]);
    }

    /// A small tree with one of everything a walk finds, and its changes.
    fn tree() -> (tempfile::TempDir, Vec<Change>) {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("etc/ssl")).unwrap();
        std::fs::write(r.join("etc/hostname"), b"box\n").unwrap();
        std::fs::write(
            r.join("etc/big"),
            (0..3_000_000u32)
                .map(|i| (i * 7 % 253) as u8)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        std::fs::hard_link(r.join("etc/hostname"), r.join("etc/ssl/hostname-link")).unwrap();
        std::os::unix::fs::symlink(
            "../".repeat(60) + "usr/share/zoneinfo/UTC",
            r.join("etc/localtime"),
        )
        .unwrap();
        std::fs::write(r.join(os_path(b"etc/caf\xe9")), b"latin-1 name").unwrap();
        let long: Vec<u8> = [&b"etc/ssl/"[..], &[b'n'; 200]].concat();
        std::fs::write(r.join(os_path(&long)), b"long").unwrap();
        Command::new("mkfifo")
            .arg(r.join("etc/fifo"))
            .status()
            .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(r.join("etc/sock")).unwrap();
        let mut paths: Vec<Vec<u8>> = vec![
            b"etc".to_vec(),
            b"etc/big".to_vec(),
            b"etc/caf\xe9".to_vec(),
            b"etc/fifo".to_vec(),
            b"etc/hostname".to_vec(),
            b"etc/localtime".to_vec(),
            b"etc/sock".to_vec(),
            b"etc/ssl".to_vec(),
            b"etc/ssl/hostname-link".to_vec(),
            long,
        ];
        paths.sort_by(|a, b| cmp_paths(a, b));
        let mut changes: Vec<Change> = paths.iter().map(|p| added(stat(r, p))).collect();
        changes.push(deleted(b"etc/gone"));
        changes.push(deleted(b"var"));
        changes[0].opaque = true;
        (dir, sorted(changes))
    }

    fn sha256sum(path: &Path) -> String {
        let out = Command::new("sha256sum").arg(path).output().unwrap();
        format!(
            "sha256:{}",
            String::from_utf8(out.stdout)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
        )
    }

    fn opts(compression: Compression, threads: usize) -> LayerOptions {
        LayerOptions {
            compression,
            threads,
            ..LayerOptions::default()
        }
    }

    #[test]
    fn uncompressed_layer_reads_back_in_layer_order() {
        let (dir, changes) = tree();
        let blobs = tempfile::tempdir().unwrap();
        let info = write_layer_file(
            dir.path(),
            &changes,
            &opts(Compression::None, 2),
            blobs.path(),
        )
        .unwrap();
        let path = info.path.clone().unwrap();
        assert_eq!(info.digest, info.diff_id);
        assert_eq!(sha256sum(&path), info.digest);
        assert_eq!(path, blobs.path().join(&info.digest[7..]));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), info.tar_size);
        assert_eq!(info.size, info.tar_size);
        assert_eq!(info.warnings, ["etc/sock: socket not stored in the layer"]);
        assert_eq!(
            std::fs::read_dir(blobs.path()).unwrap().count(),
            1,
            "no temporary file left"
        );

        let data = std::fs::read(&path).unwrap();
        let mut ar = tar::Archive::new(&data[..]);
        let mut got = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut content = Vec::new();
            e.read_to_end(&mut content).unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let link = e
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned());
            got.push((
                name,
                e.header().entry_type().as_byte() as char,
                content.len(),
                link,
            ));
        }
        let long = format!("etc/ssl/{}", "n".repeat(200));
        let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(
            names,
            [
                ".wh.var",
                "etc/",
                "etc/.wh..wh..opq",
                "etc/.wh.gone",
                "etc/big",
                "etc/caf\u{fffd}",
                "etc/fifo",
                "etc/hostname",
                "etc/localtime",
                "etc/ssl/",
                "etc/ssl/hostname-link",
                &long,
            ]
        );
        assert_eq!(got[4].2, 3_000_000);
        assert_eq!(got[10].1, '1');
        assert_eq!(got[10].3.as_deref(), Some("etc/hostname"));
        assert!(
            got[8]
                .3
                .as_ref()
                .unwrap()
                .ends_with("usr/share/zoneinfo/UTC")
        );

        let out = Command::new("tar").arg("-tvf").arg(&path).output().unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn compressed_layers_are_identical_across_thread_counts() {
        let (dir, changes) = tree();
        let plain = {
            let mut v = Vec::new();
            let info =
                write_layer(dir.path(), &changes, &opts(Compression::None, 1), &mut v).unwrap();
            (info, v)
        };
        for c in [
            Compression::Gzip { level: 5 },
            Compression::Zstd { level: 3 },
        ] {
            let mut first = None;
            for threads in [1, 2, 4] {
                let blobs = tempfile::tempdir().unwrap();
                let info = write_layer_file(dir.path(), &changes, &opts(c, threads), blobs.path())
                    .unwrap();
                let path = info.path.clone().unwrap();
                assert_eq!(sha256sum(&path), info.digest);
                assert_eq!(info.diff_id, plain.0.diff_id);
                assert_eq!(info.tar_size, plain.0.tar_size);
                assert_eq!(info.media_type, c.media_type());
                let blob = std::fs::read(&path).unwrap();
                assert_eq!(blob.len() as u64, info.size);
                let tool = if matches!(c, Compression::Gzip { .. }) {
                    "gzip"
                } else {
                    "zstd"
                };
                let out = Command::new(tool).arg("-dc").arg(&path).output().unwrap();
                assert!(out.stdout == plain.1, "{tool} -dc gives the tar back");
                match &first {
                    None => first = Some(blob),
                    Some(f) => assert!(*f == blob, "{tool}: threads {threads} changed the bytes"),
                }
            }
        }
    }

    #[test]
    fn golden_digests() {
        // Fixed metadata and contents: nothing from the machine enters the layer.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        std::fs::write(dir.path().join("app/hello.txt"), b"hello, layer\n").unwrap();
        let mut d = entry(b"app", Kind::Dir);
        d.uid = 1000;
        let mut f = entry(b"app/hello.txt", Kind::File);
        f.mode = 0o644;
        f.size = 13;
        f.mtime = Timestamp {
            sec: 1_700_000_000,
            nsec: 5,
        };
        f.xattrs = vec![
            (b"user.x".to_vec(), b"1".to_vec()),
            (b"trusted.overlay.origin".to_vec(), b"z".to_vec()),
        ];
        let mut l = entry(b"app/link", Kind::Symlink);
        l.link_target = b"hello.txt".to_vec();
        let changes = vec![
            added(d),
            added(f),
            added(l),
            deleted(b"app/old"),
            deleted(b"tmp"),
        ];
        let get = |c| write_layer(dir.path(), &changes, &opts(c, 2), io::sink()).unwrap();
        let none = get(Compression::None);
        let gz = get(Compression::default());
        let zst = get(Compression::Zstd { level: 3 });
        assert_eq!(
            none.diff_id,
            "sha256:488d820040844d98bb48bd4001037dcf12f148e477d8a85eeab94ff89c9364a3"
        );
        assert_eq!(gz.diff_id, none.diff_id);
        assert_eq!(
            gz.digest,
            "sha256:466152216bf79d5f27d1b97c282c3d729041f49eae6edb5b9115002cb25dfca7"
        );
        assert_eq!(
            zst.digest,
            "sha256:c4ef63ea6dbc0750061f9d71aaa3903e787404aa5fc10fd48bca2deb15209c42"
        );
        // What the pinned bytes hold, as Python's tarfile reads them.
        let mut tar = Vec::new();
        write_layer(dir.path(), &changes, &opts(Compression::None, 1), &mut tar).unwrap();
        let script = r#"
import io, sys, tarfile
with tarfile.open(fileobj=io.BytesIO(sys.stdin.buffer.read())) as t:
    for m in t:
        print(m.name, m.type.decode(), oct(m.mode), m.uid, m.pax_headers.get("mtime", int(m.mtime)),
              sorted(m.pax_headers), m.linkname)
"#;
        let mut child = Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&tar).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "\
.wh.tmp 0 0o0 0 0 [] 
app 5 0o755 1000 1700000000 [] 
app/.wh.old 0 0o0 0 0 [] 
app/hello.txt 0 0o644 0 1700000000.000000005 ['SCHILY.xattr.user.x', 'mtime'] 
app/link 2 0o755 0 1700000000 [] hello.txt
"
        );
        // mtime clamping changes the diff_id.
        let clamped = write_layer(
            dir.path(),
            &changes,
            &LayerOptions {
                source_date_epoch: Some(0),
                ..opts(Compression::None, 1)
            },
            io::sink(),
        )
        .unwrap();
        assert_ne!(clamped.diff_id, none.diff_id);
    }

    #[test]
    fn a_file_that_changed_size_is_an_error() {
        let (dir, mut changes) = tree();
        for name in [&b"etc/hostname"[..], b"etc/big"] {
            let i = changes.iter().position(|c| c.path == name).unwrap();
            let real = changes[i].entry.as_ref().unwrap().size;
            changes[i].entry.as_mut().unwrap().size = real + 1;
            let blobs = tempfile::tempdir().unwrap();
            match write_layer_file(
                dir.path(),
                &changes,
                &opts(Compression::Gzip { level: 1 }, 2),
                blobs.path(),
            ) {
                Err(Error::FileChanged {
                    path,
                    expected,
                    found,
                }) => {
                    assert_eq!(path, dir.path().join(os_path(name)));
                    assert_eq!((expected, found), (real + 1, real));
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                std::fs::read_dir(blobs.path()).unwrap().count(),
                0,
                "temporary file removed"
            );
            changes[i].entry.as_mut().unwrap().size = real;
        }
    }

    #[test]
    fn symlinks_in_the_path_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("d")).unwrap();
        let mut f = entry(b"d/secret", Kind::File);
        f.size = 6;
        let changes = vec![added(f)];
        let err = write_layer(
            dir.path(),
            &changes,
            &opts(Compression::None, 1),
            io::sink(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        // Also through the per-component fallback.
        let root: OwnedFd = rustix::fs::open(
            dir.path(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        NO_OPENAT2.store(true, Ordering::Relaxed);
        let res = open_beneath(&root, b"d/secret");
        NO_OPENAT2.store(false, Ordering::Relaxed);
        assert!(res.is_err());
        assert!(open_beneath(&root, b"../x").is_err());
    }

    /// Memory does not grow with file size: a 2 GiB (sparse) file with < 100 MB peak RSS.
    /// Run alone: `cargo test --release -- --ignored big_file`.
    #[test]
    #[ignore]
    fn big_file_streams_in_bounded_memory() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("big")).unwrap();
        f.set_len(2 << 30).unwrap();
        drop(f);
        let changes = vec![added(stat(dir.path(), b"big"))];
        let t = std::time::Instant::now();
        let info = write_layer(
            dir.path(),
            &changes,
            &opts(Compression::Gzip { level: 1 }, 0),
            io::sink(),
        )
        .unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let hwm: u64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        eprintln!(
            "2 GiB in {:?}, peak RSS {} MB, {}",
            t.elapsed(),
            hwm / 1024,
            info.digest
        );
        assert!(hwm < 100 * 1024, "peak RSS {hwm} kB");
        assert!(info.tar_size >= (2 << 30) + 3 * 512);
    }

    /// Rough timing on a real tree: `LAYERDIFF_BENCH_TREE=/some/rootfs cargo test --release --
    /// --ignored --nocapture bench_tree`. Prints, asserts nothing about time.
    #[test]
    #[ignore]
    fn bench_tree() {
        let Some(root) = std::env::var_os("LAYERDIFF_BENCH_TREE") else {
            return;
        };
        let root = PathBuf::from(root);
        fn walk(root: &Path, rel: &[u8], out: &mut Vec<Change>) {
            for d in std::fs::read_dir(root.join(os_path(rel))).unwrap() {
                let p = crate::entry::join(rel, d.unwrap().file_name().as_bytes());
                let e = stat(root, &p);
                let is_dir = e.kind == Kind::Dir;
                out.push(added(e));
                if is_dir {
                    walk(root, &p, out);
                }
            }
        }
        let mut changes = Vec::new();
        walk(&root, b"", &mut changes);
        let changes = sorted(changes);
        let blobs = tempfile::tempdir().unwrap();
        let configs = [
            Compression::None,
            Compression::Gzip { level: 5 },
            Compression::Zstd { level: 3 },
            Compression::Zstd { level: 2 },
        ];
        for c in configs {
            for threads in [0, 1] {
                let (mut sink_best, mut file_best) = (f64::MAX, f64::MAX);
                let mut info = None;
                for _ in 0..3 {
                    let t = std::time::Instant::now();
                    info =
                        Some(write_layer(&root, &changes, &opts(c, threads), io::sink()).unwrap());
                    sink_best = sink_best.min(t.elapsed().as_secs_f64());
                    let t = std::time::Instant::now();
                    let file =
                        write_layer_file(&root, &changes, &opts(c, threads), blobs.path()).unwrap();
                    file_best = file_best.min(t.elapsed().as_secs_f64());
                    std::fs::remove_file(file.path.unwrap()).unwrap();
                }
                let info = info.unwrap();
                eprintln!(
                    "{c:?} threads {threads}: {} entries, tar {} B, blob {} B, best of 3: sink {sink_best:.3}s, file {file_best:.3}s",
                    changes.len(),
                    info.tar_size,
                    info.size,
                );
            }
        }
    }
}
