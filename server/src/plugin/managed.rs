//! Managed plugins: plugins uploaded over the API rather than named in the
//! configuration. This module is their record (the registry): every
//! uploaded version with its settings, who uploaded it and when, which
//! version is active and where the plugin sits in the chain. The files
//! behind it (modules, vectors, the registry itself) are kept durable by
//! `managed_files`.
//!
//! Every change (upload, rollback, delete, promote) produces a new registry
//! without touching the old one; the caller builds the chain from it, and
//! only when that chain loads (modules compile, vectors pass) is the new
//! registry saved and the chain swapped in. So a refused upload changes
//! nothing.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::spec::{PluginMode, PluginSource, PluginSpec};

/// Layout version of `registry.json`.
const REGISTRY_FORMAT: u32 = 1;
/// Longest managed plugin name.
const MAX_NAME_BYTES: usize = 64;
/// Names that are the literal segments of plugin routes.
const RESERVED_NAMES: &[&str] = &["reload", "dry-run"];

/// Why a change to the managed plugins is refused.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    /// Plugin uploads are switched off (`plugin_uploads.enabled`).
    #[error("plugin uploads are disabled on this server (plugin_uploads.enabled = false)")]
    Disabled,
    /// The name cannot be a managed plugin's.
    #[error("invalid plugin name {0:?}: use 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit, and not \"reload\" or \"dry-run\"")]
    InvalidName(String),
    /// The upload's form or settings are wrong.
    #[error("{0}")]
    InvalidUpload(String),
    /// No managed plugin has this name.
    #[error("no managed plugin named {0:?}")]
    NotFound(String),
    /// A plugin of the configuration file has this name.
    #[error("plugin {0:?} is configured in the configuration file; change it there (managed plugins cannot shadow configured ones)")]
    Configured(String),
    /// `before` or `after` names no plugin of the chain: the request is
    /// well formed, the chain is not as it assumes (409).
    #[error("{0}")]
    NoSuchAnchor(String),
    /// The plugin would judge keys its uploader may not write.
    #[error("{0}")]
    OutOfScope(String),
    /// The managed plugin has no such version.
    #[error("plugin {name:?} has no version {version} (kept versions: {kept})")]
    NoSuchVersion {
        /// Plugin name.
        name: String,
        /// The version asked for.
        version: u64,
        /// The versions kept, for the message.
        kept: String,
    },
    /// The module is larger than `plugin_uploads.max_module_bytes`.
    #[error("{0}")]
    TooLarge(String),
    /// A limit on managed plugins would be exceeded.
    #[error("{0}")]
    Limit(String),
    /// The new chain did not load: the module, its ABI or its vectors.
    #[error("plugin refused, nothing changed: {0}")]
    Refused(String),
    /// Reading or writing the plugin files failed.
    #[error("plugin storage: {0}")]
    Io(String),
    /// The disk is full; nothing changed. (The detail names server paths:
    /// it is logged, not shown.)
    #[error("the disk is full; nothing changed, and changes work again once space is freed")]
    NoSpace(String),
}

/// Where a managed plugin sits in the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// After every other plugin (the default).
    #[default]
    End,
    /// At this index of the whole chain (0: first), or last if shorter.
    Position(usize),
    /// Right before the plugin of this name.
    Before(String),
    /// Right after the plugin of this name.
    After(String),
}

/// One uploaded version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    /// 1, 2, ... per plugin, never reused while the plugin exists.
    pub version: u64,
    /// Hex sha256 of the module; its file is `blobs/<sha256>.wasm`.
    pub sha256: String,
    /// Module size in bytes.
    pub size: u64,
    /// Name of the token that uploaded it (`open` without access control).
    pub uploaded_by: String,
    /// The upload's request id, as the audit trail records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Upload time, milliseconds since the Unix epoch.
    pub uploaded_ms: i64,
    /// Hex sha256 of its test vectors (`blobs/<sha>.json`), if it has any.
    pub vectors_sha256: Option<String>,
    /// How many vectors it carries.
    pub vectors: usize,
    /// Its settings, as a `[[plugins]]` table would give them; `path` and
    /// `vectors` are filled in from the hashes when the chain is built.
    pub spec: PluginSpec,
}

/// One managed plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedPlugin {
    /// Its name, unique across the whole chain.
    pub name: String,
    /// The version in the chain.
    pub active: u64,
    /// A newer version running in shadow beside the enforcing active one
    /// (a canary): uploaded in shadow mode while the active version
    /// enforces; promotion makes it the active version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u64>,
    /// The number the next upload gets.
    pub next_version: u64,
    /// Where it sits in the chain.
    pub placement: Placement,
    /// The versions kept, oldest first.
    pub versions: Vec<VersionRecord>,
}

/// Every managed plugin, in the order their placements are applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Layout version (`REGISTRY_FORMAT`).
    #[serde(default = "registry_format")]
    pub format: u32,
    /// The plugins.
    pub plugins: Vec<ManagedPlugin>,
}

fn registry_format() -> u32 {
    REGISTRY_FORMAT
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            format: REGISTRY_FORMAT,
            plugins: Vec::new(),
        }
    }
}

/// How many managed plugins and versions a server keeps.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Most managed plugins.
    pub max_plugins: usize,
    /// Most versions kept per plugin (older ones are dropped, never the
    /// active one).
    pub max_versions: usize,
}

/// A new version, as an upload supplies it.
#[derive(Debug, Clone)]
pub struct NewVersion {
    /// Module hash and size.
    pub sha256: String,
    /// Module size in bytes.
    pub size: u64,
    /// Vectors hash and count, if any.
    pub vectors: Option<(String, usize)>,
    /// Settings (`name` is the plugin's; `path` is ignored).
    pub spec: PluginSpec,
    /// Token name.
    pub uploaded_by: String,
    /// The upload's request id (for the audit trail).
    pub request_id: Option<String>,
    /// Upload time.
    pub uploaded_ms: i64,
    /// New placement; `None` keeps the current one (or `End` when new).
    pub placement: Option<Placement>,
}

/// Whether `name` may name a managed plugin: a path segment that needs no
/// escaping, readable in logs, and not a route's literal segment.
pub fn check_name(name: &str) -> Result<(), ManagedError> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if first_ok && rest_ok && name.len() <= MAX_NAME_BYTES && !RESERVED_NAMES.contains(&name) {
        Ok(())
    } else {
        Err(ManagedError::InvalidName(crate::logsafe::escape(name, 100)))
    }
}

impl ManagedPlugin {
    /// The record of the active version.
    pub fn active_version(&self) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == self.active)
    }

    fn version_list(&self) -> String {
        let kept: Vec<String> = self
            .versions
            .iter()
            .map(|v| v.version.to_string())
            .collect();
        kept.join(", ")
    }
}

impl Registry {
    /// The managed plugin called `name`.
    pub fn plugin(&self, name: &str) -> Option<&ManagedPlugin> {
        self.plugins.iter().find(|p| p.name == name)
    }

    fn plugin_mut(&mut self, name: &str) -> Result<&mut ManagedPlugin, ManagedError> {
        self.plugins
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| ManagedError::NotFound(name.to_owned()))
    }

    /// The registry with `upload` as the active version of `name`, and the
    /// version number it got.
    pub fn with_upload(
        &self,
        name: &str,
        upload: NewVersion,
        quota: Quota,
    ) -> Result<(Registry, u64), ManagedError> {
        let mut next = self.clone();
        if next.plugin(name).is_none() {
            if next.plugins.len() >= quota.max_plugins {
                return Err(ManagedError::Limit(format!(
                    "this server keeps at most {} managed plugins (plugin_uploads.max_plugins); delete one first",
                    quota.max_plugins
                )));
            }
            next.plugins.push(ManagedPlugin {
                name: name.to_owned(),
                active: 0,
                canary: None,
                next_version: 1,
                placement: Placement::End,
                versions: Vec::new(),
            });
        }
        let plugin = next.plugin_mut(name)?;
        let version = plugin.next_version;
        plugin.next_version = version.checked_add(1).ok_or_else(|| {
            ManagedError::Limit(format!("plugin {name:?} has no version numbers left"))
        })?;
        // A shadow version uploaded while an enforcing one runs is its
        // canary: the enforcing version keeps judging writes meanwhile.
        let enforcing = plugin
            .active_version()
            .is_some_and(|v| v.spec.mode == PluginMode::Enforce);
        if upload.spec.mode == PluginMode::Shadow && enforcing {
            plugin.canary = Some(version);
        } else {
            plugin.active = version;
            plugin.canary = None;
        }
        if let Some(placement) = upload.placement {
            plugin.placement = placement;
        }
        let (vectors_sha256, vectors) = upload.vectors.unzip();
        plugin.versions.push(VersionRecord {
            version,
            sha256: upload.sha256.clone(),
            size: upload.size,
            uploaded_by: upload.uploaded_by,
            request_id: upload.request_id,
            uploaded_ms: upload.uploaded_ms,
            vectors_sha256,
            vectors: vectors.unwrap_or(0),
            spec: PluginSpec {
                name: name.to_owned(),
                path: format!("{}.wasm", upload.sha256).into(),
                vectors: None,
                ..upload.spec
            },
        });
        let (active, canary) = (plugin.active, plugin.canary);
        while plugin.versions.len() > quota.max_versions.max(1) {
            let oldest = plugin
                .versions
                .iter()
                .position(|v| v.version != active && Some(v.version) != canary);
            match oldest {
                Some(i) => drop(plugin.versions.remove(i)),
                None => break,
            }
        }
        Ok((next, version))
    }

    /// The registry with `version` of `name` active again; `None` means the
    /// newest version older than the active one.
    pub fn with_rollback(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<(Registry, u64), ManagedError> {
        let mut next = self.clone();
        let plugin = next.plugin_mut(name)?;
        let target = match version {
            Some(v) => v,
            None => plugin
                .versions
                .iter()
                .map(|v| v.version)
                .filter(|&v| v < plugin.active)
                .max()
                .ok_or_else(|| {
                    ManagedError::InvalidUpload(format!(
                        "plugin {name:?} has no version older than the active {}; give {{\"version\": N}} (kept versions: {})",
                        plugin.active,
                        plugin.version_list()
                    ))
                })?,
        };
        if !plugin.versions.iter().any(|v| v.version == target) {
            return Err(ManagedError::NoSuchVersion {
                name: name.to_owned(),
                version: target,
                kept: plugin.version_list(),
            });
        }
        plugin.active = target;
        plugin.canary = None;
        Ok((next, target))
    }

    /// The registry without `name`.
    pub fn without(&self, name: &str) -> Result<Registry, ManagedError> {
        let mut next = self.clone();
        let before = next.plugins.len();
        next.plugins.retain(|p| p.name != name);
        if next.plugins.len() == before {
            return Err(ManagedError::NotFound(name.to_owned()));
        }
        Ok(next)
    }

    /// The registry with the canary of `name` as its active, enforcing
    /// version, or without a canary the active version enforcing; `None`
    /// when that changes nothing.
    pub fn with_promotion(&self, name: &str) -> Result<Option<Registry>, ManagedError> {
        let mut next = self.clone();
        let plugin = next.plugin_mut(name)?;
        if let Some(canary) = plugin.canary.take() {
            plugin.active = canary;
        }
        let active = plugin.active;
        let Some(record) = plugin.versions.iter_mut().find(|v| v.version == active) else {
            return Err(ManagedError::NotFound(name.to_owned()));
        };
        if record.spec.mode == PluginMode::Enforce {
            return Ok(None);
        }
        record.spec.mode = PluginMode::Enforce;
        Ok(Some(next))
    }

    /// Every blob file the registry refers to (modules and vectors).
    pub fn blobs(&self) -> Vec<String> {
        let mut names = Vec::new();
        for version in self.plugins.iter().flat_map(|p| &p.versions) {
            names.push(format!("{}.wasm", version.sha256));
            if let Some(vectors) = &version.vectors_sha256 {
                names.push(format!("{vectors}.json"));
            }
        }
        names.sort();
        names.dedup();
        names
    }

    /// Checks what a file read from disk (or a backup) claims: known
    /// format, valid names, an active version that exists.
    pub fn check(&self) -> Result<(), String> {
        if self.format != REGISTRY_FORMAT {
            return Err(format!("unsupported registry format {}", self.format));
        }
        for (i, p) in self.plugins.iter().enumerate() {
            check_name(&p.name).map_err(|e| e.to_string())?;
            if self.plugins[..i].iter().any(|q| q.name == p.name) {
                return Err(format!("plugin {:?} appears twice", p.name));
            }
            if p.next_version == u64::MAX {
                return Err(format!(
                    "plugin {:?}: next_version {} leaves no version to give",
                    p.name, p.next_version
                ));
            }
            if let Some(v) = p.versions.iter().enumerate().find_map(|(j, v)| {
                p.versions[..j]
                    .iter()
                    .any(|w| w.version == v.version)
                    .then_some(v.version)
            }) {
                return Err(format!(
                    "plugin {:?}: version {v} is recorded twice",
                    p.name
                ));
            }
            if p.active_version().is_none() {
                return Err(format!(
                    "plugin {:?}: active version {} is not kept",
                    p.name, p.active
                ));
            }
            if let Some(c) = p.canary {
                if c == p.active || !p.versions.iter().any(|v| v.version == c) {
                    return Err(format!(
                        "plugin {:?}: canary version {c} is not kept",
                        p.name
                    ));
                }
            }
            let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
            for v in &p.versions {
                let vectors_ok = v.vectors_sha256.as_deref().is_none_or(hex);
                if !hex(&v.sha256) || !vectors_ok || v.version >= p.next_version {
                    return Err(format!(
                        "plugin {:?} version {}: bad record",
                        p.name, v.version
                    ));
                }
                v.spec
                    .validate()
                    .map_err(|e| format!("plugin {:?} version {}: {e}", p.name, v.version))?;
            }
        }
        Ok(())
    }
}

/// The whole chain: the configured plugins in their order, then each
/// managed plugin's active version inserted at its placement, in registry
/// order, except that a plugin placed before or after another managed
/// plugin waits until that one is in (a plugin deleted and uploaded again
/// comes later in the registry than those placed relative to it). A
/// placement naming a plugin that is gone puts the plugin last and adds a
/// warning. Module and vectors paths point into `blobs`.
pub fn chain_specs(
    configured: &[PluginSpec],
    registry: &Registry,
    blobs: &Path,
) -> (Vec<PluginSpec>, Vec<String>) {
    let mut chain: Vec<PluginSpec> = configured.to_vec();
    let mut warnings = Vec::new();
    let mut waiting: Vec<(&ManagedPlugin, &VersionRecord)> = registry
        .plugins
        .iter()
        .filter_map(|p| p.active_version().map(|record| (p, record)))
        .collect();
    // Each pass places every plugin whose anchor is in; a pass that
    // places none leaves only plugins whose anchor is gone (or a cycle).
    loop {
        let before = waiting.len();
        let mut left = Vec::with_capacity(waiting.len());
        for (plugin, record) in waiting {
            match slot(&chain, &plugin.placement) {
                Some(at) => chain.insert(at, managed_spec(plugin, record, blobs)),
                None => left.push((plugin, record)),
            }
        }
        waiting = left;
        if waiting.is_empty() || waiting.len() == before {
            break;
        }
    }
    for (plugin, record) in waiting {
        warnings.push(format!(
            "managed plugin {:?}: its placement {:?} names no plugin in the chain; it runs last",
            plugin.name, plugin.placement
        ));
        chain.push(managed_spec(plugin, record, blobs));
    }
    // Each canary goes right before the version it may replace, once every
    // placement is done, so it sees the very input that version judges.
    for plugin in &registry.plugins {
        let canary = plugin
            .canary
            .and_then(|c| plugin.versions.iter().find(|v| v.version == c));
        let at = chain.iter().position(|s| s.name == plugin.name);
        if let (Some(record), Some(at)) = (canary, at) {
            chain.insert(at, canary_spec(plugin, record, blobs));
        }
    }
    (chain, warnings)
}

/// The chain name of `name`'s canary `version`: `@` is never part of a
/// plugin's own name, so it cannot collide.
pub fn canary_name(name: &str, version: u64) -> String {
    format!("{name}@{version}")
}

/// A canary as a chain entry: in shadow, under its own name, comparing
/// itself with the plugin it may replace.
fn canary_spec(plugin: &ManagedPlugin, record: &VersionRecord, blobs: &Path) -> PluginSpec {
    let mut spec = managed_spec(plugin, record, blobs);
    spec.name = canary_name(&plugin.name, record.version);
    spec.mode = PluginMode::Shadow;
    spec.canary_of = Some(plugin.name.clone());
    spec
}

/// Where `placement` puts a plugin in `chain`, if its anchor is there.
fn slot(chain: &[PluginSpec], placement: &Placement) -> Option<usize> {
    let anchor = |name: &str| chain.iter().position(|s| s.name == name);
    match placement {
        Placement::End => Some(chain.len()),
        Placement::Position(i) => Some((*i).min(chain.len())),
        Placement::Before(name) => anchor(name),
        Placement::After(name) => anchor(name).map(|i| i + 1),
    }
}

/// Where the module of digest `sha256` is kept in `blobs`.
pub fn module_file(blobs: &Path, sha256: &str) -> std::path::PathBuf {
    blobs.join(format!("{sha256}.wasm"))
}

/// The spec `record`, a version of `plugin`, runs with.
fn managed_spec(plugin: &ManagedPlugin, record: &VersionRecord, blobs: &Path) -> PluginSpec {
    let mut spec = record.spec.clone();
    spec.name = plugin.name.clone();
    spec.path = module_file(blobs, &record.sha256);
    spec.vectors = record
        .vectors_sha256
        .as_ref()
        .map(|sha| blobs.join(format!("{sha}.json")));
    spec.source = PluginSource::Managed {
        version: record.version,
    };
    spec
}

/// A managed plugin as `GET /v1/admin/plugins/{name}` shows it; `stats` are
/// the running version's counters.
pub fn describe(plugin: &ManagedPlugin, position: Option<usize>, stats: Value) -> Value {
    let versions: Vec<Value> = plugin
        .versions
        .iter()
        .map(|v| {
            json!({
                "version": v.version,
                "active": v.version == plugin.active,
                "canary": Some(v.version) == plugin.canary,
                "sha256": v.sha256,
                "size": v.size,
                "uploaded_by": v.uploaded_by,
                "request_id": v.request_id,
                "uploaded_ms": v.uploaded_ms,
                "vectors": v.vectors,
                "prefixes": v.spec.prefixes,
                "config": v.spec.config,
                "timeout_ms": v.spec.timeout_ms,
                "max_memory_bytes": v.spec.max_memory_bytes,
                "fuel": v.spec.fuel,
                "on_failure": v.spec.on_failure,
                "run_on_delete": v.spec.run_on_delete,
                "mode": v.spec.mode,
            })
        })
        .collect();
    json!({
        "name": plugin.name,
        "source": "managed",
        "active_version": plugin.active,
        "canary_version": plugin.canary,
        "placement": plugin.placement,
        "position": position,
        "versions": versions,
        "stats": stats,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spec(name: &str) -> PluginSpec {
        serde_json::from_value(json!({ "name": name, "path": format!("{name}.wasm") })).unwrap()
    }

    fn upload(sha: char, placement: Option<Placement>) -> NewVersion {
        NewVersion {
            sha256: sha.to_string().repeat(64),
            size: 10,
            vectors: None,
            spec: spec("ignored"),
            uploaded_by: "admin".into(),
            request_id: None,
            uploaded_ms: 1,
            placement,
        }
    }

    const QUOTA: Quota = Quota {
        max_plugins: 2,
        max_versions: 3,
    };

    #[test]
    fn names() {
        for good in ["a", "enum-field", "v1.2_x", &"a".repeat(64)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            ".",
            "..",
            "a/b",
            "reload",
            "dry-run",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_rollback_and_pruning() {
        let r = Registry::default();
        let (r, v1) = r.with_upload("p", upload('a', None), QUOTA).unwrap();
        let (r, v2) = r.with_upload("p", upload('b', None), QUOTA).unwrap();
        assert_eq!((v1, v2), (1, 2));
        let (r, back) = r.with_rollback("p", None).unwrap();
        assert_eq!(back, 1);
        assert!(r.with_rollback("p", None).is_err(), "nothing older than 1");
        let (r, _) = r.with_rollback("p", Some(2)).unwrap();
        assert!(matches!(
            r.with_rollback("p", Some(9)),
            Err(ManagedError::NoSuchVersion { .. })
        ));
        let (r, _) = r.with_upload("p", upload('c', None), QUOTA).unwrap();
        let (r, v4) = r.with_upload("p", upload('d', None), QUOTA).unwrap();
        let kept: Vec<u64> = r.plugins[0].versions.iter().map(|v| v.version).collect();
        assert_eq!(kept, vec![2, 3, 4]);
        assert_eq!((r.plugins[0].active, v4), (4, 4));
        r.check().unwrap();
        assert_eq!(r.blobs().len(), 3);
        let r = r.without("p").unwrap();
        assert!(r.plugins.is_empty());
        assert!(matches!(r.without("p"), Err(ManagedError::NotFound(_))));
    }

    #[test]
    fn quota_on_plugins() {
        let r = Registry::default();
        let (r, _) = r.with_upload("a", upload('a', None), QUOTA).unwrap();
        let (r, _) = r.with_upload("b", upload('a', None), QUOTA).unwrap();
        assert!(matches!(
            r.with_upload("c", upload('a', None), QUOTA),
            Err(ManagedError::Limit(_))
        ));
        // A new version of an existing plugin is not a new plugin.
        assert!(r.with_upload("a", upload('b', None), QUOTA).is_ok());
    }

    #[test]
    fn placements() {
        let configured = vec![spec("x"), spec("y")];
        let quota = Quota {
            max_plugins: 10,
            max_versions: 3,
        };
        let r = Registry::default();
        let (r, _) = r
            .with_upload("first", upload('a', Some(Placement::Position(0))), quota)
            .unwrap();
        let (r, _) = r
            .with_upload(
                "mid",
                upload('a', Some(Placement::After("x".into()))),
                quota,
            )
            .unwrap();
        let (r, _) = r.with_upload("last", upload('a', None), quota).unwrap();
        let (r, _) = r
            .with_upload(
                "gone",
                upload('a', Some(Placement::Before("zz".into()))),
                quota,
            )
            .unwrap();
        let (chain, warnings) = chain_specs(&configured, &r, Path::new("/b"));
        let names: Vec<&str> = chain.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["first", "x", "mid", "y", "last", "gone"]);
        assert_eq!(warnings.len(), 1);
        assert_eq!(
            chain[0].path,
            Path::new("/b").join("a".repeat(64) + ".wasm")
        );
        assert_eq!(chain[0].source, PluginSource::Managed { version: 1 });
        assert_eq!(chain[1].source, PluginSource::Config);
    }

    /// "After b" holds when b was deleted and uploaded again, so that it
    /// now comes after the plugin placed relative to it in the registry.
    #[test]
    fn a_placement_waits_for_its_anchor() {
        let quota = Quota {
            max_plugins: 10,
            max_versions: 3,
        };
        let (r, _) = Registry::default()
            .with_upload("b", upload('a', None), quota)
            .unwrap();
        let (r, _) = r
            .with_upload("a", upload('a', Some(Placement::After("b".into()))), quota)
            .unwrap();
        let r = r.without("b").unwrap();
        let (r, _) = r.with_upload("b", upload('a', None), quota).unwrap();
        let (chain, warnings) = chain_specs(&[spec("x")], &r, Path::new("/b"));
        let names: Vec<&str> = chain.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["x", "b", "a"]);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn promotion_is_recorded() {
        let mut up = upload('a', None);
        up.spec.mode = PluginMode::Shadow;
        let (r, _) = Registry::default().with_upload("p", up, QUOTA).unwrap();
        let promoted = r.with_promotion("p").unwrap().unwrap();
        assert_eq!(
            promoted.plugins[0].active_version().unwrap().spec.mode,
            PluginMode::Enforce
        );
        assert!(promoted.with_promotion("p").unwrap().is_none());
    }

    #[test]
    fn a_shadow_upload_beside_an_enforcing_version_is_its_canary() {
        let shadow = |sha| {
            let mut up = upload(sha, None);
            up.spec.mode = PluginMode::Shadow;
            up
        };
        let (r, _) = Registry::default()
            .with_upload("p", upload('a', None), QUOTA)
            .unwrap();
        let (r, v2) = r.with_upload("p", shadow('b'), QUOTA).unwrap();
        let p = &r.plugins[0];
        assert_eq!((p.active, p.canary), (1, Some(v2)));
        assert!(r.check().is_ok());
        // In the chain right before the version it may replace.
        let (chain, _) = chain_specs(&[spec("c")], &r, Path::new("/b"));
        let names: Vec<&str> = chain.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["c", "p@2", "p"]);
        assert_eq!(chain[1].canary_of.as_deref(), Some("p"));
        assert_eq!(chain[1].mode, PluginMode::Shadow);
        // Another shadow upload replaces the canary; pruning keeps both.
        let (r, v3) = r.with_upload("p", shadow('c'), QUOTA).unwrap();
        let (r, v4) = r.with_upload("p", shadow('d'), QUOTA).unwrap();
        assert_eq!((r.plugins[0].active, r.plugins[0].canary), (1, Some(v4)));
        let kept: Vec<u64> = r.plugins[0].versions.iter().map(|v| v.version).collect();
        assert_eq!(kept, [1, v3, v4]);
        // Promotion: the canary enforces as the active version.
        let promoted = r.with_promotion("p").unwrap().unwrap();
        let p = &promoted.plugins[0];
        assert_eq!((p.active, p.canary), (v4, None));
        assert_eq!(p.active_version().unwrap().spec.mode, PluginMode::Enforce);
        // A rollback ends the canary; so does an enforcing upload.
        let (rolled, _) = r.with_rollback("p", Some(1)).unwrap();
        assert_eq!(rolled.plugins[0].canary, None);
        let (enforced, v5) = r.with_upload("p", upload('e', None), QUOTA).unwrap();
        assert_eq!(
            (enforced.plugins[0].active, enforced.plugins[0].canary),
            (v5, None)
        );
        // A registry naming a canary it does not keep is refused.
        let mut bad = r.clone();
        bad.plugins[0].canary = Some(99);
        assert!(bad.check().unwrap_err().contains("canary"));
    }

    #[test]
    fn damaged_registries_are_refused() {
        let (r, _) = Registry::default()
            .with_upload("p", upload('a', None), QUOTA)
            .unwrap();
        let mut bad = r.clone();
        bad.plugins[0].active = 7;
        assert!(bad.check().is_err());
        let mut bad = r.clone();
        bad.plugins[0].versions[0].sha256 = "../../etc/passwd".into();
        assert!(bad.check().is_err());
        let mut bad = r.clone();
        bad.plugins[0].name = "../x".into();
        assert!(bad.check().is_err());
        // Settings no server would load (from a hand-edited backup, say).
        let mut bad = r;
        bad.plugins[0].versions[0].spec.timeout_ms = 0;
        let err = bad.check().unwrap_err();
        assert!(err.contains("timeout_ms"), "{err}");
    }
}
