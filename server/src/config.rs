//! Settings: what an operator can tune, where each value comes from, and the
//! checks that stop the server before it touches data when a value is wrong.
//!
//! Layers, later wins:
//! 1. the defaults compiled in here (also written out in `config/exdaas.toml`);
//! 2. the TOML file (`--config PATH`, else `config/exdaas.toml` when present);
//! 3. environment variables `EXDAAS_<SECTION>__<KEY>`;
//! 4. the ExDaas aliases `PORT`, `SHARD_LIMIT` and `DETS_ROOT`, so deployment
//!    scripts written for the Elixir original keep working.
//!
//! Each layer is checked on its own before the layers are merged, so an
//! unknown key or a value of the wrong type is reported together with the file
//! or variable that supplied it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::auth::TokenSpec;
use crate::plugin::PluginSpec;

/// The file read when no `--config` is given; missing is fine.
pub const DEFAULT_CONFIG_PATH: &str = "config/exdaas.toml";

/// Every setting of the server. Field docs are the reference; the commented
/// `config/exdaas.toml` mirrors them and a unit test keeps the two in step.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// How the HTTP listener behaves.
    pub server: ServerSettings,
    /// Where and how data is made durable.
    pub storage: StorageSettings,
    /// The in-memory read cache in front of the stores.
    pub cache: CacheSettings,
    /// Per-request size limits.
    pub limits: LimitSettings,
    /// Access control.
    pub auth: AuthSettings,
    /// Native TLS and mutual TLS on the listener.
    pub tls: TlsSettings,
    /// The audit trail of admin actions and refused requests.
    pub audit: AuditSettings,
    /// WebAssembly validators and transforms, run in order on matching writes.
    pub plugins: Vec<PluginSpec>,
    /// Plugins uploaded over the API (`PUT /v1/admin/plugins/{name}`).
    pub plugin_uploads: PluginUploadSettings,
    /// Bounds on compiling a plugin module, configured or uploaded.
    pub plugin_compile: PluginCompileSettings,
    /// The change feed: how much history it keeps and its readers' bounds.
    pub feed: FeedSettings,
    /// Running as a read replica of another server.
    pub replication: ReplicationSettings,
    /// This server's place among several primaries (server-assigned ids).
    pub cluster: ClusterSettings,
}

/// Several primaries, each holding part of the keys (behind a proxy that
/// routes by key): ids they assign (`POST /v1/kv`, `POST /api`) never
/// collide, since node `node_id` of `nodes` hands out only ids that leave
/// remainder `node_id` when divided by `nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// This node's number, `0..nodes`.
    pub node_id: u64,
    /// How many primaries assign ids.
    pub nodes: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            node_id: 0,
            nodes: 1,
        }
    }
}

impl ClusterSettings {
    /// The id the counter's `n`th value stands for on this node.
    pub fn id_of(&self, n: u64) -> u64 {
        n.saturating_mul(self.nodes).saturating_add(self.node_id)
    }

    /// The counter value to keep past so that no id this node hands out
    /// is `id` or below it.
    pub fn counter_past(&self, id: u64) -> u64 {
        id / self.nodes.max(1)
    }
}

/// A read replica follows its primary's change feed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSettings {
    /// The primary's URL (`http://host:port`); empty: this server is a
    /// primary.
    pub primary: String,
    /// Bearer token for the primary (admin: the first copy is a backup).
    pub token: Option<String>,
    /// Longest wait of a read for `X-Exdaas-Min-Revision`, in milliseconds.
    pub max_wait_ms: u64,
    /// How long each long poll of the primary's feed waits, in milliseconds.
    pub poll_wait_ms: u64,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        Self {
            primary: String::new(),
            token: None,
            max_wait_ms: 5_000,
            poll_wait_ms: 30_000,
        }
    }
}

impl ReplicationSettings {
    /// The primary's `host:port`, when this server is a replica.
    pub fn primary_addr(&self) -> Option<&str> {
        let addr = self.primary.strip_prefix("http://")?;
        Some(addr.trim_end_matches('/'))
    }
}

/// The change feed (`GET /v1/watch`, `GET /v1/changes`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FeedSettings {
    /// Most bytes of applied log segments kept for readers.
    pub retain_bytes: u64,
    /// Revisions kept at least, unless `retain_bytes` runs out (0: no
    /// bound by count).
    pub retain_revisions: u64,
    /// Recent changes kept in memory, in bytes.
    pub buffer_bytes: u64,
    /// Streams and long polls open at once.
    pub max_subscribers: usize,
    /// How far a stream that has caught up may fall behind before it is
    /// ended with its resume revision.
    pub max_lag_revisions: u64,
    /// Time between progress events on a stream, in milliseconds.
    pub heartbeat_ms: u64,
    /// Longest `wait` of a long poll, in milliseconds (longer asks are
    /// shortened to it).
    pub max_wait_ms: u64,
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self {
            retain_bytes: 256 * 1024 * 1024,
            retain_revisions: 0,
            buffer_bytes: 16 * 1024 * 1024,
            max_subscribers: 1024,
            max_lag_revisions: 1_000_000,
            heartbeat_ms: 15_000,
            max_wait_ms: 60_000,
        }
    }
}

/// Bounds on compiling one plugin module. The shape bounds are checked
/// before compiling; the compile itself runs in a child process under the
/// time and memory bounds, so a module past them is refused and the
/// server goes on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginCompileSettings {
    /// Wall-clock limit of one compile, in milliseconds.
    pub timeout_ms: u64,
    /// Address space of the compile process, in bytes.
    pub max_memory_bytes: u64,
    /// Functions one module may define.
    pub max_functions: u32,
    /// Locals of one function.
    pub max_function_locals: u32,
    /// Bytes of one function's body.
    pub max_function_bytes: u32,
    /// Blocks, loops and ifs open at once in one function.
    pub max_nesting: u32,
}

impl Default for PluginCompileSettings {
    fn default() -> Self {
        let limits = crate::plugin::compiler::CompileLimits::default();
        Self {
            timeout_ms: u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
            max_memory_bytes: limits.max_memory_bytes,
            max_functions: limits.shape.max_functions,
            max_function_locals: limits.shape.max_function_locals,
            max_function_bytes: limits.shape.max_function_bytes,
            max_nesting: limits.shape.max_nesting,
        }
    }
}

impl PluginCompileSettings {
    /// The bounds as the compiler takes them.
    pub fn limits(&self) -> crate::plugin::compiler::CompileLimits {
        crate::plugin::compiler::CompileLimits {
            shape: crate::plugin::module_shape::ModuleShape {
                max_functions: self.max_functions,
                max_function_locals: self.max_function_locals,
                max_function_bytes: self.max_function_bytes,
                max_nesting: self.max_nesting,
            },
            timeout: std::time::Duration::from_millis(self.timeout_ms),
            max_memory_bytes: self.max_memory_bytes,
        }
    }
}

/// Ceiling of `limits.max_ttl_seconds`: expiry instants stay far inside
/// 64-bit milliseconds.
pub const MAX_TTL_SECONDS: u64 = 100 * 365 * 86_400;

/// Ceiling of `limits.max_txn_ops`: a transaction holds the decision
/// locks of its shards while it decides, so its size bounds that pause.
pub const MAX_TXN_OPS: usize = 10_000;

/// Least `plugin_compile.max_memory_bytes`: the compile process itself
/// (the binary, its threads and allocator arenas) needs this much address
/// space before it compiles anything.
pub const MIN_COMPILE_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

/// Limits on managed (uploaded) plugins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginUploadSettings {
    /// Accept uploads, rollbacks and deletes over the API (admin token
    /// required). Off: managed plugins already stored still run.
    pub enabled: bool,
    /// Largest module accepted, in bytes.
    pub max_module_bytes: usize,
    /// Most managed plugins.
    pub max_plugins: usize,
    /// Versions kept per plugin for rollback (the active one always is).
    pub max_versions: usize,
}

impl Default for PluginUploadSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_module_bytes: 8 * 1024 * 1024,
            max_plugins: 32,
            max_versions: 5,
        }
    }
}

/// Access control settings.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Bearer tokens and their roles. Empty: no authentication, and only
    /// clients on this machine are served (see `allow_open_remote`).
    pub tokens: Vec<TokenSpec>,
    /// A TOML file with more tokens (`[[tokens]]` entries like those of
    /// `auth.tokens`), e.g. a container secret; they join `tokens`, and
    /// are read again on SIGHUP and `POST /v1/admin/auth/reload`.
    pub tokens_file: Option<PathBuf>,
    /// Without tokens, serve clients on other machines too, with no
    /// authentication at all.
    pub allow_open_remote: bool,
}

/// The audit trail (`audit.rs`): every admin action and every refused
/// request, one JSON line each, synced in batches, rotated by size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Keep the trail.
    pub enabled: bool,
    /// Where its files go (default: `audit/` in the data directory).
    pub dir: Option<PathBuf>,
    /// Size at which `audit.log` is rotated, in bytes.
    pub max_file_bytes: u64,
    /// Rotated files kept (`audit.log.1` ... `audit.log.N`).
    pub keep_files: u32,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            max_file_bytes: 16 * 1024 * 1024,
            keep_files: 4,
        }
    }
}

impl AuditSettings {
    /// The directory of the trail for a server on `data_dir`.
    pub fn dir_for(&self, data_dir: &std::path::Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("audit"))
    }
}

/// TLS on the listener. With `cert_file` and `key_file` set the server
/// speaks only HTTPS (TLS 1.2 and 1.3, ALPN `http/1.1`); both files are
/// read again on SIGHUP, and connections already open keep theirs.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// The certificate chain, PEM, the server's own certificate first.
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CA certificates, PEM: set, every client must present a certificate
    /// they signed (mutual TLS); a token entry whose `client_cert` names it
    /// gives its rules.
    pub client_ca_file: Option<PathBuf>,
}

impl TlsSettings {
    /// Whether the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

/// HTTP listener settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address and port to listen on. Loopback by default so a fresh install
    /// is not reachable from the network until the operator says so.
    pub listen: String,
    /// How long a SIGTERM/SIGINT waits for in-flight requests before the
    /// writers are drained and the stores closed anyway.
    pub shutdown_timeout_ms: u64,
    /// Largest request body read into memory; larger bodies get 413 without
    /// being read.
    pub max_body_bytes: usize,
    /// A client that has not sent complete request headers within this time
    /// is disconnected, so slow clients cannot pin connections.
    pub header_read_timeout_ms: u64,
    /// A request body must arrive completely within this time after its
    /// headers; a client that stalls mid-body gets 408 and is disconnected.
    pub body_read_timeout_ms: u64,
    /// A client that reads none of a response for this long is
    /// disconnected, so clients that stop reading cannot pin connections.
    pub write_timeout_ms: u64,
    /// Most connections served at once; further clients wait in the
    /// kernel's accept queue until one closes.
    pub max_connections: usize,
    /// Connections the kernel queues for the server to accept.
    pub listen_backlog: u32,
    /// Request body bytes held at once, over all requests being read.
    pub max_body_bytes_in_flight: usize,
    /// Threads that run plugins (and read the values they judge); 0 means
    /// one per CPU. Writes without plugins never use them.
    pub plugin_threads: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:4000".to_owned(),
            shutdown_timeout_ms: 10_000,
            max_body_bytes: 2 * 1024 * 1024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            write_timeout_ms: 30_000,
            max_connections: 10_000,
            listen_backlog: 1024,
            max_body_bytes_in_flight: 128 * 1024 * 1024,
            plugin_threads: 0,
        }
    }
}

/// Storage settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// Directory holding one store file per shard plus the manifest.
    pub data_dir: PathBuf,
    /// Number of shards; fixed for the life of a data directory.
    pub shards: u32,
    /// Most writes one shard writer puts into a single transaction (one fsync).
    pub max_batch: usize,
    /// Writes that may wait for a shard writer before callers are held back.
    pub queue_depth: usize,
    /// Page cache of each store file, in bytes (persy's own cache).
    pub store_cache_bytes: u64,
    /// Most keys one applier transaction moves from a shard's memtable to
    /// its store (the oldest first).
    pub apply_batch: usize,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            shards: 4,
            max_batch: 256,
            queue_depth: 4096,
            store_cache_bytes: 4 * 1024 * 1024,
            apply_batch: 1024,
        }
    }
}

/// The longest any server timeout may be set to, in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Read cache settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Total bytes of keys and values kept in memory, split evenly over shards.
    pub capacity_bytes: u64,
    /// Refill the cache from disk in the background after a start.
    pub warm_on_start: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            capacity_bytes: 128 * 1024 * 1024,
            warm_on_start: true,
        }
    }
}

/// Size limits on what clients may store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Longest key, in UTF-8 bytes.
    pub max_key_bytes: usize,
    /// Largest stored JSON value, in bytes.
    pub max_value_bytes: usize,
    /// Deepest nesting of arrays and objects in a stored value (at most
    /// `crate::ijson::MAX_DEPTH_CEILING`).
    pub max_json_depth: usize,
    /// Most compares and operations in one transaction, both branches.
    pub max_txn_ops: usize,
    /// Largest transaction request body, in bytes.
    pub max_txn_bytes: usize,
    /// Longest TTL a write may give, in seconds.
    pub max_ttl_seconds: u64,
}

impl LimitSettings {
    /// The longest TTL a write may give.
    pub fn max_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.max_ttl_seconds)
    }

    /// The rules a stored value is checked against.
    pub fn value_limits(&self) -> crate::ijson::ValueLimits {
        crate::ijson::ValueLimits {
            max_bytes: self.max_value_bytes,
            max_depth: self.max_json_depth,
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_key_bytes: 512,
            max_value_bytes: 1024 * 1024,
            max_json_depth: 64,
            max_txn_ops: 128,
            max_txn_bytes: 4 * 1024 * 1024,
            max_ttl_seconds: 10 * 365 * 86_400,
        }
    }
}

/// A setting that cannot be used, with where its value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist.
    #[error("config file {0}: not found")]
    FileMissing(PathBuf),
    /// A layer has an unknown key, a value of the wrong type or bad syntax.
    #[error("{source_name}: {message}")]
    Layer {
        /// The file path or environment variable(s) of the layer.
        source_name: String,
        /// What the parser said.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("setting {key} (from {origin}): {message}")]
    Invalid {
        /// Dotted setting name, e.g. `storage.shards`.
        key: String,
        /// Where the value came from.
        origin: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The merged settings plus the record of which layer supplied each key, so
/// later checks (and `check-config`) can say where a value came from.
#[derive(Debug, Clone)]
pub struct LoadedSettings {
    /// The effective settings.
    pub settings: Settings,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    /// Dotted keys set by the file.
    file_keys: Vec<String>,
    /// Dotted key -> environment variable that set it.
    env_keys: BTreeMap<String, String>,
}

impl LoadedSettings {
    /// Where the value of `key` came from, in words an operator can act on.
    pub fn origin(&self, key: &str) -> String {
        if let Some(var) = self.env_keys.get(key) {
            return format!("environment variable {var}");
        }
        if self
            .file_keys
            .iter()
            .any(|k| k == key || k.starts_with(&format!("{key}.")))
        {
            if let Some(file) = &self.file {
                return format!("file {}", file.display());
            }
        }
        "built-in default".to_owned()
    }

    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.settings
            .server
            .listen
            .parse()
            .map_err(|e| ConfigError::Invalid {
                key: "server.listen".into(),
                origin: self.origin("server.listen"),
                message: format!(
                    "{:?} is not an address:port ({e})",
                    self.settings.server.listen
                ),
            })
    }
}

/// Loads settings from the default file location and the process environment.
pub fn load(explicit_file: Option<&Path>) -> Result<LoadedSettings, ConfigError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    load_from(explicit_file, &env)
}

/// Loads settings with an explicit environment, so tests need not mutate the
/// process environment.
pub fn load_from(
    explicit_file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<LoadedSettings, ConfigError> {
    let file = match explicit_file {
        Some(path) if !path.exists() => return Err(ConfigError::FileMissing(path.to_owned())),
        Some(path) => Some(path.to_owned()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
    };

    let mut builder = config::Config::builder();
    let mut file_keys = Vec::new();
    if let Some(path) = &file {
        let source = config::File::from(path.as_path()).format(config::FileFormat::Toml);
        let layer = config::Config::builder()
            .add_source(source.clone())
            .build()
            .map_err(|e| layer_error(&format!("file {}", path.display()), e))?;
        check_layer(&layer, &format!("file {}", path.display()))?;
        collect_keys(&layer, &mut file_keys);
        builder = builder.add_source(source);
    }

    // Only variables with a section separator belong to the settings tree;
    // others under the prefix (EXDAAS_LOG, EXDAAS_LOG_FORMAT) are the logger's.
    let mut env_map = config::Map::new();
    let mut env_keys = BTreeMap::new();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("EXDAAS_") else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let key = rest.to_ascii_lowercase().replace("__", ".");
        env_map.insert(var.clone(), value.clone());
        env_keys.insert(key, var.clone());
    }
    if !env_map.is_empty() {
        let source = config::Environment::with_prefix("EXDAAS")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .source(Some(env_map));
        let names: Vec<&str> = env_keys.values().map(String::as_str).collect();
        let name = format!("environment ({})", names.join(", "));
        let layer = config::Config::builder()
            .add_source(source.clone())
            .build()
            .map_err(|e| layer_error(&name, e))?;
        check_layer(&layer, &name)?;
        builder = builder.add_source(source);
    }

    let merged = builder
        .build()
        .map_err(|e| layer_error("configuration", e))?;
    let mut settings: Settings = merged
        .try_deserialize()
        .map_err(|e| layer_error("configuration", e))?;

    let mut loaded = LoadedSettings {
        settings: Settings::default(),
        file,
        file_keys,
        env_keys,
    };
    apply_exdaas_aliases(&mut settings, env, &mut loaded.env_keys)?;
    loaded.settings = settings;
    resolve_against_file(&mut loaded);
    validate(&loaded)?;
    Ok(loaded)
}

/// Files the configuration file names by a relative path (plugin modules
/// and their vectors, the tokens file, TLS certificates and keys) are
/// found beside that file, wherever the server is started from. Paths set
/// in the environment stay relative to the working directory; so do the
/// data and audit directories, which are places to write, not files named.
fn resolve_against_file(loaded: &mut LoadedSettings) {
    let Some(base) = loaded
        .file
        .as_ref()
        .and_then(|f| f.parent())
        .map(Path::to_owned)
    else {
        return;
    };
    let from_file = |loaded: &LoadedSettings, key: &str| loaded.origin(key).starts_with("file ");
    let resolve = |path: &mut PathBuf| {
        if path.is_relative() && !path.as_os_str().is_empty() {
            *path = base.join(&*path);
        }
    };
    if from_file(loaded, "plugins") {
        for plugin in &mut loaded.settings.plugins {
            resolve(&mut plugin.path);
            if let Some(vectors) = &mut plugin.vectors {
                resolve(vectors);
            }
        }
    }
    for key in [
        "auth.tokens_file",
        "tls.cert_file",
        "tls.key_file",
        "tls.client_ca_file",
    ] {
        if !from_file(loaded, key) {
            continue;
        }
        let s = &mut loaded.settings;
        let slot = match key {
            "auth.tokens_file" => &mut s.auth.tokens_file,
            "tls.cert_file" => &mut s.tls.cert_file,
            "tls.key_file" => &mut s.tls.key_file,
            _ => &mut s.tls.client_ca_file,
        };
        if let Some(path) = slot {
            resolve(path);
        }
    }
}

fn layer_error(source_name: &str, e: config::ConfigError) -> ConfigError {
    ConfigError::Layer {
        source_name: source_name.to_owned(),
        message: e.to_string(),
    }
}

/// Deserialises one layer alone: every field has a default, so this fails
/// only on unknown keys and wrong types, and the error can name the layer.
fn check_layer(layer: &config::Config, name: &str) -> Result<(), ConfigError> {
    layer
        .clone()
        .try_deserialize::<Settings>()
        .map(|_| ())
        .map_err(|e| layer_error(name, e))
}

fn collect_keys(layer: &config::Config, out: &mut Vec<String>) {
    fn walk(prefix: &str, value: &config::Value, out: &mut Vec<String>) {
        if let Ok(table) = value.clone().into_table() {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&key, &v, out);
            }
        } else {
            out.push(prefix.to_owned());
        }
    }
    if let Ok(table) = layer
        .clone()
        .try_deserialize::<config::Map<String, config::Value>>()
    {
        for (k, v) in table {
            walk(&k, &v, out);
        }
    }
}

/// `PORT`, `SHARD_LIMIT` and `DETS_ROOT` as the Elixir release read them.
fn apply_exdaas_aliases(
    settings: &mut Settings,
    env: &BTreeMap<String, String>,
    env_keys: &mut BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let invalid = |key: &str, var: &str, message: String| ConfigError::Invalid {
        key: key.to_owned(),
        origin: format!("environment variable {var}"),
        message,
    };
    if let Some(port) = env.get("PORT") {
        let port: u16 = port.trim().parse().map_err(|_| {
            invalid(
                "server.listen",
                "PORT",
                format!("{port:?} is not a port number (0-65535)"),
            )
        })?;
        let host = settings
            .server
            .listen
            .parse::<SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| "127.0.0.1".to_owned());
        settings.server.listen = SocketAddr::new(
            host.parse()
                .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
            port,
        )
        .to_string();
        env_keys.insert("server.listen".into(), "PORT".into());
    }
    if let Some(shards) = env.get("SHARD_LIMIT") {
        settings.storage.shards = shards.trim().parse().map_err(|_| {
            invalid(
                "storage.shards",
                "SHARD_LIMIT",
                format!("{shards:?} is not a whole number above 0"),
            )
        })?;
        env_keys.insert("storage.shards".into(), "SHARD_LIMIT".into());
    }
    if let Some(root) = env.get("DETS_ROOT") {
        if root.is_empty() {
            return Err(invalid(
                "storage.data_dir",
                "DETS_ROOT",
                "must not be empty".into(),
            ));
        }
        settings.storage.data_dir = PathBuf::from(root);
        env_keys.insert("storage.data_dir".into(), "DETS_ROOT".into());
    }
    Ok(())
}

/// Range checks on the merged settings.
fn validate(loaded: &LoadedSettings) -> Result<(), ConfigError> {
    let s = &loaded.settings;
    let check = |ok: bool, key: &str, message: &str| {
        if ok {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                key: key.to_owned(),
                origin: loaded.origin(key),
                message: message.to_owned(),
            })
        }
    };
    loaded.listen_addr()?;
    let positive: [(u64, &str); 29] = [
        (s.limits.max_ttl_seconds, "limits.max_ttl_seconds"),
        (s.limits.max_txn_ops as u64, "limits.max_txn_ops"),
        (s.limits.max_txn_bytes as u64, "limits.max_txn_bytes"),
        (s.plugin_compile.timeout_ms, "plugin_compile.timeout_ms"),
        (
            s.plugin_compile.max_functions.into(),
            "plugin_compile.max_functions",
        ),
        (
            s.plugin_compile.max_function_locals.into(),
            "plugin_compile.max_function_locals",
        ),
        (
            s.plugin_compile.max_function_bytes.into(),
            "plugin_compile.max_function_bytes",
        ),
        (
            s.plugin_compile.max_nesting.into(),
            "plugin_compile.max_nesting",
        ),
        (
            s.plugin_uploads.max_module_bytes as u64,
            "plugin_uploads.max_module_bytes",
        ),
        (
            s.plugin_uploads.max_plugins as u64,
            "plugin_uploads.max_plugins",
        ),
        (
            s.plugin_uploads.max_versions as u64,
            "plugin_uploads.max_versions",
        ),
        (s.storage.shards.into(), "storage.shards"),
        (s.storage.max_batch as u64, "storage.max_batch"),
        (s.storage.queue_depth as u64, "storage.queue_depth"),
        (s.storage.apply_batch as u64, "storage.apply_batch"),
        (s.limits.max_key_bytes as u64, "limits.max_key_bytes"),
        (s.limits.max_value_bytes as u64, "limits.max_value_bytes"),
        (s.server.max_body_bytes as u64, "server.max_body_bytes"),
        (s.server.max_connections as u64, "server.max_connections"),
        (s.server.listen_backlog.into(), "server.listen_backlog"),
        (
            s.server.header_read_timeout_ms,
            "server.header_read_timeout_ms",
        ),
        (s.server.body_read_timeout_ms, "server.body_read_timeout_ms"),
        (s.server.write_timeout_ms, "server.write_timeout_ms"),
        (s.feed.max_subscribers as u64, "feed.max_subscribers"),
        (s.feed.max_lag_revisions, "feed.max_lag_revisions"),
        (s.feed.heartbeat_ms, "feed.heartbeat_ms"),
        (s.feed.max_wait_ms, "feed.max_wait_ms"),
        (s.replication.max_wait_ms, "replication.max_wait_ms"),
        (s.replication.poll_wait_ms, "replication.poll_wait_ms"),
    ];
    for (value, key) in positive {
        check(value > 0, key, "must be above 0")?;
    }
    // Every timeout is bounded: one that never ends holds what it guards.
    for (value, key) in [
        (
            s.server.header_read_timeout_ms,
            "server.header_read_timeout_ms",
        ),
        (s.server.body_read_timeout_ms, "server.body_read_timeout_ms"),
        (s.server.write_timeout_ms, "server.write_timeout_ms"),
        (s.server.shutdown_timeout_ms, "server.shutdown_timeout_ms"),
        (s.plugin_compile.timeout_ms, "plugin_compile.timeout_ms"),
        (s.feed.heartbeat_ms, "feed.heartbeat_ms"),
        (s.feed.max_wait_ms, "feed.max_wait_ms"),
        (s.replication.max_wait_ms, "replication.max_wait_ms"),
        (s.replication.poll_wait_ms, "replication.poll_wait_ms"),
    ] {
        check(
            value <= MAX_TIMEOUT_MS,
            key,
            &format!("must be at most {MAX_TIMEOUT_MS} (one hour)"),
        )?;
    }
    check(
        s.plugin_uploads.max_module_bytes as u64 <= crate::plugin::MAX_UPLOAD_MODULE_BYTES,
        "plugin_uploads.max_module_bytes",
        &format!("must be at most {}", crate::plugin::MAX_UPLOAD_MODULE_BYTES),
    )?;
    check(
        s.plugin_compile.max_memory_bytes >= MIN_COMPILE_MEMORY_BYTES,
        "plugin_compile.max_memory_bytes",
        &format!(
            "must be at least {MIN_COMPILE_MEMORY_BYTES} (the compile process itself needs that)"
        ),
    )?;
    check(
        s.limits.max_key_bytes <= crate::storage::log::MAX_KEY_BYTES,
        "limits.max_key_bytes",
        &format!(
            "must be at most {} (the commit log's key length field)",
            crate::storage::log::MAX_KEY_BYTES
        ),
    )?;
    check(
        s.server.max_body_bytes_in_flight >= s.server.max_body_bytes,
        "server.max_body_bytes_in_flight",
        "must be at least server.max_body_bytes",
    )?;
    check(
        s.limits.max_ttl_seconds <= MAX_TTL_SECONDS,
        "limits.max_ttl_seconds",
        &format!("must be at most {MAX_TTL_SECONDS} (a hundred years)"),
    )?;
    check(
        s.limits.max_txn_ops <= MAX_TXN_OPS,
        "limits.max_txn_ops",
        &format!("must be at most {MAX_TXN_OPS}"),
    )?;
    check(
        s.storage.shards <= 1024,
        "storage.shards",
        "must be at most 1024",
    )?;
    check(
        !s.storage.data_dir.as_os_str().is_empty(),
        "storage.data_dir",
        "must not be empty",
    )?;
    check(
        (1..=crate::ijson::MAX_DEPTH_CEILING).contains(&s.limits.max_json_depth),
        "limits.max_json_depth",
        &format!("must be 1..={}", crate::ijson::MAX_DEPTH_CEILING),
    )?;
    check(
        (1..=1024).contains(&s.cluster.nodes),
        "cluster.nodes",
        "must be 1..=1024",
    )?;
    check(
        s.cluster.node_id < s.cluster.nodes,
        "cluster.node_id",
        "must be below cluster.nodes (nodes are numbered from 0)",
    )?;
    check(
        (64 * 1024..=1 << 30).contains(&s.audit.max_file_bytes),
        "audit.max_file_bytes",
        "must be 65536 to 1073741824",
    )?;
    check(
        s.audit.keep_files <= 100,
        "audit.keep_files",
        "must be at most 100",
    )?;
    check(
        s.tls.cert_file.is_some() == s.tls.key_file.is_some(),
        "tls.cert_file",
        "tls.cert_file and tls.key_file go together: set both or neither",
    )?;
    check(
        s.tls.client_ca_file.is_none() || s.tls.enabled(),
        "tls.client_ca_file",
        "needs tls.cert_file and tls.key_file: mutual TLS is part of TLS",
    )?;
    if s.tls.enabled() {
        crate::tls::server_config(&s.tls).map_err(|e| ConfigError::Invalid {
            key: e.setting.into(),
            origin: loaded.origin(e.setting),
            message: e.message,
        })?;
    }
    let primary = &s.replication;
    check(
        primary.primary.is_empty()
            || primary
                .primary_addr()
                .is_some_and(|a| a.contains(':') && !a.contains('/')),
        "replication.primary",
        "must be empty (a primary) or http://host:port",
    )?;
    // The tokens file too: a bad entry names its file and field here
    // rather than at the first request.
    crate::auth::TokenSet::load(&s.auth).map_err(|e| ConfigError::Invalid {
        key: e.place.clone(),
        origin: loaded.origin("auth"),
        message: e.message,
    })?;
    for (i, plugin) in s.plugins.iter().enumerate() {
        plugin.validate().map_err(|message| ConfigError::Invalid {
            key: format!("plugins[{i}] ({})", plugin.name),
            origin: loaded.origin("plugins"),
            message,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cluster_ids_never_collide_and_skip_past_explicit_ones() {
        let nodes: Vec<ClusterSettings> = (0..3)
            .map(|node_id| ClusterSettings { node_id, nodes: 3 })
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for node in &nodes {
            for n in 1..1000 {
                assert!(seen.insert(node.id_of(n)), "{} twice", node.id_of(n));
                assert_eq!(node.id_of(n) % 3, node.node_id);
            }
            for id in 0..500 {
                assert!(node.id_of(node.counter_past(id) + 1) > id);
            }
        }
        let single = ClusterSettings::default();
        assert_eq!((single.id_of(7), single.counter_past(7)), (7, 7));
    }
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let loaded = load_from(Some(Path::new("/nonexistent.toml")), &env(&[]));
        assert!(matches!(loaded, Err(ConfigError::FileMissing(_))));
        let f = file("");
        let s = load_from(Some(f.path()), &env(&[])).unwrap().settings;
        assert_eq!(s, Settings::default());
        assert_eq!(s.server.listen, "127.0.0.1:4000");
        assert_eq!(s.storage.shards, 4);
        assert_eq!(s.storage.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn env_overrides_file_and_aliases_override_env() {
        let f = file("[storage]\nshards = 2\n[server]\nlisten = \"127.0.0.1:5000\"\n");
        let l = load_from(
            Some(f.path()),
            &env(&[
                ("EXDAAS_STORAGE__SHARDS", "8"),
                ("PORT", "4100"),
                ("DETS_ROOT", "/tmp/x"),
            ]),
        )
        .unwrap();
        assert_eq!(l.settings.storage.shards, 8);
        assert_eq!(l.settings.server.listen, "127.0.0.1:4100");
        assert_eq!(l.settings.storage.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(
            l.origin("storage.shards"),
            "environment variable EXDAAS_STORAGE__SHARDS"
        );
        assert!(l.origin("server.listen").contains("PORT"));
        let l = load_from(Some(f.path()), &env(&[("SHARD_LIMIT", "3")])).unwrap();
        assert_eq!(l.settings.storage.shards, 3);
    }

    #[test]
    fn unknown_keys_name_their_source() {
        let f = file("[storage]\nshardz = 2\n");
        let err = load_from(Some(f.path()), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shardz") && err.contains(&f.path().display().to_string()),
            "{err}"
        );
        let f = file("");
        let err = load_from(Some(f.path()), &env(&[("EXDAAS_STORAGE__NOPE", "1")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope") && err.contains("EXDAAS_STORAGE__NOPE"),
            "{err}"
        );
    }

    #[test]
    fn files_the_configuration_names_are_found_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        std::fs::create_dir(&conf).unwrap();
        let file = conf.join("exdaas.toml");
        std::fs::write(
            &file,
            "[[plugins]]\nname = \"p\"\npath = \"plugins/p.wasm\"\nvectors = \"/abs/p.json\"\n\n[auth]\ntokens_file = \"tokens.toml\"\n",
        )
        .unwrap();
        std::fs::write(conf.join("tokens.toml"), "tokens = []\n").unwrap();
        let s = load_from(Some(&file), &env(&[])).unwrap().settings;
        assert_eq!(s.plugins[0].path, conf.join("plugins/p.wasm"));
        assert_eq!(
            s.plugins[0].vectors.as_deref(),
            Some(Path::new("/abs/p.json"))
        );
        assert_eq!(s.auth.tokens_file, Some(conf.join("tokens.toml")));
        // The data directory stays where the server runs.
        assert_eq!(s.storage.data_dir, StorageSettings::default().data_dir);
        // Set in the environment, a path stays relative to the working directory.
        let from_env = env(&[("EXDAAS_AUTH__TOKENS_FILE", "elsewhere.toml")]);
        let loaded = load_from(Some(&file), &from_env);
        assert!(loaded.is_err_and(|e| e.to_string().contains("elsewhere.toml")));
    }

    #[test]
    fn bad_values_name_the_setting_and_origin() {
        let f = file("[storage]\nshards = 0\n");
        let err = load_from(Some(f.path()), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("storage.shards") && err.contains("file"),
            "{err}"
        );
        let f = file("");
        let err = load_from(Some(f.path()), &env(&[("SHARD_LIMIT", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SHARD_LIMIT"), "{err}");
        let err = load_from(Some(f.path()), &env(&[("SHARD_LIMIT", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SHARD_LIMIT") && err.contains("many"), "{err}");
        let err = load_from(Some(f.path()), &env(&[("EXDAAS_STORAGE__SHARDS", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("EXDAAS_STORAGE__SHARDS"), "{err}");
        let err = load_from(Some(f.path()), &env(&[("PORT", "99999")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("PORT"), "{err}");
        // Bounds: every timeout, and keys a log record can carry.
        let refused = |text: &str| {
            let f = file(text);
            load_from(Some(f.path()), &env(&[]))
                .unwrap_err()
                .to_string()
        };
        let err = refused("[server]\nwrite_timeout_ms = 9223372036854775807\n");
        assert!(
            err.contains("server.write_timeout_ms") && err.contains("3600000"),
            "{err}"
        );
        let err = refused("[limits]\nmax_key_bytes = 65536\n");
        assert!(
            err.contains("limits.max_key_bytes") && err.contains("65535"),
            "{err}"
        );
        let f = file("[server]\nlisten = \"nowhere\"\n");
        let err = load_from(Some(f.path()), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.listen") && err.contains("nowhere"),
            "{err}"
        );
    }

    #[test]
    fn shipped_config_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/exdaas.toml");
        let loaded = load_from(Some(&path), &env(&[])).unwrap();
        assert_eq!(loaded.settings, Settings::default());
        // Every setting is written out (commented or not) in the shipped file.
        let text = std::fs::read_to_string(&path).unwrap();
        let json = serde_json::to_value(Settings::default()).unwrap();
        for (section, fields) in json.as_object().unwrap() {
            let Some(fields) = fields.as_object() else {
                continue;
            };
            assert!(
                text.contains(&format!("[{section}]")),
                "section {section} missing"
            );
            for field in fields.keys() {
                assert!(
                    text.contains(&format!("{field} =")),
                    "{section}.{field} missing"
                );
            }
        }
    }
}
