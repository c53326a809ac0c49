//! The one error type of the core. Every variant names the path or entry it is about, so a
//! message stands alone when printed on one line.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed on a path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path the call was about.
        path: PathBuf,
        /// The underlying error (errno kept for the Python mapping).
        #[source]
        source: io::Error,
    },
    /// A tree holds a name that would read as a whiteout inside a layer.
    #[error("{}: names starting with \".wh.\" are reserved for whiteouts and cannot be committed", path.display())]
    ReservedName {
        /// The offending path.
        path: PathBuf,
    },
    /// A tree holds a path whose name in the layer would be longer than the kernel's
    /// `PATH_MAX`: no unpacker could create it.
    #[error("{}: its name in the layer would be longer than {max} bytes (PATH_MAX), which neither docker, umoci nor layerdiff can unpack", path.display())]
    PathTooLong {
        /// The offending path.
        path: PathBuf,
        /// The longest name a layer entry may have.
        max: usize,
    },
    /// A file changed between the walk and the moment its bytes were read.
    #[error("{}: file changed while it was read (expected {expected} bytes, found {found})", path.display())]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// Size recorded by the walk.
        expected: u64,
        /// Size seen while reading.
        found: u64,
    },
    /// An overlay upper directory that cannot be turned into a layer by itself.
    #[error("{}: {reason}", path.display())]
    Overlay {
        /// The entry that made the decision.
        path: PathBuf,
        /// Why, in words.
        reason: String,
    },
    /// A layer archive (or a stream inside it) is malformed or hostile.
    #[error("{entry}: {reason}")]
    Archive {
        /// The entry name (or `"<archive>"` when no entry was read yet).
        entry: String,
        /// What was expected and what was found.
        reason: String,
    },
    /// A limit (size, depth, count) was exceeded.
    #[error("{what}: limit of {limit} exceeded")]
    Limit {
        /// What was being counted.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// Content did not hash to the expected digest.
    #[error("{what}: digest mismatch (expected {expected}, found {found})")]
    DigestMismatch {
        /// Which blob.
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        found: String,
    },
    /// An argument outside the accepted range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operation was cancelled (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
    /// A layer index did not match its layer. Squash handles it by starting over without
    /// indexes; it reaches a caller only from lower-level functions.
    #[error("{0}: layer index does not match the layer")]
    StaleIndex(PathBuf),
}

impl Error {
    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Attach a path to an `io::Result`.
pub trait IoContext<T> {
    /// Map the error into [`Error::Io`] about `path`.
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

impl<T> IoContext<T> for rustix::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e.into()))
    }
}
