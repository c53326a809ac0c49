//! layerdiff: the layer engine of a container image toolchain.
//!
//! Walks root filesystems ([`walk`]), computes whiteout-aware changes between trees or from an
//! overlayfs upper directory ([`diff`], [`whiteout`]), and turns changes into deterministic OCI
//! layer blobs in one pass over the bytes ([`layer`]: [`tar`] → [`digest`] → [`compress`]).
//! Pure Rust; the Python bindings live behind the `python` feature in `src/python/`.
#![deny(missing_docs)]

pub mod apply;
pub mod cancel;
pub mod compress;
pub mod container;
pub mod decompress;
pub mod diff;
pub mod digest;
pub mod entry;
pub mod error;
pub mod incompressible;
pub mod layer;
pub mod lower;
pub mod members;
pub mod parallel;
pub mod root;
pub mod squash;
pub mod squash_index;
pub mod tar;
pub mod verify;
pub mod walk;
pub mod whiteout;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
