//! Backups: a portable NDJSON image of every key, and restoring one into a
//! new data directory (with any shard count).
//!
//! Format, one JSON document per line:
//! 1. header `{"format":"exdaas-backup","version":3,"shards":4,"next_id":N,"created_ms":T}`;
//! 2. when plugins were uploaded (`plugin::managed`): one
//!    `{"plugin_blob":"<sha256>.wasm","base64":"..."}` per stored module or
//!    vectors file, then `{"plugin_registry":{...}}`;
//! 3. one line per key, `{"key":"k","version":V,"value":<the stored JSON>}`,
//!    or `{"key":"k","version":V,"text":"<the stored JSON as a string>"}`
//!    for a value that a line cannot carry byte for byte (one with a line
//!    break, or leading or trailing white space);
//! 4. trailer `{"end":true,"records":R,"seq":S}`, where S is the revision
//!    of the cut the backup was read from (`storage::Snapshot`): every
//!    write with a revision up to S is in the records and none after, so a
//!    restored server never hands out a version up to S again (not even to
//!    a key deleted before the backup); restore bumps its counter further,
//!    past writes the source acknowledged after the cut.
//!
//! Version 1 files (no `text` records, no `seq`) and version 2 files (no
//! plugin lines) are still read.
//!
//! Every shard is read from one cut at one revision, so a backup taken
//! under load is the whole data set as it stood at that revision. The trailer makes
//! truncation detectable; restore checks the whole file before it writes
//! anything and builds the new directory beside the target, renaming it into
//! place only when complete, so nothing is ever half-restored.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{CacheSettings, StorageSettings};
use crate::ijson::ValueLimits;
use crate::plugin::compiler::{CompileLimits, Compiler};
use crate::plugin::managed::Registry;
use crate::plugin::managed_files::{self, ManagedFiles};
use crate::storage::bulk::BulkLoader;
use crate::storage::ids::IdAllocator;
use crate::storage::manifest;
use crate::storage::{Storage, StoreError, StoredValue};

/// Name in the header line.
const FORMAT: &str = "exdaas-backup";
/// Layout version written.
const VERSION: u32 = 3;
/// Oldest layout version read.
const OLDEST_VERSION: u32 = 1;
/// Longest line read from a backup file: a record is a key and a value, each
/// far below this, so a longer line is damage, not data.
const MAX_LINE_BYTES: usize = 256 * 1024 * 1024;

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

/// A record as read back; exactly one of `value` and `text` is present.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    version: u64,
    #[serde(borrow, default, deserialize_with = "crate::ijson::present_raw")]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    /// When the key expires (ms since the Unix epoch), if it does.
    #[serde(default)]
    expires_at: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trailer {
    end: bool,
    records: u64,
    #[serde(default)]
    seq: u64,
}

/// Whether a stored value can go into a record line as it is: RawValue keeps
/// inner white space but not surrounding white space, and a line cannot
/// hold a line break.
fn fits_raw(json: &[u8]) -> bool {
    let blank = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t' | b'\n' | b'\r'));
    !blank(json.first()) && !blank(json.last()) && !json.iter().any(|b| matches!(b, b'\n' | b'\r'))
}

/// Writes one record line.
fn write_record(out: &mut dyn Write, key: &str, value: &StoredValue) -> std::io::Result<()> {
    out.write_all(b"{\"key\":")?;
    serde_json::to_writer(&mut *out, key)?;
    write!(out, ",\"version\":{},", value.version)?;
    if let Some(at) = value.expires_at {
        write!(out, "\"expires_at\":{at},")?;
    }
    if fits_raw(&value.json) {
        out.write_all(b"\"value\":")?;
        out.write_all(&value.json)?;
    } else {
        let text = std::str::from_utf8(&value.json)
            .map_err(|_| std::io::Error::other(format!("the value of key {key:?} is not UTF-8")))?;
        out.write_all(b"\"text\":")?;
        serde_json::to_writer(&mut *out, text)?;
    }
    out.write_all(b"}\n")
}

fn io_error(path: &str) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |e| BackupError::Io {
        path: path.to_owned(),
        error: e.to_string(),
    }
}

/// Writes a backup of `storage` and the managed plugins in `plugins` to
/// `out`; returns the number of records. Blocking: run it off the async
/// workers.
pub fn write_backup(
    storage: &Storage,
    plugins: &ManagedFiles,
    next_id: u64,
    out: &mut dyn Write,
) -> Result<u64, BackupError> {
    let io = |e: std::io::Error| BackupError::Io {
        path: "backup stream".into(),
        error: e.to_string(),
    };
    // The cut comes first: the backup is the data as of the call.
    let snapshot = storage.snapshot()?;
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
    plugins.export(out).map_err(|e| BackupError::Io {
        path: "managed plugins".into(),
        error: e.to_string(),
    })?;
    let mut records = 0u64;
    let mut failed: Option<std::io::Error> = None;
    let now = crate::storage::now_ms();
    snapshot.for_each(|key, value| {
        // What has expired is absent to every read, and so to backups.
        if value.is_expired(now) {
            return Ok(true);
        }
        match write_record(out, key, value) {
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
    // The cut's revision: every version in the records is at most this,
    // and every write up to it is in them.
    let seq = snapshot.revision();
    serde_json::to_writer(
        &mut *out,
        &Trailer {
            end: true,
            records,
            seq,
        },
    )
    .map_err(|e| io(e.into()))?;
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
    let written = write_backup(&storage, &ManagedFiles::at(data_dir), next_id, out);
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
    let image = manifest::sibling(data_dir, "reshard.ndjson");
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
    let fresh = manifest::swap_incoming(data_dir);
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).map_err(io_error(&name))?;
    }
    // The same data, of a stopped server: nothing was written after the
    // cut, and its plugins were the ones it started with.
    let options = RestoreOptions {
        shards,
        store_cache_bytes,
        bump_revision: 0,
        plugins: None,
    };
    let summary = restore(&image, &fresh, &options)?;
    let previous = manifest::swap_previous(data_dir);
    if previous.exists() {
        return Err(BackupError::TargetNotEmpty(previous.display().to_string()));
    }
    manifest::swap_in(data_dir)?;
    let _ = std::fs::remove_file(&image);
    Ok((summary, previous))
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
    /// Every version the server had handed out is at most this.
    pub seq: u64,
    /// Managed plugins in it.
    pub plugins: usize,
}

/// Receives each record (key, version, value JSON) during a restore.
type RecordSink<'a> = &'a mut dyn FnMut(&str, &StoredValue) -> Result<(), BackupError>;

/// A managed-plugin line of a backup, checked.
enum PluginPart<'a> {
    /// A module or vectors file: its file name and content.
    Blob(&'a str, &'a [u8]),
    /// The registry naming them.
    Registry(&'a Registry),
}

/// Receives the managed-plugin lines during a restore.
type PluginSink<'a> = &'a mut dyn FnMut(PluginPart<'_>) -> Result<(), BackupError>;

/// What a restore does with each line; `None`s only check.
#[derive(Default)]
struct Sinks<'a> {
    records: Option<RecordSink<'a>>,
    plugins: Option<PluginSink<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobLine {
    plugin_blob: String,
    base64: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryLine {
    plugin_registry: Registry,
}

/// The plugin lines seen so far.
#[derive(Default)]
struct PluginLines {
    blobs: HashSet<String>,
    registry: Option<usize>,
}

impl PluginLines {
    /// Checks one plugin line (a blob's hash, a registry naming only blobs
    /// already seen) and hands it to `sink`. `Ok(false)`: not a plugin line.
    fn take(&mut self, line: &[u8], sink: Option<&mut PluginSink<'_>>) -> Result<bool, String> {
        use base64::Engine as _;
        if line.starts_with(b"{\"plugin_blob\"") {
            let blob: BlobLine =
                serde_json::from_slice(line).map_err(|e| format!("bad plugin blob line: {e}"))?;
            let name = blob.plugin_blob.as_str();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(blob.base64.as_bytes())
                .map_err(|e| format!("plugin blob {name:?}: {e}"))?;
            let stem = name.split('.').next().unwrap_or("");
            if !managed_files::is_blob_name(name) || managed_files::sha256_hex(&bytes) != stem {
                return Err(format!("plugin blob {name:?} does not match its sha256"));
            }
            if self.registry.is_some() || !self.blobs.insert(name.to_owned()) {
                return Err(format!("plugin blob {name:?} is out of place or repeated"));
            }
            if let Some(sink) = sink {
                sink(PluginPart::Blob(name, &bytes)).map_err(|e| e.to_string())?;
            }
            return Ok(true);
        }
        if line.starts_with(b"{\"plugin_registry\"") {
            let RegistryLine { plugin_registry } =
                serde_json::from_slice(line).map_err(|e| format!("bad plugin registry: {e}"))?;
            plugin_registry.check()?;
            if let Some(missing) = plugin_registry
                .blobs()
                .iter()
                .find(|b| !self.blobs.contains(*b))
            {
                return Err(format!(
                    "the plugin registry names {missing:?}, which the backup lacks"
                ));
            }
            if self
                .registry
                .replace(plugin_registry.plugins.len())
                .is_some()
            {
                return Err("a second plugin registry".into());
            }
            if let Some(sink) = sink {
                sink(PluginPart::Registry(&plugin_registry)).map_err(|e| e.to_string())?;
            }
            return Ok(true);
        }
        Ok(false)
    }
}

/// What every restored value must meet: I-JSON, as for any write, with the
/// widest limits a server can be configured with.
const RESTORE_LIMITS: ValueLimits = ValueLimits {
    max_bytes: MAX_LINE_BYTES,
    max_depth: crate::ijson::MAX_DEPTH_CEILING,
};

/// Reads the next line (without its `\n`) into `buf`; `None` at the end.
fn next_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<()>> {
    buf.clear();
    let read = reader
        .by_ref()
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', buf)?;
    if read == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_LINE_BYTES {
        return Err(std::io::Error::other(format!(
            "line longer than {MAX_LINE_BYTES} bytes"
        )));
    }
    Ok(Some(()))
}

/// Reads a backup file line by line, checking everything; hands every
/// line to `sinks` when given.
fn scan(path: &Path, sinks: Sinks<'_>) -> Result<BackupSummary, BackupError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(io_error(&name))?;
    scan_reader(&name, BufReader::new(file), sinks)
}

/// [`scan`] over any reader; `name` names it in errors.
fn scan_reader(
    name: &str,
    mut reader: impl BufRead,
    mut sinks: Sinks<'_>,
) -> Result<BackupSummary, BackupError> {
    let invalid = |line: usize, message: String| BackupError::Invalid {
        path: name.to_owned(),
        line,
        message: crate::logsafe::escape(&message, 1024),
    };
    let mut line = Vec::new();
    let header: Header = match next_line(&mut reader, &mut line) {
        Ok(Some(())) => serde_json::from_slice(&line)
            .map_err(|e| invalid(1, format!("not a backup header: {e}")))?,
        Ok(None) => return Err(invalid(1, "empty file, not a backup".into())),
        Err(e) => return Err(invalid(1, format!("unreadable: {e}"))),
    };
    if header.format != FORMAT || !(OLDEST_VERSION..=VERSION).contains(&header.version) {
        return Err(invalid(
            1,
            format!(
                "unsupported backup format {:?} version {}",
                header.format, header.version
            ),
        ));
    }
    let mut keys = HashSet::new();
    let mut plugins = PluginLines::default();
    let mut line_no = 1;
    loop {
        line_no += 1;
        match next_line(&mut reader, &mut line) {
            Ok(Some(())) => {}
            Ok(None) => break,
            Err(e) => return Err(invalid(line_no, format!("unreadable: {e}"))),
        }
        let records = keys.len() as u64;
        if line.starts_with(b"{\"end\"") {
            let trailer: Trailer = serde_json::from_slice(&line)
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
            if !matches!(next_line(&mut reader, &mut line), Ok(None)) {
                return Err(invalid(line_no + 1, "data after the trailer line".into()));
            }
            return Ok(BackupSummary {
                shards: header.shards,
                records,
                next_id: header.next_id,
                seq: trailer.seq,
                plugins: plugins.registry.unwrap_or(0),
            });
        }
        if keys.is_empty() {
            match plugins.take(&line, sinks.plugins.as_mut()) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(message) => return Err(invalid(line_no, message)),
            }
        }
        let record: Record = serde_json::from_slice(&line)
            .map_err(|e| invalid(line_no, format!("bad record: {e}")))?;
        let key = record.key.as_ref();
        if key.is_empty() || key.chars().any(char::is_control) {
            return Err(invalid(line_no, format!("invalid key {key:?}")));
        }
        let json = match (&record.value, &record.text) {
            (Some(raw), None) => raw.get(),
            (None, Some(text)) => text.as_ref(),
            _ => {
                return Err(invalid(
                    line_no,
                    "a record needs exactly one of value and text".into(),
                ))
            }
        };
        crate::ijson::check(json.as_bytes(), RESTORE_LIMITS)
            .map_err(|v| invalid(line_no, format!("key {key:?}: {v}")))?;
        if !keys.insert(key.to_owned()) {
            return Err(invalid(line_no, format!("key {key:?} appears twice")));
        }
        if let Some(each) = sinks.records.as_mut() {
            let value = StoredValue {
                version: record.version,
                json: bytes::Bytes::copy_from_slice(json.as_bytes()),
                expires_at: record.expires_at,
            };
            each(key, &value)?;
        }
    }
    Err(invalid(
        line_no,
        "file ends without the trailer line: the backup is truncated".into(),
    ))
}

/// Checks a backup file completely without writing anything.
pub fn validate(path: &Path) -> Result<BackupSummary, BackupError> {
    scan(path, Sinks::default())
}

/// How far past a backup's cut a restored server starts numbering, by
/// default: the source may have acknowledged writes after the cut, and a
/// restored server must never hand out a version one of those got (a
/// client's ETag could then match another value), as etcd's snapshot
/// restore bumps its revision. A billion leaves room for that many writes
/// between a backup and its restore, and millions of restores below 2^53,
/// where JSON readers keep integers exact.
pub const DEFAULT_RESTORE_BUMP: u64 = 1_000_000_000;

/// Restores `path` into `data_dir`, which must be missing or empty, with
/// `shards` shards (which may differ from the backup's). The restored
/// server's first version is above the backup's revision plus `bump`.
///
/// The store is built in a staging directory inside `data_dir` and moved up
/// entry by entry, the manifest last: a server refuses a directory without a
/// manifest or with the staging directory, so an interrupted restore can
/// never be mistaken for a complete one.
pub fn restore(
    path: &Path,
    data_dir: &Path,
    options: &RestoreOptions,
) -> Result<BackupSummary, BackupError> {
    let (shards, store_cache_bytes, bump) = (
        options.shards,
        options.store_cache_bytes,
        options.bump_revision,
    );
    let summary = validate(path)?;
    let Some(floor) = summary.seq.checked_add(bump) else {
        return Err(BackupError::Invalid {
            path: path.display().to_string(),
            line: 0,
            message: format!(
                "the backup's revision {} plus the bump {bump} does not fit 64 bits",
                summary.seq
            ),
        });
    };
    let target = data_dir.display().to_string();
    manifest::create_dir_durably(data_dir)?;
    if !is_empty_dir(data_dir).map_err(io_error(&target))? {
        return Err(BackupError::TargetNotEmpty(target));
    }
    let staging = data_dir.join(manifest::RESTORE_STAGING_DIR);
    let result = (|| {
        let mut loader = BulkLoader::create(&staging, shards, store_cache_bytes)?;
        let mut add =
            |key: &str, value: &StoredValue| loader.add(key, value).map_err(BackupError::from);
        let files = ManagedFiles::at(&staging);
        let mut add_plugin = |part: PluginPart<'_>| {
            let done = match part {
                PluginPart::Blob(name, bytes) => {
                    let ext = name.rsplit('.').next().unwrap_or("wasm");
                    files.put_blob(bytes, ext).map(drop)
                }
                PluginPart::Registry(registry) => files.save(registry),
            };
            done.map_err(|e| BackupError::Io {
                path: target.clone(),
                error: e.to_string(),
            })
        };
        let sinks = Sinks {
            records: Some(&mut add),
            plugins: Some(&mut add_plugin),
        };
        let written = scan(path, sinks)?;
        if let Some(checks) = &options.plugins {
            check_restored_plugins(&files, checks).map_err(|message| BackupError::Invalid {
                path: path.display().to_string(),
                line: 0,
                message,
            })?;
        }
        loader.finish(written.next_id, floor)?;
        move_into_place(&staging, data_dir).map_err(io_error(&target))?;
        Ok::<_, BackupError>(written)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    let written = result?;
    debug_assert_eq!(written, summary);
    Ok(written)
}

/// How a backup is restored.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Shards of the new directory (may differ from the backup's).
    pub shards: u32,
    /// persy's page cache per shard while loading.
    pub store_cache_bytes: u64,
    /// How far past the backup's revision numbering starts.
    pub bump_revision: u64,
    /// Check the uploaded plugins as a start would (`None`: the image was
    /// written from a directory that started, as a reshard's is).
    pub plugins: Option<PluginChecks>,
}

/// What restored plugins are held to: what a start and an upload check.
#[derive(Debug, Clone, Copy)]
pub struct PluginChecks {
    /// `plugin_uploads.max_module_bytes`.
    pub max_module_bytes: usize,
    /// The values plugins may return (`limits`).
    pub value_limits: ValueLimits,
    /// Bounds on compiling (`plugin_compile`).
    pub compile: CompileLimits,
    /// Compile in a child process of this binary, keeping the compiled
    /// modules for the server's start (`exdaas restore`); otherwise in this
    /// process (tests, whose binary is not `exdaas`).
    pub isolated: bool,
}

/// Checks the plugins a restore staged as a start would: the registry and
/// every file it names (`ManagedFiles::load`), every kept module within
/// the upload limit, and the chain of active versions loaded, which
/// compiles each module and runs its test vectors.
fn check_restored_plugins(files: &ManagedFiles, checks: &PluginChecks) -> Result<(), String> {
    let registry = files.load().map_err(|e| e.to_string())?;
    for plugin in &registry.plugins {
        for version in &plugin.versions {
            let module = crate::plugin::managed::module_file(&files.blobs_dir(), &version.sha256);
            let size = std::fs::metadata(&module).map_err(|e| e.to_string())?.len();
            if size > checks.max_module_bytes as u64 {
                return Err(format!(
                    "plugin {:?} version {} is a module of {size} bytes, past \
                     plugin_uploads.max_module_bytes ({})",
                    plugin.name, version.version, checks.max_module_bytes
                ));
            }
        }
    }
    let (specs, _) = crate::plugin::managed::chain_specs(&[], &registry, &files.blobs_dir());
    let compiler = if checks.isolated {
        Compiler::isolated(checks.compile, &files.compiled_dir())
            .map_err(|e| format!("{}: {e}", files.compiled_dir().display()))?
    } else {
        Compiler::in_process(checks.compile)
    };
    crate::plugin::PluginChain::load_with(&specs, checks.value_limits, &compiler, None)
        .map(drop)
        .map_err(|e| format!("the uploaded plugins would not load: {e}"))
}

/// Whether `dir` holds nothing but a filesystem's `lost+found`.
fn is_empty_dir(dir: &Path) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        if entry?.file_name() != "lost+found" {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Moves every entry of `staging` into `dir`, the manifest last, makes the
/// renames durable, and removes `staging`.
fn move_into_place(staging: &Path, dir: &Path) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(staging)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort_by_key(|n| n == manifest::MANIFEST_FILE);
    for name in names {
        std::fs::rename(staging.join(&name), dir.join(&name))?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    std::fs::remove_dir(staging)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::{Expect, WriteOp, WriteOutcome};
    use crate::testgen;
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn options(shards: u32, bump_revision: u64) -> RestoreOptions {
        RestoreOptions {
            shards,
            store_cache_bytes: 1 << 20,
            bump_revision,
            plugins: None,
        }
    }

    fn open(dir: &Path, shards: u32) -> Storage {
        open_with(dir, shards, 1024)
    }

    fn open_with(dir: &Path, shards: u32, apply_batch: usize) -> Storage {
        let settings = StorageSettings {
            data_dir: dir.to_owned(),
            shards,
            store_cache_bytes: 1 << 20,
            apply_batch,
            ..StorageSettings::default()
        };
        let cache = CacheSettings {
            capacity_bytes: 1 << 20,
            warm_on_start: false,
        };
        Storage::open(&settings, &cache).unwrap()
    }

    fn put(rt: &tokio::runtime::Runtime, storage: &Storage, key: &str, json: &[u8]) -> u64 {
        let op = WriteOp::Put(Bytes::copy_from_slice(json));
        match rt.block_on(storage.write(key.to_owned(), op, Expect::Any)) {
            Ok(
                WriteOutcome::Created { version }
                | WriteOutcome::Replaced { version }
                | WriteOutcome::Unchanged { version },
            ) => version,
            other => panic!("put {key}: {other:?}"),
        }
    }

    /// Signals once the first byte of a backup is written: the backup has
    /// taken its cut by then.
    struct Signalling {
        out: Vec<u8>,
        started: Option<std::sync::mpsc::Sender<()>>,
    }

    impl Write for Signalling {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            if let Some(started) = self.started.take() {
                let _ = started.send(());
            }
            self.out.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A backup under load is a cut at one revision R: every write
    /// acknowledged before it began is in it (at that version or a later
    /// one up to R), and nothing after R. The appliers are held while the
    /// overwrites come in, then let go in batches of two: the oldest
    /// pending states are the newest writes' (every older one replaced),
    /// so a store that has "applied everything up to the target" can still
    /// hold the states before the target.
    #[test]
    fn a_backup_under_load_is_a_cut_at_one_revision() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let storage = std::sync::Arc::new(open_with(dir.path(), 2, 2));
        let keys: Vec<String> = (0..64).map(|i| format!("k{i:02}")).collect();
        for key in &keys {
            put(&rt, &storage, key, b"\"a\"");
        }
        let gone = put(&rt, &storage, "gone", b"1");
        // Everything so far reaches the stores.
        while storage.unapplied().iter().sum::<usize>() > 0 {
            std::thread::yield_now();
        }
        storage.hold_appliers(true);
        let acknowledged: BTreeMap<String, u64> = keys
            .iter()
            .map(|k| (k.clone(), put(&rt, &storage, k, b"\"b\"")))
            .collect();
        let op = WriteOp::Delete;
        rt.block_on(storage.write("gone".into(), op, Expect::Any))
            .unwrap();
        let (started, cut) = std::sync::mpsc::channel();
        let backup = {
            let storage = storage.clone();
            std::thread::spawn(move || {
                let mut out = Signalling {
                    out: Vec::new(),
                    started: Some(started),
                };
                write_backup(
                    &storage,
                    &ManagedFiles::at(Path::new("/nonexistent")),
                    1,
                    &mut out,
                )
                .unwrap();
                out.out
            })
        };
        cut.recv().unwrap();
        // After the cut: overwrite every key again, and bring back "gone".
        let after: Vec<u64> = keys
            .iter()
            .map(|k| put(&rt, &storage, k, b"\"c\""))
            .collect();
        put(&rt, &storage, "gone", b"2");
        storage.hold_appliers(false);
        let image = backup.join().unwrap();

        let file = dir.path().join("backup.ndjson");
        std::fs::write(&file, &image).unwrap();
        let summary = validate(&file).unwrap();
        let first_after = after.iter().copied().min().unwrap();
        assert!(
            summary.seq < first_after,
            "R {} must be before every later write",
            summary.seq
        );
        let mut found = BTreeMap::new();
        for line in std::str::from_utf8(&image).unwrap().lines().skip(1) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(key) = v["key"].as_str() {
                found.insert(
                    key.to_owned(),
                    (v["version"].as_u64().unwrap(), v["value"].clone()),
                );
            }
        }
        assert!(
            !found.contains_key("gone"),
            "deleted before the cut (was {gone})"
        );
        for (key, version) in &acknowledged {
            let (got, value) = &found[key];
            assert_eq!(value, "b", "{key}");
            assert!(*got >= *version && *got <= summary.seq, "{key}: {got}");
        }
        storage.close();
    }

    /// Everything the server accepts comes back from a restore byte for
    /// byte, with its version, into any shard count; and the restored
    /// server hands out only versions never seen before.
    /// A managed plugin with vectors, saved in `files`.
    fn uploaded(files: &ManagedFiles) -> Registry {
        let upload = crate::plugin::managed::NewVersion {
            sha256: files.put_blob(b"(module)", "wasm").unwrap(),
            size: 8,
            vectors: Some((files.put_blob(b"[]", "json").unwrap(), 0)),
            spec: crate::plugin::PluginSpec::new("p", "p.wasm".into()),
            uploaded_by: "ops".into(),
            request_id: None,
            uploaded_ms: 5,
            placement: None,
        };
        let quota = crate::plugin::managed::Quota {
            max_plugins: 1,
            max_versions: 1,
        };
        let (registry, _) = Registry::default().with_upload("p", upload, quota).unwrap();
        files.save(&registry).unwrap();
        registry
    }

    #[test]
    fn damaged_plugin_lines_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = ManagedFiles::at(dir.path());
        uploaded(&files);
        let mut lines = Vec::new();
        files.export(&mut lines).unwrap();
        let lines = String::from_utf8(lines).unwrap();
        let header =
            r#"{"format":"exdaas-backup","version":3,"shards":1,"next_id":0,"created_ms":0}"#;
        let trailer = r#"{"end":true,"records":0,"seq":0}"#;
        let check = |body: &str| {
            let text = format!("{header}\n{body}{trailer}\n");
            scan_reader("b", text.as_bytes(), Sinks::default())
        };
        assert_eq!(check(&lines).unwrap().plugins, 1);
        let mut parts: Vec<&str> = lines.lines().collect();
        // The registry without the blobs it names.
        let registry_only = format!("{}\n", parts.last().unwrap());
        let err = check(&registry_only).unwrap_err().to_string();
        assert!(err.contains("lacks"), "{err}");
        // A blob whose content does not match its name.
        let tampered = parts[0].replacen("\"base64\":\"", "\"base64\":\"AAAA", 1);
        parts[0] = &tampered;
        let err = check(&(parts.join("\n") + "\n")).unwrap_err().to_string();
        assert!(err.contains("sha256") || err.contains("base64"), "{err}");
    }

    /// A registry no server could go on with is refused by restore (and
    /// by a start): a next version with no successor, a version recorded
    /// twice.
    #[test]
    fn registries_no_server_can_use_are_refused() {
        let image = String::from_utf8(backup_with_plugin()).unwrap();
        let edited = |edit: &dyn Fn(&mut serde_json::Value)| {
            let lines: Vec<String> = image
                .lines()
                .map(|line| {
                    if !line.starts_with("{\"plugin_registry\"") {
                        return line.to_owned();
                    }
                    let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
                    edit(&mut v["plugin_registry"]["plugins"][0]);
                    v.to_string()
                })
                .collect();
            scan_reader("b", (lines.join("\n") + "\n").as_bytes(), Sinks::default())
        };
        assert!(edited(&|_| {}).is_ok());
        let err = edited(&|p| p["next_version"] = u64::MAX.into()).unwrap_err();
        assert!(err.to_string().contains("no version to give"), "{err}");
        let err = edited(&|p| {
            let again = p["versions"][0].clone();
            p["versions"].as_array_mut().unwrap().push(again);
        })
        .unwrap_err();
        assert!(err.to_string().contains("recorded twice"), "{err}");
    }

    /// Restore holds uploaded plugins to what a start and an upload would:
    /// a module past the upload limit, or one that does not load, is
    /// refused with the reason, and nothing is restored.
    #[test]
    fn restore_checks_plugins_as_a_start_would() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("b.ndjson");
        std::fs::write(&image, backup_with_plugin()).unwrap();
        let with = |max_module_bytes| RestoreOptions {
            plugins: Some(PluginChecks {
                compile: CompileLimits::default(),
                isolated: false,
                max_module_bytes,
                value_limits: crate::config::LimitSettings::default().value_limits(),
            }),
            ..options(1, 0)
        };
        let err = restore(&image, &dir.path().join("a"), &with(4)).unwrap_err();
        assert!(err.to_string().contains("max_module_bytes"), "{err}");
        // The stored module, "(module)", exports nothing a plugin must.
        let err = restore(&image, &dir.path().join("b"), &with(1 << 20)).unwrap_err();
        assert!(err.to_string().contains("would not load"), "{err}");
        for target in ["a", "b"] {
            let left = std::fs::read_dir(dir.path().join(target)).unwrap().count();
            assert_eq!(left, 0, "{target}: something was restored");
        }
        assert!(restore(&image, &dir.path().join("c"), &options(1, 0)).is_ok());
    }

    fn round_trip(docs: &BTreeMap<String, Vec<u8>>, from: u32, to: u32) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let source = open(&dir.path().join("a"), from);
        for (key, doc) in docs {
            put(&rt, &source, key, b"0");
            put(&rt, &source, key, doc);
        }
        // A deleted key's version must not come back either.
        put(&rt, &source, "x!gone", b"1");
        rt.block_on(source.write("x!gone".into(), WriteOp::Delete, Expect::Any))
            .unwrap();
        let seq = source.last_seq().unwrap();
        let plugins = ManagedFiles::at(&dir.path().join("a"));
        let registry = uploaded(&plugins);
        let image = dir.path().join("backup.ndjson");
        let mut out = std::fs::File::create(&image).unwrap();
        write_backup(&source, &plugins, 7, &mut out).unwrap();
        drop(out);
        // Acknowledged by the source after its backup: a restored server
        // must not give this version to anything else.
        let later = put(&rt, &source, "x!later", b"3");

        let target = dir.path().join("b");
        let summary = restore(&image, &target, &options(to, 1000)).unwrap();
        assert_eq!(summary.records, docs.len() as u64);
        assert_eq!(summary.plugins, 1);
        assert_eq!(ManagedFiles::at(&target).load().unwrap(), registry);
        assert!(summary.seq >= seq);
        let restored = open(&target, to);
        for (key, doc) in docs {
            let before = rt.block_on(source.get(key)).unwrap().unwrap();
            let after = rt.block_on(restored.get(key)).unwrap().unwrap();
            assert_eq!(after.json, &doc[..], "key {key:?}");
            assert_eq!(after.version, before.version, "key {key:?}");
        }
        assert!(rt.block_on(restored.get("x!gone")).unwrap().is_none());
        put(&rt, &restored, "x!gone", b"2");
        let again = rt.block_on(restored.get("x!gone")).unwrap().unwrap();
        assert!(again.version > seq, "version {} reused", again.version);
        assert!(
            again.version > later,
            "version {} may be the source's",
            again.version
        );
        assert!(again.version > summary.seq + 1000);
        source.close();
        restored.close();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn backups_round_trip_everything_accepted(
            docs in prop::collection::btree_map(testgen::key(), testgen::document(), 1..10),
            from in 1..5u32,
            to in 1..6u32,
        ) {
            round_trip(&docs, from, to);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The reader refuses damaged files with a line number, never panics.
        #[test]
        fn damaged_backups_are_refused_cleanly(
            lines in prop::collection::vec("[{}\\[\\]\":,a-z0-9 \\\\]{0,40}", 0..6),
            keep_header in any::<bool>(),
        ) {
            let mut text = String::new();
            if keep_header {
                text.push_str(r#"{"format":"exdaas-backup","version":2,"shards":1,"next_id":1,"created_ms":0}"#);
                text.push('\n');
            }
            for line in &lines {
                text.push_str(line);
                text.push('\n');
            }
            match scan_reader("t", text.as_bytes(), Sinks::default()) {
                Ok(summary) => prop_assert_eq!(summary.records, 0),
                Err(BackupError::Invalid { .. }) => {}
                Err(other) => prop_assert!(false, "{other}"),
            }
        }
    }

    /// A format-3 backup with one uploaded plugin (module and vectors lines,
    /// the registry) and one record.
    fn backup_with_plugin() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let files = ManagedFiles::at(dir.path());
        uploaded(&files);
        let mut text =
            br#"{"format":"exdaas-backup","version":3,"shards":1,"next_id":0,"created_ms":0}"#
                .to_vec();
        text.push(b'\n');
        files.export(&mut text).unwrap();
        text.extend_from_slice(b"{\"key\":\"k\",\"version\":3,\"value\":{\"a\":1}}\n");
        text.extend_from_slice(b"{\"end\":true,\"records\":1,\"seq\":3}\n");
        text
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Damage anywhere in a backup with plugin lines (a flipped, lost
        /// or extra byte, or the file cut short) is refused with a line
        /// number, never a panic; and whatever a restore would still accept
        /// holds only modules that match their sha256.
        #[test]
        fn damaged_plugin_backups_are_refused_cleanly(
            at in any::<prop::sample::Index>(),
            kind in 0..4u8,
            byte in any::<u8>(),
        ) {
            let mut text = backup_with_plugin();
            let i = at.index(text.len());
            match kind {
                0 => text[i] ^= byte.max(1),
                1 => { text.remove(i); }
                2 => text.insert(i, byte),
                _ => text.truncate(i),
            }
            let mut bad_blobs = Vec::new();
            let mut check_blob = |part: PluginPart<'_>| {
                if let PluginPart::Blob(name, bytes) = part {
                    let stem = name.split('.').next().unwrap_or("");
                    if managed_files::sha256_hex(bytes) != stem {
                        bad_blobs.push(name.to_owned());
                    }
                }
                Ok(())
            };
            let sinks = Sinks { records: None, plugins: Some(&mut check_blob) };
            match scan_reader("t", &text[..], sinks) {
                Ok(_) | Err(BackupError::Invalid { .. }) => {}
                Err(other) => prop_assert!(false, "{other}"),
            }
            prop_assert!(bad_blobs.is_empty(), "{bad_blobs:?}");
        }
    }

    /// The cases reported: pretty-printed, CRLF, keys with quote and backslash.
    #[test]
    fn reported_values_round_trip() {
        let docs: BTreeMap<String, Vec<u8>> = [
            ("pretty", &b"{\n  \"name\": \"ada\"\n}\n"[..]),
            ("crlf", b"{\"a\":1}\r\n"),
            ("q\"uote", b"1"),
            ("back\\slash", b"[]"),
            ("null", b"null"),
            ("spaced", b"  {\"a\": [1, 2]}\t"),
            (
                "é/ü",
                "{\"ключ\":\"値\",\"n\":123456789012345678901234567890}".as_bytes(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_vec()))
        .chain([(
            "deepest allowed".to_owned(),
            format!("{}1{}", "[".repeat(64), "]".repeat(64)).into_bytes(),
        )])
        .collect();
        round_trip(&docs, 4, 2);
    }

    /// A reshard's directory swap survives a power cut: after it the data
    /// directory is the resharded one, complete; and a swap cut short
    /// between its two renames is finished by the next open rather than
    /// replaced by an empty directory.
    #[test]
    fn a_reshard_swap_survives_power_loss_and_interruption() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (_root, fs, mnt) = exdaas_tests::powerfs::PowerFs::mount_temp().unwrap();
        let data = mnt.join("data");
        let storage = open(&data, 2);
        let version = put(&rt, &storage, "k", b"1");
        storage.close();
        drop(storage);
        reshard(&data, 3, 1 << 20).unwrap();
        fs.power_loss();
        let storage = open(&data, 3);
        let got = rt.block_on(storage.get("k")).unwrap().unwrap();
        assert_eq!((&got.json[..], got.version), (&b"1"[..], version));
        storage.close();
        drop(storage);

        // Cut short between the renames: the old directory moved aside,
        // the new one not yet in place.
        std::fs::remove_dir_all(manifest::swap_previous(&data)).unwrap();
        reshard(&data, 2, 1 << 20).unwrap();
        std::fs::rename(&data, manifest::swap_incoming(&data)).unwrap();
        let storage = open(&data, 2);
        let got = rt.block_on(storage.get("k")).unwrap().unwrap();
        assert_eq!((&got.json[..], got.version), (&b"1"[..], version));
        storage.close();
    }

    #[test]
    fn restore_into_an_existing_empty_directory_stages_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("b.ndjson");
        std::fs::write(
            &image,
            "{\"format\":\"exdaas-backup\",\"version\":1,\"shards\":1,\"next_id\":5,\"created_ms\":0}\n\
             {\"key\":\"k\",\"version\":3,\"value\":{\"a\":1}}\n{\"end\":true,\"records\":1}\n",
        )
        .unwrap();
        let mount = dir.path().join("volume");
        std::fs::create_dir_all(mount.join("lost+found")).unwrap();
        let summary = restore(&image, &mount, &options(2, DEFAULT_RESTORE_BUMP)).unwrap();
        assert_eq!((summary.records, summary.seq), (1, 0));
        assert!(mount.join(manifest::MANIFEST_FILE).exists());
        assert!(!mount.join(manifest::RESTORE_STAGING_DIR).exists());
        // Nothing was written beside the target.
        let mut siblings: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        siblings.sort();
        assert_eq!(siblings, ["b.ndjson", "volume"]);
        // A staging directory left by a crash stops a server from starting.
        std::fs::create_dir(mount.join(manifest::RESTORE_STAGING_DIR)).unwrap();
        let settings = StorageSettings {
            data_dir: mount.clone(),
            shards: 2,
            ..StorageSettings::default()
        };
        let err = Storage::open(&settings, &CacheSettings::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("interrupted restore"), "{err}");
    }
}
