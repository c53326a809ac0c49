//! Reading a blob while checking it is what its descriptor says: size and sha256 digest.

use std::io::{self, Read};

use crate::digest::Sha256Hasher;
use crate::error::{Error, Result};

/// Open the blob at `path` for reading: a regular file itself, never what a symbolic link in
/// its place names (a layout is another's, and its link could lead to a file of the caller's)
/// and never a FIFO or a device (whose open or read could wait for ever).
pub fn open_blob(path: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::io(path, io::Error::other("a symbolic link, not a blob")),
            _ => Error::io(path, e),
        })?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::io(path, io::Error::other("not a regular file")));
    }
    Ok(file)
}

/// A reader that hashes and counts what it passes on, and fails as soon as more bytes arrive
/// than the descriptor's size allows.
pub struct VerifyingReader<R> {
    inner: Hashing<R>,
    expected_size: u64,
}

impl<R: Read> VerifyingReader<R> {
    /// Wrap `inner`, which should hold exactly `expected_size` bytes.
    pub fn new(inner: R, expected_size: u64) -> Self {
        VerifyingReader {
            inner: Hashing::new(inner),
            expected_size,
        }
    }

    /// Read whatever is left (a tar reader stops at its end marker, the blob may go on), then
    /// compare size and digest with the descriptor's. `what` names the blob in errors.
    pub fn finish(mut self, expected_digest: &str, what: &str) -> Result<()> {
        io::copy(&mut self, &mut io::sink()).map_err(|e| Error::Archive {
            entry: what.to_string(),
            reason: e.to_string(),
        })?;
        let (found, size) = self.inner.hasher.finish();
        if size != self.expected_size {
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: format!("{} bytes", self.expected_size),
                found: format!("{size} bytes"),
            });
        }
        if found != expected_digest {
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: expected_digest.to_string(),
                found,
            });
        }
        Ok(())
    }
}

impl<R> VerifyingReader<R> {
    /// Whether more bytes came than the descriptor's size.
    pub fn overran(&self) -> bool {
        self.inner.hasher.len() > self.expected_size
    }

    /// The error for a blob longer than its descriptor says (`what` names it).
    pub fn overrun_error(&self, what: &str) -> Error {
        Error::DigestMismatch {
            what: what.to_string(),
            expected: format!("{} bytes", self.expected_size),
            found: "more".to_string(),
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.overran() {
            return Err(io::Error::other(format!(
                "blob is larger than its descriptor's {} bytes",
                self.expected_size
            )));
        }
        Ok(n)
    }
}

/// The digests of a stored layer blob, as `fsck` checks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobDigests {
    /// `sha256:` of the blob's bytes.
    pub digest: String,
    /// Size of the blob.
    pub size: u64,
    /// `sha256:` of the decompressed stream (the diff_id of a layer).
    pub diff_id: String,
    /// Size of the decompressed stream.
    pub tar_size: u64,
}

/// Hashes (sha256) and counts what is read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256Hasher,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256Hasher::new(),
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Hash a blob and its decompressed stream in one read of the file.
pub fn blob_digests(path: &std::path::Path, cancel: &crate::cancel::Cancel) -> Result<BlobDigests> {
    decompress_blob(
        path,
        &mut io::sink(),
        std::path::Path::new("<none>"),
        cancel,
    )
}

/// Decompress the blob at `path` into `out` (named `out_name` in errors), hashing the blob and
/// the decompressed stream on the way: what a `docker save` archive holds is the layer's tar,
/// and its sha256 must be the diff_id.
pub fn decompress_blob(
    path: &std::path::Path,
    out: &mut dyn io::Write,
    out_name: &std::path::Path,
    cancel: &crate::cancel::Cancel,
) -> Result<BlobDigests> {
    use crate::error::IoContext;
    let file = open_blob(path)?;
    let mut raw = Hashing::new(file);
    let what = path.display().to_string();
    let bad = |e: io::Error| Error::Archive {
        entry: what.clone(),
        reason: e.to_string(),
    };
    let (diff_id, tar_size) = crate::decompress::with_decompressed(&mut raw, |stream| {
        let mut tar = Hashing::new(stream);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            cancel.check()?;
            match tar.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.write_all(&buf[..n]).at(out_name)?,
                Err(e) => return Err(bad(e)),
            }
        }
        Ok(tar.hasher.finish())
    })?;
    out.flush().at(out_name)?;
    io::copy(&mut raw, &mut io::sink()).map_err(bad)?;
    let (digest, size) = raw.hasher.finish();
    Ok(BlobDigests {
        digest,
        size,
        diff_id,
        tar_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const ABC: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn accepts_the_right_bytes() {
        let mut r = VerifyingReader::new(&b"abc"[..], 3);
        let mut first = [0u8; 1];
        r.read_exact(&mut first).unwrap();
        r.finish(ABC, "blob").unwrap();
    }

    #[test]
    fn refuses_wrong_digest_and_wrong_size() {
        let e = VerifyingReader::new(&b"abd"[..], 3)
            .finish(ABC, "blob")
            .unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
        let e = VerifyingReader::new(&b"ab"[..], 3)
            .finish(ABC, "blob")
            .unwrap_err();
        assert!(e.to_string().contains("2 bytes"), "{e}");
        let e = VerifyingReader::new(&b"abcd"[..], 3)
            .finish(ABC, "blob")
            .unwrap_err();
        assert!(e.to_string().contains("larger"), "{e}");
    }

    #[test]
    fn blob_digests_hash_the_blob_and_its_stream() {
        let t = tempfile::tempdir().unwrap();
        let tar = b"not really a tar, but any stream".repeat(1000);
        let gz = {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        };
        let path = t.path().join("blob");
        std::fs::write(&path, &gz).unwrap();
        let d = blob_digests(&path, &crate::cancel::NEVER).unwrap();
        let sha = |b: &[u8]| crate::digest::sha256_digest(b);
        assert_eq!(d.digest, sha(&gz));
        assert_eq!(d.size, gz.len() as u64);
        assert_eq!(d.diff_id, sha(&tar));
        assert_eq!(d.tar_size, tar.len() as u64);
        let mut out = Vec::new();
        let e = decompress_blob(&path, &mut out, Path::new("out"), &crate::cancel::NEVER).unwrap();
        assert_eq!(e, d);
        assert_eq!(out, tar);
    }
}
