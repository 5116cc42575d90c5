//! WebAssembly write plugins.

mod spec;

pub use spec::{OnFailure, PluginSpec};
