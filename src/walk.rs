//! Fd-relative, no-follow, sorted, parallel tree walk.

use std::path::Path;

use crate::entry::Entry;
use crate::error::Result;

/// Walk the tree under `root` (not following symlinks, never leaving the tree) and return every
/// object below it — the root itself excluded — in [`crate::entry::cmp_paths`] order.
pub fn walk(root: &Path) -> Result<Vec<Entry>> {
    let _ = root;
    unimplemented!("walk")
}
