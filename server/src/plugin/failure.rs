//! How a plugin can fail (as opposed to rejecting a write, which is a normal
//! answer), and why a plugin cannot be loaded.

use std::path::PathBuf;

/// A plugin call that did not produce a usable verdict. Each kind is its own
/// variant so counters, logs and HTTP answers never compare strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// Ran past `timeout_ms` and was interrupted.
    Timeout,
    /// Used up its `fuel` budget.
    OutOfFuel,
    /// Tried to grow its memory past `max_memory_bytes`.
    OutOfMemory,
    /// Trapped (`unreachable`, out-of-bounds access, stack overflow, ...).
    Trap,
    /// Returned a pointer/length outside its memory, or a verdict that is
    /// not valid verdict JSON (including a replacement value that is not
    /// JSON), or a replacement on a delete.
    MalformedOutput,
    /// A verdict or replacement value larger than the limits allow.
    OutputTooLarge,
    /// A fresh instance could not be created.
    Instantiation,
}

impl FailureKind {
    /// Every kind, for reporting.
    pub const ALL: [FailureKind; 7] = [
        Self::Timeout,
        Self::OutOfFuel,
        Self::OutOfMemory,
        Self::Trap,
        Self::MalformedOutput,
        Self::OutputTooLarge,
        Self::Instantiation,
    ];

    /// Stable name used in JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::OutOfFuel => "out_of_fuel",
            Self::OutOfMemory => "out_of_memory",
            Self::Trap => "trap",
            Self::MalformedOutput => "malformed_output",
            Self::OutputTooLarge => "output_too_large",
            Self::Instantiation => "instantiation",
        }
    }

    /// Position in `ALL`.
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// A failure with the detail a log line or an operator needs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", kind.as_str())]
pub struct PluginFailure {
    /// What went wrong.
    pub kind: FailureKind,
    /// Specifics (the trap message, the bad output's parse error).
    pub detail: String,
}

/// Longest failure detail kept: details quote plugin-chosen text (trap
/// backtraces, verdicts), and they go into logs and error bodies.
pub const MAX_DETAIL_BYTES: usize = 1024;

impl PluginFailure {
    /// A failure whose detail is escaped and cut to [`MAX_DETAIL_BYTES`].
    pub(crate) fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: crate::logsafe::escape(&detail.into(), MAX_DETAIL_BYTES),
        }
    }
}

/// Why a plugin could not be loaded; every variant names the plugin and file.
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    /// The file cannot be read.
    #[error("plugin {plugin:?}: cannot read {}: {error}", path.display())]
    Read {
        /// Plugin name.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: String,
    },
    /// The file is not a valid WebAssembly module (binary or text).
    #[error("plugin {plugin:?}: {} is not a valid WebAssembly module: {error}", path.display())]
    Compile {
        /// Plugin name.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The compiler's message.
        error: String,
    },
    /// The module is past a bound on what compiling it may take
    /// (`module_shape`); it was not compiled.
    #[error("plugin {plugin:?}: {} is refused before compiling: {error}", path.display())]
    Shape {
        /// Plugin name.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The bound it broke.
        error: String,
    },
    /// Compiling the module was stopped at a bound (time, memory) or
    /// could not run (`compiler`).
    #[error("plugin {plugin:?}: {} was not compiled: {error}", path.display())]
    CompileStopped {
        /// Plugin name.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// Which bound, or what failed.
        error: String,
    },
    /// The module imports something the host does not provide (e.g. WASI).
    #[error("plugin {plugin:?}: {} imports {import}, which exdaas does not provide (only exdaas.log is available; plugins run without WASI){}", path.display(), import_fix(import))]
    Import {
        /// Plugin name.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// `module.name` of the import.
        import: String,
    },
    /// A required export is missing, has the wrong type, or the ABI version differs.
    #[error("plugin {plugin:?}: {}: {problem}", path.display())]
    Abi {
        /// Plugin name.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// What does not match the ABI.
        problem: String,
    },
    /// Two plugins share a name.
    #[error("plugin name {0:?} is used twice; names must be unique")]
    DuplicateName(String),
    /// The configuration could not be re-read (on reload).
    #[error("configuration: {0}")]
    Config(String),
    /// The engine could not be configured.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    /// The plugin's test vectors cannot be read, or some fail.
    #[error("plugin {plugin:?}: test vectors {}: {problem}", path.display())]
    Vectors {
        /// Plugin name.
        plugin: String,
        /// The vectors file.
        path: PathBuf,
        /// What is wrong: each failing vector and what came back instead.
        problem: String,
    },
}

/// How to build a module without an import the host does not provide,
/// for the imports toolchains add by default.
fn import_fix(import: &str) -> &'static str {
    match import {
        "env.abort" => ": AssemblyScript adds it; compile with `--use abort=`",
        i if i.starts_with("wasi_snapshot_preview1.") || i.starts_with("wasi_unstable.") => {
            ": build for wasm32-unknown-unknown, not a WASI target"
        }
        _ => "",
    }
}
