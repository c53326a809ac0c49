//! Hardened tar reader: ustar, PAX (`x` records) and GNU long names (`L`, `K`).
//!
//! Written for layers from strangers: every header's checksum is verified, every size is
//! bounded, PAX records are parsed by their length prefix (so values may hold newlines and
//! `=`), and where a GNU long name, a PAX record and the ustar fields disagree the order is
//! fixed — GNU, then PAX, then ustar, as Go's archive/tar has it (docker, containerd, umoci) —
//! so every reader of ours sees the archive they see.

use std::io::{self, BufRead, Read};

use crate::entry::Timestamp;
use crate::error::{Error, Result};

/// What errors name before any entry was read.
const START: &str = "<archive>";

/// Size of a tar block.
pub const BLOCK: usize = 512;
/// Largest PAX extended header or GNU long name we accept: far above any real one, far below
/// what could exhaust memory.
pub const MAX_META: u64 = 1 << 20;

/// What an entry is, from its typeflag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// `0`, `\0`, `7`.
    File,
    /// `1`.
    Hardlink,
    /// `2`.
    Symlink,
    /// `3`.
    CharDevice,
    /// `4`.
    BlockDevice,
    /// `5`.
    Dir,
    /// `6`.
    Fifo,
}

/// One archive member with every extension applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Name as stored (not normalised): GNU long name, else PAX `path`, else ustar prefix/name.
    pub path: Vec<u8>,
    /// Link target (hardlinks and symlinks).
    pub link: Vec<u8>,
    /// Type.
    pub kind: EntryKind,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Size of the content that follows (regular files).
    pub size: u64,
    /// Device numbers.
    pub dev_major: u32,
    /// Device numbers.
    pub dev_minor: u32,
    /// `SCHILY.xattr.*` records, in archive order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Offset of the content in the (uncompressed) stream.
    pub data_offset: u64,
}

impl Header {
    /// The name for messages.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// Extensions collected from `x`, `L` and `K` members for the next entry. PAX values are kept
/// as written and parsed with the entry's header, so that what is wrong with them is reported
/// under that entry's name.
#[derive(Default)]
struct Pending {
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
    pax_size: Option<Vec<u8>>,
    pax_uid: Option<Vec<u8>>,
    pax_gid: Option<Vec<u8>>,
    pax_mtime: Option<Vec<u8>>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A `GNU.sparse.*` record was seen.
    sparse: bool,
    /// `GNU.sparse.name`: the sparse file's real name.
    sparse_name: Option<Vec<u8>>,
    gnu_name: Option<Vec<u8>>,
    gnu_link: Option<Vec<u8>>,
    /// Why a PAX header could not be parsed.
    broken: Option<String>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.pax_path.is_none()
            && self.gnu_name.is_none()
            && self.pax_size.is_none()
            && self.broken.is_none()
    }
}

/// Reads headers with [`TarReader::next_header`]; the current entry's content with `Read`.
pub struct TarReader<R> {
    inner: R,
    pos: u64,
    /// Content bytes of the current entry not read yet.
    remaining: u64,
    /// Padding after the current entry's content.
    padding: u64,
    /// Name of the last entry, for errors.
    last: String,
    done: bool,
}

fn bad(entry: &str, reason: impl Into<String>) -> Error {
    Error::Archive {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

/// A numeric header field as Go's archive/tar reads it (and so docker, containerd and umoci):
/// GNU base-256 when the first byte has its high bit set, a two's complement number in the
/// bits after that marker (so it may be negative); else octal text, NULs and spaces trimmed at
/// both ends and cut at the first NUL left (`"\0\0\0644\0\0"` is 0o644, an empty field 0).
/// `None` if it is neither, or does not fit in an `i64`.
fn numeric(field: &[u8]) -> Option<i64> {
    match field.first() {
        Some(&first) if first & 0x80 != 0 => {
            // Bit 6 of the first byte is the sign: extend it over the bits above.
            let mut v = i128::from(first & 0x7f) - if first & 0x40 != 0 { 0x80 } else { 0 };
            // At most 12 bytes (96 bits): no overflow in an i128.
            for &b in &field[1..] {
                v = v * 256 + i128::from(b);
            }
            i64::try_from(v).ok()
        }
        _ => octal(field).and_then(|v| i64::try_from(v).ok()),
    }
}

/// Octal text in a header field: see [`numeric`].
fn octal(field: &[u8]) -> Option<u64> {
    let pad = |b: &u8| *b == 0 || *b == b' ';
    let start = field.iter().position(|b| !pad(b)).unwrap_or(field.len());
    let end = field.iter().rposition(|b| !pad(b)).map_or(start, |i| i + 1);
    let text = cstr(&field[start..end]);
    if text.is_empty() {
        return Some(0);
    }
    text.iter().try_fold(0u64, |v, &b| {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v.checked_mul(8)?.checked_add(u64::from(b - b'0'))
    })
}

/// A numeric header field that may be negative (mtime: before 1970).
fn signed(field: &[u8], what: &str, entry: &str) -> Result<i64> {
    numeric(field).ok_or_else(|| {
        bad(
            entry,
            format!("bad {what} field {:?}", String::from_utf8_lossy(field)),
        )
    })
}

/// A numeric header field that cannot be negative (size, mode, owner, device numbers).
fn number(field: &[u8], what: &str, entry: &str) -> Result<u64> {
    u64::try_from(signed(field, what, entry)?).map_err(|_| bad(entry, format!("negative {what}")))
}

/// A GNU long name or link: an empty one says nothing (Go's archive/tar ignores it).
fn non_empty(name: &[u8]) -> Option<Vec<u8>> {
    (!name.is_empty()).then(|| name.to_vec())
}

/// A NUL-terminated header string.
fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(i) => &field[..i],
        None => field,
    }
}

/// Whether the stored checksum (octal, as Go reads it) matches the block's.
fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let Some(stored) = octal(&block[148..156]) else {
        return false;
    };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    // Some old writers summed signed bytes; both forms are accepted, as GNU tar does.
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

/// Parse PAX records (`LEN KEY=VALUE\n`) into `pending`; what is malformed, if anything.
fn parse_pax(data: &[u8], pending: &mut Pending) -> std::result::Result<(), &'static str> {
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break; // trailing NUL padding some writers leave
        }
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("malformed PAX record (no length)")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("malformed PAX record length")?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("malformed PAX record (length does not match)");
        }
        let record = &rest[sp + 1..len - 1];
        rest = &rest[len..];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("malformed PAX record (no '=')")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        // An empty value deletes the record (POSIX): the ustar field stands, as Go reads it.
        let set = (!value.is_empty()).then(|| value.to_vec());
        match key {
            b"path" => pending.pax_path = set,
            b"linkpath" => pending.pax_link = set,
            b"size" => pending.pax_size = set,
            b"uid" => pending.pax_uid = set,
            b"gid" => pending.pax_gid = set,
            b"mtime" => pending.pax_mtime = set,
            // GNU tar's PAX sparse forms (0.0, 0.1, 1.0): the entry's data is a sparse map
            // and fragments, and its name a placeholder; read as a plain file it would come
            // out wrong, under the wrong name. Refused with the entry.
            b"GNU.sparse.name" => {
                pending.sparse = true;
                pending.sparse_name = set;
            }
            _ if key.starts_with(b"GNU.sparse.") => pending.sparse = true,
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    pending.xattrs.retain(|(k, _)| k != name);
                    pending.xattrs.push((name.to_vec(), value.to_vec()));
                }
            }
        }
    }
    Ok(())
}

/// A PAX `size`, `uid` or `gid` value: decimal.
fn pax_number(value: &[u8], what: &str, entry: &str) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            bad(
                entry,
                format!("bad PAX {what} {:?}", String::from_utf8_lossy(value)),
            )
        })
}

/// A PAX time, `SEC[.FRACTION]`, as Go's archive/tar reads it: `SEC` a decimal `i64` with an
/// optional sign, `FRACTION` digits only (the first nine count). Before 1970 the sign applies to
/// the whole: `-1.5` is `sec -2, nsec 500000000`.
fn parse_time(v: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(v).ok()?;
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = whole.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nsec = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    if nsec > 0 && whole.starts_with('-') {
        return Some(Timestamp {
            sec: sec.checked_sub(1)?,
            nsec: 1_000_000_000 - nsec,
        });
    }
    Some(Timestamp { sec, nsec })
}

impl<R: Read> TarReader<R> {
    /// Read the archive from `inner` (already decompressed).
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            pos: 0,
            remaining: 0,
            padding: 0,
            last: START.into(),
            done: false,
        }
    }

    /// Bytes consumed from the stream so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The stream, for reading what follows the archive.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The stream, borrowed, for reading what follows the archive.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    fn io(&self, e: io::Error) -> Error {
        let reason = if e.kind() == io::ErrorKind::UnexpectedEof {
            "archive is truncated".to_string()
        } else {
            e.to_string()
        };
        bad(&self.last, reason)
    }

    fn read_exact_counted(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner.read_exact(buf).map_err(|e| self.io(e))?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        let copied =
            io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(|e| self.io(e))?;
        self.pos += copied;
        if copied != n {
            return Err(bad(&self.last, "archive is truncated"));
        }
        Ok(())
    }

    /// The entry extended headers are being read for, before its own header is: the name
    /// they give it, if any, else the one after the last entry read.
    fn pending_name(&self, p: &Pending) -> String {
        match p.gnu_name.as_ref().or(p.pax_path.as_ref()) {
            Some(name) => String::from_utf8_lossy(name).into_owned(),
            None if self.last == START => "<first entry>".into(),
            None => format!("<entry after {}>", self.last),
        }
    }

    /// Content of a metadata member (`x`, `L`, `K`) for the entry `who`, bounded by
    /// [`MAX_META`].
    fn read_meta(&mut self, size: u64, who: &str) -> Result<Vec<u8>> {
        if size > MAX_META {
            return Err(bad(
                who,
                format!("extended header of {size} bytes (limit {MAX_META})"),
            ));
        }
        let mut data = vec![0u8; size as usize];
        self.read_exact_counted(&mut data)?;
        self.skip(padding(size))?;
        Ok(data)
    }

    /// The next entry, or `None` at the end of the archive. Unread content of the previous
    /// entry is skipped.
    pub fn next_header(&mut self) -> Result<Option<Header>> {
        if self.done {
            return Ok(None);
        }
        self.skip(self.remaining)?;
        self.remaining = 0;
        let pad = std::mem::take(&mut self.padding);
        let copied =
            io::copy(&mut (&mut self.inner).take(pad), &mut io::sink()).map_err(|e| self.io(e))?;
        self.pos += copied;
        if copied == 0 && pad > 0 {
            // The stream ends right after the last member's content, without its padding or
            // an end marker, as older `umoci insert` (0.4.7) writes layers: Go's archive/tar
            // (docker, containerd, umoci) reads that as the end, and so do we.
            return self.end(&Pending::default());
        }
        if copied != pad {
            return Err(bad(&self.last, "archive is truncated"));
        }
        let mut pending = Pending::default();
        let next = self.next_entry(&mut pending);
        match pending.broken.take() {
            // A PAX header that could not be parsed is what is wrong first, whatever followed.
            Some(reason) if next.is_err() => Err(bad(&self.pending_name(&pending), reason)),
            _ => next,
        }
    }

    /// The entry after any extended headers, which `pending` collects.
    fn next_entry(&mut self, pending: &mut Pending) -> Result<Option<Header>> {
        loop {
            let mut block = [0u8; BLOCK];
            let got = read_full(&mut self.inner, &mut block).map_err(|e| self.io(e))?;
            self.pos += got as u64;
            if got == 0 {
                // EOF without end marker: accepted as the end only at a member boundary with
                // nothing pending, as most readers do.
                return self.end(pending);
            }
            if got < BLOCK {
                return Err(bad(&self.last, "archive is truncated"));
            }
            if block.iter().all(|&b| b == 0) {
                return self.end_marker(pending);
            }
            if !checksum_ok(&block) {
                return Err(bad(
                    &self.last,
                    "header checksum mismatch (corrupt or not a tar)",
                ));
            }
            let typeflag = block[156];
            if matches!(typeflag, b'x' | b'g' | b'L' | b'K') {
                let who = self.pending_name(pending);
                let size = number(&block[124..136], "size", &who)?;
                let data = self.read_meta(size, &who)?;
                let broken = pending.broken.take();
                match typeflag {
                    b'x' => {
                        // A later PAX header replaces an earlier one, as Go reads them.
                        *pending = Pending {
                            gnu_name: pending.gnu_name.take(),
                            gnu_link: pending.gnu_link.take(),
                            ..Pending::default()
                        };
                        if let Err(reason) = parse_pax(&data, pending) {
                            pending.broken = Some(reason.into());
                        }
                    }
                    b'L' => pending.gnu_name = non_empty(cstr(&data)),
                    b'K' => pending.gnu_link = non_empty(cstr(&data)),
                    // A global header carries defaults no layer writer relies on. Go returns
                    // it as an entry of its own (which docker and containerd skip), so what
                    // was read before it applies to no entry.
                    _ => *pending = Pending::default(),
                }
                // The first PAX header that could not be parsed is the one reported.
                pending.broken = broken.or(pending.broken.take());
                continue;
            }
            let header = self.entry(&block, typeflag, std::mem::take(pending))?;
            self.last = header.display();
            let content = if header.kind == EntryKind::File {
                header.size
            } else {
                0
            };
            self.remaining = content;
            self.padding = padding(content);
            return Ok(Some(Header {
                data_offset: self.pos,
                ..header
            }));
        }
    }

    /// A zero block was read: the archive ends there if another zero block or nothing
    /// follows. One zero block with more entries after it is an error, as Go's archive/tar
    /// (docker, containerd, umoci) has it, not an end that would hide them.
    fn end_marker(&mut self, pending: &Pending) -> Result<Option<Header>> {
        let at = self.pos - BLOCK as u64;
        let mut block = [0u8; BLOCK];
        let got = read_full(&mut self.inner, &mut block).map_err(|e| self.io(e))?;
        self.pos += got as u64;
        if got == 0 || (got == BLOCK && block.iter().all(|&b| b == 0)) {
            return self.end(pending);
        }
        if got < BLOCK {
            return Err(bad(&self.last, "archive is truncated"));
        }
        Err(bad(
            &self.last,
            format!(
                "a lone zero block at byte {at} before more entries (an archive ends with two)"
            ),
        ))
    }

    fn end(&mut self, pending: &Pending) -> Result<Option<Header>> {
        if !pending.is_empty() {
            return Err(bad(
                &self.pending_name(pending),
                "archive ends after an extended header",
            ));
        }
        self.done = true;
        Ok(None)
    }

    fn entry(&self, block: &[u8; BLOCK], typeflag: u8, p: Pending) -> Result<Header> {
        let ustar_name = {
            let name = cstr(&block[0..100]);
            let posix = &block[257..263] == b"ustar\0";
            let prefix = cstr(&block[345..500]);
            if posix && !prefix.is_empty() {
                [prefix, b"/", name].concat()
            } else {
                name.to_vec()
            }
        };
        // Go applies a GNU long name after the PAX records, so it wins over a PAX path.
        let path = p.gnu_name.or(p.pax_path).unwrap_or(ustar_name);
        let who = String::from_utf8_lossy(&path).into_owned();
        let link = p
            .gnu_link
            .or(p.pax_link)
            .unwrap_or_else(|| cstr(&block[157..257]).to_vec());
        if let Some(reason) = p.broken {
            return Err(bad(&who, reason));
        }
        if p.sparse {
            let name = p
                .sparse_name
                .map(|n| String::from_utf8_lossy(&n).into_owned());
            return Err(bad(
                name.as_deref().unwrap_or(&who),
                "GNU sparse files are not supported in layers",
            ));
        }
        let kind = match typeflag {
            // Only the old-style regular type (NUL) is a directory by a trailing '/', as Go's
            // archive/tar (docker, containerd, umoci) and Python's tarfile read it: a '0' entry
            // so named keeps its content, which is never read as headers of entries of its own.
            0 if path.ends_with(b"/") => EntryKind::Dir,
            b'0' | 0 | b'7' => EntryKind::File,
            b'1' => EntryKind::Hardlink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::CharDevice,
            b'4' => EntryKind::BlockDevice,
            b'5' => EntryKind::Dir,
            b'6' => EntryKind::Fifo,
            b'S' => return Err(bad(&who, "GNU sparse files are not supported in layers")),
            other => {
                return Err(bad(
                    &who,
                    format!("unsupported entry type {:?}", other as char),
                ));
            }
        };
        let id = |field: &[u8], pax: Option<Vec<u8>>, what: &str| -> Result<u32> {
            let v = match pax {
                Some(v) => pax_number(&v, what, &who)?,
                None => number(field, what, &who)?,
            };
            u32::try_from(v).map_err(|_| bad(&who, format!("{what} out of range")))
        };
        let mtime = match p.pax_mtime {
            Some(v) => parse_time(&v).ok_or_else(|| {
                bad(
                    &who,
                    format!("bad PAX mtime {:?}", String::from_utf8_lossy(&v)),
                )
            })?,
            // Before 1970 it is negative: GNU tar writes it so (base-256), as Go reads it.
            None => Timestamp {
                sec: signed(&block[136..148], "mtime", &who)?,
                nsec: 0,
            },
        };
        // The header's own size is read even where a PAX record says it: Go refuses a header
        // with a bad one.
        let ustar_size = number(&block[124..136], "size", &who)?;
        let size = match p.pax_size {
            Some(v) => pax_number(&v, "size", &who)?,
            None => ustar_size,
        };
        let is_dev = matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice);
        Ok(Header {
            kind,
            mode: (number(&block[100..108], "mode", &who)? & 0o7777) as u32,
            uid: id(&block[108..116], p.pax_uid, "uid")?,
            gid: id(&block[116..124], p.pax_gid, "gid")?,
            mtime,
            size,
            dev_major: if is_dev {
                id(&block[329..337], None, "devmajor")?
            } else {
                0
            },
            dev_minor: if is_dev {
                id(&block[337..345], None, "devminor")?
            } else {
                0
            },
            xattrs: p.xattrs,
            path,
            link,
            data_offset: 0,
        })
    }
}

/// Zero padding after `size` content bytes.
fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Fill `buf` unless EOF comes first; the count read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    match read_until_error(r, buf) {
        (n, None) => Ok(n),
        (_, Some(e)) => Err(e),
    }
}

/// [`read_full`], giving the count read before an error with the error (those bytes are good).
pub(crate) fn read_until_error(r: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

impl<R: BufRead> BufRead for TarReader<R> {
    /// Content of the current entry straight from the stream's buffer; empty at its end.
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.remaining == 0 {
            return Ok(&[]);
        }
        let remaining = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        let data = self.inner.fill_buf()?;
        if data.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive is truncated",
            ));
        }
        Ok(&data[..data.len().min(remaining)])
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        self.inner.consume(n);
        self.remaining -= n as u64;
        self.pos += n as u64;
    }
}

impl<R: Read> Read for TarReader<R> {
    /// Content of the current entry; 0 at its end.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive is truncated",
            ));
        }
        self.remaining -= n as u64;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;
