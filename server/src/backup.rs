//! Backups: a portable NDJSON image of every key, and restoring one into a
//! new data directory (with any shard count).
//!
//! Format, one JSON document per line:
//! 1. header `{"format":"exdaas-backup","version":1,"shards":4,"next_id":N,"created_ms":T}`;
//! 2. one line per key `{"key":"k","version":V,"value":<the stored JSON>}`;
//! 3. trailer `{"end":true,"records":R}`.
//!
//! Each shard is read from one snapshot, so every shard in a backup taken
//! under load is a state between two committed batches. The trailer makes
//! truncation detectable; restore checks the whole file before it writes
//! anything and builds the new directory beside the target, renaming it into
//! place only when complete, so nothing is ever half-restored.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{CacheSettings, StorageSettings};
use crate::storage::bulk::BulkLoader;
use crate::storage::ids::IdAllocator;
use crate::storage::manifest;
use crate::storage::{Storage, StoreError};

/// Name in the header line.
const FORMAT: &str = "exdaas-backup";
/// Layout version of the file.
const VERSION: u32 = 1;

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing a file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        error: String,
    },
    /// The backup file is not a complete, valid backup.
    #[error("{path} line {line}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong there.
        message: String,
    },
    /// The target data directory is not empty.
    #[error("data directory {0} is not empty; restore only into a new or empty directory")]
    TargetNotEmpty(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    shards: u32,
    next_id: u64,
    created_ms: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record<'a> {
    key: &'a str,
    version: u64,
    #[serde(borrow)]
    value: &'a RawValue,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trailer {
    end: bool,
    records: u64,
}

fn io_error(path: &str) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |e| BackupError::Io {
        path: path.to_owned(),
        error: e.to_string(),
    }
}

/// Writes a backup of `storage` to `out`; returns the number of records.
/// Blocking: run it off the async workers.
pub fn write_backup(
    storage: &Storage,
    next_id: u64,
    out: &mut dyn Write,
) -> Result<u64, BackupError> {
    let io = |e: std::io::Error| BackupError::Io {
        path: "backup stream".into(),
        error: e.to_string(),
    };
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        shards: storage.shard_count() as u32,
        next_id,
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    };
    serde_json::to_writer(&mut *out, &header).map_err(|e| io(e.into()))?;
    out.write_all(b"\n").map_err(io)?;
    let mut records = 0u64;
    let mut failed: Option<std::io::Error> = None;
    storage.for_each(|key, value| {
        let write = (|| -> std::io::Result<()> {
            out.write_all(b"{\"key\":")?;
            serde_json::to_writer(&mut *out, key)?;
            write!(out, ",\"version\":{},\"value\":", value.version)?;
            out.write_all(&value.json)?;
            out.write_all(b"}\n")
        })();
        match write {
            Ok(()) => {
                records += 1;
                Ok(true)
            }
            Err(e) => {
                failed = Some(e);
                Ok(false)
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(io(e));
    }
    serde_json::to_writer(&mut *out, &Trailer { end: true, records }).map_err(|e| io(e.into()))?;
    out.write_all(b"\n").map_err(io)?;
    out.flush().map_err(io)?;
    Ok(records)
}

/// Writes a backup of a stopped server's data directory (its shard count
/// comes from the directory's manifest); returns the number of records.
pub fn backup_stopped(
    data_dir: &Path,
    store_cache_bytes: u64,
    out: &mut dyn Write,
) -> Result<u64, BackupError> {
    let manifest = manifest::read(data_dir)?;
    let storage_settings = StorageSettings {
        data_dir: data_dir.to_owned(),
        shards: manifest.shards,
        store_cache_bytes,
        ..StorageSettings::default()
    };
    let cache = CacheSettings {
        capacity_bytes: 1 << 20,
        warm_on_start: false,
    };
    let storage = Storage::open(&storage_settings, &cache)?;
    let next_id = IdAllocator::stored_mark(data_dir)?;
    let written = write_backup(&storage, next_id, out);
    storage.close();
    written
}

/// Rewrites a stopped server's data directory with `shards` shards: a
/// backup into a file beside it, a restore into a new directory beside it,
/// then a swap. The previous directory is kept (its path is returned) until
/// the operator removes it; if anything fails before the swap, the data
/// directory is untouched.
pub fn reshard(
    data_dir: &Path,
    shards: u32,
    store_cache_bytes: u64,
) -> Result<(BackupSummary, PathBuf), BackupError> {
    let name = data_dir.display().to_string();
    let image = sibling(data_dir, "reshard.ndjson");
    let imaged = (|| {
        let file = std::fs::File::create(&image).map_err(io_error(&name))?;
        let mut out = std::io::BufWriter::new(file);
        backup_stopped(data_dir, store_cache_bytes, &mut out)?;
        out.flush().map_err(io_error(&name))
    })();
    if let Err(e) = imaged {
        let _ = std::fs::remove_file(&image);
        return Err(e);
    }
    let fresh = sibling(data_dir, "resharded");
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).map_err(io_error(&name))?;
    }
    let summary = restore(&image, &fresh, shards, store_cache_bytes)?;
    let previous = sibling(data_dir, "before-reshard");
    if previous.exists() {
        return Err(BackupError::TargetNotEmpty(previous.display().to_string()));
    }
    std::fs::rename(data_dir, &previous).map_err(io_error(&name))?;
    std::fs::rename(&fresh, data_dir).map_err(io_error(&name))?;
    let _ = std::fs::remove_file(&image);
    Ok((summary, previous))
}

/// `<parent>/.<name>.<suffix>`: working files kept next to the data directory
/// so renames stay on one filesystem.
fn sibling(data_dir: &Path, suffix: &str) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    data_dir.with_file_name(format!(".{name}.{suffix}"))
}

/// What a valid backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// Shard count of the server that wrote it.
    pub shards: u32,
    /// Records in it.
    pub records: u64,
    /// The id counter mark to continue from.
    pub next_id: u64,
}

/// Receives each record (key, version, value JSON) during a restore.
type RecordSink<'a> = &'a mut dyn FnMut(&str, u64, &[u8]) -> Result<(), BackupError>;

/// Reads a backup file line by line, checking everything; calls `each` for
/// every record when given.
fn scan(path: &Path, mut each: Option<RecordSink<'_>>) -> Result<BackupSummary, BackupError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(io_error(&name))?;
    let invalid = |line: usize, message: String| BackupError::Invalid {
        path: name.clone(),
        line,
        message,
    };
    let mut lines = BufReader::new(file).lines();
    let first = lines
        .next()
        .ok_or_else(|| invalid(1, "empty file, not a backup".into()))?
        .map_err(io_error(&name))?;
    let header: Header = serde_json::from_str(&first)
        .map_err(|e| invalid(1, format!("not a backup header: {e}")))?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(invalid(
            1,
            format!(
                "unsupported backup format {:?} version {}",
                header.format, header.version
            ),
        ));
    }
    let mut keys = HashSet::new();
    let mut line_no = 1;
    for line in lines {
        line_no += 1;
        let line = line.map_err(|e| invalid(line_no, format!("unreadable: {e}")))?;
        let records = keys.len() as u64;
        if line.starts_with("{\"end\"") {
            let trailer: Trailer = serde_json::from_str(&line)
                .map_err(|e| invalid(line_no, format!("bad trailer: {e}")))?;
            if !trailer.end || trailer.records != records {
                return Err(invalid(
                    line_no,
                    format!(
                        "trailer says {} records, the file has {records}",
                        trailer.records
                    ),
                ));
            }
            // Nothing may follow the trailer.
            return Ok(BackupSummary {
                shards: header.shards,
                records,
                next_id: header.next_id,
            });
        }
        let record: Record = serde_json::from_str(&line)
            .map_err(|e| invalid(line_no, format!("bad record: {e}")))?;
        if record.key.is_empty() || record.key.chars().any(char::is_control) {
            return Err(invalid(line_no, format!("invalid key {:?}", record.key)));
        }
        if !keys.insert(record.key.to_owned()) {
            return Err(invalid(
                line_no,
                format!("key {:?} appears twice", record.key),
            ));
        }
        if let Some(each) = each.as_mut() {
            each(record.key, record.version, record.value.get().as_bytes())?;
        }
    }
    Err(invalid(
        line_no + 1,
        "file ends without the trailer line: the backup is truncated".into(),
    ))
}

/// Checks a backup file completely without writing anything.
pub fn validate(path: &Path) -> Result<BackupSummary, BackupError> {
    scan(path, None)
}

/// Restores `path` into `data_dir`, which must be missing or empty, with
/// `shards` shards (which may differ from the backup's).
pub fn restore(
    path: &Path,
    data_dir: &Path,
    shards: u32,
    store_cache_bytes: u64,
) -> Result<BackupSummary, BackupError> {
    let summary = validate(path)?;
    let target = data_dir.display().to_string();
    if data_dir.exists() {
        let empty = std::fs::read_dir(data_dir)
            .map_err(io_error(&target))?
            .next()
            .is_none();
        if !empty {
            return Err(BackupError::TargetNotEmpty(target));
        }
    }
    let staging = sibling(data_dir, "restoring");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_error(&target))?;
    }
    let result = (|| {
        let mut loader = BulkLoader::create(&staging, shards, store_cache_bytes)?;
        let mut add = |key: &str, version: u64, json: &[u8]| {
            loader.add(key, version, json).map_err(BackupError::from)
        };
        let written = scan(path, Some(&mut add))?;
        loader.finish(written.next_id)?;
        Ok::<_, BackupError>(written)
    })();
    match result {
        Ok(written) => {
            if data_dir.exists() {
                std::fs::remove_dir(data_dir).map_err(io_error(&target))?;
            }
            std::fs::rename(&staging, data_dir).map_err(io_error(&target))?;
            if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
            }
            debug_assert_eq!(written, summary);
            Ok(written)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}
