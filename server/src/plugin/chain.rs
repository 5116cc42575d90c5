//! The configured plugins as one chain: loading them together (one engine,
//! one epoch ticker), and running the ones that match a key, in order, each
//! seeing the previous one's output.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use wasmtime::{Engine, Module};

use crate::ijson::ValueLimits;

use super::compiler::{engine_config, CompileError, CompileLimits, Compiler};
use super::failure::{FailureKind, PluginFailure, PluginLoadError};
use super::instance::{read_module, timed, CallInput, CallVerdict, LoadedPlugin, PluginSetup};
use super::spec::{OnFailure, PluginSource, PluginSpec};
use super::vectors;
use super::EPOCH_TICK;

/// The longest timeout of a plugin that may run on a request's own thread
/// (the default timeout): the worst a call can hold that thread.
const INLINE_MAX_TIMEOUT_MS: u64 = 20;

/// All plugins of one configuration. Replaced as a whole on reload, so a
/// write runs entirely against one chain.
pub struct PluginChain {
    plugins: Vec<LoadedPlugin>,
    /// The engine its plugins were compiled for, and whether it meters
    /// fuel; the next chain reuses both when it can, and with them every
    /// compiled module it shares with this one.
    engine: Option<(Engine, bool)>,
}

/// Why a chain stopped a write.
#[derive(Debug, Clone, PartialEq)]
pub enum ChainStop {
    /// A plugin rejected the write.
    Rejected {
        /// Which plugin.
        plugin: String,
        /// Its reason code.
        code: String,
        /// Its message.
        message: String,
        /// Its JSON path, if any.
        path: Option<String>,
    },
    /// A plugin with `on_failure = "reject"` failed.
    Failed {
        /// Which plugin.
        plugin: String,
        /// How it failed.
        kind: FailureKind,
        /// Details for the log and the operator.
        detail: String,
    },
}

/// One plugin's part in a chain run (reported by dry runs).
#[derive(Debug, Clone)]
pub struct Step {
    /// Plugin name.
    pub plugin: String,
    /// What it did.
    pub outcome: StepOutcome,
    /// How long the call took.
    pub took: Duration,
}

/// What one plugin did to a write.
#[derive(Debug, Clone)]
pub enum StepOutcome {
    /// Accepted the value as it was.
    Accepted,
    /// Replaced the value.
    Replaced,
    /// Rejected the write.
    Rejected {
        /// Its reason code.
        code: String,
        /// Its message.
        message: String,
    },
    /// A shadow plugin's verdict, recorded but not applied.
    Shadow {
        /// `accept`, `reject CODE`, `replace` or `fail KIND`.
        would: String,
    },
    /// Failed; `skipped` tells whether `on_failure = "skip"` let the write go on.
    Failed {
        /// The failure.
        failure: PluginFailure,
        /// Whether the chain went on without this plugin.
        skipped: bool,
    },
}

/// The result of running the chain for one write.
#[derive(Debug, Clone)]
pub struct ChainRun {
    /// Each matching plugin's part, in order.
    pub steps: Vec<Step>,
    /// The value to store (`None` for a delete), or why not.
    pub result: Result<Option<Bytes>, ChainStop>,
}

/// Whether a run counts in the plugins' statistics (dry runs do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A real write: count it.
    Yes,
    /// A dry run: leave the counters alone.
    No,
}

/// Advances the engine's epoch every `EPOCH_TICK` while the engine lives;
/// that is what interrupts a plugin past its `timeout_ms`.
fn start_epoch_ticker(engine: &Engine) -> Result<(), PluginLoadError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })
        .map(|_| ())
        .map_err(|e| PluginLoadError::Engine(format!("cannot start the epoch ticker: {e}")))
}

/// A compile failure as a load error naming the plugin and its file.
fn compile_failed(spec: &PluginSpec, error: CompileError) -> PluginLoadError {
    let (plugin, path) = (spec.name.clone(), spec.path.clone());
    match error {
        CompileError::Shape(error) => PluginLoadError::Shape {
            plugin,
            path,
            error,
        },
        CompileError::Invalid(error) => PluginLoadError::Compile {
            plugin,
            path,
            error,
        },
        other => PluginLoadError::CompileStopped {
            plugin,
            path,
            error: other.to_string(),
        },
    }
}

/// Runs the plugin's test vectors, if it has any: the file its table
/// names (which must exist), else `MODULE.vectors.json` beside the module.
/// Returns how many passed; any failure refuses the plugin.
fn check_vectors(plugin: &LoadedPlugin, limits: ValueLimits) -> Result<usize, PluginLoadError> {
    let spec = &plugin.spec;
    let path = match &spec.vectors {
        Some(path) => path.clone(),
        None => {
            let beside = vectors::beside(&spec.path);
            if !beside.exists() {
                return Ok(0);
            }
            beside
        }
    };
    let refuse = |problem: String| PluginLoadError::Vectors {
        plugin: spec.name.clone(),
        path: path.clone(),
        problem,
    };
    let loaded = vectors::load(&path, limits).map_err(|e| refuse(e.to_string()))?;
    let results = vectors::run(plugin, &loaded);
    match vectors::failure_report(&results) {
        Some(report) => Err(refuse(report)),
        None => Ok(results.len()),
    }
}

impl PluginChain {
    /// A chain without plugins.
    pub fn empty() -> Self {
        Self {
            plugins: Vec::new(),
            engine: None,
        }
    }

    /// Loads every plugin of `specs`, compiling in this process; fails on
    /// the first that cannot load or whose test vectors fail.
    pub fn load(specs: &[PluginSpec], limits: ValueLimits) -> Result<Self, PluginLoadError> {
        let compiler = Compiler::in_process(CompileLimits::default());
        Self::load_checked(specs, limits, true, &compiler, None)
    }

    /// Loads like [`PluginChain::load`] with `compiler`, to replace
    /// `previous` if given: a module `previous` already compiled is not
    /// compiled again, and a plugin that is the same module with the same
    /// settings (its mode aside) keeps its counters and shadow record, so
    /// changing one plugin does not wipe the others' history.
    pub fn load_with(
        specs: &[PluginSpec],
        limits: ValueLimits,
        compiler: &Compiler,
        previous: Option<&PluginChain>,
    ) -> Result<Self, PluginLoadError> {
        Self::load_checked(specs, limits, true, compiler, previous)
    }

    /// Loads like [`PluginChain::load`] without running test vectors, for
    /// `exdaas plugin test`, which runs them itself and reports each.
    pub fn load_without_vectors(
        specs: &[PluginSpec],
        limits: ValueLimits,
    ) -> Result<Self, PluginLoadError> {
        let compiler = Compiler::in_process(CompileLimits::default());
        Self::load_checked(specs, limits, false, &compiler, None)
    }

    fn load_checked(
        specs: &[PluginSpec],
        limits: ValueLimits,
        with_vectors: bool,
        compiler: &Compiler,
        previous: Option<&PluginChain>,
    ) -> Result<Self, PluginLoadError> {
        if specs.is_empty() {
            return Ok(Self::empty());
        }
        for (i, spec) in specs.iter().enumerate() {
            if specs[..i].iter().any(|s| s.name == spec.name) {
                return Err(PluginLoadError::DuplicateName(spec.name.clone()));
            }
        }
        // Plugins without a fuel budget get an unlimited one on a metered engine.
        let metered = specs.iter().any(|s| s.fuel.is_some());
        let reused = previous
            .and_then(|p| p.engine.clone())
            .filter(|(_, m)| *m == metered);
        let engine = match reused {
            Some((engine, _)) => engine,
            None => {
                let engine = Engine::new(&engine_config(metered))
                    .map_err(|e| PluginLoadError::Engine(e.to_string()))?;
                // Before loading: loading runs guest code (start functions,
                // exdaas_abi_version) under the plugin's timeout, which only
                // the ticker can enforce.
                start_epoch_ticker(&engine)?;
                engine
            }
        };
        let plugins = specs
            .iter()
            .map(|spec| {
                let (bytes, sha256) = read_module(spec)?;
                let module = match previous.and_then(|p| p.module_for(&engine, &sha256)) {
                    Some(module) => {
                        compiler.stats().reused.fetch_add(1, Ordering::Relaxed);
                        module
                    }
                    None => compiler
                        .compile(&engine, metered, &bytes, &sha256)
                        .map_err(|e| compile_failed(spec, e))?,
                };
                let setup = PluginSetup {
                    engine: &engine,
                    metered,
                    limits,
                };
                let mut plugin = LoadedPlugin::new(spec, sha256, &module, &setup)?;
                if with_vectors {
                    plugin.vectors_passed = check_vectors(&plugin, limits)?;
                }
                if let Some(before) = previous.and_then(|p| p.plugin(&spec.name)) {
                    plugin.continue_history(before);
                }
                Ok(plugin)
            })
            .collect::<Result<Vec<_>, PluginLoadError>>()?;
        Ok(Self {
            plugins,
            engine: Some((engine, metered)),
        })
    }

    /// The compiled module of digest `sha256`, if this chain has it and it
    /// was compiled for `engine`.
    fn module_for(&self, engine: &Engine, sha256: &str) -> Option<Module> {
        let (own, _) = self.engine.as_ref()?;
        if !Engine::same(own, engine) {
            return None;
        }
        self.plugins
            .iter()
            .find(|p| p.sha256 == sha256)
            .map(|p| p.module().clone())
    }

    /// The loaded plugin called `name`.
    pub fn plugin(&self, name: &str) -> Option<&LoadedPlugin> {
        self.plugins.iter().find(|p| p.name() == name)
    }

    /// The loaded plugins, in order.
    pub fn plugins(&self) -> &[LoadedPlugin] {
        &self.plugins
    }

    /// The loaded plugins, to adopt histories before the chain runs.
    pub fn plugins_mut(&mut self) -> &mut [LoadedPlugin] {
        &mut self.plugins
    }

    /// Whether any plugin runs for this write; when none does, the write
    /// path skips the chain (and its read of the old value) entirely.
    pub fn applies(&self, key: &str, delete: bool) -> bool {
        self.matching(key, delete).next().is_some()
    }

    /// Whether every plugin matching the write runs inline (see
    /// [`PluginStats::runs_inline`]); shadow plugins and long timeouts
    /// always run on the workers.
    pub fn runs_inline(&self, key: &str, delete: bool) -> bool {
        self.matching(key, delete).all(|p| {
            !p.is_shadow() && p.spec.timeout_ms <= INLINE_MAX_TIMEOUT_MS && p.stats.runs_inline()
        })
    }

    /// Counts a run made on a request's own thread.
    pub fn count_inline(&self, key: &str, delete: bool) {
        for plugin in self.matching(key, delete) {
            plugin.stats.inline_calls.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn matching<'a>(
        &'a self,
        key: &'a str,
        delete: bool,
    ) -> impl Iterator<Item = &'a LoadedPlugin> + 'a {
        self.plugins
            .iter()
            .filter(move |p| p.spec.applies_to(key) && (!delete || p.spec.run_on_delete))
    }

    /// Runs the matching plugins in order. `value` is the new value (`None`
    /// for a delete), `old` the currently stored one.
    pub fn run(
        &self,
        key: &str,
        value: Option<Bytes>,
        old: Option<&[u8]>,
        now_ms: i64,
        record: Record,
    ) -> ChainRun {
        let delete = value.is_none();
        let mut current = value;
        let mut steps = Vec::new();
        // A canary's verdict, until the plugin it may replace has judged.
        let mut canary: Option<(&LoadedPlugin, Verdict)> = None;
        for plugin in &self.plugins {
            let applies = plugin.spec.applies_to(key) && (!delete || plugin.spec.run_on_delete);
            let pending =
                canary.take_if(|(c, _)| c.spec.canary_of.as_deref() == Some(plugin.name()));
            if !applies {
                if plugin.spec.canary_of.is_some() {
                    canary = Some((plugin, Verdict::NotRun));
                } else if let Some((c, theirs)) = pending {
                    compare_canary(c, &theirs, &Verdict::NotRun, key, now_ms, record);
                }
                continue;
            }
            let input = CallInput {
                delete,
                key,
                value: current.as_deref(),
                old,
                now_ms,
            };
            let (result, took) = timed(|| plugin.call(&input));
            plugin.stats.note_call_time(took);
            if let Some((c, theirs)) = pending {
                compare_canary(c, &theirs, &Verdict::of(&result), key, now_ms, record);
            }
            if plugin.is_shadow() {
                if plugin.spec.canary_of.is_some() {
                    canary = Some((plugin, Verdict::of(&result)));
                }
                // Recorded, and the write goes on as if it were absent.
                steps.push(observe_shadow(plugin, key, &result, took, now_ms, record));
                continue;
            }
            let stats = &plugin.stats;
            if record == Record::Yes {
                stats.calls.fetch_add(1, Ordering::Relaxed);
                stats.latency.record(took);
            }
            let name = plugin.name().to_owned();
            let count = |counter: &std::sync::atomic::AtomicU64| {
                if record == Record::Yes {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            };
            match result {
                Ok(CallVerdict::Accept) => {
                    count(&stats.accepted);
                    steps.push(Step {
                        plugin: name,
                        outcome: StepOutcome::Accepted,
                        took,
                    });
                }
                Ok(CallVerdict::Replace(new_value)) => {
                    count(&stats.replaced);
                    current = Some(new_value);
                    steps.push(Step {
                        plugin: name,
                        outcome: StepOutcome::Replaced,
                        took,
                    });
                }
                Ok(CallVerdict::Reject {
                    code,
                    message,
                    path,
                }) => {
                    count(&stats.rejected);
                    steps.push(Step {
                        plugin: name.clone(),
                        outcome: StepOutcome::Rejected {
                            code: code.clone(),
                            message: message.clone(),
                        },
                        took,
                    });
                    return ChainRun {
                        steps,
                        result: Err(ChainStop::Rejected {
                            plugin: name,
                            code,
                            message,
                            path,
                        }),
                    };
                }
                Err(failure) => {
                    if let Some(stop) = self.fail(plugin, failure, took, record, &mut steps) {
                        return ChainRun {
                            steps,
                            result: Err(stop),
                        };
                    }
                }
            }
        }
        ChainRun {
            steps,
            result: Ok(current),
        }
    }

    /// Records a failure; returns the stop when the plugin's policy is reject.
    fn fail(
        &self,
        plugin: &LoadedPlugin,
        failure: PluginFailure,
        took: Duration,
        record: Record,
        steps: &mut Vec<Step>,
    ) -> Option<ChainStop> {
        let skipped = plugin.spec.on_failure == OnFailure::Skip;
        if record == Record::Yes {
            plugin.stats.record_failure(failure.kind);
            if skipped {
                plugin.stats.skipped.fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(plugin = plugin.name(), kind = failure.kind.as_str(), detail = %failure.detail, skipped, "plugin failed");
        }
        steps.push(Step {
            plugin: plugin.name().to_owned(),
            outcome: StepOutcome::Failed {
                failure: failure.clone(),
                skipped,
            },
            took,
        });
        (!skipped).then(|| ChainStop::Failed {
            plugin: plugin.name().to_owned(),
            kind: failure.kind,
            detail: failure.detail,
        })
    }

    /// Description and counters of every plugin, for `GET /v1/plugins`.
    /// Module paths are server file paths: only administrators see them.
    pub fn describe(&self, with_paths: bool) -> Value {
        let plugins: Vec<Value> = self
            .plugins
            .iter()
            .map(|p| {
                let mut described = json!({
                    "name": p.name(),
                    "source": p.spec.source.as_str(),
                    "version": match p.spec.source {
                        PluginSource::Managed { version } => Some(version),
                        PluginSource::Config => None,
                    },
                    "path": p.spec.path.display().to_string(),
                    "prefixes": p.spec.prefixes,
                    "sha256": p.sha256,
                    "timeout_ms": p.spec.timeout_ms,
                    "max_memory_bytes": p.spec.max_memory_bytes,
                    "fuel": p.spec.fuel,
                    "on_failure": p.spec.on_failure,
                    "run_on_delete": p.spec.run_on_delete,
                    "vectors_passed": p.vectors_passed,
                    "mode": if p.is_shadow() { "shadow" } else { "enforce" },
                    "stats": p.stats.to_json(),
                });
                if !with_paths {
                    if let Some(fields) = described.as_object_mut() {
                        fields.remove("path");
                    }
                }
                described
            })
            .collect();
        json!({ "plugins": plugins })
    }
}

impl Step {
    /// The step as JSON for dry-run answers.
    pub fn to_json(&self) -> Value {
        let micros = (self.took.as_secs_f64() * 1e6 * 100.0).round() / 100.0;
        let mut v = match &self.outcome {
            StepOutcome::Accepted => json!({ "outcome": "accepted" }),
            StepOutcome::Replaced => json!({ "outcome": "replaced" }),
            StepOutcome::Rejected { code, message } => {
                json!({ "outcome": "rejected", "reason": code, "message": message })
            }
            StepOutcome::Shadow { would } => json!({ "outcome": "shadow", "would": would }),
            StepOutcome::Failed { failure, skipped } => json!({
                "outcome": if *skipped { "failed_skipped" } else { "failed" },
                "kind": failure.kind.as_str(),
                "message": failure.detail,
            }),
        };
        v["plugin"] = Value::from(self.plugin.clone());
        v["micros"] = Value::from(micros);
        v
    }
}

/// What a plugin decided about one write, as a canary's is compared with
/// its enforcing version's.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// It does not run for this write (prefixes, deletes): as an accept.
    NotRun,
    Accept,
    Reject(String),
    Replace(Bytes),
    Fail(&'static str),
}

impl Verdict {
    fn of(result: &Result<CallVerdict, PluginFailure>) -> Self {
        match result {
            Ok(CallVerdict::Accept) => Verdict::Accept,
            Ok(CallVerdict::Reject { code, .. }) => Verdict::Reject(code.clone()),
            Ok(CallVerdict::Replace(value)) => Verdict::Replace(value.clone()),
            Err(failure) => Verdict::Fail(failure.kind.as_str()),
        }
    }

    /// Whether the write goes on unchanged.
    fn keeps(&self) -> bool {
        matches!(self, Verdict::NotRun | Verdict::Accept)
    }

    fn describe(&self) -> String {
        match self {
            Verdict::NotRun => "does not run".into(),
            Verdict::Accept => "accept".into(),
            Verdict::Reject(code) => format!("reject {code}"),
            Verdict::Replace(value) => {
                format!("replace with {}", crate::logsafe::escape_bytes(value, 200))
            }
            Verdict::Fail(kind) => format!("fail {kind}"),
        }
    }
}

/// Counts whether a canary agreed with the version it may replace on one
/// write, and samples the writes where it did not.
fn compare_canary(
    canary: &LoadedPlugin,
    theirs: &Verdict,
    enforcing: &Verdict,
    key: &str,
    now_ms: i64,
    record: Record,
) {
    if record == Record::No {
        return;
    }
    let same = theirs == enforcing || (theirs.keeps() && enforcing.keeps());
    if same {
        canary.stats.canary_agreed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    canary.stats.canary_differed.fetch_add(1, Ordering::Relaxed);
    let detail = format!(
        "{}: {}; enforcing version: {}",
        canary.name(),
        theirs.describe(),
        enforcing.describe()
    );
    canary.shadow_log.push(key, "differs", &detail, now_ms);
}

/// Counts and samples what a shadow plugin would have done; returns its
/// step for dry runs.
fn observe_shadow(
    plugin: &LoadedPlugin,
    key: &str,
    result: &Result<CallVerdict, PluginFailure>,
    took: Duration,
    now_ms: i64,
    record: Record,
) -> Step {
    let stats = &plugin.stats;
    let (would, verdict, detail) = match result {
        Ok(CallVerdict::Accept) => ("accept".to_owned(), None, String::new()),
        Ok(CallVerdict::Reject { code, message, .. }) => (
            format!("reject {code}"),
            Some("reject"),
            format!("{code}: {message}"),
        ),
        Ok(CallVerdict::Replace(value)) => (
            "replace".to_owned(),
            Some("replace"),
            String::from_utf8_lossy(value).into_owned(),
        ),
        Err(failure) => (
            format!("fail {}", failure.kind.as_str()),
            Some("fail"),
            failure.to_string(),
        ),
    };
    if record == Record::Yes {
        stats.calls.fetch_add(1, Ordering::Relaxed);
        stats.latency.record(took);
        match result {
            Ok(CallVerdict::Accept) => stats.accepted.fetch_add(1, Ordering::Relaxed),
            Ok(CallVerdict::Reject { .. }) => stats.rejected.fetch_add(1, Ordering::Relaxed),
            Ok(CallVerdict::Replace(_)) => stats.replaced.fetch_add(1, Ordering::Relaxed),
            Err(failure) => {
                stats.record_failure(failure.kind);
                0
            }
        };
        if let Some(verdict) = verdict {
            plugin.shadow_log.push(key, verdict, &detail, now_ms);
        }
    }
    Step {
        plugin: plugin.name().to_owned(),
        outcome: StepOutcome::Shadow { would },
        took,
    }
}

/// Shared handle type for the active chain.
pub type SharedChain = Arc<PluginChain>;
