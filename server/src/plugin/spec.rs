//! A plugin's entry in the configuration: which module, which keys, and the
//! limits it runs under. Plain serde data so the same loader (and the same
//! "unknown key" checks) cover it as every other setting.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a plugin failure (trap, timeout, out of memory or fuel, bad output)
/// does to the write that triggered it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Refuse the write with 500 `plugin_failed`. Safe default: a validator
    /// that cannot run must not be bypassed silently.
    #[default]
    Reject,
    /// Skip this plugin for this write, log and count the failure.
    Skip,
}

/// Whether a plugin's verdicts count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginMode {
    /// Its rejections refuse writes and its replacements are stored.
    #[default]
    Enforce,
    /// It runs on every matching write and its verdicts are recorded
    /// (`GET /v1/plugins/{name}/shadow`), but writes proceed as if it were
    /// absent.
    Shadow,
}

/// One `[[plugins]]` table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// Name used in logs, metrics and error bodies; unique in the chain.
    pub name: String,
    /// The `.wasm` (or `.wat`) file; relative paths are taken from the
    /// server's working directory.
    pub path: PathBuf,
    /// Key prefixes the plugin applies to; empty means every key.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// The plugin's own settings, handed to it as JSON on every call.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Wall-clock limit per call, enforced by epoch interruption.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Cap on the plugin's linear memory.
    #[serde(default = "default_max_memory_bytes")]
    pub max_memory_bytes: u64,
    /// Optional deterministic instruction budget per call.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// What a failure of this plugin does to the write.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Also run on deletes (the plugin sees `op = delete` and no new value;
    /// it may accept or reject, not replace). Off by default so validators
    /// written for puts do not block deletes.
    #[serde(default)]
    pub run_on_delete: bool,
    /// Test vectors the plugin must pass to be loaded (see
    /// `plugin::vectors`). Default: `MODULE.vectors.json` beside the
    /// module when that file exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vectors: Option<PathBuf>,
    /// `enforce` (default) or `shadow`.
    #[serde(default)]
    pub mode: PluginMode,
    /// Where the plugin came from: the configuration, or an upload.
    #[serde(skip)]
    pub source: PluginSource,
    /// For a canary (a new version in shadow beside the enforcing one,
    /// named `NAME@VERSION` in the chain): the plugin it is a candidate to
    /// replace, whose verdicts its own are compared with.
    #[serde(skip)]
    pub canary_of: Option<String>,
}

/// Where a plugin of the chain came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PluginSource {
    /// A `[[plugins]]` table of the configuration.
    #[default]
    Config,
    /// Uploaded over the API (`plugin::managed`); this version of it.
    Managed {
        /// The upload's version number.
        version: u64,
    },
}

impl PluginSource {
    /// `config` or `managed`, as `GET /v1/plugins` reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginSource::Config => "config",
            PluginSource::Managed { .. } => "managed",
        }
    }
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

fn default_timeout_ms() -> u64 {
    20
}

/// The largest `config` of a plugin, as compact JSON: settings, not data.
/// Every uploaded version's settings are kept in the registry, which a
/// start reads back whole.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// The deepest nesting of arrays and objects in a plugin's `config`.
pub const MAX_CONFIG_DEPTH: usize = 32;

/// How deep `value` nests arrays and objects (a scalar is 0), without
/// recursion: the value may come from a client.
fn nesting(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match value {
            serde_json::Value::Array(items) => Box::new(items.iter()),
            serde_json::Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    deepest
}

/// The longest `timeout_ms` a plugin may have: a call runs on the write
/// path, and a test vector runs while plugin changes wait, so a plugin
/// that needs more than this is a mistake, not a use. Far above any real
/// validator or transform (the examples take microseconds).
pub const MAX_TIMEOUT_MS: u64 = 10_000;

fn default_max_memory_bytes() -> u64 {
    16 * 1024 * 1024
}

impl PluginSpec {
    /// A plugin with every setting at its default.
    pub fn new(name: &str, path: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            path,
            prefixes: Vec::new(),
            config: empty_object(),
            timeout_ms: default_timeout_ms(),
            max_memory_bytes: default_max_memory_bytes(),
            fuel: None,
            on_failure: OnFailure::default(),
            run_on_delete: false,
            vectors: None,
            mode: PluginMode::default(),
            source: PluginSource::default(),
            canary_of: None,
        }
    }

    /// Range checks; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        // The name is a path segment of /v1/plugins/{name}/shadow.
        if self.name.contains('/') || self.name == "dry-run" {
            return Err("name must not contain '/' or be \"dry-run\"".into());
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(format!("timeout_ms must be 1..={MAX_TIMEOUT_MS}"));
        }
        if self.max_memory_bytes < 65_536 {
            return Err("max_memory_bytes must be at least 65536 (one wasm page)".into());
        }
        if self.fuel == Some(0) {
            return Err("fuel must be above 0 when set".into());
        }
        let config_bytes = self.config.to_string().len();
        if config_bytes > MAX_CONFIG_BYTES {
            return Err(format!(
                "config is {config_bytes} bytes as JSON; at most {MAX_CONFIG_BYTES}"
            ));
        }
        if nesting(&self.config) > MAX_CONFIG_DEPTH {
            return Err(format!(
                "config nests arrays and objects more than {MAX_CONFIG_DEPTH} deep"
            ));
        }
        Ok(())
    }

    /// Whether the plugin runs for writes to `key`.
    pub fn applies_to(&self, key: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A looping vector under a huge timeout held plugin changes for its
    /// whole length, and 2^64-1 overflowed into a misleading "timeout".
    #[test]
    fn timeouts_are_bounded() {
        let mut spec = PluginSpec::new("p", "p.wasm".into());
        for (ms, ok) in [
            (1, true),
            (MAX_TIMEOUT_MS, true),
            (0, false),
            (3_600_000, false),
            (u64::MAX, false),
        ] {
            spec.timeout_ms = ms;
            let checked = spec.validate();
            assert_eq!(checked.is_ok(), ok, "{ms}: {checked:?}");
            if let Err(message) = checked {
                assert!(message.contains("timeout_ms"), "{message}");
            }
        }
    }

    /// Settings are bounded in size and depth: one upload's config nested
    /// 60 deep once grew the saved registry past what a start reads back.
    #[test]
    fn configs_are_bounded_in_size_and_depth() {
        let mut spec = PluginSpec::new("p", "p.wasm".into());
        let nested = |depth: usize| {
            let text = "[".repeat(depth) + &"]".repeat(depth);
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        };
        spec.config = nested(MAX_CONFIG_DEPTH);
        assert!(spec.validate().is_ok());
        spec.config = nested(MAX_CONFIG_DEPTH + 1);
        assert!(spec.validate().unwrap_err().contains("deep"));
        spec.config = serde_json::json!({ "big": "x".repeat(MAX_CONFIG_BYTES) });
        assert!(spec.validate().unwrap_err().contains("bytes"));
        assert_eq!(nesting(&serde_json::json!(1)), 0);
        assert_eq!(nesting(&serde_json::json!({ "a": [1, { "b": [] }] })), 4);
    }

    #[test]
    fn new_has_the_same_defaults_as_a_table() {
        let table: PluginSpec = toml::from_str("name = \"p\"\npath = \"p.wasm\"").unwrap();
        assert_eq!(PluginSpec::new("p", "p.wasm".into()), table);
    }
}
