//! Changes between two trees, or read from an overlayfs upper directory.

use std::path::{Path, PathBuf};

use crate::entry::Entry;
use crate::error::Result;

/// What happened to a path, in `docker diff` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// `A`: new in the upper tree.
    Added,
    /// `C`: present in both, different.
    Modified,
    /// `D`: gone from the upper tree (becomes a whiteout).
    Deleted,
}

impl ChangeKind {
    /// The `docker diff` letter.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Modified => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One change: what the layer must hold for `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Added, modified or deleted.
    pub kind: ChangeKind,
    /// Relative path (see [`Entry::path`]).
    pub path: Vec<u8>,
    /// The upper tree's entry; `None` for [`ChangeKind::Deleted`].
    pub entry: Option<Entry>,
    /// For a directory: its lower contents are hidden (written as an opaque marker).
    pub opaque: bool,
}

/// Options of a diff.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Compare regular-file contents (blake3) when size matches but mtime differs, so a touched
    /// but identical file is not reported.
    pub content: bool,
}

/// Changes that turn the tree `lower` into the tree `upper`, in [`crate::entry::cmp_paths`] order.
pub fn diff_dirs(lower: &Path, upper: &Path, opts: &DiffOptions) -> Result<Vec<Change>> {
    let _ = (lower, upper, opts);
    unimplemented!("diff_dirs")
}

/// Changes recorded by an overlayfs upper directory, in [`crate::entry::cmp_paths`] order.
/// `lowers` (top first) are used to tell added from modified and as the fallback when the upper
/// dir was written with `redirect_dir` or `metacopy`.
pub fn diff_overlay(upper: &Path, lowers: &[PathBuf], opts: &DiffOptions) -> Result<Vec<Change>> {
    let _ = (upper, lowers, opts);
    unimplemented!("diff_overlay")
}

/// Every object of the tree at `upper` as an added change: the layer of a whole root filesystem.
pub fn full_tree(upper: &Path) -> Result<Vec<Change>> {
    Ok(crate::walk::walk(upper)?
        .into_iter()
        .map(|e| Change { kind: ChangeKind::Added, path: e.path.clone(), entry: Some(e), opaque: false })
        .collect())
}
