//! One compiled plugin: its module, a pool of ready instances, and the call
//! that moves a write's data in and a verdict out under the plugin's limits.
//!
//! Instances are reused between calls (a call on a warm instance costs well
//! under a microsecond of overhead, a fresh instantiation tens). So a plugin
//! may find globals and memory as a previous call left them, but must not
//! rely on it: instances are pooled (several may exist at once), an instance
//! that failed in any way is discarded and replaced by a fresh one, and a
//! reload starts from scratch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::{
    Caller, Engine, Extern, ExternType, InstancePre, Linker, Memory, Module, ResourceLimiter,
    Store, Trap, TypedFunc, ValType,
};

use super::abi::{self, Verdict};
use super::failure::{FailureKind, PluginFailure, PluginLoadError};
use super::shadow::ShadowLog;
use super::spec::{PluginMode, PluginSpec};
use super::stats::PluginStats;
use super::EPOCH_TICK;
use crate::ijson::{ValueLimits, Violation};
use crate::logsafe;

/// Most log lines one call may emit; the rest are dropped (and counted in one line).
const MAX_LOG_LINES_PER_CALL: u32 = 32;
/// Longest log line kept.
const MAX_LOG_LINE_BYTES: usize = 1024;

/// Per-store host state: limits, and who is calling for log lines.
pub(crate) struct HostState {
    /// Linear memory cap in bytes.
    max_memory: usize,
    /// Set when the cap refused a `memory.grow`, so the failure that
    /// follows is reported as out-of-memory rather than a generic trap.
    memory_denied: bool,
    /// Plugin name for log lines.
    plugin: Arc<str>,
    /// Key of the write being processed, for log lines.
    key: String,
    /// Log lines emitted by the current call.
    log_lines: u32,
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.memory_denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}

/// `exdaas_on_write(op, buf, key_len, value_len, old_len, config_len, now_ms) -> packed verdict`.
type OnWriteFn = TypedFunc<(i32, i32, i32, i32, i32, i32, i64), i64>;

/// A live instance with its exports resolved.
struct Ready {
    store: Store<HostState>,
    memory: Memory,
    abi_version: TypedFunc<(), i32>,
    alloc: TypedFunc<i32, i32>,
    on_write: OnWriteFn,
}

/// The data a plugin call sees.
#[derive(Debug, Clone, Copy)]
pub struct CallInput<'a> {
    /// Whether this is a delete.
    pub delete: bool,
    /// The key being written.
    pub key: &'a str,
    /// The new value (JSON), absent for deletes.
    pub value: Option<&'a [u8]>,
    /// The value currently stored, if any.
    pub old: Option<&'a [u8]>,
    /// Host time in milliseconds since the Unix epoch (guests have no clock).
    pub now_ms: i64,
}

/// What a successful call decided.
#[derive(Debug, Clone, PartialEq)]
pub enum CallVerdict {
    /// Keep the value as it is.
    Accept,
    /// Refuse the write.
    Reject {
        /// The plugin's reason code.
        code: String,
        /// The plugin's message.
        message: String,
        /// JSON path the plugin pointed at, if any.
        path: Option<String>,
    },
    /// Store this JSON instead.
    Replace(Bytes),
}

/// What a plugin has counted and sampled, kept apart from the plugin so
/// a later chain running the same plugin can go on with it.
#[derive(Debug, Clone)]
pub struct History {
    /// Counters and call times.
    pub stats: Arc<PluginStats>,
    /// Would-be verdicts in shadow mode.
    pub shadow_log: Arc<ShadowLog>,
}

/// A loaded plugin.
pub struct LoadedPlugin {
    /// Its configuration.
    pub spec: PluginSpec,
    /// Its name, shared with every store for log lines.
    name: Arc<str>,
    /// Hex sha256 of the module file, so operators can tell which build runs.
    pub sha256: String,
    /// The plugin's config serialised once, handed to every call.
    config_json: Vec<u8>,
    /// Pre-linked module: instantiation skips import resolution.
    pre: InstancePre<HostState>,
    engine: Engine,
    /// Idle instances ready for a call.
    pool: Mutex<Vec<Ready>>,
    /// Epoch ticks a call may run.
    deadline_ticks: u64,
    /// Largest verdict accepted, in bytes.
    max_output: usize,
    /// Fuel per call: the plugin's budget, unlimited when the engine meters
    /// only for other plugins, `None` when nothing is metered.
    fuel: Option<u64>,
    /// What a replacement value must meet, like any client value.
    value_limits: ValueLimits,
    /// Counters for `GET /v1/plugins`; shared with the same plugin in the
    /// next chain when a reload or upload leaves it unchanged.
    pub stats: Arc<PluginStats>,
    /// How many test vectors the plugin passed when it was loaded.
    pub vectors_passed: usize,
    /// In shadow mode now (starts as configured; promotion clears it).
    shadow: AtomicBool,
    /// Would-be verdicts while in shadow mode (shared like `stats`).
    pub shadow_log: Arc<ShadowLog>,
}

fn load_err(spec: &PluginSpec, problem: impl Into<String>) -> PluginLoadError {
    PluginLoadError::Abi {
        plugin: spec.name.clone(),
        path: spec.path.clone(),
        problem: problem.into(),
    }
}

/// Checks that `module` exports `name` as a function of exactly this type.
fn expect_func(
    module: &Module,
    spec: &PluginSpec,
    name: &str,
    params: &[ValType],
    results: &[ValType],
) -> Result<(), PluginLoadError> {
    let describe = |p: &[ValType], r: &[ValType]| format!("({:?}) -> ({:?})", p, r);
    match module.get_export(name) {
        Some(ExternType::Func(ty)) => {
            let p: Vec<ValType> = ty.params().collect();
            let r: Vec<ValType> = ty.results().collect();
            let same = |a: &[ValType], b: &[ValType]| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| ValType::eq(x, y))
            };
            if same(&p, params) && same(&r, results) {
                Ok(())
            } else {
                Err(load_err(
                    spec,
                    format!(
                        "export {name} has type {}, expected {}",
                        describe(&p, &r),
                        describe(params, results)
                    ),
                ))
            }
        }
        Some(_) => Err(load_err(spec, format!("export {name} is not a function"))),
        None => Err(load_err(
            spec,
            format!("missing export {name} (see guest-sdk/ABI.md)"),
        )),
    }
}

/// A plugin's module file and its hex sha256 (the digest that also names
/// an uploaded module's file, which is how a damaged stored module is told
/// apart from the one uploaded).
pub(super) fn read_module(spec: &PluginSpec) -> Result<(Vec<u8>, String), PluginLoadError> {
    let bytes = std::fs::read(&spec.path).map_err(|e| PluginLoadError::Read {
        plugin: spec.name.clone(),
        path: spec.path.clone(),
        error: e.to_string(),
    })?;
    let sha256 = super::managed_files::sha256_hex(&bytes);
    Ok((bytes, sha256))
}

/// What every plugin of a chain is set up with.
pub(super) struct PluginSetup<'a> {
    /// The chain's engine.
    pub engine: &'a Engine,
    /// Whether it meters fuel.
    pub metered: bool,
    /// Bounds on values in and out.
    pub limits: ValueLimits,
}

impl LoadedPlugin {
    /// Checks a compiled plugin against the ABI, and instantiates it once
    /// to verify its ABI version.
    pub(super) fn new(
        spec: &PluginSpec,
        sha256: String,
        module: &Module,
        setup: &PluginSetup<'_>,
    ) -> Result<Self, PluginLoadError> {
        let PluginSetup {
            engine,
            metered,
            limits,
        } = *setup;
        for import in module.imports() {
            if (import.module(), import.name()) != (abi::HOST_MODULE, abi::HOST_LOG) {
                return Err(PluginLoadError::Import {
                    plugin: spec.name.clone(),
                    path: spec.path.clone(),
                    import: format!("{}.{}", import.module(), import.name()),
                });
            }
        }
        match module.get_export(abi::EXPORT_MEMORY) {
            Some(ExternType::Memory(_)) => {}
            _ => {
                return Err(load_err(
                    spec,
                    "missing export memory (a linear memory named \"memory\")",
                ))
            }
        }
        use ValType::{I32, I64};
        expect_func(module, spec, abi::EXPORT_ABI_VERSION, &[], &[I32])?;
        expect_func(module, spec, abi::EXPORT_ALLOC, &[I32], &[I32])?;
        expect_func(
            module,
            spec,
            abi::EXPORT_ON_WRITE,
            &[I32, I32, I32, I32, I32, I32, I64],
            &[I64],
        )?;

        let mut linker: Linker<HostState> = Linker::new(engine);
        linker
            .func_wrap(abi::HOST_MODULE, abi::HOST_LOG, host_log)
            .map_err(|e| load_err(spec, format!("cannot link exdaas.log: {e}")))?;
        let pre = linker
            .instantiate_pre(module)
            .map_err(|e| load_err(spec, format!("cannot link: {e:#}")))?;
        let tick_ms = EPOCH_TICK.as_millis().max(1) as u64;
        let plugin = Self {
            name: Arc::from(spec.name.as_str()),
            spec: spec.clone(),
            sha256,
            config_json: serde_json::to_vec(&spec.config).unwrap_or_else(|_| b"{}".to_vec()),
            pre,
            engine: engine.clone(),
            pool: Mutex::new(Vec::new()),
            deadline_ticks: spec.timeout_ms.div_ceil(tick_ms).saturating_add(1),
            fuel: spec.fuel.or(metered.then_some(u64::MAX)),
            max_output: limits.max_bytes + 64 * 1024,
            value_limits: limits,
            stats: Arc::default(),
            vectors_passed: 0,
            shadow: AtomicBool::new(spec.mode == PluginMode::Shadow),
            shadow_log: Arc::default(),
        };
        let mut ready = plugin
            .instantiate()
            .map_err(|e| load_err(spec, format!("instantiation failed: {e}")))?;
        ready.store.set_epoch_deadline(plugin.deadline_ticks);
        let version = ready.abi_version.call(&mut ready.store, ()).map_err(|e| {
            load_err(
                spec,
                format!("exdaas_abi_version failed: {}", classify(&ready.store, &e)),
            )
        })?;
        if version != abi::ABI_VERSION {
            return Err(load_err(
                spec,
                format!(
                    "plugin ABI version {version}, this server implements version {}",
                    abi::ABI_VERSION
                ),
            ));
        }
        plugin.release(ready);
        Ok(plugin)
    }

    /// A fresh instance under this plugin's limits.
    fn instantiate(&self) -> Result<Ready, PluginFailure> {
        let state = HostState {
            max_memory: usize::try_from(self.spec.max_memory_bytes).unwrap_or(usize::MAX),
            memory_denied: false,
            plugin: self.name.clone(),
            key: String::new(),
            log_lines: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        // Start functions run under the same deadline and fuel as a call.
        store.set_epoch_deadline(self.deadline_ticks);
        if let Some(fuel) = self.fuel {
            store
                .set_fuel(fuel)
                .map_err(|e| PluginFailure::new(FailureKind::Instantiation, e.to_string()))?;
        }
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, &e))?;
        let fail = |what: &str| {
            PluginFailure::new(
                FailureKind::Instantiation,
                format!("export {what} unusable"),
            )
        };
        let memory = instance
            .get_memory(&mut store, abi::EXPORT_MEMORY)
            .ok_or_else(|| fail(abi::EXPORT_MEMORY))?;
        let abi_version = instance
            .get_typed_func::<(), i32>(&mut store, abi::EXPORT_ABI_VERSION)
            .map_err(|_| fail(abi::EXPORT_ABI_VERSION))?;
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, abi::EXPORT_ALLOC)
            .map_err(|_| fail(abi::EXPORT_ALLOC))?;
        let on_write = instance
            .get_typed_func::<(i32, i32, i32, i32, i32, i32, i64), i64>(
                &mut store,
                abi::EXPORT_ON_WRITE,
            )
            .map_err(|_| fail(abi::EXPORT_ON_WRITE))?;
        Ok(Ready {
            store,
            memory,
            abi_version,
            alloc,
            on_write,
        })
    }

    fn release(&self, ready: Ready) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(ready);
        }
    }

    /// Whether the plugin runs in shadow mode now.
    pub fn is_shadow(&self) -> bool {
        self.shadow.load(Ordering::Acquire)
    }

    /// Makes a shadow plugin enforce; false when it already did. Lasts
    /// until the chain is reloaded from the configuration.
    pub fn promote(&self) -> bool {
        self.shadow.swap(false, Ordering::AcqRel)
    }

    /// The plugin's counters and shadow record, shared.
    pub fn history(&self) -> History {
        History {
            stats: Arc::clone(&self.stats),
            shadow_log: Arc::clone(&self.shadow_log),
        }
    }

    /// Continues counting into `history` (a version that ran before).
    pub fn adopt_history(&mut self, history: &History) {
        self.stats = Arc::clone(&history.stats);
        self.shadow_log = Arc::clone(&history.shadow_log);
    }

    /// Takes over `before`'s counters and shadow record when `before` ran
    /// the same module with the same settings (the mode aside: promotion
    /// does not restart the record).
    pub fn continue_history(&mut self, before: &LoadedPlugin) {
        let settings = |spec: &PluginSpec| PluginSpec {
            mode: PluginMode::Enforce,
            ..spec.clone()
        };
        if self.sha256 == before.sha256 && settings(&self.spec) == settings(&before.spec) {
            self.stats = Arc::clone(&before.stats);
            self.shadow_log = Arc::clone(&before.shadow_log);
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its compiled module, for the next chain to reuse.
    pub(super) fn module(&self) -> &Module {
        self.pre.module()
    }

    /// Runs the plugin once. A failed call's instance is discarded.
    pub fn call(&self, input: &CallInput<'_>) -> Result<CallVerdict, PluginFailure> {
        self.call_with_config(input, None)
    }

    /// Runs the plugin once with `config` (JSON) instead of its configured
    /// settings when given: test vectors carry their own.
    pub fn call_with_config(
        &self,
        input: &CallInput<'_>,
        config: Option<&[u8]>,
    ) -> Result<CallVerdict, PluginFailure> {
        let config = config.unwrap_or(&self.config_json);
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        let mut ready = match pooled {
            Some(r) => r,
            None => self.instantiate()?,
        };
        let verdict = self.call_on(&mut ready, input, config)?;
        self.release(ready);
        Ok(verdict)
    }

    fn call_on(
        &self,
        ready: &mut Ready,
        input: &CallInput<'_>,
        config: &[u8],
    ) -> Result<CallVerdict, PluginFailure> {
        {
            let state = ready.store.data_mut();
            state.key.clear();
            state.key.push_str(input.key);
            state.log_lines = 0;
            state.memory_denied = false;
        }
        ready.store.set_epoch_deadline(self.deadline_ticks);
        if let Some(fuel) = self.fuel {
            ready
                .store
                .set_fuel(fuel)
                .map_err(|e| PluginFailure::new(FailureKind::Instantiation, e.to_string()))?;
        }
        let len_of = |v: Option<&[u8]>| v.map_or(0, <[u8]>::len);
        let total = input.key.len() + len_of(input.value) + len_of(input.old) + config.len();
        let too_big = || {
            PluginFailure::new(
                FailureKind::OutputTooLarge,
                "input does not fit a 32-bit guest",
            )
        };
        let total_i32 = i32::try_from(total).map_err(|_| too_big())?;
        let as_len = |v: Option<&[u8]>| {
            v.map_or(Ok(abi::ABSENT), |b| {
                i32::try_from(b.len()).map_err(|_| too_big())
            })
        };

        let buf = ready
            .alloc
            .call(&mut ready.store, total_i32)
            .map_err(|e| classify(&ready.store, &e))?;
        if buf == 0 {
            // The ABI's "could not allocate" answer, not a buffer at address 0.
            return Err(PluginFailure::new(
                FailureKind::OutOfMemory,
                format!("exdaas_alloc returned 0 for {total} bytes of input"),
            ));
        }
        let start = usize::try_from(buf).map_err(|_| {
            PluginFailure::new(
                FailureKind::MalformedOutput,
                format!("exdaas_alloc returned {buf}"),
            )
        })?;
        {
            let mem = ready.memory.data_mut(&mut ready.store);
            let dest = start
                .checked_add(total)
                .and_then(|end| mem.get_mut(start..end))
                .ok_or_else(|| {
                    PluginFailure::new(
                        FailureKind::MalformedOutput,
                        format!("exdaas_alloc returned {start}, but {total} bytes from there are outside memory"),
                    )
                })?;
            let mut at = 0;
            for part in [
                Some(input.key.as_bytes()),
                input.value,
                input.old,
                Some(config),
            ]
            .into_iter()
            .flatten()
            {
                dest[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
        }
        let op = if input.delete {
            abi::OP_DELETE
        } else {
            abi::OP_PUT
        };
        let packed = ready
            .on_write
            .call(
                &mut ready.store,
                (
                    op,
                    buf,
                    i32::try_from(input.key.len()).map_err(|_| too_big())?,
                    as_len(input.value)?,
                    as_len(input.old)?,
                    i32::try_from(config.len()).map_err(|_| too_big())?,
                    input.now_ms,
                ),
            )
            .map_err(|e| classify(&ready.store, &e))?;
        if packed == 0 {
            return Ok(CallVerdict::Accept);
        }
        let out_ptr = ((packed as u64) >> 32) as usize;
        let out_len = (packed as u64 & 0xffff_ffff) as usize;
        if out_len > self.max_output {
            return Err(PluginFailure::new(
                FailureKind::OutputTooLarge,
                format!(
                    "verdict of {out_len} bytes exceeds {} bytes",
                    self.max_output
                ),
            ));
        }
        let mem = ready.memory.data(&ready.store);
        let out = mem.get(out_ptr..out_ptr + out_len).ok_or_else(|| {
            PluginFailure::new(
                FailureKind::MalformedOutput,
                format!(
                    "verdict at {out_ptr}+{out_len} is outside the plugin's {} bytes of memory",
                    mem.len()
                ),
            )
        })?;
        let verdict = Verdict::parse(out).map_err(|e| {
            PluginFailure::new(
                FailureKind::MalformedOutput,
                format!("verdict is not valid verdict JSON: {e}"),
            )
        })?;
        match verdict {
            Verdict::Accept => Ok(CallVerdict::Accept),
            Verdict::Reject {
                code,
                message,
                path,
            } => Ok(CallVerdict::Reject {
                code,
                message,
                path,
            }),
            Verdict::Replace { .. } if input.delete => Err(PluginFailure::new(
                FailureKind::MalformedOutput,
                "a delete cannot be answered with replace",
            )),
            Verdict::Replace { value } => {
                let json = value.get().as_bytes();
                crate::ijson::check(json, self.value_limits).map_err(|v| {
                    let kind = match v {
                        Violation::TooLarge { .. } => FailureKind::OutputTooLarge,
                        _ => FailureKind::MalformedOutput,
                    };
                    PluginFailure::new(kind, format!("replacement {v}"))
                })?;
                Ok(CallVerdict::Replace(Bytes::copy_from_slice(json)))
            }
        }
    }
}

/// Maps a wasm error to a failure kind by type, never by message text.
fn classify(store: &Store<HostState>, error: &wasmtime::Error) -> PluginFailure {
    let kind = if store.data().memory_denied {
        FailureKind::OutOfMemory
    } else {
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => FailureKind::Timeout,
            Some(Trap::OutOfFuel) => FailureKind::OutOfFuel,
            _ => FailureKind::Trap,
        }
    };
    // The trap's own reason (stack overflow, unreachable, out of bounds)
    // comes first; the backtrace, whose function names the plugin chose,
    // follows and is cut short with the rest of the detail.
    let detail = match error.downcast_ref::<Trap>() {
        Some(trap) => format!("{trap}; {error:#}"),
        None => format!("{error:#}"),
    };
    PluginFailure::new(kind, detail)
}

/// `exdaas.log(level, ptr, len)`: a log line from the plugin, tagged with
/// its name and the key being written. Bad pointers are ignored, not fatal.
fn host_log(mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32) {
    let lines = caller.data().log_lines;
    caller.data_mut().log_lines = lines.saturating_add(1);
    if lines >= MAX_LOG_LINES_PER_CALL {
        if lines == MAX_LOG_LINES_PER_CALL {
            let (plugin, key) = (caller.data().plugin.clone(), caller.data().key.clone());
            tracing::warn!(plugin = %plugin, key = %key, "plugin log limit reached; further lines of this call dropped");
        }
        return;
    }
    let Some(Extern::Memory(memory)) = caller.get_export(abi::EXPORT_MEMORY) else {
        return;
    };
    let (Ok(start), Ok(len)) = (usize::try_from(ptr), usize::try_from(len)) else {
        return;
    };
    let text = match memory.data(&caller).get(start..start.saturating_add(len)) {
        Some(bytes) => logsafe::escape_bytes(bytes, MAX_LOG_LINE_BYTES),
        None => return,
    };
    let state = caller.data();
    let (plugin, key) = (&*state.plugin, state.key.as_str());
    match abi::log_level_name(level) {
        "error" => tracing::error!(target: "exdaas::plugin", plugin, key, "{text}"),
        "warn" => tracing::warn!(target: "exdaas::plugin", plugin, key, "{text}"),
        "info" => tracing::info!(target: "exdaas::plugin", plugin, key, "{text}"),
        "debug" => tracing::debug!(target: "exdaas::plugin", plugin, key, "{text}"),
        _ => tracing::trace!(target: "exdaas::plugin", plugin, key, "{text}"),
    }
}

/// Times a call and records it; used by the chain.
pub(crate) fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    (out, started.elapsed())
}
