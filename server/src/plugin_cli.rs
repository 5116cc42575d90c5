//! `exdaas plugin test|run`: a plugin author's loop without a server or a
//! data directory. The module is loaded by the server's own loader (same
//! ABI checks, limits and host functions) and called the way the write
//! path calls it, so a plugin that passes here behaves the same in the
//! server.
//!
//! `exdaas plugin remove NAME`: the operator's way out when an uploaded
//! plugin keeps a stopped server from starting (a server upgrade that
//! changed the ABI, say): it removes the plugin from the data directory's
//! registry, as `DELETE /v1/admin/plugins/{name}` would.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{json, Value};

use crate::ijson::ValueLimits;
use crate::plugin::managed::ManagedError;
use crate::plugin::managed_files::ManagedFiles;
use crate::plugin::vectors::{self, VectorOp};
use crate::plugin::{CallInput, CallVerdict, PluginChain, PluginLoadError, PluginSpec};

/// One `exdaas plugin` command.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a module's test vectors; exits 1 if any fails.
    Test {
        /// The module (.wasm or .wat).
        module: PathBuf,
        /// The vectors (default: MODULE.vectors.json beside the module).
        #[arg(long, value_name = "FILE")]
        vectors: Option<PathBuf>,
        /// The plugin config (JSON) for vectors that carry none (`--config`
        /// names the server's settings file).
        #[arg(long, value_name = "JSON", default_value = "{}")]
        plugin_config: String,
        /// Per-call time limit, as `timeout_ms` in a plugin table.
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Call a module once and print its verdict as JSON.
    Run {
        /// The module (.wasm or .wat).
        module: PathBuf,
        /// The key written.
        #[arg(long)]
        key: String,
        /// The new value (JSON); leave out with --delete.
        #[arg(long, value_name = "JSON", required_unless_present = "delete")]
        value: Option<String>,
        /// The stored value the plugin sees (JSON).
        #[arg(long, value_name = "JSON")]
        old: Option<String>,
        /// Call it for a delete instead of a put.
        #[arg(long, conflicts_with = "value")]
        delete: bool,
        /// The plugin config (JSON).
        #[arg(long, value_name = "JSON", default_value = "{}")]
        plugin_config: String,
        /// The host time the plugin sees, in ms since the Unix epoch
        /// (default: now).
        #[arg(long, value_name = "MS")]
        now_ms: Option<i64>,
        /// Per-call time limit, as `timeout_ms` in a plugin table.
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Remove an uploaded plugin (all its versions) from a stopped
    /// server's data directory.
    Remove {
        /// The plugin's name.
        name: String,
        /// The data directory (default: storage.data_dir).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

/// Why a command could not run (exit 2): bad arguments or a module or
/// vectors file that does not load.
#[derive(Debug, thiserror::Error)]
pub enum PluginCliError {
    /// An argument is not what it must be.
    #[error("{0}")]
    Usage(String),
    /// The module or its vectors did not load.
    #[error(transparent)]
    Load(#[from] PluginLoadError),
    /// The vectors file cannot be used.
    #[error(transparent)]
    Vectors(#[from] vectors::VectorsError),
    /// The data directory's managed plugins cannot be changed.
    #[error(transparent)]
    Managed(#[from] ManagedError),
}

/// What a command printed and how it ends.
pub struct Outcome {
    /// Lines for standard output.
    pub stdout: String,
    /// 0 when everything passed (or the call ran), 1 when a vector failed
    /// or the plugin failed.
    pub code: u8,
}

/// Parses an argument as I-JSON within `limits`, naming the flag if not.
fn json_arg(flag: &str, text: &str, limits: ValueLimits) -> Result<Vec<u8>, PluginCliError> {
    crate::ijson::check(text.as_bytes(), limits)
        .map_err(|v| PluginCliError::Usage(format!("{flag}: {v}")))?;
    Ok(text.as_bytes().to_vec())
}

/// Loads `module` alone, as the server would with this config.
fn load(
    module: &Path,
    config: &[u8],
    timeout_ms: u64,
    limits: ValueLimits,
) -> Result<PluginChain, PluginCliError> {
    let name = module
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let config: Value = serde_json::from_slice(config)
        .map_err(|e| PluginCliError::Usage(format!("--plugin-config: {e}")))?;
    let spec: PluginSpec = serde_json::from_value(json!({
        "name": name,
        "path": module,
        "config": config,
        "timeout_ms": timeout_ms,
    }))
    .map_err(|e| PluginCliError::Usage(e.to_string()))?;
    spec.validate().map_err(PluginCliError::Usage)?;
    Ok(PluginChain::load_without_vectors(&[spec], limits)?)
}

/// Runs one `exdaas plugin` command; `data_dir` is the configured one.
pub fn run(
    command: PluginCommand,
    limits: ValueLimits,
    data_dir: &Path,
) -> Result<Outcome, PluginCliError> {
    match command {
        PluginCommand::Remove {
            name,
            data_dir: dir,
        } => remove(&name, dir.as_deref().unwrap_or(data_dir)),
        PluginCommand::Test {
            module,
            vectors: file,
            plugin_config,
            timeout_ms,
        } => {
            let config = json_arg("--plugin-config", &plugin_config, limits)?;
            let file = file.unwrap_or_else(|| vectors::beside(&module));
            let loaded = vectors::load(&file, limits)?;
            let chain = load(&module, &config, timeout_ms, limits)?;
            test(&chain, &loaded, &file)
        }
        PluginCommand::Run {
            module,
            key,
            value,
            old,
            delete,
            plugin_config,
            now_ms,
            timeout_ms,
        } => {
            let config = json_arg("--plugin-config", &plugin_config, limits)?;
            let value = value.map(|v| json_arg("--value", &v, limits)).transpose()?;
            let old = old.map(|v| json_arg("--old", &v, limits)).transpose()?;
            let chain = load(&module, &config, timeout_ms, limits)?;
            let now_ms = now_ms.unwrap_or_else(crate::app::now_ms);
            let input = CallInput {
                delete,
                key: &key,
                value: value.as_deref(),
                old: old.as_deref(),
                now_ms,
            };
            Ok(call_once(&chain, &input))
        }
    }
}

/// Removes `name` from the registry under `data_dir`.
fn remove(name: &str, data_dir: &Path) -> Result<Outcome, PluginCliError> {
    let files = ManagedFiles::at(data_dir);
    let next = files.load_for_removal()?.without(name)?;
    files.save(&next)?;
    Ok(Outcome {
        stdout: format!(
            "removed uploaded plugin {name:?} from {}",
            data_dir.display()
        ),
        code: 0,
    })
}

fn test(
    chain: &PluginChain,
    loaded: &[vectors::Vector],
    file: &Path,
) -> Result<Outcome, PluginCliError> {
    let Some(plugin) = chain.plugins().first() else {
        return Err(PluginCliError::Usage("no plugin loaded".into()));
    };
    let results = vectors::run(plugin, loaded);
    let mut stdout = String::new();
    for r in &results {
        match &r.failure {
            None => stdout.push_str(&format!("ok    {}\n", r.label)),
            Some(why) => stdout.push_str(&format!("FAIL  {}: {why}\n", r.label)),
        }
    }
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    stdout.push_str(&format!(
        "{}: {} passed, {failed} failed",
        file.display(),
        results.len() - failed
    ));
    let deletes = loaded.iter().filter(|v| v.op == VectorOp::Delete).count();
    if deletes > 0 {
        stdout.push_str(&format!(" ({deletes} deletes)"));
    }
    Ok(Outcome {
        stdout,
        code: u8::from(failed > 0),
    })
}

fn call_once(chain: &PluginChain, input: &CallInput<'_>) -> Outcome {
    let Some(plugin) = chain.plugins().first() else {
        return Outcome {
            stdout: json!({"action": "fail", "message": "no plugin loaded"}).to_string(),
            code: 1,
        };
    };
    let started = std::time::Instant::now();
    let result = plugin.call(input);
    let micros = started.elapsed().as_micros() as u64;
    let (answer, code) = match result {
        Ok(CallVerdict::Accept) => (json!({"action": "accept"}), 0),
        Ok(CallVerdict::Reject {
            code,
            message,
            path,
        }) => (
            json!({"action": "reject", "code": code, "message": message, "path": path}),
            0,
        ),
        Ok(CallVerdict::Replace(bytes)) => {
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (json!({"action": "replace", "value": value}), 0)
        }
        Err(failure) => (
            json!({"action": "fail", "kind": failure.kind.as_str(), "message": failure.detail}),
            1,
        ),
    };
    let mut answer = answer;
    answer["micros"] = Value::from(micros);
    Outcome {
        stdout: answer.to_string(),
        code,
    }
}
