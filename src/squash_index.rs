//! Layer indexes: what squash learns by reading a layer once (its entries as fold operations
//! and its gzip members), kept in a file named after the blob's digest so that the next squash
//! of the same layer does not inflate it just to read its headers.
//!
//! An index is a hint, never trusted: squash checks every entry and every member it relied on
//! against the layer itself while it streams the contents (see [`crate::squash`]), and starts
//! over without indexes on any difference. A file that is truncated, of another version, or
//! whose checksum does not match is ignored.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use crate::decompress::MemberSeen;
use crate::members::HEADER_LEN;
use crate::squash::{Kind, Op, Record};

/// File format version; another version is ignored.
const MAGIC: &[u8; 8] = b"LDSQIX01";
/// An index larger than this is not read (a layer of millions of entries is still far below).
const MAX_INDEX: u64 = 1 << 30;
/// Items allocated ahead of decoding them: a count is only a claim until the items are there.
const PREALLOC: usize = 1 << 16;

/// One layer's entries and gzip members, as read from the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerIndex {
    /// Fold operations, in layer order; file contents refer to layer 0 (set on reading).
    pub ops: Vec<Op>,
    /// gzip members inflated in one piece, in blob order (empty for other formats).
    pub members: Vec<MemberSeen>,
}

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn tagged(&mut self, tag: u8, b: &[u8]) {
        self.u8(tag);
        self.bytes(b);
    }
    fn tagged_pair(&mut self, tag: u8, (x, y): (u32, u32)) {
        self.u8(tag);
        self.u32(x);
        self.u32(y);
    }
    fn record(&mut self, r: &Record) {
        match &r.kind {
            Kind::Dir => self.u8(0),
            Kind::File { offset, size, .. } => {
                self.u8(1);
                self.u64(*offset);
                self.u64(*size);
            }
            Kind::LinkToLower(t) => self.tagged(2, t),
            Kind::Symlink(t) => self.tagged(3, t),
            Kind::Fifo => self.u8(4),
            Kind::Char(a, b) => self.tagged_pair(5, (*a, *b)),
            Kind::Block(a, b) => self.tagged_pair(6, (*a, *b)),
        }
        self.u32(r.mode);
        self.u32(r.uid);
        self.u32(r.gid);
        self.u64(r.mtime.0 as u64);
        self.u32(r.mtime.1);
        self.u64(r.xattrs.len() as u64);
        for (k, v) in &r.xattrs {
            self.bytes(k);
            self.bytes(v);
        }
    }
}

struct Dec<'a> {
    buf: &'a [u8],
    layer: usize,
}

impl Dec<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = usize::try_from(self.u64()?).ok()?;
        Some(self.take(n)?.to_vec())
    }
    /// A count of items, each at least one byte long: more than the bytes left is corrupt.
    fn count(&mut self) -> Option<usize> {
        let n = usize::try_from(self.u64()?).ok()?;
        (n <= self.buf.len()).then_some(n)
    }
    fn record(&mut self) -> Option<Record> {
        let kind = match self.u8()? {
            0 => Kind::Dir,
            1 => Kind::File {
                layer: self.layer,
                offset: self.u64()?,
                size: self.u64()?,
            },
            2 => Kind::LinkToLower(self.bytes()?),
            3 => Kind::Symlink(self.bytes()?),
            4 => Kind::Fifo,
            5 => Kind::Char(self.u32()?, self.u32()?),
            6 => Kind::Block(self.u32()?, self.u32()?),
            _ => return None,
        };
        let mode = self.u32()?;
        let uid = self.u32()?;
        let gid = self.u32()?;
        let mtime = (self.u64()? as i64, self.u32()?);
        let n = self.count()?;
        let mut xattrs = Vec::with_capacity(n.min(PREALLOC));
        for _ in 0..n {
            xattrs.push((self.bytes()?, self.bytes()?));
        }
        Some(Record {
            kind,
            mode,
            uid,
            gid,
            mtime,
            xattrs,
            link_set: None,
        })
    }
    fn op(&mut self) -> Option<Op> {
        Some(match self.u8()? {
            0 => Op::Whiteout(self.bytes()?),
            1 => Op::Opaque(self.bytes()?),
            2 => Op::Put(self.bytes()?, self.record()?),
            3 => Op::Link(self.bytes()?, self.bytes()?),
            _ => return None,
        })
    }
    fn member(&mut self) -> Option<MemberSeen> {
        let offset = self.u64()?;
        let len = usize::try_from(self.u64()?).ok()?;
        let head = match self.u8()? {
            0 => None,
            1 => Some(self.take(HEADER_LEN)?.try_into().ok()?),
            _ => return None,
        };
        let key = self.take(16)?.try_into().ok()?;
        let size = usize::try_from(self.u64()?).ok()?;
        Some(MemberSeen {
            offset,
            len,
            head,
            key,
            size,
        })
    }
}

/// Most entries an index is kept for while a layer is written (its operations are held in
/// memory until the end); a larger layer gets no index from its writer.
const MAX_BUILT: usize = 1 << 19;

/// The operations of a layer being written, from the header bytes its tar writer reports
/// ([`crate::tar::writer::TarWriter::with_header_observer`]), parsed as squash parses a layer.
#[derive(Debug, Default)]
pub struct IndexBuilder {
    ops: Vec<Op>,
    failed: bool,
}

impl IndexBuilder {
    /// One entry's header bytes, starting at `offset` of the archive.
    pub fn header(&mut self, offset: u64, bytes: &[u8]) {
        if self.failed {
            return;
        }
        let mut reader = crate::tar::reader::TarReader::new(bytes);
        let parsed = match reader.next_header() {
            Ok(Some(h)) => crate::squash::header_op(h, 0),
            _ => Err(crate::Error::InvalidArgument("unreadable header".into())),
        };
        match parsed {
            Ok(op) if self.ops.len() < MAX_BUILT => self.ops.extend(op.map(|op| at(op, offset))),
            _ => {
                self.failed = true;
                self.ops = Vec::new();
            }
        }
    }

    /// The operations, unless a header could not be parsed or there were too many.
    pub fn finish(self) -> Option<Vec<Op>> {
        (!self.failed).then_some(self.ops)
    }
}

/// `op` with a file's content offset moved from its header's start to the archive's.
fn at(mut op: Op, offset: u64) -> Op {
    if let Op::Put(
        _,
        Record {
            kind: Kind::File { offset: rel, .. },
            ..
        },
    ) = &mut op
    {
        *rel += offset;
    }
    op
}

/// The index's bytes: magic, operations, members, blake3 of all that.
pub fn encode(index: &LayerIndex) -> Vec<u8> {
    let mut e = Enc(MAGIC.to_vec());
    e.u64(index.ops.len() as u64);
    for op in &index.ops {
        match op {
            Op::Whiteout(p) => e.tagged(0, p),
            Op::Opaque(p) => e.tagged(1, p),
            Op::Put(p, r) => {
                e.tagged(2, p);
                e.record(r);
            }
            Op::Link(p, t) => {
                e.tagged(3, p);
                e.bytes(t);
            }
        }
    }
    e.u64(index.members.len() as u64);
    for m in &index.members {
        e.u64(m.offset);
        e.u64(m.len as u64);
        match &m.head {
            Some(h) => {
                e.u8(1);
                e.0.extend_from_slice(h);
            }
            None => e.u8(0),
        }
        e.0.extend_from_slice(&m.key);
        e.u64(m.size as u64);
    }
    seal(e.0)
}

/// `body` with the checksum [`decode`] expects after it.
pub fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let sum = blake3::hash(&body);
    body.extend_from_slice(sum.as_bytes());
    body
}

/// Decode an index whose file contents refer to source layer `layer`; `None` if it is not a
/// whole, intact index of this version.
pub fn decode(data: &[u8], layer: usize) -> Option<LayerIndex> {
    let body = data.len().checked_sub(32)?;
    let (body, sum) = data.split_at(body);
    if blake3::hash(body).as_bytes() != sum {
        return None;
    }
    let mut d = Dec {
        buf: body.strip_prefix(MAGIC)?,
        layer,
    };
    let n = d.count()?;
    let mut ops = Vec::with_capacity(n.min(PREALLOC));
    for _ in 0..n {
        ops.push(d.op()?);
    }
    let n = d.count()?;
    let mut members = Vec::with_capacity(n.min(PREALLOC));
    for _ in 0..n {
        members.push(d.member()?);
    }
    d.buf.is_empty().then_some(LayerIndex { ops, members })
}

/// The index in `path` for source layer `layer`, if there is a usable one.
pub fn load(path: &Path, layer: usize) -> Option<LayerIndex> {
    let len = std::fs::metadata(path).ok()?.len();
    if len > MAX_INDEX {
        return None;
    }
    decode(&std::fs::read(path).ok()?, layer)
}

/// Store `index` at `path` (through a temporary file and a rename, so a reader never sees half
/// of it). An index is a cache: it is not fsynced, and a torn one is ignored on reading.
pub fn store(path: &Path, index: &LayerIndex) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-index-{}-{}",
        std::process::id(),
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    ));
    let res = File::create(&tmp)
        .and_then(|mut f| f.write_all(&encode(index)))
        .and_then(|()| std::fs::rename(&tmp, path));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LayerIndex {
        let rec = |kind| Record {
            kind,
            mode: 0o4755,
            uid: 1000,
            gid: 42,
            mtime: (-5, 999_999_999),
            xattrs: vec![(b"user.a".to_vec(), vec![0, 255, 1])],
            link_set: None,
        };
        LayerIndex {
            ops: vec![
                Op::Opaque(b"etc".to_vec()),
                Op::Whiteout(b"etc/gone".to_vec()),
                Op::Put(b"etc".to_vec(), rec(Kind::Dir)),
                Op::Put(
                    b"etc/f\xff".to_vec(),
                    rec(Kind::File {
                        layer: 3,
                        offset: 1536,
                        size: 7,
                    }),
                ),
                Op::Put(b"l".to_vec(), rec(Kind::Symlink(b"/etc".to_vec()))),
                Op::Put(b"p".to_vec(), rec(Kind::Fifo)),
                Op::Put(b"c".to_vec(), rec(Kind::Char(1, 3))),
                Op::Put(b"b".to_vec(), rec(Kind::Block(8, 0))),
                Op::Link(b"h".to_vec(), b"etc/f\xff".to_vec()),
            ],
            members: vec![
                MemberSeen {
                    offset: 0,
                    len: 100,
                    head: Some([7; HEADER_LEN]),
                    key: [9; 16],
                    size: 4096,
                },
                MemberSeen {
                    offset: 100,
                    len: 20,
                    head: None,
                    key: [1; 16],
                    size: 0,
                },
            ],
        }
    }

    #[test]
    fn round_trips_with_the_layer_set_on_reading() {
        let index = sample();
        let back = decode(&encode(&index), 3).expect("decodes");
        assert_eq!(back, index);
        let other = decode(&encode(&index), 0).expect("decodes");
        assert!(matches!(
            &other.ops[3],
            Op::Put(
                _,
                Record {
                    kind: Kind::File { layer: 0, .. },
                    ..
                }
            )
        ));
    }

    #[test]
    fn damaged_or_foreign_files_are_ignored() {
        let data = encode(&sample());
        for cut in [0, 1, 8, 20, data.len() - 33, data.len() - 1] {
            assert_eq!(decode(&data[..cut], 0), None, "cut at {cut}");
        }
        for i in [0, 9, data.len() / 2, data.len() - 1] {
            let mut bad = data.clone();
            bad[i] ^= 1;
            assert_eq!(decode(&bad, 0), None, "byte {i}");
        }
        // A well-formed file of another version.
        let mut other = data[..data.len() - 32].to_vec();
        other[7] = b'2';
        assert_eq!(decode(&seal(other), 0), None);
    }

    #[test]
    fn store_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("abc");
        store(&path, &sample()).unwrap();
        assert_eq!(load(&path, 3), Some(sample()));
        assert_eq!(load(&dir.path().join("missing"), 0), None);
    }
}
