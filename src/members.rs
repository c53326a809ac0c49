//! The gzip members our layers are made of: where they end, how they are framed, and how a
//! later write takes a finished member instead of compressing the same bytes again.
//!
//! * **Boundaries are content-defined.** A member may end after any 512-byte tar record once it
//!   holds [`MIN_MEMBER`] bytes, and does end after the first record whose hash picks it (one
//!   in 1,024), or at [`MAX_MEMBER`]. The choice depends on the bytes, not on their offset in
//!   the stream, so the same run of entries is cut into the same members in any layer it
//!   appears in, at whatever offset — which is what lets squash reuse them.
//! * **Each member carries a tag** in a gzip `FEXTRA` subfield (`LD`, RFC 1952 §2.3.1.1): the
//!   framing version, the compression level, the libdeflate version, the compressed length and
//!   the first 16 bytes of the blake3 hash of the member's uncompressed bytes. Any gzip reader
//!   skips it.
//! * **Reuse is verified and changes nothing.** [`MemberIndex`] holds the members of existing
//!   blobs that were inflated and found to hold what their tag says (a tag alone proves
//!   nothing: a layer may come from anyone), and hands one out for the same bytes. Our compressor is deterministic, so a member made with the same
//!   level and libdeflate is the member we would make: the output bytes are the same either
//!   way, only faster.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::decompress::{MemberSeen, SeenMembers, with_decompressed_seen};
use crate::error::{IoContext, Result};

/// A member never ends before it holds this many bytes (256 KiB).
pub const MIN_MEMBER: usize = 256 << 10;
/// A member always ends at this many bytes (4 MiB).
pub const MAX_MEMBER: usize = 4 << 20;
/// Boundaries fall between tar records.
pub const RECORD: usize = 512;
/// One record in 1,024 ends a member (past [`MIN_MEMBER`]): about 768 KiB on average.
const CUT_MASK: u64 = 1023;

/// Framing version in the tag: what decides a member's bytes besides its level, the input and
/// libdeflate. Version 3: members estimated to gain under 1 % are stored, under 2 % deflated
/// at level 1 ([`crate::incompressible`]); version 2 stored them under 0.25 % only, version 1
/// deflated every member at the level asked for. Members of another version are not what we
/// would make now, so they are never taken.
pub(crate) const TAG_VERSION: u8 = 3;
/// The libdeflate that libdeflate-sys 1.26.1 bundles (pinned by `Cargo.lock`). Another
/// version may compress differently, so its members are not taken for ours.
const LIBDEFLATE: (u8, u8) = (1, 26);
/// Length of the tag's data.
const TAG_DATA: usize = 28;
/// gzip header with the `FEXTRA` field holding the tag.
pub const HEADER_LEN: usize = 10 + 2 + 4 + TAG_DATA;
/// CRC-32 and ISIZE.
pub const TRAILER_LEN: usize = 8;

/// Whether a member may end after `record` (a full 512-byte record), by its content alone.
pub fn is_cut(record: &[u8]) -> bool {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for word in record.chunks_exact(8) {
        let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 31;
    }
    h & CUT_MASK == 0
}

/// The first 16 bytes of the blake3 hash of a member's uncompressed bytes.
pub fn content_key(data: &[u8]) -> [u8; 16] {
    let hash = blake3::hash(data);
    hash.as_bytes()[..16].try_into().expect("16 bytes")
}

/// Write the header of a member of `data` at `level` whose deflate stream is `clen` bytes.
pub fn write_header(out: &mut [u8], level: i32, clen: u32, data: &[u8]) {
    let head = &mut out[..HEADER_LEN];
    // ID1 ID2 CM=deflate FLG=FEXTRA, MTIME 0, XFL 0, OS 255 (unknown): fixed, for determinism.
    head[..10].copy_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255]);
    head[10..12].copy_from_slice(&((4 + TAG_DATA) as u16).to_le_bytes());
    head[12..16].copy_from_slice(&[b'L', b'D', TAG_DATA as u8, 0]);
    let tag = &mut head[16..];
    tag[..4].copy_from_slice(&[TAG_VERSION, level as u8, LIBDEFLATE.0, LIBDEFLATE.1]);
    tag[4..8].copy_from_slice(&clen.to_le_bytes());
    tag[8..24].copy_from_slice(&content_key(data));
    tag[24..28].copy_from_slice(&(data.len() as u32).to_le_bytes());
}

/// The (level, compressed length, content key, uncompressed length) a member header claims,
/// if it is one of ours.
pub(crate) fn parse_header(head: &[u8; HEADER_LEN]) -> Option<(u8, u32, [u8; 16], u32)> {
    // Every fixed byte `write_header` writes: a member is taken as it is, so one whose MTIME,
    // XFL or OS differ would make the output differ from one compressed afresh.
    let fixed = [0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255];
    if head[..10] != fixed || head[10..16] != [32, 0, b'L', b'D', TAG_DATA as u8, 0] {
        return None;
    }
    let tag = &head[16..];
    if tag[0] != TAG_VERSION || (tag[2], tag[3]) != LIBDEFLATE {
        return None;
    }
    let clen = u32::from_le_bytes(tag[4..8].try_into().ok()?);
    let key = tag[8..24].try_into().ok()?;
    let len = u32::from_le_bytes(tag[24..28].try_into().ok()?);
    Some((tag[1], clen, key, len))
}

/// Where a member lies: blob, offset and whole length (header to trailer).
#[derive(Debug, Clone, Copy)]
struct Place {
    blob: usize,
    offset: u64,
    len: usize,
}

/// Members of existing gzip blobs, by content, for a writer at one compression level.
#[derive(Debug)]
pub struct MemberIndex {
    level: i32,
    blobs: Vec<File>,
    members: HashMap<([u8; 16], u32), Place>,
    hits: AtomicU64,
    /// Every member taken: blob, offset, content key, size.
    taken: Mutex<Vec<Taken>>,
    /// Blobs of members found not to hold what they were indexed as.
    refused: Mutex<Vec<usize>>,
}

/// A member handed out by [`MemberIndex::take`]: blob, offset, length in the blob, content
/// key and size.
pub type Taken = (usize, u64, usize, [u8; 16], u32);

impl MemberIndex {
    /// An empty index for a writer at `level`.
    pub fn new(level: i32) -> Self {
        MemberIndex {
            level,
            blobs: Vec::new(),
            members: HashMap::new(),
            hits: AtomicU64::new(0),
            taken: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
        }
    }

    /// The gzip level of the members this index holds.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// Index the members of the blob at `path` that `seen` (recorded while the blob was
    /// inflated) shows to be ours, at this index's level, and to hold what their tag says.
    /// Returns the number the blob has in [`MemberIndex::taken`], if any member was indexed.
    pub fn add_seen(&mut self, path: &Path, seen: &[MemberSeen]) -> Result<Option<usize>> {
        let blob = self.blobs.len();
        let mut any = false;
        for m in seen {
            let Some((level, clen, key, size)) = m.head.as_ref().and_then(parse_header) else {
                continue;
            };
            let whole = HEADER_LEN + clen as usize + TRAILER_LEN;
            if i32::from(level) == self.level
                && whole == m.len
                && key == m.key
                && size as usize == m.size
            {
                let place = Place {
                    blob,
                    offset: m.offset,
                    len: whole,
                };
                self.members.entry((key, size)).or_insert(place);
                any = true;
            }
        }
        if !any {
            return Ok(None);
        }
        self.blobs.push(crate::verify::open_blob(path)?);
        Ok(Some(blob))
    }

    /// Index the members of the blob at `path` (inflating it to check them).
    pub fn add_blob(&mut self, path: &Path) -> Result<()> {
        let seen = SeenMembers::default();
        let file = crate::verify::open_blob(path)?;
        with_decompressed_seen(file, Some(seen.clone()), |stream| {
            io::copy(stream, &mut io::sink()).at(path)
        })?;
        let seen = seen.lock().expect("not poisoned").clone();
        self.add_seen(path, &seen).map(|_| ())
    }

    /// Members indexed.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Members taken so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Put into `out` a member whose uncompressed bytes are exactly `data`, if an indexed
    /// member is one. Indexed members were checked when their blob was inflated: what they
    /// hold hashes to their key.
    pub fn take(&self, data: &[u8], out: &mut Vec<u8>) -> bool {
        let Ok(size) = u32::try_from(data.len()) else {
            return false;
        };
        let key = content_key(data);
        let Some(place) = self.members.get(&(key, size)) else {
            return false;
        };
        out.clear();
        out.resize(place.len, 0);
        if self.blobs[place.blob]
            .read_exact_at(out, place.offset)
            .is_err()
        {
            return false;
        }
        // The member's own trailer must describe these bytes too (a cheap check that the
        // blob still holds, at this place, the member that was indexed).
        let trailer = &out[place.len - TRAILER_LEN..];
        if trailer[..4] != libdeflater::crc32(data).to_le_bytes()
            || trailer[4..] != size.to_le_bytes()
        {
            self.refused.lock().expect("not poisoned").push(place.blob);
            return false;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        let taken = (place.blob, place.offset, place.len, key, size);
        self.taken.lock().expect("not poisoned").push(taken);
        true
    }

    /// The blobs (numbered as [`MemberIndex::add_seen`] returns) of members found, when they
    /// were about to be taken, not to hold what they were indexed as.
    pub fn refused(&self) -> Vec<usize> {
        self.refused.lock().expect("not poisoned").clone()
    }

    /// The members taken so far, in no particular order.
    pub fn taken(&self) -> Vec<Taken> {
        self.taken.lock().expect("not poisoned").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_others() {
        let data = b"hello members";
        let mut out = vec![0u8; HEADER_LEN];
        write_header(&mut out, 4, 99, data);
        let head: [u8; HEADER_LEN] = out.clone().try_into().unwrap();
        assert_eq!(
            parse_header(&head),
            Some((4, 99, content_key(data), data.len() as u32))
        );
        // Not gzip, no FEXTRA, an MTIME, XFL or OS other than ours, not our subfield, a
        // version 1 tag (members made before incompressible members were stored), another
        // libdeflate.
        for (i, b) in [
            (0, 0u8),
            (3, 0),
            (4, 1),
            (8, 2),
            (9, 3),
            (13, b'X'),
            (16, 1),
            (18, 0),
        ] {
            let mut bad = head;
            bad[i] = b;
            assert_eq!(parse_header(&bad), None, "byte {i}");
        }
    }

    #[test]
    fn a_member_is_taken_only_for_the_bytes_it_holds() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let (held, other) = (vec![7u8; 5000], vec![8u8; 5000]);
        let member = crate::compress::deflate_member_for_tests(1, &held);
        File::create(&path).unwrap().write_all(&member).unwrap();
        let seen = |data: &[u8]| MemberSeen {
            offset: 0,
            len: member.len(),
            head: member[..HEADER_LEN].try_into().ok(),
            key: content_key(data),
            size: data.len(),
        };
        let mut out = Vec::new();
        let mut honest = MemberIndex::new(1);
        assert_eq!(honest.add_seen(&path, &[seen(&held)]).unwrap(), Some(0));
        assert!(honest.take(&held, &mut out));
        assert_eq!(out, member);
        assert_eq!(
            honest.taken(),
            vec![(0, 0, member.len(), content_key(&held), 5000)]
        );
        // A record claiming the member holds other bytes (its tag is checked against the
        // record, so the tag says so too): the trailer's CRC-32 refuses it.
        let mut lying_member = member.clone();
        lying_member[24..40].copy_from_slice(&content_key(&other));
        File::create(&path)
            .unwrap()
            .write_all(&lying_member)
            .unwrap();
        let mut lying = MemberIndex::new(1);
        let mut record = seen(&other);
        record.head = lying_member[..HEADER_LEN].try_into().ok();
        assert_eq!(lying.add_seen(&path, &[record]).unwrap(), Some(0));
        assert!(!lying.take(&other, &mut out));
        assert_eq!(lying.refused(), vec![0]);
        assert!(lying.taken().is_empty());
    }

    #[test]
    fn cuts_depend_on_content_only() {
        let records: Vec<Vec<u8>> = (0u32..4096)
            .map(|i| {
                let mut r = vec![0u8; RECORD];
                r[..4].copy_from_slice(&i.to_le_bytes());
                r
            })
            .collect();
        let cuts = records.iter().filter(|r| is_cut(r)).count();
        // About one in 1,024.
        assert!((1..=12).contains(&cuts), "{cuts}");
        assert!(records.iter().all(|r| is_cut(r) == is_cut(&r.clone())));
    }
}
