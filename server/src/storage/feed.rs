//! The change feed's source: every committed log record, read by revision
//! (see "Change feed" in `docs/design/write-path.md`).
//!
//! The log writer appends each synced frame's records to one shared ring
//! of recent changes and moves the committed revision on, which wakes the
//! readers. A reader is only a cursor: it copies the next changes past its
//! revision out of the ring or, when it is older than the ring, out of the
//! log segments on disk. Memory is the ring's bound plus one batch per
//! reader, however many readers there are and however far behind.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use super::log::{self, Frame, LogRecord};
use super::StoreError;

/// What a change did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A value was stored.
    Put,
    /// The key was deleted.
    Delete,
    /// The key's value expired and was removed.
    Expire,
}

impl ChangeKind {
    /// The name events carry.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Put => "put",
            ChangeKind::Delete => "delete",
            ChangeKind::Expire => "expire",
        }
    }
}

/// One committed write to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its revision: the version it gave the key.
    pub revision: u64,
    /// The key.
    pub key: String,
    /// What it did.
    pub kind: ChangeKind,
    /// The value stored (puts only).
    pub value: Option<Bytes>,
    /// When the stored value expires (puts), or expired (expiries), in
    /// milliseconds since the Unix epoch.
    pub expires_at: Option<u64>,
    /// The revision of the last change of its unit: the log frame it came
    /// in, which a crash keeps or loses whole (a transaction, or a shard
    /// writer's batch). Its own revision when it is a unit by itself.
    pub unit_end: u64,
}

impl Change {
    fn of(revision: u64, record: &LogRecord, unit_end: u64) -> Self {
        let kind = match (&record.value, record.is_expiry()) {
            (Some(_), _) => ChangeKind::Put,
            (None, true) => ChangeKind::Expire,
            (None, false) => ChangeKind::Delete,
        };
        Self {
            revision,
            key: record.key.clone(),
            kind,
            value: record.value.clone(),
            expires_at: record.expires_at,
            unit_end,
        }
    }

    /// Memory it takes, roughly.
    pub fn weight(&self) -> usize {
        CHANGE_OVERHEAD + self.key.len() + self.value.as_ref().map_or(0, Bytes::len)
    }
}

/// Bytes a change costs in the ring besides its key and value.
const CHANGE_OVERHEAD: usize = 96;

/// Why a read of the feed found nothing to give.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FeedError {
    /// The revision asked for is older than anything still held.
    #[error("revision {asked} is no longer held; the oldest held is {oldest}")]
    Compacted {
        /// The revision asked for.
        asked: u64,
        /// The oldest revision still held.
        oldest: u64,
    },
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one read of the feed gives.
#[derive(Debug, Default)]
pub struct Batch {
    /// The matching changes, in revision order.
    pub changes: Vec<Change>,
    /// Where the next read starts: past everything this one looked at,
    /// matching or not.
    pub next: u64,
}

/// How much a read takes at most.
#[derive(Debug, Clone, Copy)]
pub struct ReadBound {
    /// Most changes returned.
    pub changes: usize,
    /// Most key and value bytes returned (at least one change goes).
    pub bytes: usize,
    /// Most changes looked at, matching or not: a read for a prefix that
    /// matches little returns after this many, so it never holds the ring
    /// (which the log writer needs) for long.
    pub scan: usize,
}

impl ReadBound {
    fn full(&self, returned: usize, bytes: usize, scanned: usize) -> bool {
        returned >= self.changes || (bytes >= self.bytes && bytes > 0) || scanned >= self.scan
    }
}

/// Recent changes, oldest first; `first` is the revision of the front.
#[derive(Debug)]
struct Ring {
    changes: VecDeque<Change>,
    first: u64,
    bytes: usize,
    max_bytes: usize,
}

impl Ring {
    fn push(&mut self, change: Change) {
        self.bytes += change.weight();
        self.changes.push_back(change);
        while self.bytes > self.max_bytes {
            let Some(old) = self.changes.pop_front() else {
                break;
            };
            self.bytes -= old.weight();
            self.first = old.revision + 1;
        }
    }
}

/// Counters of the feed's readers, for `/metrics`.
#[derive(Debug, Default)]
pub struct FeedMetrics {
    /// Streams and long polls open now.
    pub subscribers: AtomicUsize,
    /// Events sent to readers.
    pub events_sent: AtomicU64,
    /// Readers refused at `feed.max_subscribers`.
    pub refused: AtomicU64,
    /// Streams ended by the server, by cause: lagged, compacted, shutdown.
    pub lagged: AtomicU64,
    /// See `lagged`.
    pub compacted: AtomicU64,
    /// See `lagged`.
    pub shutdown: AtomicU64,
}

/// A segment as last read: its name, the last revision it then held.
#[derive(Debug)]
struct Decoded {
    first: u64,
    last: u64,
    frames: Arc<Vec<Frame>>,
}

/// The feed: the ring, the committed revision, and where the log is.
#[derive(Debug)]
pub struct Feed {
    ring: Mutex<Ring>,
    head: watch::Sender<u64>,
    /// The first revision the log still holds.
    oldest: AtomicU64,
    log_dir: PathBuf,
    /// The last segment read from disk, decoded (see `frames_of`).
    decoded: Mutex<Option<Decoded>>,
    closed: watch::Sender<bool>,
    /// Readers' counters.
    pub metrics: FeedMetrics,
}

impl Feed {
    /// A feed whose log (in `log_dir`) holds revisions `oldest..=head`,
    /// keeping up to `ring_bytes` of changes in memory.
    pub fn new(log_dir: PathBuf, oldest: u64, head: u64, ring_bytes: usize) -> Self {
        Self {
            ring: Mutex::new(Ring {
                changes: VecDeque::new(),
                first: head + 1,
                bytes: 0,
                max_bytes: ring_bytes,
            }),
            head: watch::Sender::new(head),
            oldest: AtomicU64::new(oldest),
            log_dir,
            decoded: Mutex::new(None),
            closed: watch::Sender::new(false),
            metrics: FeedMetrics::default(),
        }
    }

    /// Adds a synced frame's records (the first at `first`; a `unit`
    /// when the frame was committed whole) and moves the committed
    /// revision past them. The log writer's only cost.
    pub fn publish(&self, first: u64, records: &[&LogRecord], unit: bool) {
        if records.is_empty() {
            return;
        }
        let last = first + records.len() as u64 - 1;
        {
            let mut ring = self.lock_ring();
            for (i, record) in records.iter().enumerate() {
                let revision = first + i as u64;
                let unit_end = if unit { last } else { revision };
                ring.push(Change::of(revision, record, unit_end));
            }
        }
        self.head.send_replace(last);
    }

    /// The log's oldest revision moved on (segments were deleted).
    pub fn set_oldest(&self, oldest: u64) {
        self.oldest.store(oldest, Ordering::Release);
    }

    /// The newest committed revision.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// The oldest revision still held.
    pub fn oldest(&self) -> u64 {
        self.oldest
            .load(Ordering::Acquire)
            .min(self.lock_ring().first)
    }

    /// Key and value bytes (and overhead) held in the ring.
    pub fn ring_bytes(&self) -> usize {
        self.lock_ring().bytes
    }

    /// Watches the committed revision.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Watches for the server stopping.
    pub fn watch_closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Ends every stream: the server is stopping.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    fn lock_ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The changes from revision `from` on that `wanted` keeps, from the
    /// ring when it reaches back that far; `None` when the disk must be
    /// read (see [`Feed::read_disk`]).
    pub fn read_ring(
        &self,
        from: u64,
        wanted: &dyn Fn(&str) -> bool,
        bound: ReadBound,
    ) -> Option<Batch> {
        let ring = self.lock_ring();
        if from < ring.first {
            return None;
        }
        let mut batch = Batch {
            changes: Vec::new(),
            next: from,
        };
        let skip = usize::try_from(from - ring.first).unwrap_or(usize::MAX);
        let mut bytes = 0;
        for (scanned, change) in ring.changes.iter().skip(skip).enumerate() {
            if bound.full(batch.changes.len(), bytes, scanned) {
                break;
            }
            if wanted(&change.key) {
                bytes += change.weight();
                batch.changes.push(change.clone());
            }
            batch.next = change.revision + 1;
        }
        Some(batch)
    }

    /// The changes from revision `from` on, read from the log segments on
    /// disk (blocking): from the segment that holds `from`, and the ones
    /// after it until something matches or the bound is reached.
    pub fn read_disk(
        &self,
        from: u64,
        wanted: &dyn Fn(&str) -> bool,
        bound: ReadBound,
    ) -> Result<Batch, FeedError> {
        let compacted = || FeedError::Compacted {
            asked: from,
            oldest: self.oldest(),
        };
        if from < self.oldest() {
            return Err(compacted());
        }
        let head = self.head();
        let segments = log::segment_files(&self.log_dir)?;
        let Some(start) = segments.iter().rposition(|(first, _)| *first <= from) else {
            return Err(compacted());
        };
        let mut batch = Batch {
            changes: Vec::new(),
            next: from,
        };
        let mut bytes = 0;
        let mut scanned = 0;
        for (i, (first, path)) in segments.iter().enumerate().skip(start) {
            let newest = i + 1 == segments.len();
            let frames = match self.frames_of(*first, path, newest, batch.next) {
                Ok(frames) => frames,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(compacted()),
                Err(e) => {
                    return Err(StoreError::Io(format!("{}: {e}", path.display())).into());
                }
            };
            for frame in frames.iter() {
                for (n, record) in frame.records.iter().enumerate() {
                    let revision = frame.first_revision + n as u64;
                    if revision < batch.next || revision > head {
                        continue;
                    }
                    if bound.full(batch.changes.len(), bytes, scanned) {
                        return Ok(batch);
                    }
                    scanned += 1;
                    if wanted(&record.key) {
                        let unit_end = frame.unit_last.unwrap_or(revision);
                        let change = Change::of(revision, record, unit_end);
                        bytes += change.weight();
                        batch.changes.push(change);
                    }
                    batch.next = revision + 1;
                }
            }
            // This segment is read to its end: the next one starts where
            // its name says (which covers revisions no frame holds).
            match segments.get(i + 1) {
                Some((next_first, _)) => batch.next = batch.next.max(*next_first).min(head + 1),
                None => break,
            }
            if !batch.changes.is_empty() {
                break;
            }
        }
        Ok(batch)
    }

    /// The frames of one segment, for a read from revision `from`. The
    /// last segment read is kept decoded, so readers catching up through
    /// it in batches read it once: always if it is closed, and while it
    /// reaches `from` if it is the newest (still being written).
    fn frames_of(
        &self,
        first: u64,
        path: &std::path::Path,
        newest: bool,
        from: u64,
    ) -> std::io::Result<Arc<Vec<Frame>>> {
        let mut decoded = self.decoded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kept) = decoded.as_ref() {
            if kept.first == first && (!newest || from <= kept.last) {
                return Ok(Arc::clone(&kept.frames));
            }
        }
        let frames = Arc::new(log::read_frames(path)?);
        let last = frames
            .last()
            .map_or(0, |f| f.first_revision + f.records.len() as u64)
            .saturating_sub(1);
        *decoded = Some(Decoded {
            first,
            last,
            frames: Arc::clone(&frames),
        });
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn put(key: &str) -> LogRecord {
        LogRecord::put(key.into(), Bytes::from_static(b"1"))
    }

    const ALL: ReadBound = ReadBound {
        changes: 1000,
        bytes: 1 << 20,
        scan: 1000,
    };

    #[test]
    fn the_ring_keeps_the_newest_within_its_bound_and_reads_by_revision() {
        let dir = tempfile::tempdir().unwrap();
        let feed = Feed::new(dir.path().into(), 1, 0, 5 * (CHANGE_OVERHEAD + 3));
        let records: Vec<LogRecord> = (0..8).map(|i| put(&format!("k{i}"))).collect();
        let refs: Vec<&LogRecord> = records.iter().collect();
        feed.publish(1, &refs[..4], false);
        feed.publish(5, &refs[4..], false);
        assert_eq!(feed.head(), 8);
        // Five fit: revisions 4..=8.
        assert!(feed.read_ring(3, &|_| true, ALL).is_none());
        let batch = feed.read_ring(4, &|_| true, ALL).unwrap();
        let revisions: Vec<u64> = batch.changes.iter().map(|c| c.revision).collect();
        assert_eq!(revisions, [4, 5, 6, 7, 8]);
        assert_eq!(batch.next, 9);
        // A filter that keeps nothing still moves the cursor on.
        let none = feed.read_ring(4, &|_| false, ALL).unwrap();
        assert!(none.changes.is_empty());
        assert_eq!(none.next, 9);
        let bounded = ReadBound { changes: 2, ..ALL };
        let two = feed.read_ring(5, &|_| true, bounded).unwrap();
        assert_eq!(two.changes.len(), 2);
        assert_eq!(two.next, 7);
        // Past the head: nothing yet.
        let later = feed.read_ring(9, &|_| true, ALL).unwrap();
        assert!(later.changes.is_empty());
        assert_eq!(later.next, 9);
        // Looking at few changes returns early, the cursor where it stopped.
        let scan = ReadBound { scan: 2, ..ALL };
        let short = feed.read_ring(4, &|_| false, scan).unwrap();
        assert_eq!(short.next, 6);
    }

    #[test]
    fn the_disk_gives_what_the_log_holds_up_to_the_head_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log::CommitLog::open(dir.path(), 1).unwrap().log;
        let a = [put("a/1"), put("b/1"), LogRecord::delete("a/1".into())];
        let b = [LogRecord::expiry("b/1".into(), 5), put("a/2")];
        log.append(&[(0, &a[..]), (1, &b[..])]).unwrap();
        let log_dir = dir.path().join(log::LOG_DIR);
        // Revision 5 is written but not yet committed as far as the feed
        // knows: it is not given.
        let feed = Feed::new(log_dir, 1, 4, 0);
        let batch = feed.read_disk(1, &|k| k.starts_with("a/"), ALL).unwrap();
        let seen: Vec<(u64, ChangeKind)> =
            batch.changes.iter().map(|c| (c.revision, c.kind)).collect();
        assert_eq!(seen, [(1, ChangeKind::Put), (3, ChangeKind::Delete)]);
        assert_eq!(batch.next, 5);
        let expiry = feed.read_disk(4, &|_| true, ALL).unwrap();
        assert_eq!(expiry.changes[0].kind, ChangeKind::Expire);
        assert_eq!(expiry.changes[0].expires_at, Some(5));
        feed.set_oldest(3);
        assert!(matches!(
            feed.read_disk(2, &|_| true, ALL),
            Err(FeedError::Compacted {
                asked: 2,
                oldest: 3
            })
        ));
    }

    /// A unit's changes say where it ends, from the ring and from the
    /// segments alike; a batch's changes are units each.
    #[test]
    fn changes_say_where_their_unit_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log::CommitLog::open(dir.path(), 1).unwrap().log;
        let records: Vec<LogRecord> = (0..6).map(|i| put(&format!("k{i}"))).collect();
        fn frame(parts: Vec<(u16, &[LogRecord])>, unit: bool) -> log::FrameParts<'_> {
            log::FrameParts { parts, unit }
        }
        log.append_frames(&[
            frame(vec![(0, &records[0..2])], false),
            frame(vec![(0, &records[2..3]), (1, &records[3..5])], true),
            frame(vec![(1, &records[5..6])], true),
        ])
        .unwrap();
        let disk = Feed::new(dir.path().join(log::LOG_DIR), 1, 6, 0);
        let ring = Feed::new(dir.path().join("unused"), 1, 0, 1 << 20);
        let refs: Vec<&LogRecord> = records.iter().collect();
        ring.publish(1, &refs[0..2], false);
        ring.publish(3, &refs[2..5], true);
        ring.publish(6, &refs[5..6], true);
        let from_disk = disk.read_disk(1, &|_| true, ALL).unwrap();
        let from_ring = ring.read_ring(1, &|_| true, ALL).unwrap();
        for batch in [from_disk, from_ring] {
            let ends: Vec<(u64, u64)> = batch
                .changes
                .iter()
                .map(|c| (c.revision, c.unit_end))
                .collect();
            assert_eq!(ends, [(1, 1), (2, 2), (3, 5), (4, 5), (5, 5), (6, 6)]);
        }
    }
}
