//! Hashing writers: sha256 for OCI digests, blake3 for internal content keys.
