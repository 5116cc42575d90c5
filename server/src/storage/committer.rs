//! The log writer: the one thread that appends to the commit log, and so
//! the place where writes get their revisions and become durable.
//!
//! Shard writers hand it their decided batches and wait. It takes every
//! batch queued since its last sync, appends them as frames with one write
//! and one fdatasync (so four shards share one sync), and answers each with
//! its first revision. It also deletes log segments once every shard has
//! applied them: it is the only thread that touches the log files.
//!
//! A failed append means the disk's state is unknown (a failed fsync may
//! have dropped pages it will never report again), so the log refuses every
//! later append: the shards stop taking writes until a restart, whose
//! recovery reads what the log actually holds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use super::feed::Feed;
use super::log::{CommitLog, FrameParts, LogRecord, Retention};
use super::StoreError;

/// Appends between two attempts to delete applied segments.
const TRIM_EVERY: u64 = 256;
/// Most key and value bytes one append takes from the queue (one write,
/// one sync): it bounds the append's buffer, and so the torn tail a crash
/// can leave. A single batch larger than this still goes, alone.
const APPEND_MAX_BYTES: usize = 16 * 1024 * 1024;

/// What a shard writer gets back: its batch's first revision and its
/// records, handed back so it can publish them without copying them first.
type Appended = Result<(u64, Vec<LogRecord>), StoreError>;

/// Each shard's records of one frame (one part for a shard's batch, one
/// per shard for a transaction).
pub type Parts = Vec<(u16, Vec<LogRecord>)>;

/// What a batch of transactions gets back: each frame's first revision,
/// and the frames.
type AppendedFrames = Result<(Vec<u64>, Vec<Parts>), StoreError>;

/// Frames waiting for the log (one for a shard's batch, one per
/// transaction for a batch of them), and where their answer goes.
struct Request {
    frames: Vec<Parts>,
    /// Whether each frame was committed whole (transactions, a replica's
    /// units) rather than being one shard writer's batch.
    units: bool,
    /// Key and value bytes of all frames.
    bytes: usize,
    reply: SyncSender<AppendedFrames>,
}

/// How far each shard's writes have gone: logged by this thread, applied
/// to the shard's store by its applier.
#[derive(Debug, Default)]
pub struct Progress {
    /// Highest revision logged for the shard.
    pub logged: AtomicU64,
    /// Every revision of the shard up to this one is in its store.
    pub applied: AtomicU64,
    /// The shard's unapplied writes are held outside the log (`held`):
    /// the log need not keep them.
    pub held: AtomicBool,
}

impl Progress {
    /// The lowest revision whose segment the shard still needs: none
    /// (`u64::MAX`) once its store has everything it logged.
    fn trim_floor(&self) -> u64 {
        if self.held.load(Ordering::Acquire) {
            return u64::MAX;
        }
        let applied = self.applied.load(Ordering::Acquire);
        if self.logged.load(Ordering::Acquire) <= applied {
            u64::MAX
        } else {
            applied
        }
    }
}

/// Why the log stopped taking appends, once it has: set once, by the log
/// writer, read by every write and by `/ready`.
pub type LogFailure = Arc<OnceLock<String>>;

/// A shard writer's way to the log.
#[derive(Clone)]
pub struct LogHandle {
    queue: SyncSender<Request>,
}

impl LogHandle {
    /// Makes `records` durable; returns the revision of the first (the rest
    /// follow in order) and the records. Blocks until the log is synced.
    pub fn append(&self, shard: usize, records: Vec<LogRecord>) -> Appended {
        let (firsts, mut frames) = self.submit(vec![vec![(shard as u16, records)]], false)?;
        match (
            firsts.first(),
            frames.pop().and_then(|mut parts| parts.pop()),
        ) {
            (Some(first), Some((_, records))) => Ok((*first, records)),
            _ => Err(StoreError::Corrupt("the log answered no frame".into())),
        }
    }

    /// Makes several units durable with one append, each one frame, whole
    /// or not at all (transactions; a replica's units): each frame's parts
    /// in revision order. Returns each frame's first revision (they run on
    /// through its parts in order) and the frames.
    pub fn append_frames(&self, frames: Vec<Parts>) -> AppendedFrames {
        self.submit(frames, true)
    }

    fn submit(&self, frames: Vec<Parts>, units: bool) -> AppendedFrames {
        let (reply, answer) = sync_channel(1);
        let bytes = frames
            .iter()
            .flatten()
            .map(|(_, records)| super::log::payload_bytes(records))
            .sum();
        let request = Request {
            frames,
            units,
            bytes,
            reply,
        };
        self.queue
            .send(request)
            .map_err(|_| StoreError::ShuttingDown)?;
        answer.recv().map_err(|_| StoreError::ShuttingDown)?
    }
}

/// What the log writer keeps up to date besides the log.
pub struct Followers {
    /// How far each shard's writes have gone.
    pub progress: Vec<Arc<Progress>>,
    /// Set if an append fails.
    pub failure: LogFailure,
    /// Gets every synced frame's records.
    pub feed: Arc<Feed>,
    /// What applied segments to keep for the feed.
    pub retention: Retention,
}

/// Starts the log writer over `log`; it stops once every handle is gone.
pub fn start(
    log: CommitLog,
    queue_depth: usize,
    followers: Followers,
) -> Result<(LogHandle, JoinHandle<()>), StoreError> {
    let (queue, requests) = sync_channel(queue_depth.max(1));
    let handle = std::thread::Builder::new()
        .name("commit-log".into())
        .spawn(move || run(log, requests, followers))
        .map_err(|e| StoreError::Io(format!("cannot start the log writer: {e}")))?;
    Ok((LogHandle { queue }, handle))
}

/// Raises each shard's logged revision to its last record in a frame whose
/// first revision is `first`.
fn note_logged(progress: &[Arc<Progress>], first: u64, parts: &Parts) {
    let mut revision = first;
    for (shard, records) in parts {
        revision += records.len() as u64;
        if let (Some(p), Some(last)) = (progress.get(*shard as usize), revision.checked_sub(1)) {
            if !records.is_empty() {
                p.logged.fetch_max(last, Ordering::AcqRel);
            }
        }
    }
}

/// Hands the feed the records of a synced append, in revision order.
fn publish(feed: &Feed, firsts: &[u64], batch: &[Request]) {
    let frames = batch
        .iter()
        .flat_map(|r| r.frames.iter().map(move |parts| (parts, r.units)));
    for (first, (parts, unit)) in firsts.iter().zip(frames) {
        let records: Vec<&LogRecord> = parts.iter().flat_map(|(_, r)| r).collect();
        feed.publish(*first, &records, unit);
    }
}

fn run(mut log: CommitLog, requests: Receiver<Request>, followers: Followers) {
    let Followers {
        progress,
        failure,
        feed,
        retention,
    } = followers;
    let mut appends = 0u64;
    let mut carried: Option<Request> = None;
    while let Some(first) = carried.take().or_else(|| requests.recv().ok()) {
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while bytes < APPEND_MAX_BYTES {
            let Ok(next) = requests.try_recv() else { break };
            if bytes + next.bytes > APPEND_MAX_BYTES {
                carried = Some(next);
                break;
            }
            bytes += next.bytes;
            batch.push(next);
        }
        if let Some(why) = failure.get() {
            for request in batch {
                let _ = request.reply.send(Err(StoreError::LogFailed(why.clone())));
            }
            continue;
        }
        let frames: Vec<FrameParts<'_>> = batch
            .iter()
            .flat_map(|r| r.frames.iter().map(move |parts| (parts, r.units)))
            .map(|(parts, unit)| FrameParts {
                parts: parts
                    .iter()
                    .map(|(s, recs)| (*s, recs.as_slice()))
                    .collect(),
                unit,
            })
            .collect();
        match log.append_frames(&frames) {
            Ok(firsts) => {
                publish(&feed, &firsts, &batch);
                let mut firsts = firsts.into_iter();
                for request in batch {
                    let mine: Vec<u64> = firsts.by_ref().take(request.frames.len()).collect();
                    for (first, parts) in mine.iter().zip(&request.frames) {
                        note_logged(&progress, *first, parts);
                    }
                    let _ = request.reply.send(Ok((mine, request.frames)));
                }
            }
            Err(e) if e.wrote_nothing() => {
                // Nothing reached the log: refuse this batch, take the next.
                tracing::warn!(error = %e, "commit log append refused; nothing was written");
                for request in &batch {
                    let _ = request.reply.send(Err(e.clone()));
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "commit log append failed; no more writes until restart");
                let why = failure.get_or_init(|| e.to_string());
                for request in &batch {
                    let _ = request.reply.send(Err(StoreError::LogFailed(why.clone())));
                }
                continue;
            }
        }
        appends += 1;
        if appends % TRIM_EVERY == 0 {
            let applied = progress.iter().map(|p| p.trim_floor()).min().unwrap_or(0);
            if let Err(e) = log.trim(applied.min(log.retention_floor(retention))) {
                tracing::warn!(error = %e, "could not delete applied log segments");
            }
            feed.set_oldest(log.oldest_revision());
        }
    }
    tracing::debug!("commit log writer stopped");
}
