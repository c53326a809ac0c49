//! Deterministic PAX tar writer.
