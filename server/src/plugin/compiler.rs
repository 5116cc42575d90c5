//! Turning a module's bytes into compiled code, within bounds the server
//! survives, and only once per module.
//!
//! Cranelift's time and memory grow with what a module asks of it. The
//! shape check (`module_shape`) refuses the known bombs before anything
//! compiles; what it cannot foresee is bounded by compiling in a
//! short-lived child process (the hidden `exdaas compile-module` command)
//! under `RLIMIT_AS` and a wall-clock limit, so a module past them costs
//! the child, never the server. The child writes wasmtime's serialized
//! artifact, which the server loads.
//!
//! Artifacts are kept by the module's digest in `plugins/compiled/`, so a
//! chain change compiles only the modules it has not compiled before and a
//! restart compiles nothing. Each file carries the sha256 of its artifact:
//! a file torn by a crash or damaged on disk fails that check and is
//! compiled again, never loaded. Wasmtime itself refuses an artifact made
//! by another version or engine configuration, which is likewise compiled
//! again.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Module, OptLevel};

use super::module_shape::ModuleShape;

/// First bytes of an artifact file; the artifact's sha256 follows.
const ARTIFACT_MAGIC: &[u8] = b"exdaas compiled module 1\n";

/// The hidden subcommand that compiles one module (see `main.rs`).
pub const CHILD_COMMAND: &str = "compile-module";

/// What the child prints on success: its peak resident memory.
const PEAK_PREFIX: &str = "peak_bytes ";

/// Most of the child's output kept for an error message.
const CHILD_OUTPUT_CAP: usize = 2048;

/// The engine settings every plugin runs with. The server and the compile
/// child both build their engines here, which is what makes the child's
/// artifacts loadable by the server.
pub fn engine_config(metered: bool) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.cranelift_opt_level(OptLevel::Speed);
    // Metering costs every plugin some speed; a chain pays for it only when
    // one of its plugins asks for a fuel budget.
    config.consume_fuel(metered);
    config.max_wasm_stack(512 * 1024);
    config
}

/// Bounds on compiling one module (`[plugin_compile]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    /// Checked before compiling.
    pub shape: ModuleShape,
    /// Wall-clock limit of one compile.
    pub timeout: Duration,
    /// Address space of the compile child (`RLIMIT_AS`).
    pub max_memory_bytes: u64,
}

impl Default for CompileLimits {
    fn default() -> Self {
        Self {
            shape: ModuleShape::default(),
            timeout: Duration::from_secs(60),
            max_memory_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// Why a module did not compile.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// Not a WebAssembly module, in the compiler's words.
    #[error("{0}")]
    Invalid(String),
    /// Past a bound of [`ModuleShape`]; nothing was compiled.
    #[error("{0}")]
    Shape(String),
    /// The compile was stopped at its time limit.
    #[error("compiling took longer than {} ms (plugin_compile.timeout_ms) and was stopped", .0.as_millis())]
    TimedOut(Duration),
    /// The compile child ran out of address space, or died.
    #[error("the compiler stopped ({cause}); compiling this module needs more than plugin_compile.max_memory_bytes = {limit}")]
    OutOfMemory {
        /// How the child ended.
        cause: String,
        /// The limit it ran under.
        limit: u64,
    },
    /// The child or its files could not be used.
    #[error("cannot compile: {0}")]
    Io(String),
}

/// Counts for `/metrics`.
#[derive(Debug, Default)]
pub struct CompileStats {
    /// Modules compiled.
    pub compiled: AtomicU64,
    /// Modules loaded from a kept artifact instead.
    pub loaded: AtomicU64,
    /// Modules the previous chain had compiled, used again.
    pub reused: AtomicU64,
    /// Compiles refused or failed, any reason.
    pub failed: AtomicU64,
    /// Time spent compiling, in microseconds.
    pub micros: AtomicU64,
    /// Largest resident memory a compile child reached.
    pub peak_bytes: AtomicU64,
}

/// Where compiles run, and where their artifacts are kept.
#[derive(Debug)]
struct Isolation {
    /// The binary to run as the child.
    exe: PathBuf,
    /// `plugins/compiled/`.
    dir: PathBuf,
}

/// Compiles modules for one server (or one command).
#[derive(Debug)]
pub struct Compiler {
    limits: CompileLimits,
    isolation: Option<Isolation>,
    stats: CompileStats,
}

impl Compiler {
    /// Compiles in this process and keeps nothing: for commands that exit
    /// afterwards (`exdaas plugin test`, restore's checks) and unit tests.
    pub fn in_process(limits: CompileLimits) -> Self {
        Self {
            limits,
            isolation: None,
            stats: CompileStats::default(),
        }
    }

    /// Compiles in a child process running this binary, keeping artifacts
    /// in `dir` (created; temporary files a crash left are removed). The
    /// directory is created durably: it may be the first of the plugin
    /// files' directories, whose later writes trust it to survive.
    pub fn isolated(limits: CompileLimits, dir: &Path) -> std::io::Result<Self> {
        crate::storage::manifest::create_dir_durably(dir)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            limits,
            isolation: Some(Isolation {
                // The running binary even if its file was replaced since.
                exe: PathBuf::from("/proc/self/exe"),
                dir: dir.to_owned(),
            }),
            stats: CompileStats::default(),
        })
    }

    /// Counts for `/metrics`.
    pub fn stats(&self) -> &CompileStats {
        &self.stats
    }

    /// The module in `bytes` (binary or text), whose file digest is
    /// `sha256`, compiled for `engine`.
    pub fn compile(
        &self,
        engine: &Engine,
        metered: bool,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<Module, CompileError> {
        self.prepare(engine, metered, bytes, sha256)
            .inspect_err(|_| {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            })
    }

    /// [`Compiler::compile`], before failures are counted.
    fn prepare(
        &self,
        engine: &Engine,
        metered: bool,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<Module, CompileError> {
        // Text becomes binary first, so the shape check sees what compiles.
        let binary = wat::parse_bytes(bytes).map_err(|e| CompileError::Invalid(e.to_string()))?;
        self.limits
            .shape
            .check(&binary)
            .map_err(CompileError::Shape)?;
        let Some(isolation) = &self.isolation else {
            let started = Instant::now();
            let module = Module::from_binary(engine, &binary)
                .map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
            self.count_compile(started, None);
            return Ok(module);
        };
        let artifact = isolation.dir.join(artifact_name(sha256, metered));
        if let Some(module) = load_artifact(engine, &artifact) {
            self.stats.loaded.fetch_add(1, Ordering::Relaxed);
            return Ok(module);
        }
        let started = Instant::now();
        let peak = self.compile_in_child(isolation, &binary, metered, &artifact)?;
        self.count_compile(started, Some(peak));
        load_artifact(engine, &artifact).ok_or_else(|| {
            CompileError::Io(format!(
                "{} was written but does not load",
                artifact.display()
            ))
        })
    }

    fn count_compile(&self, started: Instant, peak: Option<u64>) {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.compiled.fetch_add(1, Ordering::Relaxed);
        self.stats.micros.fetch_add(micros, Ordering::Relaxed);
        if let Some(peak) = peak {
            self.stats.peak_bytes.fetch_max(peak, Ordering::Relaxed);
        }
    }

    /// Runs the child on `binary` and moves its artifact to `artifact`;
    /// returns the child's peak resident memory.
    fn compile_in_child(
        &self,
        isolation: &Isolation,
        binary: &[u8],
        metered: bool,
        artifact: &Path,
    ) -> Result<u64, CompileError> {
        let io = |what: &str, e: std::io::Error| CompileError::Io(format!("{what}: {e}"));
        let unique = format!(
            "{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let input = isolation.dir.join(format!("{unique}.wasm.tmp"));
        let output = isolation.dir.join(format!("{unique}.cwasm.tmp"));
        std::fs::write(&input, binary).map_err(|e| io("writing the module for the compiler", e))?;
        let ran = self.run_child(isolation, &input, &output, metered);
        let _ = std::fs::remove_file(&input);
        let peak = ran.and_then(|peak| {
            std::fs::rename(&output, artifact)
                .map_err(|e| io("keeping the compiled module", e))
                .map(|()| peak)
        });
        if peak.is_err() {
            let _ = std::fs::remove_file(&output);
        }
        peak
    }

    fn run_child(
        &self,
        isolation: &Isolation,
        input: &Path,
        output: &Path,
        metered: bool,
    ) -> Result<u64, CompileError> {
        let limits = &self.limits;
        let mut child = Command::new(&isolation.exe)
            .arg(CHILD_COMMAND)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(output)
            .arg("--max-memory-bytes")
            .arg(limits.max_memory_bytes.to_string())
            .args(metered.then_some("--metered"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CompileError::Io(format!("cannot start the compiler process: {e}")))?;
        let stdout = child.stdout.take().map(capture);
        let stderr = child.stderr.take().map(capture);
        let deadline = Instant::now() + limits.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CompileError::TimedOut(limits.timeout));
                }
                // The compile is seconds at most; a short poll costs nothing.
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(CompileError::Io(format!("waiting for the compiler: {e}"))),
            }
        };
        let joined = |h: Option<std::thread::JoinHandle<String>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        let (stdout, stderr) = (joined(stdout), joined(stderr));
        if status.success() {
            let peak = stdout
                .lines()
                .find_map(|l| l.strip_prefix(PEAK_PREFIX)?.trim().parse().ok())
                .unwrap_or(0);
            return Ok(peak);
        }
        if status.code() == Some(CHILD_INVALID_EXIT) {
            return Err(CompileError::Invalid(stderr.trim().to_owned()));
        }
        // Anything else is the child dying: an allocation refused under
        // RLIMIT_AS aborts it, and so does a stack it could not map.
        let cause = match std::os::unix::process::ExitStatusExt::signal(&status) {
            Some(signal) => format!("signal {signal}"),
            None => format!("exit status {}", status.code().unwrap_or(-1)),
        };
        let detail = stderr.lines().next_back().unwrap_or("").trim();
        Err(CompileError::OutOfMemory {
            cause: if detail.is_empty() {
                cause
            } else {
                format!("{cause}: {detail}")
            },
            limit: limits.max_memory_bytes,
        })
    }

    /// Removes kept artifacts of modules whose digest is not in `keep`.
    pub fn retain(&self, keep: &HashSet<&str>) {
        let Some(isolation) = &self.isolation else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&isolation.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(digest) = name
                .strip_suffix(".cwasm")
                .and_then(|n| n.split('.').next())
            else {
                continue;
            };
            if !keep.contains(digest) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Makes temporary names unique within this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The child's exit code for a module the compiler refused.
const CHILD_INVALID_EXIT: i32 = 3;

/// `SHA256.metered.cwasm` or `SHA256.plain.cwasm`: the two engine
/// configurations compile differently.
fn artifact_name(sha256: &str, metered: bool) -> String {
    let flavour = if metered { "metered" } else { "plain" };
    format!("{sha256}.{flavour}.cwasm")
}

/// Reads everything from `from` on a thread, keeping the first
/// [`CHILD_OUTPUT_CAP`] bytes, so the child never blocks on a full pipe.
fn capture(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = CHILD_OUTPUT_CAP.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// The artifact kept at `path`, if there is one whose digest checks and
/// which this engine accepts.
fn load_artifact(engine: &Engine, path: &Path) -> Option<Module> {
    let file = std::fs::read(path).ok()?;
    let rest = file.strip_prefix(ARTIFACT_MAGIC)?;
    let (digest, artifact) = rest.split_at_checked(32)?;
    if Sha256::digest(artifact).as_slice() != digest {
        tracing::warn!(path = %path.display(), "a kept compiled module is damaged; compiling again");
        return None;
    }
    // SAFETY: wasmtime runs an artifact's machine code as it is, so it must
    // be one wasmtime wrote. This one was written by this binary's own
    // compile child into the data directory (trusted as the data itself
    // is), and its digest, written with it, matches: it is intact.
    #[allow(unsafe_code)]
    let module = unsafe { Module::deserialize(engine, artifact) };
    match module {
        Ok(module) => Some(module),
        Err(e) => {
            tracing::info!(path = %path.display(), error = %e, "a kept compiled module does not fit this engine; compiling again");
            None
        }
    }
}

/// Arguments of the compile child.
#[derive(Debug, Clone)]
pub struct ChildArgs {
    /// The module, binary WebAssembly, already shape-checked.
    pub input: PathBuf,
    /// Where the artifact goes.
    pub output: PathBuf,
    /// The engine flavour.
    pub metered: bool,
    /// `RLIMIT_AS` to set before reading anything.
    pub max_memory_bytes: u64,
}

/// The compile child's whole work; returns its exit code.
pub fn run_child(args: &ChildArgs) -> i32 {
    if let Err(e) = limit_address_space(args.max_memory_bytes) {
        eprintln!("cannot limit the compiler's memory: {e}");
        return 1;
    }
    let engine = match Engine::new(&engine_config(args.metered)) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("cannot set up the engine: {e:#}");
            return 1;
        }
    };
    let binary = match std::fs::read(&args.input) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: {e}", args.input.display());
            return 1;
        }
    };
    let artifact = match engine.precompile_module(&binary) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e:#}");
            return CHILD_INVALID_EXIT;
        }
    };
    let mut file = Vec::with_capacity(ARTIFACT_MAGIC.len() + 32 + artifact.len());
    file.extend_from_slice(ARTIFACT_MAGIC);
    file.extend_from_slice(&Sha256::digest(&artifact));
    file.extend_from_slice(&artifact);
    if let Err(e) = std::fs::write(&args.output, &file) {
        eprintln!("{}: {e}", args.output.display());
        return 1;
    }
    println!("{PEAK_PREFIX}{}", peak_resident_bytes().unwrap_or(0));
    0
}

fn limit_address_space(bytes: u64) -> std::io::Result<()> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let limit = Rlimit {
        current: Some(bytes),
        maximum: Some(bytes),
    };
    setrlimit(Resource::As, limit).map_err(std::io::Error::from)
}

/// This process's peak resident memory (`VmHWM`).
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_intact_artifacts_of_this_engine_load() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::new(&engine_config(false)).unwrap();
        let artifact = engine.precompile_module(b"\0asm\x01\0\0\0").unwrap();
        let mut file = ARTIFACT_MAGIC.to_vec();
        file.extend_from_slice(&Sha256::digest(&artifact));
        file.extend_from_slice(&artifact);
        let path = dir.path().join("a.cwasm");
        std::fs::write(&path, &file).unwrap();
        assert!(load_artifact(&engine, &path).is_some());
        // Another engine configuration: refused by wasmtime, not loaded.
        let metered = Engine::new(&engine_config(true)).unwrap();
        assert!(load_artifact(&metered, &path).is_none());
        // Torn or flipped: refused by the digest.
        std::fs::write(&path, &file[..file.len() - 1]).unwrap();
        assert!(load_artifact(&engine, &path).is_none());
        let last = file.len() - 1;
        file[last] ^= 1;
        std::fs::write(&path, &file).unwrap();
        assert!(load_artifact(&engine, &path).is_none());
        std::fs::write(&path, b"").unwrap();
        assert!(load_artifact(&engine, &path).is_none());
    }

    #[test]
    fn retain_removes_artifacts_of_other_modules_only() {
        let dir = tempfile::tempdir().unwrap();
        let compiler = Compiler::isolated(CompileLimits::default(), dir.path()).unwrap();
        for name in [
            "aa.plain.cwasm",
            "aa.metered.cwasm",
            "bb.plain.cwasm",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        compiler.retain(&HashSet::from(["aa"]));
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["aa.metered.cwasm", "aa.plain.cwasm", "notes.txt"]);
    }

    #[test]
    fn leftover_temporary_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1-2.wasm.tmp"), b"x").unwrap();
        std::fs::write(dir.path().join("aa.plain.cwasm"), b"x").unwrap();
        Compiler::isolated(CompileLimits::default(), dir.path()).unwrap();
        assert!(!dir.path().join("1-2.wasm.tmp").exists());
        assert!(dir.path().join("aa.plain.cwasm").exists());
    }
}
