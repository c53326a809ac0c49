//! Deterministic PAX tar writer.
//!
//! Every byte is decided here, never by a library default, so the same entries always give the
//! same archive. The format is POSIX ustar (`magic "ustar\0"`, `version "00"`) with PAX extended
//! headers (typeflag `x`) only where ustar cannot say it:
//!
//! | what | ustar field | PAX record |
//! |---|---|---|
//! | path ≤ 100 bytes, or splittable into prefix (≤ 155) `/` name (≤ 100) | `name` (+ `prefix`) | — |
//! | any other path | first 100 bytes | `path` |
//! | link target > 100 bytes | first 100 bytes | `linkpath` |
//! | size ≥ 8 GiB, uid/gid > 0o7777777 | base-256 (GNU) | `size`, `uid`, `gid` |
//! | mtime with nanoseconds | seconds | `mtime=SEC.NNNNNNNNN` (nine digits) |
//! | mtime before 1970 or after 2242 | base-256 | `mtime` |
//! | extended attributes | — | `SCHILY.xattr.NAME=VALUE` (raw bytes) |
//!
//! Owners are numeric only (`uname`/`gname` empty), there is no atime or ctime, directory names
//! end in `/`, `mode` holds the permission bits only (`& 0o7777`), `devmajor`/`devminor` are
//! zero except for devices, and the checksum is six octal digits, NUL, space. Records come in a
//! fixed order (`path`, `linkpath`, `size`, `uid`, `gid`, `mtime`, then the xattrs sorted by
//! name).
//!
//! Names and link targets need not be UTF-8: ustar fields and PAX records carry them as raw
//! bytes. No `hdrcharset=BINARY` record is written: GNU tar 1.34 warns about it as an unknown
//! keyword, while GNU tar, Python's `tarfile` (surrogateescape), Go and the `tar` crate all take
//! a non-UTF-8 `path` record byte for byte without it. The PAX header block itself is named `././@PaxHeader` with mode 0, owner
//! 0/0 and mtime 0 — the fixed name Python's `tarfile` uses — so it never depends on the entry.
//!
//! Overlayfs' own xattrs (`trusted.overlay.*`, `user.overlay.*`) are dropped here: this writer
//! is the one door into a layer, and they must never enter one.
//!
//! Whiteouts and opaque markers have fixed metadata: a regular file, mode 0, owner 0/0, mtime 0,
//! size 0, no xattrs (the mode 0 that Docker and containerd give them), whatever the deleted
//! object was and whatever `SOURCE_DATE_EPOCH` says.
//!
//! With a `SOURCE_DATE_EPOCH`, every other mtime becomes `min(mtime, epoch)`; a clamped time
//! has no nanoseconds.

use std::io::{self, BufRead, Write};
use std::path::PathBuf;

use crate::entry::{Entry, Timestamp, join, os_path};
use crate::error::{Error, IoContext, Result};
use crate::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX, is_overlay_xattr};

/// Size of a tar block.
pub const BLOCK: usize = 512;
/// Name of every PAX extended header block (the one Python's `tarfile` writes).
pub const PAX_HEADER_NAME: &[u8] = b"././@PaxHeader";
static ZEROS: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// Whether a PAX `SCHILY.xattr.NAME` record can hold the xattr name: not empty, and no `=`
/// (which ends the record's key) or NUL.
pub fn storable_xattr_name(name: &[u8]) -> bool {
    !name.is_empty() && !name.contains(&b'=') && !name.contains(&0)
}

/// The metadata every tar entry carries.
#[derive(Debug, Clone, Copy)]
pub struct Meta<'a> {
    /// Relative path (`/`-separated, no leading or trailing `/`; raw bytes).
    pub path: &'a [u8],
    /// Permission bits (`& 0o7777` is written).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Extended attributes (name, value).
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

impl<'a> Meta<'a> {
    /// The metadata of a walked entry.
    pub fn of(entry: &'a Entry) -> Self {
        Meta {
            path: &entry.path,
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            mtime: entry.mtime,
            xattrs: &entry.xattrs,
        }
    }

    /// The fixed metadata of a whiteout or opaque marker at `path`.
    fn marker(path: &'a [u8]) -> Self {
        Meta {
            path,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            xattrs: &[],
        }
    }
}

/// Tar typeflags this writer emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    File,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Dir,
    Fifo,
}

impl Type {
    fn flag(self) -> u8 {
        match self {
            Type::File => b'0',
            Type::HardLink => b'1',
            Type::Symlink => b'2',
            Type::CharDevice => b'3',
            Type::BlockDevice => b'4',
            Type::Dir => b'5',
            Type::Fifo => b'6',
        }
    }
}

/// Everything one header says besides [`Meta`].
#[derive(Debug, Clone, Copy)]
struct Head<'a> {
    kind: Type,
    size: u64,
    link: &'a [u8],
    dev: (u32, u32),
}

/// A deterministic PAX tar stream written into `W`.
///
/// Entries are written in the order the methods are called; ordering rules (parents first,
/// whiteouts before their siblings) are the caller's. [`TarWriter::finish`] writes the two
/// zero blocks that end the archive.
pub struct TarWriter<W: Write> {
    inner: W,
    source_date_epoch: Option<i64>,
    /// Named in errors of the output stream.
    output: PathBuf,
    /// Header bytes being assembled (reused).
    scratch: Vec<u8>,
    /// PAX records being assembled (reused).
    pax: Vec<u8>,
    /// A [`FileBody`] was started and not finished: the stream is mid-entry.
    open_file: bool,
    /// Bytes of the archive written so far.
    pos: u64,
    /// Told of every entry's header bytes and where they start in the archive.
    observer: Option<HeaderObserver>,
}

/// See [`TarWriter::with_header_observer`].
pub type HeaderObserver = Box<dyn FnMut(u64, &[u8]) + Send>;

impl<W: Write> TarWriter<W> {
    /// A writer into `inner` with no mtime clamp.
    pub fn new(inner: W) -> Self {
        TarWriter {
            inner,
            source_date_epoch: None,
            output: PathBuf::from("<layer>"),
            scratch: Vec::with_capacity(4 * BLOCK),
            pax: Vec::new(),
            open_file: false,
            pos: 0,
            observer: None,
        }
    }

    /// Call `observer` with each entry's header bytes (extended headers included) and their
    /// offset in the archive, before they are written.
    pub fn with_header_observer(mut self, observer: HeaderObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Clamp every mtime to `epoch` (`SOURCE_DATE_EPOCH`).
    pub fn with_source_date_epoch(mut self, epoch: Option<i64>) -> Self {
        self.source_date_epoch = epoch;
        self
    }

    /// The name write errors of the output are reported under (default `<layer>`).
    pub fn with_output_name(mut self, name: impl Into<PathBuf>) -> Self {
        self.output = name.into();
        self
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The inner writer, mutably. Bytes written to it directly corrupt the archive.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// A directory (written as `path/`).
    pub fn append_dir(&mut self, meta: &Meta) -> Result<()> {
        self.header(
            meta,
            Head {
                kind: Type::Dir,
                size: 0,
                link: b"",
                dev: (0, 0),
            },
        )
    }

    /// A regular file of exactly `size` bytes read from `content`, written straight from its
    /// buffers.
    ///
    /// [`Error::FileChanged`] if `content` ends early or has more.
    pub fn append_file<R: BufRead>(
        &mut self,
        meta: &Meta,
        size: u64,
        mut content: R,
    ) -> Result<()> {
        let mut body = self.begin_file(meta, size)?;
        let mut left = size;
        while left > 0 {
            let ready = ready(&mut content, meta.path)?;
            if ready == 0 {
                return Err(changed(meta.path, size, size - left));
            }
            let n = ready.min(usize::try_from(left).unwrap_or(usize::MAX));
            // Already buffered: no read happens here.
            body.write(&content.fill_buf().at(os_path(meta.path))?[..n])?;
            content.consume(n);
            left -= n as u64;
        }
        // One more byte: a file that grew since it was measured has changed too.
        if ready(&mut content, meta.path)? != 0 {
            return Err(changed(meta.path, size, size + 1));
        }
        body.finish()
    }

    /// Start a regular file of exactly `size` bytes: write its header and return the body to
    /// stream the content into. The body must be [`FileBody::finish`]ed before anything else
    /// is appended.
    pub fn begin_file<'p>(&mut self, meta: &Meta<'p>, size: u64) -> Result<FileBody<'_, 'p, W>> {
        self.header(
            meta,
            Head {
                kind: Type::File,
                size,
                link: b"",
                dev: (0, 0),
            },
        )?;
        self.open_file = true;
        Ok(FileBody {
            tar: self,
            path: meta.path,
            size,
            written: 0,
        })
    }

    /// A regular file whose whole content is `data`.
    pub fn append_file_bytes(&mut self, meta: &Meta, data: &[u8]) -> Result<()> {
        let mut body = self.begin_file(meta, data.len() as u64)?;
        body.write(data)?;
        body.finish()
    }

    /// A symbolic link to `target` (stored as is, absolute or relative).
    pub fn append_symlink(&mut self, meta: &Meta, target: &[u8]) -> Result<()> {
        check_target(meta.path, target)?;
        self.header(
            meta,
            Head {
                kind: Type::Symlink,
                size: 0,
                link: target,
                dev: (0, 0),
            },
        )
    }

    /// A hard link to `target`, an entry written earlier in this archive (its relative path).
    pub fn append_hardlink(&mut self, meta: &Meta, target: &[u8]) -> Result<()> {
        check_path(target)?;
        self.header(
            meta,
            Head {
                kind: Type::HardLink,
                size: 0,
                link: target,
                dev: (0, 0),
            },
        )
    }

    /// A named pipe.
    pub fn append_fifo(&mut self, meta: &Meta) -> Result<()> {
        self.header(
            meta,
            Head {
                kind: Type::Fifo,
                size: 0,
                link: b"",
                dev: (0, 0),
            },
        )
    }

    /// A character device.
    pub fn append_char_device(&mut self, meta: &Meta, major: u32, minor: u32) -> Result<()> {
        self.header(
            meta,
            Head {
                kind: Type::CharDevice,
                size: 0,
                link: b"",
                dev: (major, minor),
            },
        )
    }

    /// A block device.
    pub fn append_block_device(&mut self, meta: &Meta, major: u32, minor: u32) -> Result<()> {
        let head = Head {
            kind: Type::BlockDevice,
            size: 0,
            link: b"",
            dev: (major, minor),
        };
        self.header(meta, head)
    }

    /// The whiteout `parent/.wh.NAME` that deletes `parent/NAME` from the layers below, with
    /// the fixed metadata described in the module docs.
    pub fn append_whiteout(&mut self, parent: &[u8], name: &[u8]) -> Result<()> {
        if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
            return Err(Error::InvalidArgument(format!(
                "{}: not a name to white out",
                os_path(&join(parent, name)).display()
            )));
        }
        let mut wh = Vec::with_capacity(WHITEOUT_PREFIX.len() + name.len());
        wh.extend_from_slice(WHITEOUT_PREFIX);
        wh.extend_from_slice(name);
        self.append_marker(&join(parent, &wh))
    }

    /// The opaque marker `dir/.wh..wh..opq` (`dir` empty: the root), fixed metadata.
    pub fn append_opaque(&mut self, dir: &[u8]) -> Result<()> {
        self.append_marker(&join(dir, OPAQUE_MARKER))
    }

    fn append_marker(&mut self, path: &[u8]) -> Result<()> {
        let meta = Meta::marker(path);
        // Not through `header`: markers are never clamped.
        self.emit(
            &meta,
            Head {
                kind: Type::File,
                size: 0,
                link: b"",
                dev: (0, 0),
            },
            None,
        )
    }

    /// End the archive (two zero blocks) and return the inner writer, not flushed.
    pub fn finish(mut self) -> Result<W> {
        self.check_not_open()?;
        self.inner.write_all(&ZEROS).at(&self.output)?;
        Ok(self.inner)
    }

    fn check_not_open(&self) -> Result<()> {
        if self.open_file {
            return Err(Error::InvalidArgument(
                "tar writer: the previous file's content was not finished".into(),
            ));
        }
        Ok(())
    }

    fn header(&mut self, meta: &Meta, head: Head) -> Result<()> {
        let epoch = self.source_date_epoch;
        self.emit(meta, head, epoch)
    }

    fn emit(&mut self, meta: &Meta, head: Head, epoch: Option<i64>) -> Result<()> {
        self.check_not_open()?;
        check_path(meta.path)?;
        self.scratch.clear();
        encode(&mut self.scratch, &mut self.pax, meta, head, epoch)?;
        if let Some(observe) = &mut self.observer {
            observe(self.pos, &self.scratch);
        }
        self.inner.write_all(&self.scratch).at(&self.output)?;
        self.pos += self.scratch.len() as u64;
        Ok(())
    }
}

/// The content of a regular file being written, from [`TarWriter::begin_file`].
pub struct FileBody<'w, 'p, W: Write> {
    tar: &'w mut TarWriter<W>,
    path: &'p [u8],
    size: u64,
    written: u64,
}

impl<W: Write> FileBody<'_, '_, W> {
    /// Append content. [`Error::FileChanged`] if it goes past the announced size.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let found = self.written + data.len() as u64;
        if found > self.size {
            return Err(changed(self.path, self.size, found));
        }
        self.tar.inner.write_all(data).at(&self.tar.output)?;
        self.tar.pos += data.len() as u64;
        self.written = found;
        Ok(())
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.size - self.written
    }

    /// End the content (padding to the block). [`Error::FileChanged`] if it is short.
    pub fn finish(self) -> Result<()> {
        if self.written != self.size {
            return Err(changed(self.path, self.size, self.written));
        }
        let pad = padding(self.size);
        self.tar
            .inner
            .write_all(&ZEROS[..pad])
            .at(&self.tar.output)?;
        self.tar.pos += pad as u64;
        self.tar.open_file = false;
        Ok(())
    }
}

fn changed(path: &[u8], expected: u64, found: u64) -> Error {
    Error::FileChanged {
        path: os_path(path).to_path_buf(),
        expected,
        found,
    }
}

/// How many bytes `content` has ready (0 at its end), retrying interrupted reads.
fn ready(content: &mut impl BufRead, path: &[u8]) -> Result<usize> {
    loop {
        match content.fill_buf() {
            Ok(data) => return Ok(data.len()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(os_path(path), e)),
        }
    }
}

/// Bytes of zero padding after `size` bytes of content.
fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

/// A path this writer accepts: relative, no empty, `.` or `..` components, no NUL.
fn check_path(path: &[u8]) -> Result<()> {
    let bad = path.is_empty()
        || path.contains(&0)
        || path
            .split(|&b| b == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..");
    if bad {
        return Err(Error::InvalidArgument(format!(
            "{:?}: not a relative path of a layer entry",
            os_path(path)
        )));
    }
    Ok(())
}

fn check_target(path: &[u8], target: &[u8]) -> Result<()> {
    if target.is_empty() || target.contains(&0) {
        return Err(Error::InvalidArgument(format!(
            "{}: symlink target is empty or holds a NUL byte",
            os_path(path).display()
        )));
    }
    Ok(())
}

// Header field offsets and widths (POSIX ustar).
const NAME: (usize, usize) = (0, 100);
const MODE: (usize, usize) = (100, 8);
const UID: (usize, usize) = (108, 8);
const GID: (usize, usize) = (116, 8);
const SIZE: (usize, usize) = (124, 12);
const MTIME: (usize, usize) = (136, 12);
const CHKSUM: (usize, usize) = (148, 8);
const TYPEFLAG: usize = 156;
const LINKNAME: (usize, usize) = (157, 100);
const MAGIC: (usize, usize) = (257, 8); // "ustar\0" + version "00"
const DEVMAJOR: (usize, usize) = (329, 8);
const DEVMINOR: (usize, usize) = (337, 8);
const PREFIX: (usize, usize) = (345, 155);

/// Append the header block(s) of one entry to `out`: an optional PAX header block with its
/// records, then the ustar header. `pax` is scratch space.
fn encode(
    out: &mut Vec<u8>,
    pax: &mut Vec<u8>,
    meta: &Meta,
    head: Head,
    epoch: Option<i64>,
) -> Result<()> {
    let mut hdr = [0u8; BLOCK];
    pax.clear();

    // Path: directories end in '/'.
    let dir_path;
    let path: &[u8] = if head.kind == Type::Dir {
        dir_path = [meta.path, b"/"].concat();
        &dir_path
    } else {
        meta.path
    };
    let mut path_record = None;
    if path.len() <= NAME.1 {
        put_bytes(&mut hdr, NAME, path);
    } else if let Some(split) = ustar_split(path) {
        put_bytes(&mut hdr, PREFIX, &path[..split]);
        put_bytes(&mut hdr, NAME, &path[split + 1..]);
    } else {
        put_bytes(&mut hdr, NAME, &path[..NAME.1]);
        path_record = Some(path);
    }

    let mut link_record = None;
    if head.link.len() <= LINKNAME.1 {
        put_bytes(&mut hdr, LINKNAME, head.link);
    } else {
        put_bytes(&mut hdr, LINKNAME, &head.link[..LINKNAME.1]);
        link_record = Some(head.link);
    }

    put_octal(&mut hdr, MODE, u64::from(meta.mode & 0o7777));
    let size_record = !put_number(&mut hdr, SIZE, i128::from(head.size));
    let uid_record = !put_number(&mut hdr, UID, i128::from(meta.uid));
    let gid_record = !put_number(&mut hdr, GID, i128::from(meta.gid));

    let mtime = clamp(meta.mtime, epoch);
    let mtime_record = !put_number(&mut hdr, MTIME, i128::from(mtime.sec)) || mtime.nsec != 0;

    hdr[TYPEFLAG] = head.kind.flag();
    put_bytes(&mut hdr, MAGIC, b"ustar\x0000");
    // uname/gname stay empty (numeric owners only).
    put_octal(&mut hdr, DEVMAJOR, 0);
    put_octal(&mut hdr, DEVMINOR, 0);
    if matches!(head.kind, Type::CharDevice | Type::BlockDevice) {
        put_number(&mut hdr, DEVMAJOR, i128::from(head.dev.0));
        put_number(&mut hdr, DEVMINOR, i128::from(head.dev.1));
    }
    set_checksum(&mut hdr);

    // PAX records, in a fixed order.
    if let Some(p) = path_record {
        pax_record(pax, b"path", p);
    }
    if let Some(l) = link_record {
        pax_record(pax, b"linkpath", l);
    }
    if size_record {
        pax_record(pax, b"size", head.size.to_string().as_bytes());
    }
    if uid_record {
        pax_record(pax, b"uid", meta.uid.to_string().as_bytes());
    }
    if gid_record {
        pax_record(pax, b"gid", meta.gid.to_string().as_bytes());
    }
    if mtime_record {
        pax_record(pax, b"mtime", pax_time(mtime).as_bytes());
    }
    let mut xattrs: Vec<&(Vec<u8>, Vec<u8>)> = meta
        .xattrs
        .iter()
        .filter(|(k, _)| !is_overlay_xattr(k))
        .collect();
    xattrs.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, (name, value)) in xattrs.iter().enumerate() {
        if !storable_xattr_name(name) {
            return Err(Error::InvalidArgument(format!(
                "{}: xattr name {:?} cannot be stored in a PAX record",
                os_path(meta.path).display(),
                String::from_utf8_lossy(name)
            )));
        }
        if i > 0 && xattrs[i - 1].0 == *name {
            return Err(Error::InvalidArgument(format!(
                "{}: xattr {:?} given twice",
                os_path(meta.path).display(),
                String::from_utf8_lossy(name)
            )));
        }
        let key = [b"SCHILY.xattr.".as_slice(), name].concat();
        pax_record(pax, &key, value);
    }

    if pax.len() as u64 > crate::tar::reader::MAX_META {
        // Go's archive/tar (docker, containerd, umoci) reads no larger PAX header, nor do we.
        return Err(Error::InvalidArgument(format!(
            "{}: its metadata (xattrs) take {} bytes of PAX records, more than the {} bytes \
             tar readers accept",
            os_path(meta.path).display(),
            pax.len(),
            crate::tar::reader::MAX_META
        )));
    }
    if !pax.is_empty() {
        let mut x = [0u8; BLOCK];
        put_bytes(&mut x, NAME, PAX_HEADER_NAME);
        put_octal(&mut x, MODE, 0);
        put_octal(&mut x, UID, 0);
        put_octal(&mut x, GID, 0);
        let fits = put_number(&mut x, SIZE, pax.len() as i128);
        debug_assert!(fits, "PAX records beyond 8 GiB");
        put_octal(&mut x, MTIME, 0);
        x[TYPEFLAG] = b'x';
        put_bytes(&mut x, MAGIC, b"ustar\x0000");
        put_octal(&mut x, DEVMAJOR, 0);
        put_octal(&mut x, DEVMINOR, 0);
        set_checksum(&mut x);
        out.extend_from_slice(&x);
        out.extend_from_slice(pax);
        out.extend_from_slice(&ZEROS[..padding(pax.len() as u64)]);
    }
    out.extend_from_slice(&hdr);
    Ok(())
}

/// `min(t, epoch)`; a clamped time has no nanoseconds.
fn clamp(t: Timestamp, epoch: Option<i64>) -> Timestamp {
    match epoch {
        Some(e) if t > (Timestamp { sec: e, nsec: 0 }) => Timestamp { sec: e, nsec: 0 },
        _ => t,
    }
}

/// Where to cut a path into ustar `prefix` and `name`: the index of the `/` that leaves the
/// longest prefix of at most 155 bytes with a non-empty name of at most 100 bytes after it
/// (the rule Go's `archive/tar` uses). `None` if no `/` does.
fn ustar_split(path: &[u8]) -> Option<usize> {
    let limit = path.len().min(PREFIX.1 + 1);
    let i = path[..limit].iter().rposition(|&b| b == b'/')?;
    let name_len = path.len() - i - 1;
    (i > 0 && name_len > 0 && name_len <= NAME.1).then_some(i)
}

fn put_bytes(hdr: &mut [u8; BLOCK], (off, len): (usize, usize), v: &[u8]) {
    debug_assert!(v.len() <= len);
    hdr[off..off + v.len()].copy_from_slice(v);
}

/// Octal digits filling the field but its last byte, which is NUL.
fn put_octal(hdr: &mut [u8; BLOCK], (off, len): (usize, usize), mut v: u64) {
    let field = &mut hdr[off..off + len];
    field[len - 1] = 0;
    for b in field[..len - 1].iter_mut().rev() {
        *b = b'0' + (v & 7) as u8;
        v >>= 3;
    }
    debug_assert_eq!(v, 0);
}

/// A number in octal if it fits (`0 ≤ v < 8^(len-1)`), otherwise in GNU base-256 (first byte
/// 0x80, or 0xff for a negative number, then two's complement big-endian). Returns whether
/// octal fit, that is whether a strict ustar reader sees the value (else a PAX record says it).
fn put_number(hdr: &mut [u8; BLOCK], (off, len): (usize, usize), v: i128) -> bool {
    if v >= 0 && v < 1i128 << (3 * (len - 1)) {
        put_octal(hdr, (off, len), v as u64);
        return true;
    }
    let field = &mut hdr[off..off + len];
    let bytes = v.to_be_bytes();
    field.copy_from_slice(&bytes[bytes.len() - len..]);
    field[0] = if v < 0 { 0xff } else { 0x80 };
    false
}

fn set_checksum(hdr: &mut [u8; BLOCK]) {
    hdr[CHKSUM.0..CHKSUM.0 + CHKSUM.1].fill(b' ');
    let sum: u32 = hdr.iter().map(|&b| u32::from(b)).sum();
    put_octal(hdr, (CHKSUM.0, 7), u64::from(sum));
    // Six digits, NUL, then the space already there.
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record, its own
/// digits included.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = 1 + key.len() + 1 + value.len() + 1; // ' ', '=', '\n'
    let digits = decimal_digits(rest);
    let mut len = rest + digits;
    if decimal_digits(len) > digits {
        len += 1; // counting the digits carried the total into one more digit
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn decimal_digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// A PAX time: `SEC` or `SEC.NNNNNNNNN`; before the epoch the sign comes first, then the
/// magnitude (`sec -2, nsec 500000000` is `-1.500000000`), as GNU tar and Go write it.
fn pax_time(t: Timestamp) -> String {
    if t.nsec == 0 {
        return t.sec.to_string();
    }
    if t.sec >= 0 {
        return format!("{}.{:09}", t.sec, t.nsec);
    }
    // t = sec + nsec/1e9 with sec < 0: magnitude = (-sec - 1) + (1e9 - nsec)/1e9.
    let whole = -(t.sec + 1);
    format!("-{}.{:09}", whole, 1_000_000_000 - t.nsec)
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
