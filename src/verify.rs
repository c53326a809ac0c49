//! Reading a blob while checking it is what its descriptor says: size and sha256 digest.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::digest::hex;
use crate::error::{Error, Result};

/// A reader that hashes and counts what it passes on, and fails as soon as more bytes arrive
/// than the descriptor's size allows.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    expected_size: u64,
}

impl<R: Read> VerifyingReader<R> {
    /// Wrap `inner`, which should hold exactly `expected_size` bytes.
    pub fn new(inner: R, expected_size: u64) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
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
        if self.read != self.expected_size {
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: format!("{} bytes", self.expected_size),
                found: format!("{} bytes", self.read),
            });
        }
        let found = format!("sha256:{}", hex(&self.hasher.finalize()));
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

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if self.read > self.expected_size {
            return Err(io::Error::other(format!(
                "blob is larger than its descriptor's {} bytes",
                self.expected_size
            )));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
