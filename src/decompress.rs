//! Layer blob decompression: gzip (one or many members), zstd (one or many frames) or plain
//! tar, told apart by the first bytes.
//!
//! gzip members of bounded size — what our own writer and other block-parallel writers produce —
//! are each inflated in one call by libdeflate, about twice as fast as streaming inflate; a member
//! too large for that (a single-member blob from a streaming writer) switches the rest of the
//! stream to flate2's streaming decoder. [`with_decompressed`] runs the decompressor on its own
//! thread so that inflating and applying overlap.

use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, mpsc};

use crate::error::{IoContext, Result};
use crate::tar::reader::read_until_error;

/// Compressed bytes kept ahead of the decoder: a member must fit in this to be inflated in one
/// call.
const IN_WINDOW: usize = 8 << 20;
/// Largest member output inflated in one call (our writer's members hold 1 MiB).
const OUT_MAX: usize = 4 << 20;
/// Size of the chunks handed from the decompressing thread to the consumer.
const CHUNK: usize = 1 << 20;
/// Chunks the decompressing thread may run ahead.
const AHEAD: usize = 4;

/// The compression of a blob, from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `1f 8b`.
    Gzip,
    /// `28 b5 2f fd`.
    Zstd,
    /// Anything else is read as a tar.
    Plain,
}

fn sniff<R: Read>(blob: R) -> Result<(Format, BufReader<R>)> {
    let mut buffered = BufReader::with_capacity(1 << 20, blob);
    let head = buffered.fill_buf().at("<layer>")?;
    let format = if head.starts_with(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        // A skippable frame (magic 0x184D2A50..=0x184D2A5F, little-endian) may come first.
        || (head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18])
    {
        Format::Zstd
    } else {
        Format::Plain
    };
    Ok((format, buffered))
}

/// The decompressed stream of a layer blob, decoded on the calling thread.
pub fn decompress<'a, R: Read + 'a>(blob: R) -> Result<Box<dyn Read + 'a>> {
    let (format, buffered) = sniff(blob)?;
    Ok(match format {
        Format::Gzip => Box::new(GzipMembers::new(buffered)),
        Format::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered).at("<layer>")?),
        Format::Plain => Box::new(buffered),
    })
}

/// Run `consume` on the decompressed stream of `blob`, with decompression on a second thread.
/// When `consume` returns, the decompressing thread is stopped and joined.
pub fn with_decompressed<R: Read + Send, T>(
    blob: R,
    consume: impl FnOnce(&mut dyn BufRead) -> Result<T>,
) -> Result<T> {
    with_decompressed_seen(blob, None, consume)
}

/// Decode and drop the rest of a decompressed stream after the end of its archive: a gzip
/// member's CRC and a zstd frame's checksum come at their ends, and a stream cut short,
/// damaged or followed by other bytes must fail, not pass because the archive ended first
/// (docker's and containerd's appliers read on to the end too).
pub fn read_past_archive(stream: &mut impl Read) -> Result<()> {
    io::copy(stream, &mut io::sink()).map_err(|e| crate::error::Error::Archive {
        entry: "after the end of the archive".into(),
        reason: e.to_string(),
    })?;
    Ok(())
}

/// One gzip member as it was inflated: where it lies, what its header says, what it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSeen {
    /// Offset of the member in the blob.
    pub offset: u64,
    /// Its length in the blob, header to trailer.
    pub len: usize,
    /// Its first [`crate::members::HEADER_LEN`] bytes (shorter members: none).
    pub head: Option<[u8; crate::members::HEADER_LEN]>,
    /// [`crate::members::content_key`] of what it inflated to.
    pub key: [u8; 16],
    /// How many bytes it inflated to.
    pub size: usize,
}

/// Members seen while a gzip blob was inflated, in order.
pub type SeenMembers = Arc<Mutex<Vec<MemberSeen>>>;

/// [`with_decompressed`], also recording into `seen` every gzip member inflated in one piece.
pub fn with_decompressed_seen<R: Read + Send, T>(
    blob: R,
    seen: Option<SeenMembers>,
    consume: impl FnOnce(&mut dyn BufRead) -> Result<T>,
) -> Result<T> {
    let (format, buffered) = sniff(blob)?;
    if format == Format::Plain {
        let mut plain = buffered;
        return consume(&mut plain);
    }
    std::thread::scope(|s| {
        let (mut reader, pump) = channel();
        let pump = s.spawn(move || pump.run(format, buffered, seen));
        let mut result = consume(&mut reader);
        if result.is_ok()
            && let Err(e) = read_past_archive(&mut reader)
        {
            result = Err(e);
        }
        // Hang up first, so a thread blocked on a full channel wakes up and ends. Then join it
        // here: the scope alone only waits for its closure to return, and the thread may still
        // be exiting (running its thread-local destructors) once we have returned.
        drop(reader);
        if let Err(panic) = pump.join() {
            std::panic::resume_unwind(panic);
        }
        result
    })
}

/// The decompressed stream of `blob`, decoded on a thread of its own while the caller reads.
/// Dropping the reader stops and joins that thread.
/// Gzip members inflated in one piece are recorded into `seen`, when given.
pub fn decompress_in_background<R: Read + Send + 'static>(
    blob: R,
    seen: Option<SeenMembers>,
) -> Result<BackgroundReader> {
    let (format, buffered) = sniff(blob)?;
    let (reader, pump) = channel();
    let thread = std::thread::Builder::new()
        .name("layerdiff-inflate".into())
        .spawn(move || pump.run(format, buffered, seen))
        .at("<layer>")?;
    Ok(BackgroundReader {
        reader: Some(reader),
        thread: Some(thread),
    })
}

/// See [`decompress_in_background`].
pub struct BackgroundReader {
    reader: Option<ChannelReader>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Read for BackgroundReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.as_mut().expect("kept until drop").read(buf)
    }
}

impl BufRead for BackgroundReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.reader.as_mut().expect("kept until drop").fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.reader.as_mut().expect("kept until drop").consume(n);
    }
}

impl Drop for BackgroundReader {
    fn drop(&mut self) {
        // Hang up first: a thread waiting to send sees the closed channel and returns.
        drop(self.reader.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The two ends of a decompressing thread: chunks go one way, emptied buffers come back.
fn channel() -> (ChannelReader, Pump) {
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(AHEAD);
    let (back_tx, back_rx) = mpsc::sync_channel::<Vec<u8>>(AHEAD + 2);
    let reader = ChannelReader {
        rx,
        back: back_tx,
        chunk: Vec::new(),
        pos: 0,
    };
    (reader, Pump { tx, back: back_rx })
}

/// The decompressing side of [`channel`].
struct Pump {
    tx: mpsc::SyncSender<io::Result<Vec<u8>>>,
    back: mpsc::Receiver<Vec<u8>>,
}

/// What a [`Pump`] decodes.
enum Decoder<'a, R: Read> {
    /// gzip: whole members are handed over as inflated, without a copy.
    Members(Box<GzipMembers<R>>),
    /// zstd or plain tar, read in chunks.
    Stream(Box<dyn Read + 'a>),
}

impl Pump {
    /// Decode `buffered` and send it in chunks until it ends, fails, or the reader hangs up;
    /// record the gzip members into `seen`.
    fn run<R: Read>(self, format: Format, buffered: BufReader<R>, seen: Option<SeenMembers>) {
        let mut decoder: Decoder<'_, BufReader<R>> = match format {
            Format::Gzip => {
                let mut members = GzipMembers::new(buffered);
                members.seen = seen;
                Decoder::Members(Box::new(members))
            }
            Format::Zstd => match zstd::stream::read::Decoder::with_buffer(buffered) {
                Ok(d) => Decoder::Stream(Box::new(d)),
                Err(e) => {
                    let _ = self.tx.send(Err(e));
                    return;
                }
            },
            Format::Plain => Decoder::Stream(Box::new(buffered)),
        };
        loop {
            // A buffer the reader is done with, else a new one.
            let mut buf = self.back.try_recv().unwrap_or_default();
            let (n, failed) = match &mut decoder {
                Decoder::Members(m) => m.next_owned(&mut buf),
                Decoder::Stream(r) => read_chunk(r, &mut buf),
            };
            // What was decoded before an error is sent first, then the error: a reader that
            // has all it needs stops reading and never sees it; one that reads on to the end
            // (see `with_decompressed_seen`) does.
            if n > 0 {
                buf.truncate(n);
                // A closed channel means the consumer is done: stop quietly.
                if self.tx.send(Ok(buf)).is_err() {
                    return;
                }
            }
            if let Some(e) = failed {
                let _ = self.tx.send(Err(e));
                return;
            }
            if n == 0 {
                return;
            }
        }
    }
}

/// Up to [`CHUNK`] bytes of `r` into `buf` (grown to that size if it is smaller): how many,
/// and the error that cut the chunk short, if one did (the bytes before it are good).
fn read_chunk(r: &mut impl Read, buf: &mut Vec<u8>) -> (usize, Option<io::Error>) {
    if buf.len() < CHUNK {
        buf.resize(CHUNK, 0);
    }
    read_until_error(r, &mut buf[..CHUNK])
}

/// Reads the chunks the decompressing thread sends, and hands the emptied buffers back.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    back: mpsc::SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let data = self.fill_buf()?;
        let n = buf.len().min(data.len());
        buf[..n].copy_from_slice(&data[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChannelReader {
    /// The rest of the current chunk, without a copy; empty at the end of the stream.
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    let done = std::mem::replace(&mut self.chunk, chunk?);
                    if done.capacity() > 0 {
                        // A full back channel only means the thread has spares enough.
                        let _ = self.back.try_send(done);
                    }
                    self.pos = 0;
                }
                Err(_) => return Ok(&[]), // the thread finished: end of stream
            }
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.chunk.len());
    }
}

/// An owned libdeflate decompressor.
struct Inflater(NonNull<libdeflate_sys::libdeflate_decompressor>);

// SAFETY: a libdeflate decompressor is plain heap state with no thread affinity; it is used by
// one thread at a time (we never share it), so moving it between threads is sound.
unsafe impl Send for Inflater {}

impl Inflater {
    fn new() -> io::Result<Self> {
        // SAFETY: allocates a fresh decompressor; null means out of memory.
        let p = unsafe { libdeflate_sys::libdeflate_alloc_decompressor() };
        NonNull::new(p)
            .map(Inflater)
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "libdeflate decompressor"))
    }

    /// Inflate the one gzip member at the start of `input` into `out`, replacing what it held
    /// (up to [`OUT_MAX`] bytes): the input used, or `None` when it does not fit or is not valid
    /// (the streaming decoder then takes over and reports corruption precisely). The output
    /// goes into `out`'s capacity directly, without zeroing it first.
    fn member(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        out.clear();
        out.reserve(OUT_MAX);
        let (mut used, mut written) = (0usize, 0usize);
        // SAFETY: the pointers and lengths come from a live slice and a live vector that outlive
        // the call; the decompressor is ours alone (`&mut self`); libdeflate writes at most
        // `OUT_MAX` (<= the capacity reserved above) bytes at the output pointer, never reads
        // them, and fills the two counters.
        let r = unsafe {
            libdeflate_sys::libdeflate_gzip_decompress_ex(
                self.0.as_ptr(),
                input.as_ptr().cast(),
                input.len(),
                out.as_mut_ptr().cast(),
                OUT_MAX,
                &mut used,
                &mut written,
            )
        };
        if r != libdeflate_sys::libdeflate_result_LIBDEFLATE_SUCCESS || written > OUT_MAX {
            return None;
        }
        // SAFETY: libdeflate reported success and initialised exactly `written` bytes from the
        // start of the buffer, within its capacity.
        unsafe { out.set_len(written) };
        Some(used)
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: allocated by libdeflate_alloc_decompressor and freed exactly once, here.
        unsafe { libdeflate_sys::libdeflate_free_decompressor(self.0.as_ptr()) }
    }
}

/// gzip stream of any number of members: inflated member by member with libdeflate while they
/// fit the window, by flate2's streaming decoder from the first one that does not.
pub struct GzipMembers<R: Read> {
    input: Option<R>,
    inflater: Option<Inflater>,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    out: Vec<u8>,
    out_pos: usize,
    out_len: usize,
    streaming: Option<flate2::read::MultiGzDecoder<io::Chain<Cursor<Vec<u8>>, R>>>,
    /// Where to record the members inflated in one piece, if anywhere.
    seen: Option<SeenMembers>,
    /// Offset in the blob of `buf[start]`.
    offset: u64,
}

impl<R: Read> GzipMembers<R> {
    /// Decode the gzip stream read from `input`.
    pub fn new(input: R) -> Self {
        GzipMembers {
            input: Some(input),
            inflater: Inflater::new().ok(),
            buf: Vec::new(),
            start: 0,
            eof: false,
            out: Vec::new(),
            out_pos: 0,
            out_len: 0,
            streaming: None,
            seen: None,
            offset: 0,
        }
    }

    /// Keep at least [`IN_WINDOW`] unread bytes buffered, unless the input ends first.
    fn refill(&mut self) -> io::Result<()> {
        if self.eof || self.buf.len() - self.start >= IN_WINDOW {
            return Ok(());
        }
        self.buf.drain(..self.start);
        self.start = 0;
        let input = self
            .input
            .as_mut()
            .expect("input is kept until streaming starts");
        let want = IN_WINDOW * 2 - self.buf.len();
        // read_to_end fills spare capacity without zeroing it first, and retries interrupted
        // reads; fewer bytes than asked means the input ended.
        let got = input.take(want as u64).read_to_end(&mut self.buf)?;
        if got < want {
            self.eof = true;
        }
        Ok(())
    }

    /// The next decompressed bytes into `buf`, which may be swapped for the inflated member
    /// itself (no copy): how many bytes (0 at the end of the stream), and the error that cut
    /// them short.
    fn next_owned(&mut self, buf: &mut Vec<u8>) -> (usize, Option<io::Error>) {
        while self.streaming.is_none() && self.out_pos == self.out_len {
            match self.next_member() {
                Ok(true) => {}
                Ok(false) => return (0, None),
                Err(e) => return (0, Some(e)),
            }
            if self.streaming.is_none() && self.out_len > 0 {
                std::mem::swap(&mut self.out, buf);
                let n = self.out_len;
                self.out_len = 0;
                return (n, None);
            }
        }
        read_chunk(self, buf)
    }

    /// Decode the next member into `out`; false at the end of the stream.
    fn next_member(&mut self) -> io::Result<bool> {
        self.refill()?;
        if self.start == self.buf.len() {
            return Ok(false);
        }
        if let Some(inflater) = self.inflater.as_mut() {
            if let Some(used) = inflater.member(&self.buf[self.start..], &mut self.out) {
                let written = self.out.len();
                if let Some(seen) = &self.seen {
                    let member = &self.buf[self.start..self.start + used];
                    let record = MemberSeen {
                        offset: self.offset,
                        len: used,
                        head: member
                            .get(..crate::members::HEADER_LEN)
                            .and_then(|h| h.try_into().ok()),
                        key: crate::members::content_key(&self.out[..written]),
                        size: written,
                    };
                    seen.lock().expect("not poisoned").push(record);
                }
                self.offset += used as u64;
                self.start += used;
                self.out_pos = 0;
                self.out_len = written;
                return Ok(true);
            }
        }
        // Too large for one call, or invalid: stream the rest.
        let rest = Cursor::new(self.buf.split_off(self.start));
        let input = self
            .input
            .take()
            .expect("input is kept until streaming starts");
        self.streaming = Some(flate2::read::MultiGzDecoder::new(rest.chain(input)));
        self.out_len = 0;
        self.out_pos = 0;
        Ok(true)
    }
}

impl<R: Read> Read for GzipMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(s) = self.streaming.as_mut() {
                return s.read(buf);
            }
            if self.out_pos < self.out_len {
                let n = buf.len().min(self.out_len - self.out_pos);
                buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                return Ok(n);
            }
            if !self.next_member()? {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i * 31 % 251) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    fn read_all(r: &mut dyn Read) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok(v)
    }

    #[test]
    fn many_small_members_and_one_large_member_decode_alike() {
        let d = data(9 << 20);
        let members: Vec<u8> = d.chunks(1 << 20).flat_map(gzip).collect();
        let single = gzip(&d);
        let mixed: Vec<u8> = [gzip(&d[..1000]), gzip(&d[1000..])].concat();
        for blob in [members, single, mixed] {
            let direct = read_all(&mut decompress(&blob[..]).unwrap()).unwrap();
            assert_eq!(direct, d);
            let threaded = with_decompressed(&blob[..], |r| Ok(read_all(r).unwrap())).unwrap();
            assert_eq!(threaded, d);
        }
    }

    #[test]
    fn corrupt_and_truncated_gzip_are_errors() {
        let d = data(3 << 20);
        let members: Vec<u8> = d.chunks(1 << 20).flat_map(gzip).collect();
        let mut corrupt = members.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0x55;
        for blob in [corrupt, members[..members.len() - 10].to_vec()] {
            assert!(read_all(&mut decompress(&blob[..]).unwrap()).is_err());
            let r = with_decompressed(&blob[..], |r| {
                read_all(r).map_err(|e| crate::Error::io("<layer>", e))
            });
            assert!(r.is_err());
        }
    }

    #[test]
    fn zstd_and_plain_pass_through() {
        let d = data(2 << 20);
        let z = zstd::encode_all(&d[..], 3).unwrap();
        assert_eq!(
            with_decompressed(&z[..], |r| Ok(read_all(r).unwrap())).unwrap(),
            d
        );
        assert_eq!(
            with_decompressed(&d[..], |r| Ok(read_all(r).unwrap())).unwrap(),
            d
        );
    }

    #[test]
    fn background_reader_reads_every_format_and_stops_when_dropped() {
        let d = data(9 << 20);
        let members: Vec<u8> = d.chunks(1 << 20).flat_map(gzip).collect();
        let z = zstd::encode_all(&d[..], 3).unwrap();
        for blob in [members.clone(), gzip(&d), z, d.clone()] {
            let mut r = decompress_in_background(io::Cursor::new(blob), None).unwrap();
            assert_eq!(read_all(&mut r).unwrap(), d);
        }
        // Dropped after one read: the thread is joined, not left blocked on the channel.
        let mut r = decompress_in_background(io::Cursor::new(members), None).unwrap();
        let mut b = [0u8; 10];
        r.read_exact(&mut b).unwrap();
        assert_eq!(&b[..], &d[..10]);
        drop(r);
        let corrupt = {
            let mut g = gzip(&d);
            let mid = g.len() / 2;
            g[mid] ^= 0x55;
            g
        };
        let mut r = decompress_in_background(io::Cursor::new(corrupt), None).unwrap();
        assert!(read_all(&mut r).is_err());
    }

    #[test]
    fn consumer_stopping_early_ends_the_thread() {
        let d = data(20 << 20);
        let members: Vec<u8> = d.chunks(1 << 20).flat_map(gzip).collect();
        let first = with_decompressed(&members[..], |r| {
            let mut b = [0u8; 10];
            r.read_exact(&mut b).unwrap();
            Ok(b)
        })
        .unwrap();
        assert_eq!(&first[..], &d[..10]);
    }
}
