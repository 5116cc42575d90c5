//! Helpers for the end-to-end tests that are too big for `tests/common`.

pub mod powerfs;
