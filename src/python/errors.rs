//! The one mapping from the core's [`Error`] to Python exceptions, whose classes live in
//! `layerdiff.errors` (so they can also subclass `OSError` or `ValueError`).

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::error::Error;

/// Instantiate `layerdiff.errors.<class>(*args)` as a `PyErr`.
fn raise<'py>(py: Python<'py>, class: &str, args: Bound<'py, PyTuple>) -> PyErr {
    let made = py
        .import("layerdiff.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|cls| cls.call1(args));
    match made {
        Ok(instance) => PyErr::from_value(instance),
        Err(e) => e,
    }
}

/// Convert a core error into the matching Python exception.
pub(super) fn to_pyerr(py: Python<'_>, err: Error) -> PyErr {
    let message = err.to_string();
    let one = |class: &str| -> PyErr {
        match PyTuple::new(py, [message.as_str()]) {
            Ok(args) => raise(py, class, args),
            Err(e) => e,
        }
    };
    match &err {
        Error::Io { path, source } => {
            let errno = source.raw_os_error().unwrap_or(0);
            // A str, as Python's own OSError gives it (fsdecoded where not UTF-8).
            let args = (errno, strerror(source), path.as_os_str());
            match args.into_pyobject(py) {
                Ok(args) => raise(py, "LayerdiffOSError", args),
                Err(e) => e,
            }
        }
        Error::FileChanged { path, .. } => {
            let args = (libc::EIO, message.clone(), path.as_os_str());
            match args.into_pyobject(py) {
                Ok(args) => raise(py, "FileChangedError", args),
                Err(e) => e,
            }
        }
        Error::ReservedName { .. } => one("ReservedNameError"),
        Error::Overlay { .. } => one("OverlayError"),
        Error::Archive { .. } | Error::StaleIndex(_) | Error::PathTooLong { .. } => {
            one("FormatError")
        }
        Error::Limit { .. } => one("LimitError"),
        Error::DigestMismatch { .. } => one("DigestMismatchError"),
        Error::InvalidArgument(_) => one("InvalidArgumentError"),
        Error::Interrupted => pyo3::exceptions::PyKeyboardInterrupt::new_err(message),
    }
}

/// A `layerdiff.errors.InvalidArgumentError` saying `message`.
pub(super) fn invalid_argument(message: String) -> PyErr {
    Python::attach(|py| match PyTuple::new(py, [message]) {
        Ok(args) => raise(py, "InvalidArgumentError", args),
        Err(e) => e,
    })
}

/// The system's text for an error, without Rust's " (os error N)" suffix: Python's `OSError`
/// shows the number itself.
fn strerror(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if e.raw_os_error().is_some() => text[..i].to_string(),
        _ => text,
    }
}
