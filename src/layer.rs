//! The single-pass pipeline: changes → tar → sha256 (diff_id) → compress → sha256 (digest) → blob.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::compress::Compression;
use crate::diff::Change;
use crate::error::Result;

/// Options for writing one layer.
#[derive(Debug, Clone)]
pub struct LayerOptions {
    /// Blob compression.
    pub compression: Compression,
    /// Worker threads (0: one per core). Never changes the output bytes.
    pub threads: usize,
    /// Clamp every mtime to this time (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// `sha256:<hex>` of the stored (compressed) blob.
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// Size of the stored blob in bytes.
    pub size: u64,
    /// Size of the uncompressed tar in bytes.
    pub tar_size: u64,
    /// OCI media type of the blob.
    pub media_type: &'static str,
    /// Where the blob is (for [`write_layer_file`]).
    pub path: Option<PathBuf>,
    /// Things skipped on the way (sockets), one line each.
    pub warnings: Vec<String>,
}

/// Write the layer for `changes` (contents read from the tree at `upper`) into `sink`.
pub fn write_layer<W: Write + Send>(
    upper: &Path,
    changes: &[Change],
    opts: &LayerOptions,
    sink: W,
) -> Result<LayerInfo> {
    let _ = (upper, changes, opts, sink);
    unimplemented!("write_layer")
}

/// Write the layer into `blobs_dir` (an OCI layout's `blobs/sha256`): temporary file, fsync,
/// rename to the digest's hex name.
pub fn write_layer_file(
    upper: &Path,
    changes: &[Change],
    opts: &LayerOptions,
    blobs_dir: &Path,
) -> Result<LayerInfo> {
    let _ = (upper, changes, opts, blobs_dir);
    unimplemented!("write_layer_file")
}
