//! OCI whiteout names, overlayfs whiteout and opaque forms, and the conversions between them.

/// Prefix of a whiteout file name in a layer.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the opaque-directory marker in a layer.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
