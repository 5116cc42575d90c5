//! The audit trail: one JSON record per admin action and per refused
//! request (time, who, from where, action, target, outcome, request id),
//! appended to `audit.log` by one writer thread that syncs each batch, and
//! rotated by size (`audit.log.1` is the newest old file).
//!
//! Requests hand records over a bounded queue and never wait for the disk:
//! a flood of refused requests must not slow the server down. Records that
//! find the queue full are counted, and the count is written as a record of
//! its own once there is room, so a gap in the trail is visible in it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::config::AuditSettings;

/// The file records are appended to, in the audit directory.
const CURRENT: &str = "audit.log";
/// Records waiting for the writer at most.
const QUEUE: usize = 4096;
/// Records written between two syncs at most.
const BATCH: usize = 256;
/// The longest text field kept in a record.
const MAX_FIELD_BYTES: usize = 256;

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Its place in the trail: 1, 2, ... across restarts and rotations.
    #[serde(default)]
    pub seq: u64,
    /// When, RFC 3339.
    pub at: String,
    /// The token name or certificate identity (`open` without tokens,
    /// `unknown` when none was recognised).
    pub who: String,
    /// The client's address.
    pub peer: String,
    /// What was asked: the operation's name (`plugin_upload`, `backup`).
    pub action: String,
    /// What it was asked of: a plugin name, a key, a path.
    pub target: String,
    /// `ok`, `denied` (401, 403, 429) or `failed` (other errors).
    pub outcome: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The request's `x-request-id`.
    pub request_id: String,
}

impl Record {
    /// A record with its text fields escaped and capped.
    pub fn new(
        who: &str,
        peer: String,
        action: &str,
        target: &str,
        status: u16,
        request_id: &str,
    ) -> Self {
        let outcome = match status {
            401 | 403 | 429 => "denied",
            s if s < 400 => "ok",
            _ => "failed",
        };
        let field = |text: &str| crate::logsafe::escape(text, MAX_FIELD_BYTES);
        Self {
            seq: 0,
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            who: field(who),
            peer,
            action: action.to_owned(),
            target: field(target),
            outcome: outcome.to_owned(),
            status,
            request_id: field(request_id),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AuditMetrics {
    /// Records written.
    pub written: AtomicU64,
    /// Records lost to a full queue or a failed write.
    pub dropped: AtomicU64,
}

/// The trail: a queue to its writer, and where its files are.
pub struct Audit {
    tx: Mutex<Option<SyncSender<Record>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Counters for `/metrics`.
    pub metrics: Arc<AuditMetrics>,
    /// Records refused by a full queue and not yet reported in the trail.
    unreported: Arc<AtomicU64>,
}

impl Audit {
    /// Opens the trail in `dir` (created if missing) and starts its writer.
    pub fn open(dir: &Path, settings: &AuditSettings) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let next_seq = last_seq(dir)? + 1;
        let (tx, rx) = sync_channel(QUEUE);
        let metrics = Arc::new(AuditMetrics::default());
        let unreported = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            dir: dir.to_owned(),
            max_file_bytes: settings.max_file_bytes,
            keep_files: settings.keep_files,
            next_seq,
            metrics: Arc::clone(&metrics),
            unreported: Arc::clone(&unreported),
        };
        let handle = std::thread::Builder::new()
            .name("exdaas-audit".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            metrics,
            unreported,
        })
    }

    /// Queues `record`; counts it as dropped if the queue is full.
    pub fn record(&self, record: Record) {
        let tx = self.tx.lock().ok().and_then(|tx| tx.clone());
        let Some(tx) = tx else { return };
        match tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                self.unreported.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes what is queued and stops the writer (at shutdown).
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
    }
}

/// The audit files, oldest first.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("audit.log.")?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut all: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    all.push(dir.join(CURRENT));
    all
}

/// The records of `path`; a line that does not parse (a torn last line
/// after a crash) is passed over.
fn records(path: &Path) -> impl Iterator<Item = Record> {
    File::open(path)
        .ok()
        .into_iter()
        .flat_map(|f| BufReader::new(f).lines().map_while(Result::ok))
        .filter_map(|line| serde_json::from_str::<Record>(&line).ok())
}

fn last_seq(dir: &Path) -> std::io::Result<u64> {
    Ok(files(dir)
        .iter()
        .rev()
        .find_map(|f| records(f).last())
        .map_or(0, |r| r.seq))
}

/// Up to `limit` records of the trail in `dir` with `seq` above `after`,
/// oldest first, and whether more follow.
pub fn read_page(dir: &Path, after: u64, limit: usize) -> std::io::Result<(Vec<Record>, bool)> {
    let mut page = Vec::with_capacity(limit.min(1024));
    for file in files(dir) {
        for record in records(&file).filter(|r| r.seq > after) {
            if page.len() == limit {
                return Ok((page, true));
            }
            page.push(record);
        }
    }
    Ok((page, false))
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    max_file_bytes: u64,
    keep_files: u32,
    next_seq: u64,
    metrics: Arc<AuditMetrics>,
    unreported: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Record>) {
        let mut file = self.open_current();
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter().take(BATCH - 1));
            let dropped = self.unreported.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                batch.push(Record::new(
                    "exdaas",
                    String::new(),
                    "audit_records_dropped",
                    &dropped.to_string(),
                    503,
                    "",
                ));
            }
            if let Err(e) = self.write_batch(&mut file, batch) {
                tracing::error!(error = %e, "audit trail write failed; records lost");
                file = self.open_current();
            }
        }
        if let Some(f) = &file {
            let _ = f.sync_data();
        }
    }

    fn open_current(&self) -> Option<File> {
        let opened = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(CURRENT));
        match opened {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!(error = %e, dir = %self.dir.display(), "cannot open the audit trail");
                None
            }
        }
    }

    /// Appends the batch, syncs it, and rotates when the file is full.
    fn write_batch(&mut self, file: &mut Option<File>, batch: Vec<Record>) -> std::io::Result<()> {
        let n = batch.len() as u64;
        let Some(f) = file.as_mut() else {
            self.metrics.dropped.fetch_add(n, Ordering::Relaxed);
            return Err(std::io::Error::other("no audit file"));
        };
        let mut text = Vec::with_capacity(batch.len() * 200);
        for mut record in batch {
            record.seq = self.next_seq;
            self.next_seq += 1;
            serde_json::to_writer(&mut text, &record).map_err(std::io::Error::other)?;
            text.push(b'\n');
        }
        let written = f.write_all(&text).and_then(|()| f.sync_data());
        if let Err(e) = written {
            self.metrics.dropped.fetch_add(n, Ordering::Relaxed);
            return Err(e);
        }
        self.metrics.written.fetch_add(n, Ordering::Relaxed);
        if f.metadata()?.len() >= self.max_file_bytes {
            *file = None;
            self.rotate()?;
            *file = self.open_current();
        }
        Ok(())
    }

    /// `audit.log` becomes `audit.log.1`, each older one moves up, and
    /// the oldest past `keep_files` goes.
    fn rotate(&self) -> std::io::Result<()> {
        let name = |n: u32| self.dir.join(format!("{CURRENT}.{n}"));
        let _ = std::fs::remove_file(name(self.keep_files));
        for n in (1..self.keep_files).rev() {
            if name(n).exists() {
                std::fs::rename(name(n), name(n + 1))?;
            }
        }
        if self.keep_files > 0 {
            std::fs::rename(self.dir.join(CURRENT), name(1))?;
        } else {
            std::fs::remove_file(self.dir.join(CURRENT))?;
        }
        crate::storage::manifest::sync_dir(&self.dir).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(max_file_bytes: u64) -> AuditSettings {
        AuditSettings {
            enabled: true,
            dir: None,
            max_file_bytes,
            keep_files: 2,
        }
    }

    fn record(i: u64) -> Record {
        Record::new(
            "ops",
            "127.0.0.1".into(),
            "backup",
            &format!("t{i}\n"),
            200,
            "r",
        )
    }

    #[test]
    fn records_are_numbered_paged_rotated_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path(), &settings(2_000)).unwrap();
        for i in 0..40 {
            audit.record(record(i));
        }
        audit.close();
        assert!(dir.path().join("audit.log.1").exists(), "rotated by size");
        assert!(
            !dir.path().join("audit.log.3").exists(),
            "at most keep_files old files"
        );
        let audit = Audit::open(dir.path(), &settings(2_000)).unwrap();
        audit.record(record(40));
        audit.close();
        let (all, more) = read_page(dir.path(), 0, 1000).unwrap();
        assert!(!more);
        let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
        assert_eq!(
            *seqs.last().unwrap(),
            41,
            "numbering goes on after a reopen"
        );
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert_eq!(
            all[0].target,
            "t".to_owned() + &(seqs[0] - 1).to_string() + "\\n"
        );
        let (page, more) = read_page(dir.path(), seqs[0], 2).unwrap();
        assert_eq!((page.len(), more), (2, true));
        assert_eq!(page[0].seq, seqs[0] + 1);
        assert_eq!(all[0].outcome, "ok");
    }

    #[test]
    fn outcomes_follow_the_status() {
        let r = |status| Record::new("x", String::new(), "a", "t", status, "").outcome;
        assert_eq!(
            (r(200), r(403), r(401), r(429), r(500)),
            (
                "ok".into(),
                "denied".into(),
                "denied".into(),
                "denied".into(),
                "failed".into()
            )
        );
    }
}
