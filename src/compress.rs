//! Layer compression: none, parallel deterministic gzip, deterministic zstd.

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (the OCI default), compressed in parallel fixed-size blocks.
    Gzip {
        /// Compression level 1..=12 (libdeflate scale).
        level: i32,
    },
    /// zstd with a fixed parameter set.
    Zstd {
        /// Compression level 1..=19.
        level: i32,
    },
}

impl Compression {
    /// OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip { .. } => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd { .. } => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// gzip level used when none is given.
pub const DEFAULT_GZIP_LEVEL: i32 = 6;
/// zstd level used when none is given (zstd's own default).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
