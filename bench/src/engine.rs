//! The storage engine's ceiling, without HTTP: how many durable writes per
//! second the layers under the server can take at the batch sizes the server
//! produces, so the server's own figure can be read as a fraction of it.
//!
//! Three measurements, side by side in one run, each for a fixed time:
//! - `persy`: the shard writer's work done directly on persy files, one
//!   thread per shard: per write an index lookup, a record insert and an
//!   index put; per batch a sequence put and one prepare (fsync) + commit;
//!   then the same without the lookup (what a log applier does), and with
//!   the value inside the index entry (one B-tree operation per write);
//! - `log`: the commit log of the write-path design: per batch one append
//!   of encoded records to a file and one fdatasync, one thread; once into
//!   a plain file that grows with each append, once through exdaas's own
//!   `CommitLog`, whose segments are zero-filled before use;
//! - `storage`: exdaas's own storage layer (writer threads, group commit,
//!   cache) driven by many concurrent tasks, no HTTP.
//!
//! Usage: `engine [--seconds N] [--dir PATH]`; prints one Markdown table.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exdaas_server::config::{CacheSettings, StorageSettings};
use exdaas_server::storage::log::{CommitLog, LogRecord};
use exdaas_server::storage::{Expect, Storage, WriteOp};
use persy::{ByteVec, Config, Persy, PersyId, ValueMode};

/// Shards, as the server's default.
const SHARDS: usize = 4;
/// A 100-byte JSON value, as the HTTP benchmark writes.
const VALUE: &[u8] =
    br#"{"name":"benchmark user","email":"user@example.com","age":42,"tags":["a","b"],"active":true,"x":1}"#;

/// Any failure; the benchmark only reports it.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let mut seconds = 5u64;
    let mut dir = std::env::temp_dir();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().ok_or("--seconds needs a value")?.parse()?,
            "--dir" => dir = PathBuf::from(args.next().ok_or("--dir needs a value")?),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let run = Duration::from_secs(seconds);
    let work = tempdir_in(&dir)?;
    println!("| engine | batch | writes/s | fsyncs/s |");
    println!("|---|---:|---:|---:|");
    for layout in [Layout::Writer, Layout::Applier, Layout::ValueInIndex] {
        for batch in [1, 8, 64, 512] {
            let dir = work.join(format!("persy-{layout:?}-{batch}"));
            let (writes, syncs) = persy_ceiling(&dir, batch, layout, run)?;
            row(layout.name(), batch, writes, syncs, run);
        }
    }
    for batch in [1, 8, 64, 512] {
        let (writes, syncs) = log_ceiling(&work.join(format!("log-{batch}")), batch, run)?;
        row(
            "log append + fdatasync, file grows",
            batch,
            writes,
            syncs,
            run,
        );
        let (writes, syncs) = commit_log(&work.join(format!("wal-{batch}")), batch, run)?;
        row(
            "exdaas commit log (zero-filled segments)",
            batch,
            writes,
            syncs,
            run,
        );
    }
    for tasks in [64, 256] {
        let writes = storage_ceiling(&work.join(format!("storage-{tasks}")), tasks, run)?;
        println!(
            "| exdaas storage layer, {tasks} writers | group | {:.0} | |",
            writes as f64 / run.as_secs_f64()
        );
    }
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

fn row(name: &str, batch: usize, writes: u64, syncs: u64, run: Duration) {
    let secs = run.as_secs_f64();
    println!(
        "| {name} | {batch} | {:.0} | {:.0} |",
        writes as f64 / secs,
        syncs as f64 / secs
    );
}

fn tempdir_in(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("exdaas-engine-{}", std::process::id()));
    std::fs::create_dir_all(&path)?;
    Ok(path)
}

/// What one write does to persy.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Today's shard writer: lookup, record insert, index put.
    Writer,
    /// A log applier: record insert and index put, no lookup.
    Applier,
    /// The value inside the index entry: one index put.
    ValueInIndex,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Self::Writer => "persy, 4 files: lookup + record + index",
            Self::Applier => "persy, 4 files: record + index",
            Self::ValueInIndex => "persy, 4 files: value in index",
        }
    }
}

/// The shard writer's persy work, one thread per shard file, new keys.
fn persy_ceiling(
    dir: &Path,
    batch: usize,
    layout: Layout,
    run: Duration,
) -> Result<(u64, u64), BoxError> {
    std::fs::create_dir_all(dir)?;
    let writes = Arc::new(AtomicU64::new(0));
    let syncs = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..SHARDS)
        .map(|shard| {
            let path = dir.join(format!("shard-{shard}.persy"));
            let (writes, syncs) = (writes.clone(), syncs.clone());
            std::thread::spawn(move || -> Result<(), BoxError> {
                let persy = open_store(&path)?;
                let started = Instant::now();
                let mut n = 0u64;
                while started.elapsed() < run {
                    let mut tx = persy.begin()?;
                    for _ in 0..batch {
                        n += 1;
                        let key = format!("s{shard}-k{n}");
                        let mut record = n.to_le_bytes().to_vec();
                        record.extend_from_slice(VALUE);
                        if let Layout::ValueInIndex = layout {
                            tx.put::<String, ByteVec>("inline", key, record.into())?;
                            continue;
                        }
                        if let Layout::Writer = layout {
                            let _absent = persy.one::<String, PersyId>("kv", &key)?;
                        }
                        let id = tx.insert("values", &record)?;
                        tx.put::<String, PersyId>("kv", key, id)?;
                    }
                    tx.put::<String, u64>("meta", "seq".to_owned(), n)?;
                    tx.prepare()?.commit()?;
                    writes.fetch_add(batch as u64, Ordering::Relaxed);
                    syncs.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "bench thread panicked")??;
    }
    Ok((
        writes.load(Ordering::Relaxed),
        syncs.load(Ordering::Relaxed),
    ))
}

fn open_store(path: &Path) -> Result<Persy, BoxError> {
    let mut config = Config::new();
    config.change_cache_size(4 * 1024 * 1024);
    Persy::open_or_create_with(path, config, |persy| {
        let mut tx = persy.begin()?;
        tx.create_segment("values")?;
        tx.create_index::<String, PersyId>("kv", ValueMode::Replace)?;
        tx.create_index::<String, u64>("meta", ValueMode::Replace)?;
        tx.create_index::<String, ByteVec>("inline", ValueMode::Replace)?;
        tx.prepare()?.commit()?;
        Ok(())
    })
    .map_err(|e| e.to_string().into())
}

/// One appender: a batch of encoded records, one write, one fdatasync.
fn log_ceiling(dir: &Path, batch: usize, run: Duration) -> std::io::Result<(u64, u64)> {
    std::fs::create_dir_all(dir)?;
    let mut file = std::fs::File::create(dir.join("commit.log"))?;
    let mut frame = Vec::with_capacity(batch * (VALUE.len() + 64));
    let (mut writes, mut syncs, mut revision) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < run {
        frame.clear();
        for _ in 0..batch {
            revision += 1;
            let key = format!("k{revision}");
            frame.extend_from_slice(&revision.to_le_bytes());
            frame.extend_from_slice(&(key.len() as u16).to_le_bytes());
            frame.extend_from_slice(key.as_bytes());
            frame.extend_from_slice(&(VALUE.len() as u32).to_le_bytes());
            frame.extend_from_slice(VALUE);
        }
        file.write_all(&frame)?;
        file.sync_data()?;
        writes += batch as u64;
        syncs += 1;
    }
    Ok((writes, syncs))
}

/// exdaas's own commit log: the same batches as `log_ceiling`, appended as
/// frames into segments filled with zeros beforehand, so a sync writes
/// data and no file size.
fn commit_log(dir: &Path, batch: usize, run: Duration) -> Result<(u64, u64), BoxError> {
    let mut log = CommitLog::open(dir, 1)?.log;
    let (mut writes, mut syncs) = (0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < run {
        let records: Vec<LogRecord> = (0..batch as u64)
            .map(|i| LogRecord::put(format!("k{}", writes + i), bytes::Bytes::from_static(VALUE)))
            .collect();
        log.append(&[(0, &records)])?;
        writes += batch as u64;
        syncs += 1;
    }
    Ok((writes, syncs))
}

/// exdaas's storage layer under `tasks` concurrent writers of new keys.
fn storage_ceiling(dir: &Path, tasks: usize, run: Duration) -> Result<u64, BoxError> {
    let settings = StorageSettings {
        data_dir: dir.to_owned(),
        shards: SHARDS as u32,
        ..StorageSettings::default()
    };
    let cache = CacheSettings {
        capacity_bytes: 64 * 1024 * 1024,
        warm_on_start: false,
    };
    let storage = Arc::new(Storage::open(&settings, &cache)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let done = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let (storage, done, writes) = (storage.clone(), done.clone(), writes.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !done.load(Ordering::Relaxed) {
                        n += 1;
                        let op = WriteOp::Put(bytes::Bytes::from_static(VALUE));
                        if storage
                            .write(format!("t{t}-k{n}"), op, Expect::Any)
                            .await
                            .is_ok()
                        {
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(run).await;
        done.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.await;
        }
    });
    storage.close();
    Ok(writes.load(Ordering::Relaxed))
}
