//! The shard writer: decides every write to its shard, in order, and has
//! it committed.
//!
//! Each shard has one dedicated OS thread fed by a bounded channel. It waits
//! for a command, takes whatever else is already queued (up to
//! `storage.max_batch`), and decides each command against the key's latest
//! committed state (memtable, cache, store) and the batch's own earlier
//! commands: conditions, created or replaced, unchanged, deleted. The writes
//! that change something go to the commit log as one frame (the log writer
//! syncs the frames of all shards together). Only once the log is synced
//! does it publish the new states (memtable, then cache) and answer every
//! command, so a 2xx always means "on disk", and readers never see a state
//! that is not committed. The store itself is brought up to date later by
//! the shard's applier (see `docs/design/write-path.md`).
//!
//! If the log append fails, the batch's commands get an error and the shard
//! is poisoned: it refuses further writes until the process restarts and
//! recovery establishes what reached the disk, instead of guessing. Reads
//! keep working.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::applier::ApplyHealth;
use super::cache::{Cached, ShardCache};
use super::committer::LogHandle;
use super::keyfilter::KeyFilter;
use super::log::LogRecord;
use super::memtable::{Memtable, Pending};
use super::metrics::ShardMetrics;
use super::store::{ShardStore, StoredValue};
use super::StoreError;

/// What a write does to its key.
#[derive(Clone)]
pub enum WriteOp {
    /// Store this JSON document (already validated).
    Put(Bytes),
    /// Remove the key.
    Delete,
    /// Store what this computes from the key's latest state (`None`:
    /// absent). Computed by the shard writer itself, so nothing can come
    /// between the state it reads and the value it writes, and many
    /// derivations of one key (a hot counter) share one commit.
    Derive(Derivation),
    /// Remove the key if its state has expired (the sweeper's delete):
    /// to every other write an expired key is already absent.
    Expire,
}

/// What a write does to the key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The new value does not expire.
    Never,
    /// The new value expires when the one it replaces did.
    Keep,
    /// The new value expires at this instant (ms since the Unix epoch).
    At(u64),
    /// As `Keep` when the value replaced expires, else as `At`: a window
    /// that starts with its first write (a rate limiter's counter).
    KeepOrAt(u64),
}

impl Expiry {
    /// A write's expiry when it names none: a value given whole does not
    /// expire (as a PUT without `ttl` clears it); a computed one keeps its
    /// key's.
    pub fn default_for(op: &WriteOp) -> Self {
        match op {
            WriteOp::Derive(_) => Self::Keep,
            _ => Self::Never,
        }
    }
}

impl std::fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Put(json) => f.debug_tuple("Put").field(&json.len()).finish(),
            Self::Delete => f.write_str("Delete"),
            Self::Derive(_) => f.write_str("Derive"),
            Self::Expire => f.write_str("Expire"),
        }
    }
}

/// A new value computed from the current one: `None` declines the write
/// (the derivation keeps its own account of why). Called once per
/// decision, on the shard writer, so it must be quick: it is bounded by the
/// value size limits like every parse of a value.
pub type Derivation = Arc<dyn Fn(Option<&[u8]>) -> Option<Bytes> + Send + Sync>;

/// The state the key must be in for the write to apply; checked by the
/// writer against the latest state, so it is race-free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No condition.
    Any,
    /// The key must be absent (`If-None-Match: *`).
    Absent,
    /// The key must exist, at any version (`If-Match: *`).
    Present,
    /// The key must hold one of these versions (`If-Match: "3"`).
    OneOf(Vec<u64>),
    /// The key must be absent or hold none of these versions
    /// (`If-None-Match: "3"`).
    NoneOf(Vec<u64>),
    /// Every one of these must hold (`If-Match` and `If-None-Match` together).
    All(Vec<Expect>),
}

impl Expect {
    /// "The key is still as I saw it": backs the plugin chain's re-check
    /// that the old value it ran against is the one the write replaces.
    pub fn unchanged_since(version: Option<u64>) -> Self {
        match version {
            Some(v) => Self::OneOf(vec![v]),
            None => Self::Absent,
        }
    }

    /// Whether a key at `current` (`None`: absent) satisfies the condition.
    pub fn holds(&self, current: Option<u64>) -> bool {
        match (self, current) {
            (Self::Any, _) => true,
            (Self::Absent, v) => v.is_none(),
            (Self::Present, v) => v.is_some(),
            (Self::OneOf(list), Some(v)) => list.contains(&v),
            (Self::OneOf(_), None) => false,
            (Self::NoneOf(list), Some(v)) => !list.contains(&v),
            (Self::NoneOf(_), None) => true,
            (Self::All(all), v) => all.iter().all(|e| e.holds(v)),
        }
    }
}

/// What happened to a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The key did not exist and now holds `version`.
    Created {
        /// The new version.
        version: u64,
    },
    /// The key existed and now holds `version`.
    Replaced {
        /// The new version.
        version: u64,
    },
    /// The same bytes were already stored; nothing was written.
    Unchanged {
        /// The version already stored.
        version: u64,
    },
    /// The key was removed; `version` is the one it held.
    Deleted {
        /// The version that was removed.
        version: u64,
        /// The revision of the delete itself.
        revision: u64,
    },
    /// A delete found nothing to remove.
    Missing,
    /// The `Expect` did not hold; nothing was written.
    Conflict {
        /// The version found (`None`: absent).
        current: Option<u64>,
    },
    /// A derivation declined to write; nothing was written.
    Declined {
        /// The version it saw (`None`: absent).
        current: Option<u64>,
    },
}

/// Called once with a write's result, on the writer thread. A callback
/// rather than a channel so the plugin pipeline can route the answer
/// straight to the waiting request.
pub type Reply = Box<dyn FnOnce(Result<WriteOutcome, StoreError>) + Send>;

/// A write waiting for its shard writer.
pub(crate) struct WriteCommand {
    pub key: String,
    pub op: WriteOp,
    pub expect: Expect,
    pub expiry: Expiry,
    pub reply: Reply,
}

/// Messages to a writer thread.
pub(crate) enum WriterMsg {
    Write(WriteCommand),
    /// Finish what was queued before this message, then exit.
    Stop,
}

/// State owned by one writer thread.
pub(crate) struct ShardWriter {
    pub shard: usize,
    pub store: ShardStore,
    pub cache: Arc<ShardCache>,
    pub memtable: Arc<Memtable>,
    pub filter: Arc<KeyFilter>,
    pub log: LogHandle,
    /// Held (shared) from a batch's log append until it is published: a
    /// storage cut holds it exclusively, so it sees every logged write
    /// published (see `snapshot`).
    pub publish_gate: Arc<RwLock<()>>,
    /// Set while the shard's applies fail (see `applier`).
    pub apply_health: Arc<ApplyHealth>,
    /// Held from deciding a batch to publishing it; a transaction takes
    /// it to decide on this shard's keys itself (see `txn`).
    pub decision: Arc<Mutex<()>>,
    /// Keys with an expiry, by instant, for the sweeper.
    pub expiries: Arc<super::expiry::ExpiryIndex>,
    pub rx: mpsc::Receiver<WriterMsg>,
    pub max_batch: usize,
    /// Set after a failed commit; shared so the HTTP layer can report it.
    pub poisoned: Arc<AtomicBool>,
    pub metrics: Arc<ShardMetrics>,
}

/// A version as a decision knows it: committed, or that of the `n`-th
/// record of the batch being decided (known once the log numbers it).
#[derive(Debug, Clone, Copy)]
enum Ver {
    Known(u64),
    New(usize),
}

impl Ver {
    /// For condition checks: a version no client can hold yet, for a state
    /// the batch itself wrote (it is not handed out until the batch commits).
    fn for_check(self) -> u64 {
        match self {
            Self::Known(v) => v,
            Self::New(_) => u64::MAX,
        }
    }

    fn resolve(self, first: u64) -> u64 {
        match self {
            Self::Known(v) => v,
            Self::New(i) => first + i as u64,
        }
    }
}

/// A decided batch: one decision per command, the records to log, and for
/// each record whether the store certainly lacks its key.
struct Decided {
    decisions: Vec<Decision>,
    records: Vec<LogRecord>,
    not_in_store: Vec<bool>,
}

/// What a command will do, with versions still symbolic.
#[derive(Debug, Clone, Copy)]
enum Decision {
    Conflict(Option<Ver>),
    Created(usize),
    Replaced(usize),
    Unchanged(Ver),
    Deleted { removed: Ver, by: usize },
    Missing,
    Declined(Option<Ver>),
}

impl Decision {
    fn outcome(self, first: u64) -> WriteOutcome {
        let new = |i: usize| first + i as u64;
        match self {
            Self::Conflict(v) => WriteOutcome::Conflict {
                current: v.map(|v| v.resolve(first)),
            },
            Self::Created(i) => WriteOutcome::Created { version: new(i) },
            Self::Replaced(i) => WriteOutcome::Replaced { version: new(i) },
            Self::Unchanged(v) => WriteOutcome::Unchanged {
                version: v.resolve(first),
            },
            Self::Deleted { removed, by } => WriteOutcome::Deleted {
                version: removed.resolve(first),
                revision: new(by),
            },
            Self::Missing => WriteOutcome::Missing,
            Self::Declined(v) => WriteOutcome::Declined {
                current: v.map(|v| v.resolve(first)),
            },
        }
    }
}

/// Makes committed records visible: memtable first (it must hold every
/// committed state the store lacks), then the cache. `first` is the
/// revision of the first record; the rest follow in order.
pub(super) fn publish(
    shard: &Published<'_>,
    records: Vec<LogRecord>,
    not_in_store: Vec<bool>,
    first: u64,
) {
    let Published {
        memtable,
        cache,
        expiries,
    } = *shard;
    for record in &records {
        if let (Some(at), Some(_)) = (record.expires_at, &record.value) {
            expiries.insert(at, &record.key);
        }
    }
    let committed: Vec<(String, Pending)> = records
        .into_iter()
        .zip(not_in_store)
        .enumerate()
        .map(|(i, (record, not_in_store))| {
            let revision = first + i as u64;
            let value = record.state_at(revision);
            (
                record.key,
                Pending {
                    revision,
                    value,
                    not_in_store,
                },
            )
        })
        .collect();
    let for_cache: Vec<(String, Option<Arc<StoredValue>>)> = committed
        .iter()
        .map(|(k, p)| (k.clone(), p.value.clone()))
        .collect();
    memtable.insert(committed);
    // A deleted key is cached as absent, so the next read or create of it
    // needs no lookup.
    for (key, value) in for_cache {
        let entry = Cached::of(cache, &key, value);
        cache.insert(key, entry);
    }
}

/// Where a shard's committed records become visible.
#[derive(Clone, Copy)]
pub(super) struct Published<'a> {
    pub memtable: &'a Memtable,
    pub cache: &'a ShardCache,
    pub expiries: &'a super::expiry::ExpiryIndex,
}

/// A key's latest committed state (memtable, cache, then store), and
/// whether it came from the memtable (a state the store lacks).
pub(super) fn committed(
    memtable: &Memtable,
    cache: &ShardCache,
    filter: &KeyFilter,
    store: &ShardStore,
    key: &str,
) -> Result<(Option<Arc<StoredValue>>, bool), StoreError> {
    if let Some(state) = memtable.get(key) {
        return Ok((state, true));
    }
    if let Some(state) = cache.peek(key).and_then(|c| c.known()) {
        return Ok((state, false));
    }
    if !filter.may_contain(key) {
        return Ok((None, false));
    }
    Ok((store.get(key)?, false))
}

/// Answers every command of `batch` with `e`.
fn refuse(batch: &mut Vec<WriteCommand>, e: StoreError) {
    for cmd in batch.drain(..) {
        (cmd.reply)(Err(e.clone()));
    }
}

/// Runs storage work, turning a panic inside the engine into an error.
/// persy panics when it cannot roll back a failed transaction (a failing
/// disk); that must poison the shard, not kill its thread and leave the
/// waiting requests without an answer.
pub(crate) fn guarded<T>(work: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(StoreError::Engine(what.to_owned()))
        }
    }
}

impl ShardWriter {
    /// The thread body: batch, decide, log, publish, answer; until `Stop`
    /// or every sender is gone.
    pub fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            let mut stop = false;
            match self.rx.blocking_recv() {
                Some(WriterMsg::Write(cmd)) => batch.push(cmd),
                Some(WriterMsg::Stop) | None => break,
            }
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(WriterMsg::Write(cmd)) => batch.push(cmd),
                    Ok(WriterMsg::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.metrics.record_batch(batch.len());
            self.apply(&mut batch);
            if stop {
                break;
            }
        }
        tracing::debug!(shard = self.shard, "shard writer stopped");
    }

    /// Decides, commits and answers one batch.
    fn apply(&mut self, batch: &mut Vec<WriteCommand>) {
        if self.poisoned.load(Ordering::Acquire) {
            return refuse(batch, StoreError::Poisoned(self.shard));
        }
        let started = std::time::Instant::now();
        let decision = Arc::clone(&self.decision);
        let _deciding = decision.lock().unwrap_or_else(|p| p.into_inner());
        let Decided {
            decisions,
            records,
            not_in_store,
        } = match guarded(|| self.decide(batch)) {
            Ok(decided) => decided,
            Err(e) => return self.poison(batch, e),
        };
        let first = if records.is_empty() {
            0
        } else {
            match self.commit(records, not_in_store) {
                Ok(first) => first,
                // Nothing was written: the shard goes on; only this batch
                // is refused (a full disk, the log failed, stopping).
                Err(e) if e.wrote_nothing() || matches!(e, StoreError::LogFailed(_)) => {
                    return refuse(batch, e)
                }
                Err(e) => return self.poison(batch, e),
            }
        };
        self.metrics.record_commit(started.elapsed());
        for (cmd, decision) in batch.drain(..).zip(decisions) {
            (cmd.reply)(Ok(decision.outcome(first)));
        }
    }

    /// Logs `records` and publishes them; returns the first one's revision.
    fn commit(&self, records: Vec<LogRecord>, not_in_store: Vec<bool>) -> Result<u64, StoreError> {
        let bytes = super::log::payload_bytes(&records);
        self.memtable.wait_for_room(records.len(), bytes);
        let _gate = self.publish_gate.read().unwrap_or_else(|p| p.into_inner());
        // Checked under the gate: a shard whose applies fail refuses
        // writes before its pending ones are set aside (`held`), and no
        // batch may be published after that.
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned(self.shard));
        }
        if let Some(e) = self.apply_health.failure() {
            return Err(e);
        }
        let (first, records) = self.log.append(self.shard, records)?;
        self.publish(records, not_in_store, first);
        Ok(first)
    }

    fn publish(&self, records: Vec<LogRecord>, not_in_store: Vec<bool>, first: u64) {
        let shard = Published {
            memtable: &self.memtable,
            cache: &self.cache,
            expiries: &self.expiries,
        };
        publish(&shard, records, not_in_store, first);
    }

    fn poison(&mut self, batch: &mut Vec<WriteCommand>, e: StoreError) {
        // A `Poisoned` answer, not the failure itself: the batch may or may
        // not be on disk, and only recovery at the next start can tell.
        tracing::error!(shard = self.shard, error = %e, "commit failed; shard refuses writes until restart");
        self.poisoned.store(true, Ordering::Release);
        for cmd in batch.drain(..) {
            (cmd.reply)(Err(StoreError::Poisoned(self.shard)));
        }
    }

    fn committed(&self, key: &str) -> Result<(Option<Arc<StoredValue>>, bool), StoreError> {
        committed(&self.memtable, &self.cache, &self.filter, &self.store, key)
    }

    /// Decides every command against the latest state (committed plus the
    /// batch's earlier commands) and collects the records to log. A state
    /// past its expiry is absent to every command but `Expire`.
    fn decide(&self, batch: &[WriteCommand]) -> Result<Decided, StoreError> {
        let now = super::expiry::now_ms();
        let mut decided = Deciding::default();
        let mut latest: HashMap<&str, Option<KeyState>> = HashMap::new();
        for cmd in batch {
            let (raw, fresh) = match latest.get(cmd.key.as_str()) {
                Some(state) => (state.clone(), false),
                None => {
                    let (state, pending) = self.committed(&cmd.key)?;
                    let fresh = state.is_none() && !pending;
                    (state.map(|v| KeyState::committed(&v)), fresh)
                }
            };
            let expiring = matches!(cmd.op, WriteOp::Expire);
            let in_store = !fresh || raw.is_some();
            let current = if expiring {
                raw.filter(|s| s.expires_at.is_some_and(|at| at <= now))
            } else {
                raw.filter(|s| s.expires_at.is_none_or(|at| at > now))
            };
            let seen = current.as_ref().map(|s| s.ver);
            if !cmd.expect.holds(seen.map(Ver::for_check)) {
                decided.decisions.push(Decision::Conflict(seen));
                continue;
            }
            // The value to store (`None`: remove the key).
            let new = match &cmd.op {
                WriteOp::Put(json) => Some(json.clone()),
                WriteOp::Delete | WriteOp::Expire => None,
                WriteOp::Derive(derive) => match derive(current.as_ref().map(|s| &s.json[..])) {
                    Some(json) => Some(json),
                    None => {
                        decided.decisions.push(Decision::Declined(seen));
                        continue;
                    }
                },
            };
            let expires_at = match cmd.expiry {
                Expiry::Never => None,
                Expiry::Keep => current.as_ref().and_then(|s| s.expires_at),
                Expiry::At(at) => Some(at),
                Expiry::KeepOrAt(at) => current.as_ref().and_then(|s| s.expires_at).or(Some(at)),
            };
            let decision = match (new, current) {
                (Some(json), Some(cur)) if cur.json == json && cur.expires_at == expires_at => {
                    Decision::Unchanged(cur.ver)
                }
                (Some(json), current) => {
                    let record = LogRecord {
                        key: cmd.key.clone(),
                        value: Some(json.clone()),
                        expires_at,
                    };
                    // A key present only expired is still in the store.
                    let i = decided.push(record, !in_store);
                    self.filter.insert(&cmd.key);
                    let state = KeyState {
                        ver: Ver::New(i),
                        json,
                        expires_at,
                    };
                    latest.insert(&cmd.key, Some(state));
                    match current {
                        Some(_) => Decision::Replaced(i),
                        None => Decision::Created(i),
                    }
                }
                (None, None) => Decision::Missing,
                (None, Some(removed)) => {
                    let record = match (expiring, removed.expires_at) {
                        (true, Some(at)) => LogRecord::expiry(cmd.key.clone(), at),
                        _ => LogRecord::delete(cmd.key.clone()),
                    };
                    let by = decided.push(record, false);
                    latest.insert(&cmd.key, None);
                    Decision::Deleted {
                        removed: removed.ver,
                        by,
                    }
                }
            };
            decided.decisions.push(decision);
        }
        Ok(decided.done())
    }
}

/// A key's state while a batch is decided.
#[derive(Clone)]
struct KeyState {
    ver: Ver,
    json: Bytes,
    expires_at: Option<u64>,
}

impl KeyState {
    fn committed(value: &StoredValue) -> Self {
        Self {
            ver: Ver::Known(value.version),
            json: value.json.clone(),
            expires_at: value.expires_at,
        }
    }
}

/// A batch's decisions and records as they are made.
#[derive(Default)]
struct Deciding {
    decisions: Vec<Decision>,
    records: Vec<LogRecord>,
    not_in_store: Vec<bool>,
}

impl Deciding {
    /// Adds a record; returns its index.
    fn push(&mut self, record: LogRecord, not_in_store: bool) -> usize {
        self.records.push(record);
        self.not_in_store.push(not_in_store);
        self.records.len() - 1
    }

    fn done(self) -> Decided {
        Decided {
            decisions: self.decisions,
            records: self.records,
            not_in_store: self.not_in_store,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::cache::new_cache;
    use crate::storage::committer::{self, Progress};
    use crate::storage::feed::Feed;
    use crate::storage::log::{CommitLog, Retention, LOG_DIR};

    /// A writer over a fresh store and log in `dir`.
    fn fixture(dir: &std::path::Path) -> (ShardWriter, mpsc::Sender<WriterMsg>, Arc<Memtable>) {
        let store = ShardStore::open(&dir.join("s.persy"), 1 << 20).unwrap();
        let log = CommitLog::open(dir, 1).unwrap().log;
        let followers = committer::Followers {
            progress: vec![Arc::new(Progress::default())],
            failure: Arc::default(),
            feed: Arc::new(Feed::new(dir.join(LOG_DIR), 1, 0, 1 << 20)),
            retention: Retention::NONE,
        };
        let (log, _thread) = committer::start(log, 16, followers).unwrap();
        let (queue, rx) = mpsc::channel(16);
        let memtable = Arc::new(Memtable::new(1000, 1 << 20));
        let writer = ShardWriter {
            shard: 0,
            store,
            cache: Arc::new(new_cache(1 << 20)),
            memtable: memtable.clone(),
            filter: Arc::default(),
            log,
            publish_gate: Arc::default(),
            apply_health: Arc::default(),
            decision: Arc::default(),
            expiries: Arc::default(),
            rx,
            max_batch: 8,
            poisoned: Arc::default(),
            metrics: Arc::default(),
        };
        (writer, queue, memtable)
    }

    #[test]
    fn a_batch_sees_its_own_earlier_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, queue, memtable) = fixture(dir.path());
        let (tx, answers) = std::sync::mpsc::channel();
        let cmd = |key: &str, op: WriteOp, expect: Expect| {
            let tx = tx.clone();
            let reply: Reply = Box::new(move |r| {
                let _ = tx.send(r);
            });
            WriteCommand {
                key: key.into(),
                expiry: Expiry::default_for(&op),
                op,
                expect,
                reply,
            }
        };
        let put = |v: &'static [u8]| WriteOp::Put(Bytes::from_static(v));
        let mut batch = vec![
            cmd("k", put(b"1"), Expect::Absent),
            cmd("k", put(b"2"), Expect::Present),
            cmd("k", put(b"2"), Expect::Any),
            // A version no client can know yet never matches.
            cmd("k", put(b"3"), Expect::OneOf(vec![1, 2])),
            cmd("j", put(b"9"), Expect::Any),
            cmd("k", WriteOp::Delete, Expect::Any),
            cmd("k", WriteOp::Delete, Expect::Any),
        ];
        writer.apply(&mut batch);
        let got: Vec<WriteOutcome> = (0..7).map(|_| answers.recv().unwrap().unwrap()).collect();
        assert_eq!(
            got,
            [
                WriteOutcome::Created { version: 1 },
                WriteOutcome::Replaced { version: 2 },
                WriteOutcome::Unchanged { version: 2 },
                WriteOutcome::Conflict { current: Some(2) },
                WriteOutcome::Created { version: 3 },
                WriteOutcome::Deleted {
                    version: 2,
                    revision: 4
                },
                WriteOutcome::Missing,
            ]
        );
        // Committed and readable before any apply; the store has none yet.
        assert!(memtable.get("k").unwrap().is_none());
        assert_eq!(memtable.get("j").unwrap().unwrap().version, 3);
        assert!(writer.store.get("j").unwrap().is_none());
        drop(queue);
    }
}
