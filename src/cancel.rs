//! Cancellation: long operations check a shared token between entries so that Ctrl-C in the
//! calling program stops them promptly.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// A flag set by the caller and polled by the work.
#[derive(Debug, Default)]
pub struct Cancel(AtomicBool);

impl Cancel {
    /// A token that is not cancelled.
    pub const fn new() -> Self {
        Cancel(AtomicBool::new(false))
    }

    /// Ask the work to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// `Err(Error::Interrupted)` once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.0.load(Ordering::Relaxed) {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    }
}

/// A token that is never cancelled, for callers without one.
pub static NEVER: Cancel = Cancel::new();
