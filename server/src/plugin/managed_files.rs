//! The files behind managed plugins, inside the data directory:
//!
//! ```text
//! plugins/registry.json          the registry (plugin::managed::Registry)
//! plugins/blobs/<sha256>.wasm    every kept module version, by content hash
//! plugins/blobs/<sha256>.json    every kept set of test vectors
//! ```
//!
//! Blobs are written (temp file, fsync, rename, directory fsync) before the
//! registry that names them, and the registry the same way, so after a
//! crash or power loss the registry on disk is the old or the new one in
//! full and every blob it names is complete. Blobs no registry names any
//! more are removed after the registry is saved.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::managed::{ManagedError, Registry};
use crate::storage::manifest;

/// Directory under the data directory.
pub const PLUGINS_DIR: &str = "plugins";
/// The registry's file name.
const REGISTRY_FILE: &str = "registry.json";
/// Blob directory name.
const BLOBS_DIR: &str = "blobs";
/// Compiled modules (`plugin::compiler`): a cache, never backed up.
const COMPILED_DIR: &str = "compiled";
/// Largest registry file written, and so read back by a start. Compact
/// JSON of every kept version's settings, each at most
/// `spec::MAX_CONFIG_BYTES`, stays far below it at the default quotas.
const MAX_REGISTRY_BYTES: u64 = 16 * 1024 * 1024;
/// What the offline `exdaas plugin remove` reads: the way out must work
/// even for a registry an older build wrote past the limit.
const MAX_REGISTRY_BYTES_OFFLINE: u64 = 1024 * 1024 * 1024;
/// Largest blob read back (for backups): modules are capped far below this.
pub const MAX_BLOB_BYTES: u64 = 256 * 1024 * 1024;

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ManagedError + '_ {
    move |e| ManagedError::Io(format!("{}: {e}", path.display()))
}

fn store_err(e: crate::storage::StoreError) -> ManagedError {
    match e {
        crate::storage::StoreError::NoSpace(detail) => ManagedError::NoSpace(detail),
        e => ManagedError::Io(e.to_string()),
    }
}

/// Reads at most `limit` bytes of `path`; longer is an error.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ManagedError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() as u64 > limit {
        return Err(ManagedError::Io(format!(
            "{}: larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// A blob file name this module writes: `<64 hex>.wasm` or `<64 hex>.json`.
pub fn is_blob_name(name: &str) -> bool {
    let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
    stem.len() == 64
        && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && matches!(ext, "wasm" | "json")
}

/// A blob as a backup line; member order matters, as readers tell line
/// kinds by their first member.
#[derive(serde::Serialize)]
struct BlobLine<'a> {
    plugin_blob: &'a str,
    base64: String,
}

/// The managed-plugin files of one data directory.
pub struct ManagedFiles {
    dir: PathBuf,
    /// Held while the registry is saved and blobs are collected, and while
    /// a backup copies them, so a backup never sees a blob vanish.
    files: Mutex<()>,
}

impl ManagedFiles {
    /// The files under `data_dir` (nothing is created until the first upload).
    pub fn at(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(PLUGINS_DIR),
            files: Mutex::new(()),
        }
    }

    /// Where modules and vectors live; chain specs point here.
    pub fn blobs_dir(&self) -> PathBuf {
        self.dir.join(BLOBS_DIR)
    }

    /// Where compiled modules are kept, by module digest.
    pub fn compiled_dir(&self) -> PathBuf {
        self.dir.join(COMPILED_DIR)
    }

    /// `text` (a refusal) with this directory's blob paths shown as what
    /// they are to the uploader, `the uploaded module (sha256 ...)`: the
    /// server's file layout is not theirs to know.
    pub fn without_blob_paths(&self, text: &str) -> String {
        let prefix = format!("{}/", self.blobs_dir().display());
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find(&prefix) {
            out.push_str(&rest[..at]);
            let after = &rest[at + prefix.len()..];
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
                .unwrap_or(after.len());
            let hash = after[..end].split('.').next().unwrap_or("");
            out.push_str(&format!("the uploaded module (sha256 {hash})"));
            rest = &after[end..];
        }
        out.push_str(rest);
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The saved registry; empty when nothing was ever uploaded.
    pub fn load(&self) -> Result<Registry, ManagedError> {
        self.load_within(MAX_REGISTRY_BYTES)
    }

    /// Like [`ManagedFiles::load`], for the offline removal of a plugin,
    /// which must work whatever wrote the registry.
    pub fn load_for_removal(&self) -> Result<Registry, ManagedError> {
        self.load_within(MAX_REGISTRY_BYTES_OFFLINE)
    }

    fn load_within(&self, limit: u64) -> Result<Registry, ManagedError> {
        let path = self.dir.join(REGISTRY_FILE);
        if !path.exists() {
            return Ok(Registry::default());
        }
        let bytes = read_bounded(&path, limit)?;
        let registry: Registry = serde_json::from_slice(&bytes)
            .map_err(|e| ManagedError::Io(format!("{}: {e}", path.display())))?;
        registry
            .check()
            .map_err(|e| ManagedError::Io(format!("{}: {e}", path.display())))?;
        for blob in registry.blobs() {
            let file = self.blobs_dir().join(&blob);
            if !file.exists() {
                return Err(ManagedError::Io(format!(
                    "{}: the registry names it but it is missing",
                    file.display()
                )));
            }
        }
        Ok(registry)
    }

    /// Stores `bytes` durably as `<sha256>.<ext>`; returns the hash. A blob
    /// already there is left as it is: same name, same content.
    pub fn put_blob(&self, bytes: &[u8], ext: &str) -> Result<String, ManagedError> {
        let sha = sha256_hex(bytes);
        // Under the files lock: a concurrent save's garbage collection
        // must not take this blob's temporary file for an unused one.
        let _files = self.lock();
        let blobs = self.blobs_dir();
        manifest::create_dir_durably(&blobs).map_err(store_err)?;
        let path = blobs.join(format!("{sha}.{ext}"));
        if !path.exists() {
            manifest::write_durably(&path, bytes).map_err(store_err)?;
        }
        Ok(sha)
    }

    /// Saves `registry` durably, then removes the blobs it no longer names.
    pub fn save(&self, registry: &Registry) -> Result<(), ManagedError> {
        let _files = self.lock();
        manifest::create_dir_durably(&self.dir).map_err(store_err)?;
        let text = serde_json::to_vec(registry)
            .map_err(|e| ManagedError::Io(format!("cannot encode the registry: {e}")))?;
        // Never write what a start would refuse to read back.
        if text.len() as u64 > MAX_REGISTRY_BYTES {
            return Err(ManagedError::Limit(format!(
                "the plugin registry would be {} bytes, past the {MAX_REGISTRY_BYTES} a start reads; \
                 delete versions or plugins first",
                text.len()
            )));
        }
        manifest::write_durably(&self.dir.join(REGISTRY_FILE), &text).map_err(store_err)?;
        self.collect_garbage(registry);
        Ok(())
    }

    /// Removes blobs (and leftover temp files) that `keep` does not name.
    /// Best effort: a blob left behind costs disk space, nothing else.
    fn collect_garbage(&self, keep: &Registry) {
        let keep = keep.blobs();
        let Ok(entries) = std::fs::read_dir(self.blobs_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.binary_search(&name).is_err() {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove an unused plugin file");
                }
            }
        }
    }

    /// Removes blobs that `keep` does not name, after a refused upload.
    pub fn discard_unreferenced(&self, keep: &Registry) {
        let _files = self.lock();
        self.collect_garbage(keep);
    }

    /// Writes the managed plugins as backup lines: one
    /// `{"plugin_blob":NAME,"base64":...}` per blob, then
    /// `{"plugin_registry":{...}}`. Writes nothing when there are none.
    pub fn export(&self, out: &mut dyn Write) -> Result<(), ManagedError> {
        let _files = self.lock();
        let registry = self.load()?;
        if registry.plugins.is_empty() {
            return Ok(());
        }
        let encode = |e: std::io::Error| ManagedError::Io(format!("backup stream: {e}"));
        for blob in registry.blobs() {
            let bytes = read_bounded(&self.blobs_dir().join(&blob), MAX_BLOB_BYTES)?;
            let line = BlobLine {
                plugin_blob: &blob,
                base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
            };
            serde_json::to_writer(&mut *out, &line).map_err(|e| encode(e.into()))?;
            out.write_all(b"\n").map_err(encode)?;
        }
        let line = serde_json::json!({ "plugin_registry": registry });
        serde_json::to_writer(&mut *out, &line).map_err(|e| encode(e.into()))?;
        out.write_all(b"\n").map_err(encode)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::managed::{NewVersion, Quota};
    use super::*;

    fn quota() -> Quota {
        Quota {
            max_plugins: 4,
            max_versions: 1,
        }
    }

    fn version(files: &ManagedFiles, module: &[u8]) -> NewVersion {
        NewVersion {
            sha256: files.put_blob(module, "wasm").unwrap(),
            size: module.len() as u64,
            vectors: Some((files.put_blob(b"[]", "json").unwrap(), 0)),
            spec: serde_json::from_str(r#"{"name":"p","path":"x"}"#).unwrap(),
            uploaded_by: "t".into(),
            request_id: None,
            uploaded_ms: 0,
            placement: None,
        }
    }

    #[test]
    fn saved_registries_come_back_and_unused_blobs_go() {
        let dir = tempfile::tempdir().unwrap();
        let files = ManagedFiles::at(dir.path());
        assert!(files.load().unwrap().plugins.is_empty());
        let (r1, _) = Registry::default()
            .with_upload("p", version(&files, b"one"), quota())
            .unwrap();
        files.save(&r1).unwrap();
        assert_eq!(files.load().unwrap(), r1);
        // Only one version is kept: the first module's blob is collected.
        let (r2, _) = r1
            .with_upload("p", version(&files, b"two"), quota())
            .unwrap();
        files.save(&r2).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(files.blobs_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, r2.blobs());
        assert!(names.iter().all(|n| is_blob_name(n)));

        let mut out = Vec::new();
        files.export(&mut out).unwrap();
        let lines: Vec<&str> = std::str::from_utf8(&out).unwrap().lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[2].starts_with("{\"plugin_registry\""));
    }

    #[test]
    fn missing_blobs_and_damage_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let files = ManagedFiles::at(dir.path());
        let (r, _) = Registry::default()
            .with_upload("p", version(&files, b"one"), quota())
            .unwrap();
        files.save(&r).unwrap();
        std::fs::remove_file(
            files
                .blobs_dir()
                .join(format!("{}.wasm", sha256_hex(b"one"))),
        )
        .unwrap();
        let err = files.load().unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        std::fs::write(dir.path().join("plugins/registry.json"), b"{nope").unwrap();
        assert!(files.load().is_err());
    }

    #[test]
    fn blob_names() {
        assert!(is_blob_name(&format!("{}.wasm", "a".repeat(64))));
        assert!(!is_blob_name(&format!("{}.exe", "a".repeat(64))));
        assert!(!is_blob_name("../x.wasm"));
        assert!(!is_blob_name(&format!("{}.json", "A".repeat(64))));
    }
}
