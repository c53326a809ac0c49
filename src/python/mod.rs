//! The Python extension `layerdiff._core`: argument conversion, GIL release, error mapping.
//! No logic lives here; every function converts its arguments, runs the core detached from the
//! interpreter (so other Python threads run and Ctrl-C is seen), and converts the result.

mod container;
mod errors;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use pyo3::prelude::*;

use crate::apply::{self, ApplyOptions};
use crate::cancel::Cancel;
use crate::compress::Compression;
use crate::diff::{self as core_diff, Change, DiffOptions};
use crate::error::IoContext;
use crate::layer::{self, LayerOptions};
use crate::root::Root;
use crate::verify::VerifyingReader;

/// How often a detached call looks for a pending signal (Ctrl-C) in the interpreter.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Stack of the thread a call works on: address space, touched only as deep as the work goes.
/// Whiteouts below directories a layer re-creates are hidden by recursion, one frame a level,
/// and a hostile layer can nest far deeper than a path could name (through symlinks).
const WORK_STACK: usize = 256 << 20;

/// Run `work` on a scoped thread while this thread, detached from the interpreter, waits for it
/// and checks for signals. A signal cancels the work through `cancel` and is re-raised.
fn run_detached<T: Send>(
    py: Python<'_>,
    cancel: &Cancel,
    work: impl FnOnce() -> crate::Result<T> + Send,
) -> PyResult<T> {
    std::thread::scope(|s| {
        let (tx, mut rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .stack_size(WORK_STACK)
            .spawn_scoped(s, move || {
                // The receiver outlives the scope's threads, so a failed send cannot happen.
                let _ = tx.send(work());
            })
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("starting a thread: {e}")))?;
        loop {
            // The receiver is moved in and out because it is `Send` but not `Sync`.
            let (received, back) = py.detach(move || (rx.recv_timeout(SIGNAL_POLL), rx));
            rx = back;
            match received {
                Ok(result) => return result.map_err(|e| errors::to_pyerr(py, e)),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(signal) = py.check_signals() {
                        cancel.cancel();
                        // Wait for the work to notice; its own result no longer matters.
                        let _ = py.detach(move || rx.recv());
                        return Err(signal);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(pyo3::exceptions::PyRuntimeError::new_err(
                        "layerdiff core stopped without a result (internal error)",
                    ));
                }
            }
        }
    })
}

fn changes_to_py(changes: Vec<Change>) -> Vec<(String, Vec<u8>)> {
    changes
        .into_iter()
        .map(|c| (c.kind.letter().to_string(), c.path))
        .collect()
}

fn parse_compression(name: &str, level: Option<i32>) -> PyResult<Compression> {
    Ok(match name {
        "none" => Compression::None,
        "gzip" => Compression::Gzip {
            level: level.unwrap_or(crate::compress::DEFAULT_GZIP_LEVEL),
        },
        "zstd" => Compression::Zstd {
            level: level.unwrap_or(crate::compress::DEFAULT_ZSTD_LEVEL),
        },
        other => {
            return Err(errors::invalid_argument(format!(
                "unknown compression {other:?} (expected gzip, zstd or none)"
            )));
        }
    })
}

/// Changes turning tree `lower` into tree `upper`.
#[pyfunction]
#[pyo3(signature = (lower, upper, *, content = false))]
fn diff(
    py: Python<'_>,
    lower: PathBuf,
    upper: PathBuf,
    content: bool,
) -> PyResult<Vec<(String, Vec<u8>)>> {
    let cancel = Arc::new(Cancel::new());
    let opts = DiffOptions {
        content,
        cancel: Some(cancel.clone()),
    };
    run_detached(py, &cancel, || core_diff::diff_dirs(&lower, &upper, &opts)).map(changes_to_py)
}

/// Changes recorded by an overlayfs upper directory.
#[pyfunction]
#[pyo3(signature = (upper, *, lowers = Vec::new(), content = false))]
fn diff_overlay(
    py: Python<'_>,
    upper: PathBuf,
    lowers: Vec<PathBuf>,
    content: bool,
) -> PyResult<Vec<(String, Vec<u8>)>> {
    let cancel = Arc::new(Cancel::new());
    let opts = DiffOptions {
        content,
        cancel: Some(cancel.clone()),
    };
    run_detached(py, &cancel, || {
        core_diff::diff_overlay(&upper, &lowers, &opts)
    })
    .map(changes_to_py)
}

/// The tuple `write_layer` returns: digest, diff_id, size, tar_size, media_type, path, warnings.
type LayerTuple = (String, String, u64, u64, String, PathBuf, Vec<String>);

/// Write one layer blob into `blobs_dir`.
#[pyfunction]
#[pyo3(signature = (
    upper, blobs_dir, *, lower = None, overlay = false, lowers = Vec::new(), content = false,
    compression = "gzip", level = None, threads = 0, source_date_epoch = None,
    exclude = Vec::new(), root_ids = None, index_dir = None
))]
#[allow(clippy::too_many_arguments)] // mirrors the keyword-only Python signature
fn write_layer(
    py: Python<'_>,
    upper: PathBuf,
    blobs_dir: PathBuf,
    lower: Option<PathBuf>,
    overlay: bool,
    lowers: Vec<PathBuf>,
    content: bool,
    compression: &str,
    level: Option<i32>,
    threads: usize,
    source_date_epoch: Option<i64>,
    exclude: Vec<String>,
    root_ids: Option<(u32, u32)>,
    index_dir: Option<PathBuf>,
) -> PyResult<LayerTuple> {
    let source = LayerSource {
        upper,
        lower,
        overlay,
        lowers,
        content,
        exclude,
        root_ids,
    };
    source.check()?;
    let cancel = Arc::new(Cancel::new());
    let mut opts = layer_options(compression, level, threads, source_date_epoch, &cancel)?;
    opts.index_dir = index_dir;
    let info = run_detached(py, &cancel, || {
        let (changes, view) = source.changes(&cancel)?;
        layer::write_layer_file(source.contents(&view), &changes, &opts, &blobs_dir)
    })?;
    Ok(layer_tuple(info))
}

/// What a layer is made of, as the two layer writers take it.
struct LayerSource {
    upper: PathBuf,
    lower: Option<PathBuf>,
    overlay: bool,
    lowers: Vec<PathBuf>,
    content: bool,
    exclude: Vec<String>,
    root_ids: Option<(u32, u32)>,
}

impl LayerSource {
    fn check(&self) -> PyResult<()> {
        if self.overlay && self.lower.is_some() {
            return Err(errors::invalid_argument(
                "give either lower (two-tree diff) or overlay with lowers, not both".into(),
            ));
        }
        Ok(())
    }

    /// The changes the layer holds: the whole tree, a two-tree diff or an overlay upper's
    /// changes, without the excluded paths and with the root owner mapped; and the merged
    /// overlay view to read their contents from when the overlay diff needed one (else they
    /// are read from `upper`).
    fn changes(&self, cancel: &Arc<Cancel>) -> crate::Result<(Vec<Change>, Option<OwnedFd>)> {
        let dopts = DiffOptions {
            content: self.content,
            cancel: Some(cancel.clone()),
        };
        // Whether the unchanged directories above the changes are to be added: an upper
        // directory holds the parents of all it holds, a whole tree every directory.
        let (changes, view, add_parents) = if self.overlay {
            let d = core_diff::diff_overlay_view(&self.upper, &self.lowers, &dopts)?;
            let merged = d.view.is_some();
            (d.changes, d.view, merged)
        } else if let Some(lower) = &self.lower {
            (
                core_diff::diff_dirs(lower, &self.upper, &dopts)?,
                None,
                true,
            )
        } else {
            (core_diff::full_tree(&self.upper, cancel)?, None, false)
        };
        let mut changes = core_diff::without_paths(changes, &self.exclude);
        if add_parents {
            // The parents of the changes kept; an excluded path stays out, also as a parent.
            let opened;
            let tree = match &view {
                Some(merged) => merged.as_fd(),
                None => {
                    opened = crate::walk::open_root(&self.upper)?;
                    opened.as_fd()
                }
            };
            changes = core_diff::with_parent_dirs(tree, &self.upper, changes)?;
            changes = core_diff::without_paths(changes, &self.exclude);
        }
        Ok((core_diff::with_root_owner(changes, self.root_ids), view))
    }

    /// Where the contents of `changes` are read from.
    fn contents<'a>(&'a self, view: &'a Option<OwnedFd>) -> layer::Contents<'a> {
        layer::Contents {
            path: &self.upper,
            fd: view.as_ref().map(AsFd::as_fd),
        }
    }
}

fn layer_options(
    compression: &str,
    level: Option<i32>,
    threads: usize,
    source_date_epoch: Option<i64>,
    cancel: &Arc<Cancel>,
) -> PyResult<LayerOptions> {
    Ok(LayerOptions {
        compression: parse_compression(compression, level)?,
        threads,
        source_date_epoch,
        cancel: Some(cancel.clone()),
        reuse: None,
        index_dir: None,
    })
}

/// Write one layer blob to the open file descriptor `fd` (a pipe, a socket, a file), which
/// stays the caller's: the core writes through a duplicate and closes that when done. This is
/// how a layer is streamed to a registry without a copy on disk.
#[pyfunction]
#[pyo3(signature = (
    upper, fd, *, lower = None, overlay = false, lowers = Vec::new(), content = false,
    compression = "gzip", level = None, threads = 0, source_date_epoch = None,
    exclude = Vec::new(), root_ids = None
))]
#[allow(clippy::too_many_arguments)] // mirrors the keyword-only Python signature
fn write_layer_to_fd(
    py: Python<'_>,
    upper: PathBuf,
    fd: i32,
    lower: Option<PathBuf>,
    overlay: bool,
    lowers: Vec<PathBuf>,
    content: bool,
    compression: &str,
    level: Option<i32>,
    threads: usize,
    source_date_epoch: Option<i64>,
    exclude: Vec<String>,
    root_ids: Option<(u32, u32)>,
) -> PyResult<LayerTuple> {
    use std::os::fd::BorrowedFd;
    let source = LayerSource {
        upper,
        lower,
        overlay,
        lowers,
        content,
        exclude,
        root_ids,
    };
    source.check()?;
    if fd < 0 {
        return Err(errors::invalid_argument(format!(
            "fd={fd}: not a file descriptor"
        )));
    }
    // SAFETY: the descriptor is only borrowed for the duplication on the next line, while the
    // caller, who owns it, is blocked in this call; a closed or bogus number makes `dup` fail
    // with EBADF, which is reported as an error.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let sink = std::fs::File::from(borrowed.try_clone_to_owned()?);
    let cancel = Arc::new(Cancel::new());
    let opts = layer_options(compression, level, threads, source_date_epoch, &cancel)?;
    let info = run_detached(py, &cancel, || {
        let (changes, view) = source.changes(&cancel)?;
        // The sink (the duplicate) is closed when write_layer returns, before the result.
        layer::write_layer(source.contents(&view), &changes, &opts, sink)
    })?;
    Ok(layer_tuple(info))
}

/// Apply one layer blob (tar, gzip or zstd) onto the directory `root`. With `digest` (and
/// `size`), the blob is verified while it is read; a mismatch is an error after the apply.
/// With `overlay` and `lowers` (the layer directories below, top first), what the layer
/// passes through that only they hold is copied up (see `ApplyOptions::lowers`).
#[pyfunction]
#[pyo3(signature = (
    root, blob, *, digest = None, size = None, chown = true, overlay = false, userxattr = false,
    max_size = crate::apply::DEFAULT_MAX_SIZE, lowers = None, diff_id = None
))]
#[allow(clippy::too_many_arguments)] // mirrors the keyword-only Python signature
fn apply_layer(
    py: Python<'_>,
    root: PathBuf,
    blob: PathBuf,
    digest: Option<String>,
    size: Option<u64>,
    chown: bool,
    overlay: bool,
    userxattr: bool,
    max_size: u64,
    lowers: Option<Vec<PathBuf>>,
    diff_id: Option<String>,
) -> PyResult<(u64, u64, Vec<String>)> {
    let opts = ApplyOptions {
        chown,
        overlay,
        userxattr,
        max_size,
        lowers,
        diff_id: diff_id.is_some(),
    };
    let cancel = Cancel::new();
    let stats = run_detached(py, &cancel, || {
        let target = Root::open(&root)?;
        let what = blob.display().to_string();
        let stats = match digest {
            Some(digest) => {
                // A layout's blob: a regular file of the size its descriptor says, checked
                // before anything of it is applied.
                let file = crate::verify::open_blob(&blob)?;
                let found = file.metadata().at(&blob)?.len();
                let expected = size.unwrap_or(found);
                if found != expected {
                    return Err(crate::error::Error::DigestMismatch {
                        what,
                        expected: format!("{expected} bytes"),
                        found: format!("{found} bytes"),
                    });
                }
                let mut reader = VerifyingReader::new(file, expected);
                let stats = match apply::apply_layer(&target, &mut reader, &opts, &cancel) {
                    Ok(stats) => stats,
                    // The blob itself is at fault, not the entry being read when it overran.
                    Err(_) if reader.overran() => return Err(reader.overrun_error(&what)),
                    Err(e) => return Err(e),
                };
                reader.finish(&digest, &what)?;
                stats
            }
            None => {
                let file = std::fs::File::open(&blob).at(&blob)?;
                apply::apply_layer(&target, file, &opts, &cancel)?
            }
        };
        // Checked after the blob's own digest: a damaged blob is named as such.
        match (&diff_id, &stats.diff_id) {
            (Some(expected), Some(found)) if expected != found => {
                Err(crate::error::Error::DigestMismatch {
                    what: format!("{what}, uncompressed (config diff_id)"),
                    expected: expected.clone(),
                    found: found.clone(),
                })
            }
            _ => Ok(stats),
        }
    })?;
    Ok((stats.entries, stats.bytes, stats.warnings))
}

/// Squash the layer blobs `range` (on top of the blobs `lower`) into one blob in `blobs_dir`;
/// `indexes`, one file per layer of `range`, are their layer indexes (read when usable,
/// written when not); the new blob's index goes into `index_dir`.
#[pyfunction]
#[pyo3(signature = (
    lower, range, blobs_dir, *, compression = "gzip", level = None, threads = 0,
    source_date_epoch = None, indexes = None, index_dir = None
))]
#[allow(clippy::too_many_arguments)] // mirrors the keyword-only Python signature
fn squash_layers(
    py: Python<'_>,
    lower: Vec<PathBuf>,
    range: Vec<PathBuf>,
    blobs_dir: PathBuf,
    compression: &str,
    level: Option<i32>,
    threads: usize,
    source_date_epoch: Option<i64>,
    indexes: Option<Vec<PathBuf>>,
    index_dir: Option<PathBuf>,
) -> PyResult<LayerTuple> {
    let cancel = Arc::new(Cancel::new());
    let mut opts = layer_options(compression, level, threads, source_date_epoch, &cancel)?;
    opts.index_dir = index_dir;
    let info = run_detached(py, &cancel, || match &indexes {
        Some(files) => {
            crate::squash::squash_files_indexed(&lower, &range, files, &opts, &blobs_dir, &cancel)
        }
        None => crate::squash::squash_files(&lower, &range, &opts, &blobs_dir, &cancel),
    })?;
    Ok(layer_tuple(info))
}

fn layer_tuple(info: crate::layer::LayerInfo) -> LayerTuple {
    (
        info.digest,
        info.diff_id,
        info.size,
        info.tar_size,
        info.media_type.to_string(),
        info.path.unwrap_or_default(),
        info.warnings,
    )
}

/// sha256 and size of a blob file and of its decompressed stream, in one read.
#[pyfunction]
fn blob_digests(py: Python<'_>, path: PathBuf) -> PyResult<(String, u64, String, u64)> {
    let cancel = Cancel::new();
    let d = run_detached(py, &cancel, || crate::verify::blob_digests(&path, &cancel))?;
    Ok((d.digest, d.size, d.diff_id, d.tar_size))
}

/// `sha256:<hex>` of `data`: the digest of a small blob (a config, a manifest), without loading
/// a second sha256 implementation into the process.
#[pyfunction]
fn sha256(data: &[u8]) -> String {
    crate::digest::sha256_digest(data)
}

/// Decompress the layer blob at `blob` into the new file `dest`, hashing both streams.
#[pyfunction]
fn decompress_blob(
    py: Python<'_>,
    blob: PathBuf,
    dest: PathBuf,
) -> PyResult<(String, u64, String, u64)> {
    let cancel = Cancel::new();
    let d = run_detached(py, &cancel, || {
        let file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&dest)
            .at(&dest)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        crate::verify::decompress_blob(&blob, &mut out, &dest, &cancel)
    })?;
    Ok((d.digest, d.size, d.diff_id, d.tar_size))
}

/// The module `layerdiff._core`.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(diff, m)?)?;
    m.add_function(wrap_pyfunction!(diff_overlay, m)?)?;
    m.add_function(wrap_pyfunction!(write_layer, m)?)?;
    m.add_function(wrap_pyfunction!(apply_layer, m)?)?;
    m.add_function(wrap_pyfunction!(squash_layers, m)?)?;
    m.add_function(wrap_pyfunction!(blob_digests, m)?)?;
    m.add_function(wrap_pyfunction!(sha256, m)?)?;
    m.add_function(wrap_pyfunction!(container::run_container, m)?)?;
    m.add_function(wrap_pyfunction!(decompress_blob, m)?)?;
    m.add_function(wrap_pyfunction!(write_layer_to_fd, m)?)?;
    m.add("DEFAULT_MAX_SIZE", crate::apply::DEFAULT_MAX_SIZE)?;
    m.add("MAX_THREADS", crate::compress::MAX_THREADS)?;
    Ok(())
}
