//! Hashing writers: sha256 for OCI digests, blake3 for internal content keys.
//!
//! OCI descriptors, `diff_id`s and the registry wire use sha256 (`sha256:<64 hex>`); `sha2` picks
//! the SHA-NI code path at run time where the CPU has it. blake3 is used only for keys that never
//! leave this machine (content comparison in `diff --content`, caches): registries reject it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result};

/// Read size of the hashing helpers: large enough that syscalls do not dominate.
const READ_CHUNK: usize = 1 << 20;

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// An incremental sha256 that formats as an OCI digest (`sha256:<hex>`).
#[derive(Clone, Default)]
pub struct Sha256Hasher {
    hasher: Sha256,
    len: u64,
}

impl Sha256Hasher {
    /// A hasher that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hash more bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was hashed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest (`sha256:<hex>`) and the number of bytes hashed.
    pub fn finish(self) -> (String, u64) {
        (format!("sha256:{}", hex(&self.hasher.finalize())), self.len)
    }
}

/// The OCI digest (`sha256:<hex>`) of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    let mut h = Sha256Hasher::new();
    h.update(data);
    h.finish().0
}

/// The OCI digest of everything `reader` yields, and its length.
pub fn sha256_reader<R: Read>(mut reader: R) -> io::Result<(String, u64)> {
    let mut h = Sha256Hasher::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A [`Write`] adapter that hashes (sha256) and counts every byte passing through to `W`.
///
/// Only the bytes the inner writer accepted are hashed, so a short write never desynchronises
/// the digest from the output.
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256Hasher,
}

impl<W: Write> Sha256Writer<W> {
    /// Hash what is written into `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256Hasher::new(),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// True when nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The inner writer, mutably. Bytes written to it directly are not hashed.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer (not flushed), the digest `sha256:<hex>` and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        let (digest, len) = self.hasher.finish();
        (self.inner, digest, len)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // One hash update per call instead of one per partial inner write.
        self.inner.write_all(buf)?;
        self.hasher.update(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The blake3 hash of everything `reader` yields.
pub fn blake3_reader<R: Read>(mut reader: R) -> io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(*h.finalize().as_bytes()),
            Ok(n) => {
                h.update(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The blake3 content key of the regular file at `path`.
///
/// The last component is not followed (`O_NOFOLLOW`: a symlink there is an error, `ELOOP`);
/// `O_NONBLOCK` keeps a FIFO swapped in since the walk from blocking the open. Anything that is
/// not a regular file is refused (an [`io::ErrorKind::InvalidInput`] error).
pub fn blake3_file(path: &Path) -> Result<[u8; 32]> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .at(path)?;
    if !file.metadata().at(path)?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ))
        .at(path);
    }
    blake3_reader(file).at(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers: sha256("") and sha256("abc") (FIPS 180-2), blake3("") (reference vectors).
    const SHA256_EMPTY: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const SHA256_ABC: &str =
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const BLAKE3_EMPTY: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    #[test]
    fn sha256_known_answers() {
        assert_eq!(sha256_digest(b""), SHA256_EMPTY);
        assert_eq!(sha256_digest(b"abc"), SHA256_ABC);
        assert_eq!(
            sha256_reader(&b"abc"[..]).unwrap(),
            (SHA256_ABC.to_string(), 3)
        );
    }

    #[test]
    fn writer_hashes_and_passes_through() {
        let mut w = Sha256Writer::new(Vec::new());
        w.write_all(b"a").unwrap();
        assert_eq!(w.write(b"bc").unwrap(), 2);
        assert_eq!(w.len(), 3);
        let (inner, digest, len) = w.finish();
        assert_eq!(inner, b"abc");
        assert_eq!(digest, SHA256_ABC);
        assert_eq!(len, 3);
    }

    #[test]
    fn writer_hashes_only_accepted_bytes() {
        // A writer that takes one byte per call.
        struct OneByte(Vec<u8>);
        impl Write for OneByte {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.push(buf[0]);
                Ok(1)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = Sha256Writer::new(OneByte(Vec::new()));
        assert_eq!(w.write(b"abc").unwrap(), 1);
        w.write_all(b"bc").unwrap();
        let (inner, digest, _) = w.finish();
        assert_eq!(inner.0, b"abc");
        assert_eq!(digest, SHA256_ABC);
    }

    #[test]
    fn blake3_helpers() {
        assert_eq!(hex(&blake3_reader(&b""[..]).unwrap()), BLAKE3_EMPTY);
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let p = dir.path().join("f");
        std::fs::write(&p, &data).unwrap();
        assert_eq!(blake3_file(&p).unwrap(), *blake3::hash(&data).as_bytes());
        // Not followed, not read: symlinks and directories.
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        assert!(blake3_file(&dir.path().join("l")).is_err());
        assert!(blake3_file(dir.path()).is_err());
    }
}
