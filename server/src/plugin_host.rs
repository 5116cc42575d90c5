//! The active plugin chain and every way it changes: a reload of the
//! configuration, and uploads, rollbacks, deletes and promotions of managed
//! plugins. One chain is built from both sources (`managed::chain_specs`);
//! each change builds a whole new chain beside the running one and swaps it
//! in between writes only when it loaded, so a refused change leaves
//! everything as it was. Changes are serialised by one async mutex, which
//! also guards the managed-plugin registry they edit. The last step of a
//! change (build, save, swap) runs on a blocking thread that owns the
//! lock, so a client that hangs up mid-change cannot leave the registry on
//! disk and the one in memory apart.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::config::{PluginUploadSettings, Settings};
use crate::ijson::ValueLimits;
use crate::plugin::compiler::{CompileStats, Compiler};
use crate::plugin::managed::{
    self, check_name, ManagedError, NewVersion, Placement, Quota, Registry,
};
use crate::plugin::managed_files::ManagedFiles;
use crate::plugin::{
    vectors, History, PluginChain, PluginLoadError, PluginSource, PluginSpec, SharedChain,
};

/// An upload, as the HTTP layer parsed it.
#[derive(Debug)]
pub struct Upload {
    /// The module (binary or text WebAssembly).
    pub module: Bytes,
    /// Settings for the new version; `None` (a bare module) keeps the
    /// active version's settings, vectors and placement, or the defaults
    /// for a new plugin.
    pub form: Option<UploadForm>,
    /// Who uploads: the version's prefixes must lie in what it may write.
    pub uploader: crate::auth::Caller,
    /// The upload's request id, kept in the version record so the audit
    /// trail's record of the upload can be found from it.
    pub request_id: Option<String>,
}

/// Refuses a version whose prefixes reach keys `caller` may not write: a
/// plugin judges (and a transform rewrites) every write under them.
fn check_scope(
    caller: &crate::auth::Caller,
    name: &str,
    prefixes: &[String],
) -> Result<(), ManagedError> {
    use crate::auth::scope::{Coverage, Level};
    let everything = [String::new()];
    let prefixes = if prefixes.is_empty() {
        &everything[..]
    } else {
        prefixes
    };
    match prefixes
        .iter()
        .find(|p| caller.coverage(p, Level::Write) != Coverage::All)
    {
        None => Ok(()),
        Some(p) if p.is_empty() => Err(ManagedError::OutOfScope(format!(
            "plugin {name:?} has no prefixes, so it would run on every key, and token {:?} may not write every key; give it prefixes inside the token's rules",
            caller.name()
        ))),
        Some(p) => Err(ManagedError::OutOfScope(format!(
            "plugin {name:?} runs on keys under {p:?}, and token {:?} may not write all of them",
            caller.name()
        ))),
    }
}

/// The settings part of an upload.
#[derive(Debug)]
pub struct UploadForm {
    /// The settings the form names (members of a `[[plugins]]` table,
    /// checked): each replaces the active version's, `null` resets it to
    /// its default, and what the form leaves out is the active version's.
    pub settings: serde_json::Map<String, Value>,
    /// Test vectors as JSON text; `None` keeps the active version's,
    /// `Some(None)` (a `null`) drops them.
    pub vectors: Option<Option<Vec<u8>>>,
    /// Where it goes in the chain; `None` keeps the current placement.
    pub placement: Option<Placement>,
}

/// The settings of an upload's new version: `base` (the active version's,
/// or the defaults) with what the form names laid over it.
fn settings_over(
    base: &PluginSpec,
    named: serde_json::Map<String, Value>,
) -> Result<PluginSpec, ManagedError> {
    let invalid =
        |e: serde_json::Error| ManagedError::InvalidUpload(format!("plugin settings: {e}"));
    let Value::Object(mut merged) = serde_json::to_value(base).map_err(invalid)? else {
        return Err(ManagedError::InvalidUpload(
            "plugin settings: not an object".into(),
        ));
    };
    for (key, value) in named {
        match value {
            Value::Null => drop(merged.remove(&key)),
            value => drop(merged.insert(key, value)),
        }
    }
    serde_json::from_value(Value::Object(merged)).map_err(invalid)
}

/// The reason code a plugin rejects with when its own configuration is
/// unusable (`guest-sdk/ABI.md`).
const BAD_CONFIG: &str = "bad_config";

/// Refuses an upload whose plugin rejects a plain write (`{}` under a key
/// it applies to) because of its own configuration: once active, it would
/// refuse every write on the server that way.
fn probe_config(chain: &PluginChain, name: &str) -> Result<(), ManagedError> {
    let Some(plugin) = chain.plugin(name) else {
        return Ok(());
    };
    let prefix = plugin.spec.prefixes.first().map_or("", String::as_str);
    let key = format!("{prefix}exdaas-config-probe");
    let input = crate::plugin::CallInput {
        delete: false,
        key: &key,
        value: Some(b"{}"),
        old: None,
        now_ms: crate::app::now_ms(),
    };
    match plugin.call(&input) {
        Ok(crate::plugin::CallVerdict::Reject { code, message, .. }) if code == BAD_CONFIG => {
            Err(ManagedError::Refused(format!(
                "plugin {name:?} refuses its own configuration ({}): it would reject every write; upload it with a config it accepts",
                crate::error::capped(&message)
            )))
        }
        _ => Ok(()),
    }
}

/// Whether `placement` names a plugin the chain has (configured, or
/// managed other than `name`); one that does not is refused at upload.
fn check_anchor(
    placement: Option<&Placement>,
    state: &State,
    name: &str,
) -> Result<(), ManagedError> {
    let (Some(Placement::Before(anchor)) | Some(Placement::After(anchor))) = placement else {
        return Ok(());
    };
    let configured = state.configured.iter().any(|s| &s.name == anchor);
    let managed = anchor != name && state.registry.plugin(anchor).is_some();
    if configured || managed {
        return Ok(());
    }
    Err(ManagedError::NoSuchAnchor(format!(
        "placement names {:?}, which is not a plugin in the chain",
        crate::logsafe::escape(anchor, 100)
    )))
}

/// What a successful change did.
#[derive(Debug)]
pub struct Installed {
    /// The version now active.
    pub version: u64,
    /// Its position in the chain (0: first).
    pub position: Option<usize>,
    /// Vectors it passed.
    pub vectors_passed: usize,
    /// Hex sha256 of its module.
    pub sha256: String,
    /// Whether it runs as a canary (in shadow beside the enforcing
    /// version) rather than as the active version.
    pub canary: bool,
}

/// What the serialised changes edit.
struct State {
    registry: Registry,
    /// The configured plugins of the running chain (file and environment).
    configured: Vec<PluginSpec>,
}

/// The running chain and its managed plugins.
pub struct PluginHost {
    /// The chain writes use; swapped whole. A std lock: held only to clone
    /// or replace the `Arc`, never across an await.
    active: Arc<RwLock<SharedChain>>,
    /// The registry of the running chain, for reads that must not wait
    /// behind a change (which holds `state` while it compiles).
    published: Arc<RwLock<Arc<Registry>>>,
    state: Arc<tokio::sync::Mutex<State>>,
    files: Arc<ManagedFiles>,
    /// Compiles modules in a bounded child and keeps what it compiled.
    compiler: Arc<Compiler>,
    uploads: PluginUploadSettings,
    limits: ValueLimits,
    /// The configuration file, re-read on reload.
    config_file: Option<PathBuf>,
    /// Counters of every kept version of each managed plugin, so a
    /// rollback goes on counting where that version stopped and
    /// `GET /v1/admin/plugins/{name}` shows each version's own.
    versions: Arc<VersionHistories>,
}

/// Histories by managed plugin name and version.
type VersionHistories = Mutex<HashMap<(String, u64), History>>;

/// Gives each managed plugin of `chain` the history of its version (new
/// ones start one), and forgets versions `registry` no longer keeps.
fn link_versions(chain: &mut PluginChain, registry: &Registry, versions: &VersionHistories) {
    let mut kept = versions.lock().unwrap_or_else(|p| p.into_inner());
    // A canary's history is kept under its own chain name (`NAME@V`), so
    // its shadow verdicts stay apart from what the version does once it
    // enforces.
    kept.retain(|(name, version), _| {
        let managed = name.split('@').next().unwrap_or(name);
        registry
            .plugin(managed)
            .is_some_and(|p| p.versions.iter().any(|v| v.version == *version))
    });
    for plugin in chain.plugins_mut() {
        if let PluginSource::Managed { version } = plugin.spec.source {
            let key = (plugin.name().to_owned(), version);
            match kept.get(&key) {
                Some(history) => plugin.adopt_history(history),
                None => drop(kept.insert(key, plugin.history())),
            }
        }
    }
}

fn blocking_failed(e: tokio::task::JoinError) -> ManagedError {
    ManagedError::Io(format!("plugin task failed: {e}"))
}

/// Keeps configured plugins promoted at run time promoted in `chain`, a
/// chain change that did not come from the configuration (an upload,
/// rollback or delete of another plugin): a promotion lasts until a reload
/// reads the configured mode again. (An uploaded plugin's promotion is in
/// its registry record.)
fn carry_promotions(chain: &PluginChain, previous: &PluginChain) {
    for plugin in chain.plugins() {
        if plugin.spec.source != PluginSource::Config || !plugin.is_shadow() {
            continue;
        }
        let promoted = previous
            .plugin(plugin.name())
            .is_some_and(|before| before.spec == plugin.spec && !before.is_shadow());
        if promoted {
            plugin.promote();
        }
    }
}

/// Builds the chain of `configured` plus `registry`, keeping the history
/// of unchanged plugins of `previous`. Blocking: compiles modules.
fn build_chain(
    configured: &[PluginSpec],
    registry: &Registry,
    files: &ManagedFiles,
    compiler: &Compiler,
    limits: ValueLimits,
    previous: Option<&PluginChain>,
) -> Result<PluginChain, PluginLoadError> {
    let (specs, warnings) = managed::chain_specs(configured, registry, &files.blobs_dir());
    for warning in warnings {
        tracing::warn!(%warning, "plugin placement");
    }
    // A configured plugin that took an uploaded one's name is refused by
    // the chain's own check for names used twice.
    let chain = PluginChain::load_with(&specs, limits, compiler, previous)?;
    // A module file whose content no longer matches its name was damaged
    // on disk: refuse it rather than run something nobody uploaded.
    for plugin in chain.plugins() {
        let expected = plugin.spec.path.file_stem().and_then(|s| s.to_str());
        let managed = matches!(plugin.spec.source, PluginSource::Managed { .. });
        if managed && expected != Some(plugin.sha256.as_str()) {
            return Err(PluginLoadError::Abi {
                plugin: plugin.name().to_owned(),
                path: plugin.spec.path.clone(),
                problem: "the stored module does not match its recorded sha256".into(),
            });
        }
    }
    // Compiled modules are kept for every module a rollback could bring
    // back, and no others.
    let blobs = registry.blobs();
    let mut kept: HashSet<&str> = chain.plugins().iter().map(|p| p.sha256.as_str()).collect();
    kept.extend(blobs.iter().filter_map(|b| b.split('.').next()));
    compiler.retain(&kept);
    Ok(chain)
}

impl PluginHost {
    /// Loads the configured and the stored managed plugins. Blocking.
    pub fn open(settings: &Settings, config_file: Option<PathBuf>) -> anyhow::Result<Self> {
        let files = ManagedFiles::at(&settings.storage.data_dir);
        let registry = files.load()?;
        let limits = settings.limits.value_limits();
        let compiler = Compiler::isolated(settings.plugin_compile.limits(), &files.compiled_dir())
            .map_err(|e| anyhow::anyhow!("{}: {e}", files.compiled_dir().display()))?;
        let compiler = Arc::new(compiler);
        let mut chain = build_chain(
            &settings.plugins,
            &registry,
            &files,
            &compiler,
            limits,
            None,
        )
        .map_err(|e| {
            // Only a managed plugin's failure names a file under the data
            // directory's plugins/; a configured plugin's names its own path.
            let managed = settings.storage.data_dir.join("plugins");
            let text = e.to_string();
            if text.contains(&managed.display().to_string()) {
                anyhow::anyhow!(
                    "{text} (managed plugins are recorded in {}; `exdaas plugin remove` takes one out)",
                    managed.join("registry.json").display()
                )
            } else {
                anyhow::anyhow!("{text}")
            }
        })?;
        let versions = Arc::new(VersionHistories::default());
        link_versions(&mut chain, &registry, &versions);
        for plugin in chain.plugins() {
            tracing::info!(plugin = plugin.name(), source = plugin.spec.source.as_str(), sha256 = %plugin.sha256, path = %plugin.spec.path.display(), "plugin loaded");
        }
        Ok(Self {
            active: Arc::new(RwLock::new(Arc::new(chain))),
            published: Arc::new(RwLock::new(Arc::new(registry.clone()))),
            state: Arc::new(tokio::sync::Mutex::new(State {
                registry,
                configured: settings.plugins.clone(),
            })),
            files: Arc::new(files),
            compiler,
            uploads: settings.plugin_uploads.clone(),
            limits,
            config_file,
            versions,
        })
    }

    /// The chain writes use right now.
    pub fn chain(&self) -> SharedChain {
        match self.active.read() {
            Ok(chain) => chain.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The change lock, owned, so the last step of a change can take it
    /// to a blocking thread.
    async fn lock(&self) -> StateGuard {
        Arc::clone(&self.state).lock_owned().await
    }

    /// Compile counts, for `/metrics`.
    pub fn compile_stats(&self) -> &CompileStats {
        self.compiler.stats()
    }

    /// The managed-plugin files, for backups.
    pub fn files(&self) -> Arc<ManagedFiles> {
        Arc::clone(&self.files)
    }

    /// Re-reads the plugin tables of the configuration (file and
    /// environment) and swaps in the new chain, managed plugins included.
    /// On any error the running chain stays active.
    pub async fn reload(&self) -> Result<usize, PluginLoadError> {
        let mut state = self.lock().await;
        let file = self.config_file.clone();
        let (files, limits, registry) = (self.files(), self.limits, state.registry.clone());
        let (previous, versions) = (self.chain(), Arc::clone(&self.versions));
        let compiler = Arc::clone(&self.compiler);
        let (chain, configured) = tokio::task::spawn_blocking(move || {
            let loaded = crate::config::load(file.as_deref())
                .map_err(|e| PluginLoadError::Config(e.to_string()))?;
            let configured = loaded.settings.plugins;
            let mut chain = build_chain(
                &configured,
                &registry,
                &files,
                &compiler,
                limits,
                Some(&previous),
            )?;
            link_versions(&mut chain, &registry, &versions);
            Ok::<_, PluginLoadError>((chain, configured))
        })
        .await
        .map_err(|e| PluginLoadError::Engine(format!("reload task failed: {e}")))??;
        let count = chain.plugins().len();
        swap(&self.active, Arc::new(chain));
        state.configured = configured;
        tracing::info!(plugins = count, "plugin chain reloaded");
        Ok(count)
    }

    /// Builds the chain for `next`, saves `next` and swaps both in; on any
    /// failure nothing changes and files written for `next` are removed.
    /// Runs to the end even if the caller is dropped (see the module doc).
    async fn install(
        &self,
        state: StateGuard,
        next: Registry,
        probe: Option<String>,
    ) -> Result<SharedChain, ManagedError> {
        let (files, limits, active) = (self.files(), self.limits, Arc::clone(&self.active));
        let published = Arc::clone(&self.published);
        let (previous, versions) = (self.chain(), Arc::clone(&self.versions));
        let compiler = Arc::clone(&self.compiler);
        tokio::task::spawn_blocking(move || {
            let mut state = state;
            let configured = &state.configured;
            let built = build_chain(
                configured,
                &next,
                &files,
                &compiler,
                limits,
                Some(&previous),
            )
            .map_err(|e| ManagedError::Refused(files.without_blob_paths(&e.to_string())))
            .and_then(|chain| match &probe {
                Some(name) => probe_config(&chain, name).map(|()| chain),
                None => Ok(chain),
            })
            .and_then(|chain| files.save(&next).map(|()| chain));
            match built {
                Ok(mut chain) => {
                    link_versions(&mut chain, &next, &versions);
                    carry_promotions(&chain, &previous);
                    let chain = Arc::new(chain);
                    swap(&active, Arc::clone(&chain));
                    swap(&published, Arc::new(next.clone()));
                    state.registry = next;
                    Ok(chain)
                }
                Err(e) => {
                    files.discard_unreferenced(&state.registry);
                    Err(e)
                }
            }
        })
        .await
        .map_err(blocking_failed)?
    }

    /// Whether `name` may be changed over the API. Names that could never
    /// be uploaded are simply not found (by the registry) for the other
    /// changes; the upload checks them itself.
    fn check_writable(&self, state: &State, name: &str) -> Result<(), ManagedError> {
        if !self.uploads.enabled {
            return Err(ManagedError::Disabled);
        }
        if state.configured.iter().any(|s| s.name == name) {
            return Err(ManagedError::Configured(name.to_owned()));
        }
        Ok(())
    }

    /// Stores and activates a new version of `name`.
    pub async fn upload(&self, name: &str, upload: Upload) -> Result<Installed, ManagedError> {
        let state = self.lock().await;
        self.check_writable(&state, name)?;
        check_name(name)?;
        if upload.module.len() > self.uploads.max_module_bytes {
            return Err(ManagedError::TooLarge(format!(
                "module of {} bytes; plugin_uploads.max_module_bytes is {}",
                upload.module.len(),
                self.uploads.max_module_bytes
            )));
        }
        let active = state.registry.plugin(name).and_then(|p| p.active_version());
        // A bare module, and whatever a form leaves out, keep the active
        // version's settings and vectors (or the defaults for a new plugin).
        let (base, kept) = match active {
            Some(record) => (
                record.spec.clone(),
                record
                    .vectors_sha256
                    .clone()
                    .map(|sha| Vectors::Kept(sha, record.vectors)),
            ),
            None => (PluginSpec::new(name, PathBuf::new()), None),
        };
        let (mut spec, vectors, placement) = match upload.form {
            Some(form) => {
                let vectors = match form.vectors {
                    None => kept,
                    Some(given) => given.map(Vectors::Given),
                };
                (
                    settings_over(&base, form.settings)?,
                    vectors,
                    form.placement,
                )
            }
            None => (base, kept, None),
        };
        check_anchor(placement.as_ref(), &state, name)?;
        spec.name = name.to_owned();
        spec.validate().map_err(ManagedError::InvalidUpload)?;
        check_scope(&upload.uploader, name, &spec.prefixes)?;
        tracing::info!(
            plugin = name,
            bytes = upload.module.len(),
            "plugin upload: storing and compiling"
        );
        let count = match &vectors {
            Some(Vectors::Given(text)) => Some(
                vectors::parse(text, self.limits)
                    .map_err(|e| ManagedError::InvalidUpload(format!("vectors: {e}")))?
                    .len(),
            ),
            _ => None,
        };
        let files = self.files();
        let module = upload.module.clone();
        let vectors = tokio::task::spawn_blocking(move || {
            let sha = files.put_blob(&module, "wasm")?;
            let vectors = match vectors {
                Some(Vectors::Given(text)) => {
                    Some((files.put_blob(&text, "json")?, count.unwrap_or(0)))
                }
                Some(Vectors::Kept(sha, n)) => Some((sha, n)),
                None => None,
            };
            Ok::<_, ManagedError>((sha, vectors))
        })
        .await
        .map_err(blocking_failed)?;
        let (sha256, vectors) = match vectors {
            Ok(done) => done,
            Err(e) => {
                self.files.discard_unreferenced(&state.registry);
                return Err(e);
            }
        };
        let quota = Quota {
            max_plugins: self.uploads.max_plugins,
            max_versions: self.uploads.max_versions,
        };
        let new = NewVersion {
            sha256: sha256.clone(),
            size: upload.module.len() as u64,
            vectors,
            spec,
            uploaded_by: upload.uploader.name().to_owned(),
            request_id: upload.request_id,
            uploaded_ms: crate::app::now_ms(),
            placement,
        };
        let (next, version) = match state.registry.with_upload(name, new, quota) {
            Ok(next) => next,
            Err(e) => {
                self.files.discard_unreferenced(&state.registry);
                return Err(e);
            }
        };
        let canary = next.plugin(name).and_then(|p| p.canary) == Some(version);
        let chain = self.install(state, next, Some(name.to_owned())).await?;
        if canary {
            tracing::info!(plugin = name, version, %sha256, "managed plugin uploaded as a canary beside the enforcing version");
            let mut done = installed(
                &chain,
                &managed::canary_name(name, version),
                version,
                sha256,
            );
            done.canary = true;
            return Ok(done);
        }
        tracing::info!(plugin = name, version, %sha256, "managed plugin uploaded and active");
        Ok(installed(&chain, name, version, sha256))
    }

    /// Makes `version` of `name` (default: the one before the active one)
    /// active again.
    pub async fn rollback(
        &self,
        name: &str,
        version: Option<u64>,
        caller: &crate::auth::Caller,
    ) -> Result<Installed, ManagedError> {
        let state = self.lock().await;
        self.check_writable(&state, name)?;
        let (next, version) = state.registry.with_rollback(name, version)?;
        if let Some(back) = next.plugin(name).and_then(|p| p.active_version()) {
            check_scope(caller, name, &back.spec.prefixes)?;
        }
        let sha256 = next
            .plugin(name)
            .and_then(|p| p.active_version())
            .map(|v| v.sha256.clone())
            .unwrap_or_default();
        let chain = self.install(state, next, None).await?;
        tracing::info!(plugin = name, version, "managed plugin rolled back");
        Ok(installed(&chain, name, version, sha256))
    }

    /// Removes `name` and all its versions.
    pub async fn delete(&self, name: &str) -> Result<(), ManagedError> {
        let state = self.lock().await;
        self.check_writable(&state, name)?;
        let next = state.registry.without(name)?;
        self.install(state, next, None).await?;
        tracing::info!(plugin = name, "managed plugin deleted");
        Ok(())
    }

    /// Makes the shadow plugin `name` enforce. For a managed plugin this is
    /// recorded (it lasts); for a configured one it lasts until the next
    /// reload. Returns (changed, lasting), or `None` when no plugin of the
    /// chain has this name.
    pub async fn promote(&self, name: &str) -> Result<Option<(bool, bool)>, ManagedError> {
        let state = self.lock().await;
        if state.registry.plugin(name).is_some() {
            return match state.registry.with_promotion(name)? {
                Some(next) => {
                    self.install(state, next, None).await?;
                    Ok(Some((true, true)))
                }
                None => Ok(Some((false, true))),
            };
        }
        Ok(self.chain().plugin(name).map(|p| (p.promote(), false)))
    }

    /// `GET /v1/admin/plugins/{name}`: a managed plugin's versions, or a
    /// configured plugin's description.
    /// Never waits behind a change: it reads what is published.
    pub async fn describe(&self, name: &str) -> Result<Value, ManagedError> {
        let registry = match self.published.read() {
            Ok(registry) => Arc::clone(&registry),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        let chain = self.chain();
        let position = chain.plugins().iter().position(|p| p.name() == name);
        let running = position.and_then(|i| chain.plugins().get(i));
        if let Some(plugin) = registry.plugin(name) {
            let stats = running.map_or(Value::Null, |p| p.stats.to_json());
            let mut described = managed::describe(plugin, position, stats);
            let kept = self.versions.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(versions) = described["versions"].as_array_mut() {
                for v in versions {
                    let version = v["version"].as_u64().unwrap_or(0);
                    let stats = |name: String| {
                        kept.get(&(name, version))
                            .map_or(Value::Null, |h| h.stats.to_json())
                    };
                    v["stats"] = stats(name.to_owned());
                    v["shadow_stats"] = stats(managed::canary_name(name, version));
                }
            }
            return Ok(described);
        }
        match running {
            Some(p) => Ok(json!({
                "name": p.name(),
                "source": "config",
                "path": p.spec.path.display().to_string(),
                "sha256": p.sha256,
                "position": position,
                "stats": p.stats.to_json(),
            })),
            None => Err(ManagedError::NotFound(name.to_owned())),
        }
    }
}

/// The change lock's guard.
type StateGuard = tokio::sync::OwnedMutexGuard<State>;

/// Replaces what `slot` publishes (the running chain: between writes).
fn swap<T>(slot: &RwLock<T>, value: T) {
    match slot.write() {
        Ok(mut held) => *held = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

/// Vectors of a new version: given with the upload, or kept from the
/// active version.
enum Vectors {
    Given(Vec<u8>),
    Kept(String, usize),
}

fn installed(chain: &PluginChain, name: &str, version: u64, sha256: String) -> Installed {
    let position = chain.plugins().iter().position(|p| p.name() == name);
    let vectors_passed = chain.plugin(name).map_or(0, |p| p.vectors_passed);
    Installed {
        version,
        position,
        vectors_passed,
        sha256,
        canary: false,
    }
}
