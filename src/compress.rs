//! Layer compression: none, parallel deterministic gzip, deterministic zstd.
//!
//! A layer's digest is part of its identity, so the compressed bytes must depend on the input
//! and the [`Compression`] only — never on the thread count, the machine, or how the input was
//! cut into `write` calls.
//!
//! * gzip: the input is cut into blocks at content-defined boundaries between tar records (see
//!   [`crate::members`]), each compressed on its own by libdeflate into a complete gzip member
//!   (at level 1, or stored, when deflate would gain next to nothing:
//!   [`crate::incompressible`]; no name, mtime 0, OS 255 "unknown", a tag in `FEXTRA`), and the
//!   members are written in input order. A multi-member file is plain gzip (RFC 1952 §2.2):
//!   GNU gzip, pigz, Python's `gzip` and Go's `compress/gzip` read it whole. The blocks are
//!   compressed on a thread pool with at most `2 × threads` in flight, so memory stays bounded
//!   whatever the layer size.
//! * zstd: one frame, always in zstd's multithreaded mode (at least one worker), whose output
//!   depends on the job size and not on the worker count; the job size is pinned
//!   ([`ZSTD_JOB_SIZE`]) and so are the window and long-distance matching, the content
//!   checksum is on, the content size is not written. The bundled libzstd is pinned by
//!   `Cargo.lock`.
//!
//! [`Write::flush`] on a [`Compressor`] never ends a block or a zstd job (that would make the
//! bytes depend on when it is called); it only flushes what is complete.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, mpsc};

use crate::decompress::MemberSeen;
use crate::error::{Error, Result};
use crate::incompressible;
use crate::members::{self, MemberIndex};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (the OCI default), compressed in parallel fixed-size blocks.
    Gzip {
        /// Compression level 1..=12 (libdeflate scale).
        level: i32,
    },
    /// zstd with a fixed parameter set.
    Zstd {
        /// Compression level 1..=19.
        level: i32,
    },
}

/// Default gzip level (libdeflate scale).
///
/// Measured on the Debian 12 minbase rootfs (204 MB of tar) in 1 MiB members, deflate's CPU
/// time on one core for the members worth deflating (172 MB), and the whole layer's size
/// against `pigz -6` (92.7 MB):
///
/// | level | CPU time | layer size vs `pigz -6` |
/// |---|---|---|
/// | libdeflate 1 | 1.18 s | +3.8 % |
/// | **libdeflate 2** | **1.79 s** | **+1.4 %** |
/// | libdeflate 3 | 1.96 s | +0.7 % |
/// | libdeflate 4 | 2.05 s | +0.3 % |
///
/// A commit of that rootfs with 2 threads takes 1.59–1.65 s at level 2 and 1.79–1.86 s at
/// level 4 (3.0 against 3.4 s of CPU time). Level 2 is the default: the fastest level within
/// the 3 % size bound on such a rootfs. Text-heavy trees pay more for it: on Rust and C
/// source (115 MB of tar) level 2 is 8.6 % larger than `pigz -6`, level 4 3.8 %, level 5
/// 0.8 %, at 0.67, 0.82 and 0.98 s. Going from level 2 to 4 saves about the same bytes per
/// second of CPU time on both trees (6 kB a millisecond); text just has less left to save.
/// `--compression-level` chooses another level.
pub const DEFAULT_GZIP_LEVEL: i32 = 2;

/// Default zstd level.
///
/// With the fixed parameters of every level (a window of one job, long-distance matching,
/// see `zstd_encoder`) and a 2^15-entry hash table, level 2 compresses the Debian 12 minbase
/// rootfs (204 MB of tar) to 84.5 MB, 0.6 % smaller than `zstd -3` makes GNU tar's archive of
/// it, and a commit takes 0.80–0.94 s in-process against 1.07 s at level 3 with zstd's own
/// parameters (83.9 MB); without the long-distance matching level 2 is 3 % larger than
/// `zstd -3`.
pub const DEFAULT_ZSTD_LEVEL: i32 = 2;

/// zstd window (4 MiB, log 22): one job. A job sees its own input and an overlap of the one
/// before it, so a longer window finds little more and costs a larger overlap per job.
const ZSTD_WINDOW_LOG: u32 = 22;

/// Hash table of level 2: 2^15 entries (zstd's own: 2^16) stay in a core's L2 cache.
const ZSTD_LEVEL2_HASH_LOG: u32 = 15;

/// One position in 2^9 is a long-distance match candidate (zstd's default for this window:
/// 2^7). On the Debian rootfs: 0.8 % larger output for 12 % less time.
const ZSTD_LDM_HASH_RATE_LOG: u32 = 9;

/// zstd job size (4 MiB). Part of the output format, like the gzip member boundaries: zstd's multithreaded
/// output is a function of the job size, so it is pinned here rather than left to zstd's
/// level-dependent default.
pub const ZSTD_JOB_SIZE: u32 = 4 << 20;

/// Input handed to zstd per call: fewer, larger calls than tar's 512-byte headers.
const ZSTD_FEED: usize = 1 << 20;

/// Input at least this long goes to zstd as it is: zstd copies it into its job buffer anyway,
/// and a copy into the feed buffer first costs more than the call it saves.
const ZSTD_DIRECT: usize = 64 << 10;

impl Compression {
    /// OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip { .. } => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd { .. } => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Check the level against the codec's range.
    pub fn validate(self) -> Result<()> {
        let (name, level, range) = match self {
            Compression::None => return Ok(()),
            Compression::Gzip { level } => ("gzip", level, 1..=12),
            Compression::Zstd { level } => ("zstd", level, 1..=19),
        };
        if !range.contains(&level) {
            return Err(Error::InvalidArgument(format!(
                "{name} level {level} is outside {}..={}",
                range.start(),
                range.end()
            )));
        }
        Ok(())
    }
}

impl Default for Compression {
    /// gzip at [`DEFAULT_GZIP_LEVEL`], the OCI default.
    fn default() -> Self {
        Compression::Gzip {
            level: DEFAULT_GZIP_LEVEL,
        }
    }
}

/// Most worker threads a layer writer starts (zstd's own limit on its workers): more cannot
/// run at once on any machine this is built for, and each costs a stack and its start-up.
pub const MAX_THREADS: usize = 256;

/// Worker threads for `threads` (0: one per core), at most [`MAX_THREADS`].
pub fn resolve_threads(threads: usize) -> usize {
    let n = if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    n.min(MAX_THREADS)
}

/// A [`Write`] adapter that compresses what passes through into `W`.
///
/// Call [`Compressor::finish`] to end the stream: dropping it abandons the output.
pub struct Compressor<W: Write> {
    inner: Codec<W>,
}

enum Codec<W: Write> {
    None(W),
    Gzip(Box<Gzip<W>>),
    Zstd {
        encoder: zstd::stream::write::Encoder<'static, W>,
        buf: Vec<u8>,
    },
}

impl<W: Write> Compressor<W> {
    /// Compress into `inner` with `threads` workers (0: one per core). The output does not
    /// depend on `threads`.
    pub fn new(inner: W, compression: Compression, threads: usize) -> Result<Self> {
        Self::with_reuse(inner, compression, threads, None)
    }

    /// [`Compressor::new`], taking gzip members from `reuse` where it holds the same bytes
    /// (which changes the speed, never the output).
    pub fn with_reuse(
        inner: W,
        compression: Compression,
        threads: usize,
        reuse: Option<Arc<MemberIndex>>,
    ) -> Result<Self> {
        compression.validate()?;
        let threads = resolve_threads(threads);
        let inner = match compression {
            Compression::None => Codec::None(inner),
            Compression::Gzip { level } => {
                // Members of another level are not what this writer would make.
                let reuse = reuse.filter(|index| index.level() == level);
                Codec::Gzip(Box::new(Gzip::new(inner, level, threads, reuse)?))
            }
            Compression::Zstd { level } => {
                let encoder = zstd_encoder(inner, level, threads).map_err(zstd_setup_error)?;
                Codec::Zstd {
                    encoder,
                    buf: Vec::with_capacity(ZSTD_FEED),
                }
            }
        };
        Ok(Compressor { inner })
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        match &self.inner {
            Codec::None(w) => w,
            Codec::Gzip(g) => &g.inner,
            Codec::Zstd { encoder, .. } => encoder.get_ref(),
        }
    }

    /// End the stream (last gzip member, zstd frame end) and return the inner writer, not
    /// flushed.
    pub fn finish(self) -> io::Result<W> {
        self.finish_members().map(|(w, _)| w)
    }

    /// Record the gzip members written (for [`Compressor::finish_members`]); other codecs
    /// have none.
    pub fn record_members(&mut self) {
        if let Codec::Gzip(g) = &mut self.inner {
            g.written.get_or_insert_with(Vec::new);
        }
    }

    /// [`Compressor::finish`], with the members recorded since [`Compressor::record_members`]
    /// (content keys from their tags, which this writer made).
    pub fn finish_members(self) -> io::Result<(W, Vec<MemberSeen>)> {
        match self.inner {
            Codec::None(w) => Ok((w, Vec::new())),
            Codec::Gzip(g) => g.finish(),
            Codec::Zstd { mut encoder, buf } => {
                encoder.write_all(&buf)?;
                Ok((encoder.finish()?, Vec::new()))
            }
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_all(data)?;
        Ok(data.len())
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.inner {
            Codec::None(w) => w.write_all(data),
            Codec::Gzip(g) => g.write_all(data),
            Codec::Zstd { encoder, buf } => {
                let direct = data.len() >= ZSTD_DIRECT;
                if !direct && buf.len() + data.len() < ZSTD_FEED {
                    buf.extend_from_slice(data);
                    return Ok(());
                }
                if !buf.is_empty() {
                    encoder.write_all(buf)?;
                    buf.clear();
                }
                if direct {
                    encoder.write_all(data)
                } else {
                    buf.extend_from_slice(data);
                    Ok(())
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Codec::None(w) => w.flush(),
            Codec::Gzip(g) => {
                g.write_ready()?;
                g.inner.flush()
            }
            // Not `encoder.flush()`: that would end the current job early.
            Codec::Zstd { encoder, .. } => encoder.get_mut().flush(),
        }
    }
}

fn zstd_encoder<W: Write>(
    inner: W,
    level: i32,
    threads: usize,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    use zstd::zstd_safe::CParameter;
    let mut e = zstd::stream::write::Encoder::new(inner, level)?;
    // Multithreaded mode even for one thread: its output differs from the single-threaded
    // mode's, and must not change with the thread count.
    e.multithread(u32::try_from(threads.max(1)).unwrap_or(u32::MAX))?;
    e.set_parameter(CParameter::JobSize(ZSTD_JOB_SIZE))?;
    e.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG))?;
    // Long-distance matching finds what repeats beyond the fast levels' short hash chains
    // (the same file in two places, tar headers of one directory); its matches are found in
    // input order whatever the worker count, so the output stays independent of it.
    e.long_distance_matching(true)?;
    e.set_parameter(CParameter::LdmHashRateLog(ZSTD_LDM_HASH_RATE_LOG))?;
    if level == 2 {
        e.set_parameter(CParameter::HashLog(ZSTD_LEVEL2_HASH_LOG))?;
    }
    e.include_checksum(true)?;
    e.include_contentsize(false)?;
    Ok(e)
}

fn zstd_setup_error(e: io::Error) -> Error {
    Error::InvalidArgument(format!("zstd encoder setup failed: {e}"))
}

/// One compressed gzip member, or the error that stopped it, with the input buffer back for
/// reuse.
type Member = (io::Result<Vec<u8>>, Vec<u8>);

/// Parallel, deterministic gzip: fixed-size blocks, one member each, written in order.
struct Gzip<W> {
    inner: W,
    level: i32,
    pool: rayon::ThreadPool,
    /// The block being filled.
    block: Vec<u8>,
    /// Members being compressed, oldest first.
    pending: VecDeque<mpsc::Receiver<Member>>,
    max_pending: usize,
    /// Buffers back from finished jobs (input blocks and output members).
    spare: Vec<Vec<u8>>,
    members: u64,
    /// Bytes at the start of `block` already looked at for a member boundary.
    scanned: usize,
    /// Finished members of other blobs to take instead of compressing.
    reuse: Option<Arc<MemberIndex>>,
    /// The members written, when asked for.
    written: Option<Vec<MemberSeen>>,
    /// Bytes written into `inner`.
    offset: u64,
}

thread_local! {
    /// Each pool thread's libdeflate compressors, one per level used (allocating one costs more
    /// than a small block): the level asked for, and 1 and 0 for members that deflate would
    /// hardly shrink.
    static DEFLATE: RefCell<Vec<(i32, libdeflater::Compressor)>> = const { RefCell::new(Vec::new()) };
}

/// A member of `input` at `level`: deflated at `level`, or, when deflate would gain next to
/// nothing, at level 1 or stored (see [`crate::incompressible`]); the tag names `level`
/// either way.
fn deflate_member(level: i32, input: &[u8], mut out: Vec<u8>) -> io::Result<Vec<u8>> {
    let method = incompressible::effort(input).level(level);
    DEFLATE.with(|cell| {
        let mut compressors = cell.borrow_mut();
        let at = match compressors.iter().position(|(l, _)| *l == method) {
            Some(at) => at,
            None => {
                let lvl = libdeflater::CompressionLvl::new(method)
                    .map_err(|e| io::Error::other(format!("gzip level {method}: {e:?}")))?;
                compressors.push((method, libdeflater::Compressor::new(lvl)));
                compressors.len() - 1
            }
        };
        let c = &mut compressors[at].1;
        out.clear();
        out.resize(
            members::HEADER_LEN + c.deflate_compress_bound(input.len()),
            0,
        );
        let n = c
            .deflate_compress(input, &mut out[members::HEADER_LEN..])
            .map_err(|e| io::Error::other(format!("gzip: {e:?}")))?;
        let clen = u32::try_from(n).map_err(|_| io::Error::other("gzip member too large"))?;
        members::write_header(&mut out, level, clen, input);
        out.truncate(members::HEADER_LEN + n);
        out.extend_from_slice(&libdeflater::crc32(input).to_le_bytes());
        out.extend_from_slice(&(input.len() as u32).to_le_bytes());
        Ok(out)
    })
}

/// One member of `input` at `level`, as the gzip writer makes it.
#[cfg(test)]
pub(crate) fn deflate_member_for_tests(level: i32, input: &[u8]) -> Vec<u8> {
    deflate_member(level, input, Vec::new()).expect("compresses")
}

/// A member for `input`: taken from `reuse` when it holds one, else compressed.
fn member(
    level: i32,
    input: &[u8],
    mut out: Vec<u8>,
    reuse: Option<&MemberIndex>,
) -> io::Result<Vec<u8>> {
    if reuse.is_some_and(|index| index.take(input, &mut out)) {
        return Ok(out);
    }
    deflate_member(level, input, out)
}

impl<W: Write> Gzip<W> {
    fn new(inner: W, level: i32, threads: usize, reuse: Option<Arc<MemberIndex>>) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("layerdiff-gzip-{i}"))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("gzip thread pool: {e}")))?;
        Ok(Gzip {
            inner,
            level,
            pool,
            block: Vec::with_capacity(members::MAX_MEMBER),
            pending: VecDeque::new(),
            max_pending: 2 * threads,
            spare: Vec::new(),
            members: 0,
            scanned: 0,
            reuse,
            written: None,
            offset: 0,
        })
    }

    fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let take = (members::MAX_MEMBER - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            // Look at each record completed by this write: a member ends after a record that
            // the content picks (past the minimum size), or at the maximum size.
            while self.scanned + members::RECORD <= self.block.len() {
                let end = self.scanned + members::RECORD;
                let record = &self.block[self.scanned..end];
                self.scanned = end;
                if end == members::MAX_MEMBER
                    || (end >= members::MIN_MEMBER && members::is_cut(record))
                {
                    self.submit(end)?;
                }
            }
        }
        Ok(())
    }

    /// Hand the first `end` bytes of the current block to the pool as one member; the rest
    /// starts the next block.
    fn submit(&mut self, end: usize) -> io::Result<()> {
        while self.pending.len() >= self.max_pending {
            self.write_oldest()?;
        }
        let mut fresh = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(members::MAX_MEMBER));
        fresh.extend_from_slice(&self.block[end..]);
        self.block.truncate(end);
        self.scanned = 0;
        let input = std::mem::replace(&mut self.block, fresh);
        let out = self.spare.pop().unwrap_or_default();
        let (tx, rx) = mpsc::sync_channel(1);
        let level = self.level;
        let reuse = self.reuse.clone();
        self.pool.spawn(move || {
            let res = member(level, &input, out, reuse.as_deref());
            // The receiver is gone only when the stream was abandoned.
            let _ = tx.send((res, input));
        });
        self.pending.push_back(rx);
        self.members += 1;
        // Keep the output flowing: write whatever is already done, in order.
        self.write_ready()
    }

    fn write_member(&mut self, (res, mut input): Member) -> io::Result<()> {
        let mut out = res?;
        self.inner.write_all(&out)?;
        if let Some(written) = &mut self.written {
            let head: Option<[u8; members::HEADER_LEN]> = out
                .get(..members::HEADER_LEN)
                .and_then(|h| h.try_into().ok());
            written.push(MemberSeen {
                offset: self.offset,
                len: out.len(),
                // The tag holds the content key of what the member was made from.
                key: head
                    .as_ref()
                    .and_then(members::parse_header)
                    .map_or([0; 16], |(_, _, key, _)| key),
                head,
                size: input.len(),
            });
        }
        self.offset += out.len() as u64;
        // Both go back as empty buffers: either may become the next block.
        input.clear();
        out.clear();
        self.spare.push(input);
        self.spare.push(out);
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let rx = self.pending.pop_front().expect("a pending member");
        let member = rx
            .recv()
            .map_err(|_| io::Error::other("gzip worker thread died"))?;
        self.write_member(member)
    }

    /// Write the members that are done, stopping at the first that is not.
    fn write_ready(&mut self) -> io::Result<()> {
        while let Some(rx) = self.pending.front() {
            match rx.try_recv() {
                Ok(member) => {
                    self.pending.pop_front();
                    self.write_member(member)?;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(io::Error::other("gzip worker thread died"));
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<(W, Vec<MemberSeen>)> {
        // An empty input still gives one (empty) member: zero bytes are not a gzip file.
        if !self.block.is_empty() || self.members == 0 {
            self.submit(self.block.len())?;
        }
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        Ok((self.inner, self.written.unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incompressible::Effort;
    use crate::incompressible::tests::{deflated, noise};
    use std::io::Read;
    use std::process::{Command, Stdio};

    /// Compressible but not trivial: text-like runs mixed with pseudo-random bytes.
    fn sample(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 == 0 {
                v.extend_from_slice(b"usr/lib/x86_64-linux-gnu/libc.so.6 ");
            } else {
                v.extend_from_slice(&x.to_le_bytes()[..(x % 8) as usize]);
            }
        }
        v.truncate(len);
        v
    }

    /// Compress `data`, fed in `chunk`-byte writes.
    fn compress(c: Compression, threads: usize, data: &[u8], chunk: usize) -> Vec<u8> {
        let mut w = Compressor::new(Vec::new(), c, threads).unwrap();
        for part in data.chunks(chunk) {
            w.write_all(part).unwrap();
            w.flush().unwrap(); // must not change the bytes
        }
        w.finish().unwrap()
    }

    fn run(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn none_passes_through() {
        let data = sample(100_000);
        assert_eq!(compress(Compression::None, 2, &data, 777), data);
    }

    #[test]
    fn threads_are_capped() {
        assert_eq!(resolve_threads(3), 3);
        assert_eq!(resolve_threads(MAX_THREADS + 1), MAX_THREADS);
        assert_eq!(resolve_threads(usize::MAX), MAX_THREADS);
        assert!((1..=MAX_THREADS).contains(&resolve_threads(0)));
    }

    #[test]
    fn gzip_is_identical_across_threads_and_write_sizes() {
        let data = sample(5 * members::MAX_MEMBER + 12345);
        let c = Compression::Gzip {
            level: DEFAULT_GZIP_LEVEL,
        };
        let one = compress(c, 1, &data, 512);
        for (threads, chunk) in [(2, 1 << 20), (4, 3 << 20), (3, 100_001), (8, 64)] {
            assert!(
                compress(c, threads, &data, chunk) == one,
                "threads {threads} chunk {chunk}"
            );
        }
        // Fixed member headers: the tag in FEXTRA, no name, mtime 0, OS 255.
        assert_eq!(&one[..4], &[0x1f, 0x8b, 8, 4]);
        assert_eq!(&one[4..8], &[0, 0, 0, 0]);
        assert_eq!(one[9], 255);
        let mut d = flate2::read::MultiGzDecoder::new(&one[..]);
        let mut back = Vec::new();
        d.read_to_end(&mut back).unwrap();
        assert!(back == data);
    }

    /// The members of a gzip stream, as their bytes.
    fn split_members(gz: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = gz;
        while !rest.is_empty() {
            let clen = u32::from_le_bytes(rest[20..24].try_into().unwrap()) as usize;
            let whole = members::HEADER_LEN + clen + members::TRAILER_LEN;
            out.push(&rest[..whole]);
            rest = &rest[whole..];
        }
        out
    }

    /// Tar-like input: 512-byte records of varied content.
    fn records(n: usize, seed: u64) -> Vec<u8> {
        let mut v = sample(n * members::RECORD + seed as usize % 7);
        v.truncate(n * members::RECORD);
        v
    }

    #[test]
    fn the_same_bytes_at_another_offset_give_the_same_members() {
        let c = Compression::Gzip { level: 1 };
        let body = records(24_000, 1); // about 12 MiB
        let alone = compress(c, 2, &body, 65536);
        let mut shifted_input = records(300, 9);
        shifted_input.extend_from_slice(&body);
        let shifted = compress(c, 2, &shifted_input, 65536);
        let a: std::collections::HashSet<&[u8]> = split_members(&alone).into_iter().collect();
        let b = split_members(&shifted);
        let shared = b.iter().filter(|m| a.contains(*m)).count();
        assert!(
            shared + 3 >= a.len(),
            "{shared} of {} members shared",
            a.len()
        );
        assert!(a.len() >= 8, "{} members", a.len());
    }

    #[test]
    fn reused_members_give_the_same_bytes_and_are_checked() {
        let c = Compression::Gzip { level: 2 };
        let body = records(12_000, 3);
        let dir = tempfile::tempdir().unwrap();
        let first = compress(c, 2, &body, 4096);
        std::fs::write(dir.path().join("a"), &first).unwrap();
        let mut index = MemberIndex::new(2);
        index.add_blob(&dir.path().join("a")).unwrap();
        assert_eq!(index.len(), split_members(&first).len());
        let index = Arc::new(index);
        let mut w = Compressor::with_reuse(Vec::new(), c, 2, Some(index.clone())).unwrap();
        w.write_all(&body).unwrap();
        assert!(w.finish().unwrap() == first);
        assert_eq!(index.hits() as usize, index.len());
        // A writer of another level takes none of them: they are not what it makes.
        let c5 = Compression::Gzip { level: 5 };
        let mut w = Compressor::with_reuse(Vec::new(), c5, 2, Some(index.clone())).unwrap();
        w.write_all(&body).unwrap();
        assert!(w.finish().unwrap() == compress(c5, 2, &body, 4096));
        assert_eq!(index.hits() as usize, index.len(), "no more taken");

        // A blob whose tags lie is never taken: here a valid member of other bytes carries
        // the tag (key) of the first member of `body`.
        let other = compress(c, 1, &records(600, 5), 4096);
        let mut forged = split_members(&other)[0].to_vec();
        let first_key = &split_members(&first)[0][24..40];
        forged[24..40].copy_from_slice(first_key);
        std::fs::write(dir.path().join("b"), &forged).unwrap();
        let mut index = MemberIndex::new(2);
        index.add_blob(&dir.path().join("b")).unwrap();
        assert!(index.is_empty());
        // A corrupt blob is an error, not a source.
        let mut broken = first.clone();
        let n = broken.len();
        broken[n / 2] ^= 0xff;
        std::fs::write(dir.path().join("c"), &broken).unwrap();
        assert!(MemberIndex::new(2).add_blob(&dir.path().join("c")).is_err());
        // Another level's members are not indexed for this one.
        let mut other = MemberIndex::new(5);
        other.add_blob(&dir.path().join("a")).unwrap();
        assert!(other.is_empty());
        // Nor are those of another framing version (other rules for what is stored), though
        // they are valid gzip of the same bytes.
        let mut older = Vec::new();
        for member in split_members(&first) {
            let mut member = member.to_vec();
            member[16] -= 1;
            older.extend_from_slice(&member);
        }
        assert!(run(Command::new("gzip").arg("-dc"), &older) == body);
        std::fs::write(dir.path().join("d"), &older).unwrap();
        let mut index = MemberIndex::new(2);
        index.add_blob(&dir.path().join("d")).unwrap();
        assert!(index.is_empty());
    }

    #[test]
    fn gzip_members_are_read_by_gzip_pigz_and_python() {
        let data = sample(3 * members::MAX_MEMBER + 1);
        let gz = compress(Compression::Gzip { level: 6 }, 2, &data, 4096);
        assert!(run(Command::new("gzip").arg("-dc"), &gz) == data);
        if Command::new("pigz").arg("--version").output().is_ok() {
            assert!(run(Command::new("pigz").arg("-dc"), &gz) == data);
        }
        let py =
            "import gzip, sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))";
        assert!(run(Command::new("python3").args(["-c", py]), &gz) == data);
    }

    /// Deflate's block type (0 stored, 1 fixed, 2 dynamic) of a member's first block.
    fn first_block_type(member: &[u8]) -> u8 {
        (member[members::HEADER_LEN] >> 1) & 3
    }

    #[test]
    fn incompressible_members_are_stored_and_read_back() {
        // Noise (stored), noise with a little text in it (level 1) and text (the level asked
        // for), each spanning several members.
        let mut data = noise(3 * members::MAX_MEMBER, 1);
        let mut mixed = noise(3 * members::MAX_MEMBER, 2);
        let text = b"usr/share/doc/libc6/changelog.Debian.gz\0\0\0\0\0\0\0\0";
        for chunk in mixed.chunks_mut(8192) {
            for (d, t) in chunk.iter_mut().zip(text.iter().cycle().take(160)) {
                *d = *t;
            }
        }
        data.extend_from_slice(&mixed);
        data.extend_from_slice(&sample(3 * members::MAX_MEMBER));
        let c = Compression::Gzip { level: 6 };
        let gz = compress(c, 2, &data, 100_000);
        assert!(compress(c, 1, &data, 4096) == gz);
        let parts = split_members(&gz);
        let types: Vec<u8> = parts.iter().map(|m| first_block_type(m)).collect();
        assert!(types.starts_with(&[0, 0]), "{types:?}");
        assert_eq!(*types.last().unwrap(), 2, "{types:?}");
        // Each member is libdeflate's output at the level its effort picks: 0, 1 or 6.
        let mut at = 0;
        let mut efforts = Vec::new();
        for m in &parts {
            let size = u32::from_le_bytes(m[m.len() - 4..].try_into().unwrap()) as usize;
            let input = &data[at..at + size];
            at += size;
            let effort = incompressible::effort(input);
            assert!(
                m[members::HEADER_LEN..m.len() - members::TRAILER_LEN]
                    == deflated(effort.level(6), input)
            );
            efforts.push(effort);
        }
        assert_eq!(at, data.len());
        for e in [Effort::Store, Effort::Fast, Effort::Full] {
            assert!(efforts.contains(&e), "{efforts:?}");
        }
        assert!(run(Command::new("gzip").arg("-dc"), &gz) == data);
        let py =
            "import gzip, sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))";
        assert!(run(Command::new("python3").args(["-c", py]), &gz) == data);
    }

    #[test]
    fn gzip_of_nothing_is_a_valid_empty_stream() {
        let gz = compress(Compression::Gzip { level: 1 }, 2, b"", 1);
        assert!(run(Command::new("gzip").arg("-dc"), &gz).is_empty());
    }

    #[test]
    fn zstd_is_identical_across_threads_and_write_sizes() {
        let mut data = sample(3 * ZSTD_JOB_SIZE as usize + 54321);
        // Repeats far apart, for the long-distance matcher: 1 MiB copied 2 MiB further on,
        // across a job boundary.
        let far = data[1 << 20..2 << 20].to_vec();
        data[3 << 20..4 << 20].copy_from_slice(&far);
        for level in [1, DEFAULT_ZSTD_LEVEL, 3, 9] {
            let c = Compression::Zstd { level };
            let one = compress(c, 1, &data, 512);
            for (threads, chunk) in [(2, 1 << 20), (4, 5 << 20), (3, 100_001)] {
                assert!(
                    compress(c, threads, &data, chunk) == one,
                    "level {level} threads {threads} chunk {chunk}"
                );
            }
            // Headers and file contents, as a tar comes: small writes that are gathered
            // before zstd sees them, between large ones that go to it as they are.
            let mut w = Compressor::new(Vec::new(), c, 2).unwrap();
            let mut rest = &data[..];
            for len in [512, ZSTD_DIRECT, 100, ZSTD_DIRECT - 1, 3, 70_000]
                .iter()
                .cycle()
            {
                let (part, tail) = rest.split_at((*len).min(rest.len()));
                w.write_all(part).unwrap();
                rest = tail;
                if rest.is_empty() {
                    break;
                }
            }
            assert!(w.finish().unwrap() == one, "level {level}, mixed writes");
            assert!(zstd::decode_all(&one[..]).unwrap() == data);
            assert!(run(Command::new("zstd").arg("-dc"), &one) == data);
        }
        let c = Compression::Zstd {
            level: DEFAULT_ZSTD_LEVEL,
        };
        // Small inputs too (they never fill a job).
        let small = sample(1000);
        let s1 = compress(c, 1, &small, 100);
        assert_eq!(s1, compress(c, 4, &small, 1000));
        assert_eq!(zstd::decode_all(&s1[..]).unwrap(), small);
    }

    #[test]
    fn levels_are_checked() {
        for c in [
            Compression::Gzip { level: 0 },
            Compression::Gzip { level: 13 },
            Compression::Zstd { level: 20 },
        ] {
            assert!(matches!(
                Compressor::new(Vec::new(), c, 1),
                Err(Error::InvalidArgument(_))
            ));
        }
        assert_eq!(
            Compression::default(),
            Compression::Gzip {
                level: DEFAULT_GZIP_LEVEL
            }
        );
    }
}
