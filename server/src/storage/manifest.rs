//! The data directory's manifest: the facts a server must agree with before
//! it may read or write any shard file.
//!
//! A data directory is only meaningful together with its shard count and key
//! placement function: opening four shard files as eight would make keys
//! unreachable. The manifest is written once, when the directory is created,
//! and every later start compares against it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::hash::Placement;
use super::StoreError;

/// File name of the manifest inside the data directory.
pub const MANIFEST_FILE: &str = "exdaas-manifest.json";

/// On-disk format this build writes: 2 added the commit log (`log/`).
pub const FORMAT_VERSION: u32 = 2;
/// Oldest format this build reads: a format-1 directory is upgraded in place
/// on open (its stores are complete; the log starts empty past their
/// versions), after which older builds refuse it rather than ignore the log.
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// Where a restore builds the new store inside the target directory before
/// moving it into place (inside, not beside: the target may be a mount point
/// such as a container volume, whose parent is another filesystem).
pub const RESTORE_STAGING_DIR: &str = ".restoring";

/// What the manifest records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Layout version of the shard files.
    pub format_version: u32,
    /// Number of shards the data was written with.
    pub shards: u32,
    /// Name of the key placement function (see `hash.rs`).
    pub key_hash: String,
}

impl Manifest {
    /// How the directory's keys map to shards (checked when opened).
    pub fn placement(&self) -> Placement {
        Placement::named(&self.key_hash).unwrap_or(Placement::WholeKey)
    }
}

/// Path of shard `index`'s store file.
pub fn shard_file(data_dir: &Path, index: usize) -> PathBuf {
    data_dir.join(format!("shard-{index:04}.persy"))
}

/// The manifest of an existing data directory, checked to be readable by
/// this build (for tools that work on a stopped server's directory).
pub fn read(data_dir: &Path) -> Result<Manifest, StoreError> {
    finish_interrupted_swap(data_dir)?;
    if !data_dir.join(MANIFEST_FILE).exists() {
        return Err(StoreError::Manifest(format!(
            "{} is not an exdaas data directory (no {MANIFEST_FILE})",
            data_dir.display()
        )));
    }
    let manifest = std::fs::read(data_dir.join(MANIFEST_FILE))
        .map_err(|e| io_err(&data_dir.join(MANIFEST_FILE), e))?;
    let shards = serde_json::from_slice::<Manifest>(&manifest)
        .map(|m| m.shards)
        .unwrap_or(0);
    // open_or_create does every check; with the recorded count it cannot
    // create anything here.
    open_or_create(data_dir, shards)
}

/// Opens or creates the manifest of `data_dir` for `shards` shards, refusing a
/// directory that was written with a different layout.
pub fn open_or_create(data_dir: &Path, shards: u32) -> Result<Manifest, StoreError> {
    finish_interrupted_swap(data_dir)?;
    let staging = data_dir.join(RESTORE_STAGING_DIR);
    if staging.exists() {
        return Err(StoreError::Manifest(format!(
            "{} is left from an interrupted restore; empty the data directory and run the restore again",
            staging.display()
        )));
    }
    let path = data_dir.join(MANIFEST_FILE);
    let wanted = Manifest {
        format_version: FORMAT_VERSION,
        shards,
        key_hash: Placement::NEW.name().to_owned(),
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let found: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::Manifest(format!("{}: unreadable manifest: {e}", path.display()))
            })?;
            if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&found.format_version) {
                return Err(StoreError::Manifest(format!(
                    "{}: data format version {} is not supported by this build (reads {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})",
                    path.display(),
                    found.format_version,
                )));
            }
            if Placement::named(&found.key_hash).is_none() {
                return Err(StoreError::Manifest(format!(
                    "{}: keys were placed with {:?}, which this build does not know",
                    path.display(),
                    found.key_hash
                )));
            }
            if found.shards != shards {
                return Err(StoreError::Manifest(format!(
                    "data directory {} holds {} shards but storage.shards is {shards}; \
                     start with storage.shards = {} (or SHARD_LIMIT={}), or stop the server and run \
                     `exdaas reshard --shards {shards}` to rewrite the directory",
                    data_dir.display(),
                    found.shards,
                    found.shards,
                    found.shards
                )));
            }
            Ok(found)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if shard_file(data_dir, 0).exists() {
                return Err(StoreError::Manifest(format!(
                    "data directory {} has shard files but no {MANIFEST_FILE}; refusing to guess its layout",
                    data_dir.display()
                )));
            }
            create_dir_durably(data_dir)?;
            write_durably(
                &path,
                &serde_json::to_vec_pretty(&wanted).unwrap_or_default(),
            )?;
            Ok(wanted)
        }
        Err(e) => Err(io_err(&path, e)),
    }
}

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    let message = format!("{}: {e}", path.display());
    match e.kind() {
        // Nothing these writes make is half there (temporary file, rename).
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            StoreError::NoSpace(message)
        }
        _ => StoreError::Io(message),
    }
}

/// Writes `bytes` to `path` so that after a crash either the old or the new
/// content is there in full: temp file, fsync, rename, fsync the directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    // A temporary name of its own: two writers of one file (an upload a
    // client gave up on and its retry) must not write into each other's.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}.{n}.tmp", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Records that `data_dir` is in this build's format (after an upgrade).
pub fn upgrade(data_dir: &Path, found: &Manifest) -> Result<(), StoreError> {
    if found.format_version == FORMAT_VERSION {
        return Ok(());
    }
    let upgraded = Manifest {
        format_version: FORMAT_VERSION,
        ..found.clone()
    };
    write_durably(
        &data_dir.join(MANIFEST_FILE),
        &serde_json::to_vec_pretty(&upgraded).unwrap_or_default(),
    )
}

/// `<parent>/.<name>.<suffix>`: working files and directories kept next to
/// the data directory, so renames stay on one filesystem.
pub fn sibling(data_dir: &Path, suffix: &str) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    data_dir.with_file_name(format!(".{name}.{suffix}"))
}

/// Where a rebuilt data directory waits to be swapped in.
pub fn swap_incoming(data_dir: &Path) -> PathBuf {
    sibling(data_dir, "resharded")
}

/// Where the data directory it replaced is kept.
pub fn swap_previous(data_dir: &Path) -> PathBuf {
    sibling(data_dir, "before-reshard")
}

/// The parent of `path` as a directory to sync.
fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Replaces `data_dir` with the complete directory at `swap_incoming`,
/// keeping the old one at `swap_previous`. Each rename is made durable
/// before the next: a power cut between them leaves the old directory
/// moved aside and the new one complete beside it, which the next start
/// finishes (`finish_interrupted_swap`), never no data directory at all.
pub fn swap_in(data_dir: &Path) -> Result<PathBuf, StoreError> {
    let (incoming, previous) = (swap_incoming(data_dir), swap_previous(data_dir));
    let parent = parent_of(data_dir);
    sync_dir(&incoming)?;
    sync_dir(parent)?;
    std::fs::rename(data_dir, &previous).map_err(|e| io_err(data_dir, e))?;
    sync_dir(parent)?;
    std::fs::rename(&incoming, data_dir).map_err(|e| io_err(&incoming, e))?;
    sync_dir(parent)?;
    Ok(previous)
}

/// Finishes a swap that a crash cut short between its two renames: the
/// data directory is missing, the one it was being replaced with is there
/// complete (it has its manifest), and the old one is kept aside.
fn finish_interrupted_swap(data_dir: &Path) -> Result<(), StoreError> {
    let (incoming, previous) = (swap_incoming(data_dir), swap_previous(data_dir));
    if data_dir.exists() || !previous.exists() || !incoming.join(MANIFEST_FILE).exists() {
        return Ok(());
    }
    tracing::warn!(
        data_dir = %data_dir.display(),
        "a reshard was interrupted after the old data directory was moved aside; finishing it"
    );
    std::fs::rename(&incoming, data_dir).map_err(|e| io_err(&incoming, e))?;
    sync_dir(parent_of(data_dir))
}

/// Creates `dir` and any missing parents, and makes each new name durable
/// by syncing the directory that holds it: otherwise a power loss can take
/// the whole data directory with it, however well its files were synced.
pub fn create_dir_durably(dir: &Path) -> Result<(), StoreError> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(path);
        at = path.parent();
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    for created in missing.iter().rev() {
        sync_dir(created.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

/// Makes the names in `dir` durable: a new or renamed file survives a
/// power loss only once its directory is synced, whatever its own fsyncs.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Concurrent writers of one file (a retried upload beside the one
    /// its client gave up on) never trip over each other's temporary file.
    #[test]
    fn concurrent_durable_writes_of_one_file_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let writers: Vec<_> = (0..8u8)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        write_durably(&path, &[w; 4096]).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() == 4096 && bytes.iter().all(|b| *b == bytes[0]));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temporary files left"
        );
    }

    #[test]
    fn created_once_then_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let m = open_or_create(dir.path(), 4).unwrap();
        assert_eq!(m.shards, 4);
        assert_eq!(open_or_create(dir.path(), 4).unwrap(), m);
        let err = open_or_create(dir.path(), 8).unwrap_err().to_string();
        assert!(
            err.contains("holds 4 shards") && err.contains("storage.shards is 8"),
            "{err}"
        );
    }

    #[test]
    fn refuses_shard_files_without_manifest_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(shard_file(dir.path(), 0), b"x").unwrap();
        assert!(open_or_create(dir.path(), 4).is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), b"{nope").unwrap();
        let err = open_or_create(dir.path(), 4).unwrap_err().to_string();
        assert!(err.contains("unreadable manifest"), "{err}");
    }
}
