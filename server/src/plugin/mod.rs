//! WebAssembly write plugins: validators and transforms that run on every
//! matching write before it is made durable.
//!
//! - `spec`: a plugin's configuration (`[[plugins]]`);
//! - `abi`: the host side of the host/guest contract (`guest-sdk/ABI.md`);
//! - `instance`: one compiled plugin, its instance pool and the guarded call;
//! - `compiler`: compiling modules in a bounded child, and keeping the results;
//! - `chain`: all plugins of a configuration, run in order for a key;
//! - `failure`: failure kinds and load errors;
//! - `stats`: per-plugin counters and call-time histogram;
//! - `pool`: the threads the write pipeline runs plugins on;
//! - `vectors`: test vectors a plugin must pass before it is loaded;
//! - `shadow`: the record of a shadow-mode plugin's would-be verdicts;
//! - `managed`: plugins uploaded over the API, their versions and placement;
//! - `managed_files`: the durable files behind them in the data directory.

mod abi;
mod chain;
pub mod compiler;
mod failure;
mod instance;
pub mod managed;
pub mod managed_files;
pub mod module_shape;
mod pool;
mod shadow;
mod spec;
mod stats;
pub mod vectors;

use std::time::Duration;

pub use chain::{ChainRun, ChainStop, PluginChain, Record, SharedChain, Step};
pub use failure::{FailureKind, PluginFailure, PluginLoadError};
pub use instance::{CallInput, CallVerdict, History, LoadedPlugin};
pub use pool::WorkerPool;
pub use spec::{OnFailure, PluginMode, PluginSource, PluginSpec};

/// Granularity of plugin timeouts: the epoch ticker's period.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Ceiling of `plugin_uploads.max_module_bytes`: far above any validator
/// or transform, low enough that an upload's body is safe to hold in memory.
pub const MAX_UPLOAD_MODULE_BYTES: u64 = 64 * 1024 * 1024;
