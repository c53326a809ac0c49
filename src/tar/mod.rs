//! Tar: the deterministic PAX writer (ours, byte for byte) and the hardened reader.

pub mod reader;
pub mod writer;
