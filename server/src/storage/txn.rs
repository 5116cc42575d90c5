//! Transactions across keys and shards: decided under the decision locks of
//! every shard they touch, logged as one transaction frame, published under
//! the publish gate (see "Multi-key transactions across shards" in
//! `docs/design/write-path.md`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;

use super::log::LogRecord;
use super::store::StoredValue;
use super::writer::{committed, publish, Published};
use super::{Expect, Expiry, Storage, StoreError, WriteOp, WriteOutcome};

/// A compare: whether a key's committed state (`None`: absent) passes.
pub type Compare = Arc<dyn Fn(Option<&StoredValue>) -> bool + Send + Sync>;

/// What a transaction asks. Keys may repeat; an operation sees the ones
/// before it in its branch.
#[derive(Default)]
pub struct TxnPlan {
    /// Conditions on the states the caller read (the plugin path's "still
    /// as I saw it"): if one fails, nothing is written and the caller may
    /// read and try again.
    pub expect: Vec<(String, Expect)>,
    /// If every one holds, `success` runs, else `failure`.
    pub compares: Vec<(String, Compare)>,
    /// The operations when every compare holds.
    pub success: Vec<TxnOp>,
    /// The operations when one does not.
    pub failure: Vec<TxnOp>,
}

/// One operation of a transaction.
pub struct TxnOp {
    /// The key.
    pub key: String,
    /// What it does.
    pub op: WriteOp,
    /// What it does to the key's expiry.
    pub expiry: Expiry,
}

impl From<(String, WriteOp)> for TxnOp {
    /// An operation with its kind's expiry (see [`Expiry::default_for`]).
    fn from((key, op): (String, WriteOp)) -> Self {
        let expiry = Expiry::default_for(&op);
        Self { key, op, expiry }
    }
}

impl TxnPlan {
    fn keys(&self) -> impl Iterator<Item = &str> {
        let expect = self.expect.iter().map(|(k, _)| k.as_str());
        let compares = self.compares.iter().map(|(k, _)| k.as_str());
        let ops = self.success.iter().chain(&self.failure);
        expect.chain(compares).chain(ops.map(|o| o.key.as_str()))
    }
}

/// One operation's result.
#[derive(Debug, Clone)]
pub struct OpResult {
    /// What it did (`Declined` only when the whole transaction was).
    pub outcome: WriteOutcome,
    /// The key's state before it (for a delete's old value).
    pub previous: Option<Arc<StoredValue>>,
}

/// How a transaction ended.
#[derive(Debug)]
pub enum TxnOutcome {
    /// An `expect` did not hold; nothing was written.
    Stale {
        /// The key.
        key: String,
        /// Its version now (`None`: absent).
        current: Option<u64>,
    },
    /// An operation's derivation declined; nothing was written.
    Declined {
        /// Whether it was in `success`.
        succeeded: bool,
        /// Its index in that branch.
        index: usize,
    },
    /// The chosen branch is durable.
    Done {
        /// Whether every compare held.
        succeeded: bool,
        /// The revision of its last write; `None` when it wrote nothing.
        revision: Option<u64>,
        /// Each operation's result, in order.
        ops: Vec<OpResult>,
    },
}

/// A key's state while deciding: committed, or written by the n-th record
/// of this transaction.
#[derive(Clone)]
enum State {
    /// Committed and not expired (`None`: absent).
    Committed(Option<Arc<StoredValue>>),
    Written {
        record: usize,
        json: Option<Bytes>,
        expires_at: Option<u64>,
    },
}

impl State {
    fn json(&self) -> Option<&[u8]> {
        match self {
            Self::Committed(v) => v.as_ref().map(|v| &v.json[..]),
            Self::Written { json, .. } => json.as_deref(),
        }
    }

    fn expires_at(&self) -> Option<u64> {
        match self {
            Self::Committed(v) => v.as_ref().and_then(|v| v.expires_at),
            Self::Written { expires_at, .. } => *expires_at,
        }
    }
}

/// An operation's decision, before revisions are known.
enum Decided {
    Created(usize),
    Replaced(usize),
    Unchanged(u64),
    /// Unchanged bytes written earlier in this transaction.
    UnchangedNew(usize),
    Deleted {
        removed: Removed,
        by: usize,
    },
    Missing,
}

/// The version a delete removed.
enum Removed {
    Known(u64),
    New(usize),
}

/// Most transactions decided and logged together.
const MAX_BATCH: usize = 64;

/// Transactions waiting for their turn. Whoever finds no leader leads: it
/// takes every waiting transaction (up to `MAX_BATCH`), decides them in
/// order under one set of decision locks, logs them with one append (one
/// sync, each its own frame), and hands each its outcome. Transactions
/// then share syncs as single writes do, instead of each holding its
/// shards for a sync of its own.
#[derive(Default)]
pub(super) struct TxnQueue {
    state: Mutex<QueueState>,
    turn: Condvar,
    /// Counts for `/metrics`.
    pub stats: TxnStats,
}

/// Transaction counts for `/metrics`.
#[derive(Debug, Default)]
pub struct TxnStats {
    /// Transactions decided.
    pub decided: std::sync::atomic::AtomicU64,
    /// Batches they were decided in (divide for the mean batch size).
    pub batches: std::sync::atomic::AtomicU64,
    /// Transactions waiting for a batch now (at most one per blocked
    /// request).
    pub waiting: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct QueueState {
    next_id: u64,
    waiting: Vec<(u64, TxnPlan)>,
    done: HashMap<u64, Result<TxnOutcome, StoreError>>,
    leading: bool,
}

impl TxnQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `plan` and returns its outcome once a batch (perhaps led by
    /// this thread) has decided it.
    fn run(
        &self,
        plan: TxnPlan,
        batch: impl Fn(Vec<TxnPlan>) -> Vec<Result<TxnOutcome, StoreError>>,
    ) -> Result<TxnOutcome, StoreError> {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.waiting.push((id, plan));
        self.stats
            .waiting
            .store(state.waiting.len() as u64, Ordering::Relaxed);
        loop {
            if let Some(outcome) = state.done.remove(&id) {
                return outcome;
            }
            if state.leading {
                state = self.turn.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state.leading = true;
            let n = state.waiting.len().min(MAX_BATCH);
            let (ids, plans): (Vec<u64>, Vec<TxnPlan>) = state.waiting.drain(..n).unzip();
            self.stats
                .waiting
                .store(state.waiting.len() as u64, Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.stats.decided.fetch_add(n as u64, Ordering::Relaxed);
            drop(state);
            let count = ids.len();
            let outcomes = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| batch(plans)))
                .unwrap_or_else(|_| {
                    let failed = || Err(StoreError::Engine("a transaction batch panicked".into()));
                    (0..count).map(|_| failed()).collect()
                });
            state = self.lock();
            state.done.extend(ids.into_iter().zip(outcomes));
            state.leading = false;
            self.turn.notify_all();
        }
    }
}

/// One transaction of a batch, decided: its frame's records are
/// `records[start..end]` of the batch.
struct DecidedTxn {
    succeeded: bool,
    start: usize,
    end: usize,
    ops: Vec<(Decided, Option<Arc<StoredValue>>)>,
}

impl Storage {
    /// Transaction counts, for `/metrics`.
    pub fn txn_stats(&self) -> &TxnStats {
        &self.txns.stats
    }

    /// Runs `plan` as one atomic, durable unit (see the module doc).
    /// Blocking: call it off the async workers.
    pub fn commit_txn(&self, plan: TxnPlan) -> Result<TxnOutcome, StoreError> {
        self.txns.run(plan, |plans| self.commit_batch(plans))
    }

    /// Decides `plans` in order under the decision locks of every shard
    /// they touch (each seeing the ones before it), logs the ones that
    /// write with one append, publishes them, and answers each.
    fn commit_batch(&self, plans: Vec<TxnPlan>) -> Vec<Result<TxnOutcome, StoreError>> {
        let shards_of = |plan: &TxnPlan| {
            let mut shards: Vec<usize> = plan
                .keys()
                .map(|k| self.key_hash(k).shard(self.shards.len()))
                .collect();
            shards.sort_unstable();
            shards.dedup();
            shards
        };
        let mut all: Vec<usize> = plans.iter().flat_map(shards_of).collect();
        all.sort_unstable();
        all.dedup();
        let _locks = self.lock_decisions(&all);
        let mut deciding = Deciding {
            storage: self,
            states: HashMap::new(),
            records: Vec::new(),
            undo: Vec::new(),
        };
        let mut outcomes: Vec<Option<Result<TxnOutcome, StoreError>>> = Vec::new();
        let mut decided = Vec::new();
        for plan in &plans {
            let refused = shards_of(plan)
                .into_iter()
                .find_map(|s| self.refuse_if_out_of_service(s).err());
            if let Some(e) = refused {
                outcomes.push(Some(Err(e)));
                continue;
            }
            let mark = deciding.begin();
            let ended = match deciding.decide_txn(plan) {
                Ok(Ok(txn)) => {
                    decided.push((outcomes.len(), txn));
                    outcomes.push(None);
                    continue;
                }
                Ok(Err(outcome)) => Ok(outcome),
                Err(e) => Err(e),
            };
            // Nothing of it is written: forget what it changed.
            deciding.roll_back(mark);
            outcomes.push(Some(ended));
        }
        let frames: Vec<(usize, usize)> = decided.iter().map(|(_, t)| (t.start, t.end)).collect();
        match self.log_and_publish(&all, deciding.records, &frames) {
            Ok(revisions) => {
                for (slot, txn) in decided {
                    let revision = revisions[txn.start..txn.end].iter().max().copied();
                    let ops = txn
                        .ops
                        .into_iter()
                        .map(|(d, previous)| OpResult {
                            outcome: d.outcome(&revisions),
                            previous,
                        })
                        .collect();
                    outcomes[slot] = Some(Ok(TxnOutcome::Done {
                        succeeded: txn.succeeded,
                        revision,
                        ops,
                    }));
                }
            }
            Err(e) => {
                for (slot, _) in decided {
                    outcomes[slot] = Some(Err(e.clone()));
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(Err(StoreError::Engine(
                    "a transaction was not decided".into(),
                )))
            })
            .collect()
    }

    fn refuse_if_out_of_service(&self, shard: usize) -> Result<(), StoreError> {
        self.refuse_if_read_only()?;
        if let Some(why) = self.log_failure.get() {
            return Err(StoreError::LogFailed(why.clone()));
        }
        let s = &self.shards[shard];
        if s.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned(shard));
        }
        match s.apply_health.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Logs `records`, one frame per range of `frames` (transactions
    /// that write nothing have none), with one append, and publishes them;
    /// returns each record's revision. The decision locks of `shards` are
    /// held.
    fn log_and_publish(
        &self,
        shards: &[usize],
        records: Vec<LogRecord>,
        frames: &[(usize, usize)],
    ) -> Result<Vec<u64>, StoreError> {
        let mut revisions = vec![0; records.len()];
        let mut records: Vec<Option<LogRecord>> = records.into_iter().map(Some).collect();
        // Each frame's parts in ascending shard order; remember where each
        // record went.
        let mut order: Vec<Vec<usize>> = Vec::new();
        let mut log_frames = Vec::new();
        for &(start, end) in frames.iter().filter(|(s, e)| s < e) {
            let mut parts: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for (i, record) in records.iter().enumerate().take(end).skip(start) {
                let key = record.as_ref().map_or("", |r| r.key.as_str());
                let shard = self.key_hash(key).shard(self.shards.len());
                parts.entry(shard).or_default().push(i);
            }
            let mut placed = Vec::new();
            let mut frame = Vec::new();
            for (shard, indexes) in parts {
                let s = &self.shards[shard];
                let part: Vec<LogRecord> =
                    indexes.iter().filter_map(|&i| records[i].take()).collect();
                s.memtable
                    .wait_for_room(part.len(), super::log::payload_bytes(&part));
                for record in part.iter().filter(|r| r.value.is_some()) {
                    s.filter.insert(&record.key);
                }
                placed.extend(indexes);
                frame.push((shard as u16, part));
            }
            order.push(placed);
            log_frames.push(frame);
        }
        if log_frames.is_empty() {
            return Ok(revisions);
        }
        let _gate = self.publish_gate.read().unwrap_or_else(|p| p.into_inner());
        // As a writer checks under the gate (see `ShardWriter::commit`).
        for &shard in shards {
            self.refuse_if_out_of_service(shard)?;
        }
        let firsts = self.append_and_publish(log_frames)?;
        for (first, placed) in firsts.into_iter().zip(order) {
            for (offset, i) in placed.into_iter().enumerate() {
                revisions[i] = first + offset as u64;
            }
        }
        Ok(revisions)
    }

    /// Takes the decision locks of `shards` (ascending, each once): two
    /// holders of several never wait for each other in a cycle.
    pub(super) fn lock_decisions(&self, shards: &[usize]) -> Vec<MutexGuard<'_, ()>> {
        debug_assert!(shards.windows(2).all(|w| w[0] < w[1]));
        shards
            .iter()
            .map(|&s| {
                self.shards[s]
                    .decision
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            })
            .collect()
    }

    /// Logs `frames` with one append and publishes each part to its
    /// shard; returns each frame's first revision. The caller holds the
    /// decision locks of the frames' shards and the publish gate, and has
    /// made room in their memtables.
    pub(super) fn append_and_publish(
        &self,
        frames: Vec<super::committer::Parts>,
    ) -> Result<Vec<u64>, StoreError> {
        let log = self
            .log
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::ShuttingDown)?;
        let (firsts, logged) = log.append_frames(frames)?;
        for (first, frame) in firsts.iter().zip(logged) {
            let mut revision = *first;
            for (shard, records) in frame {
                let s = &self.shards[shard as usize];
                let n = records.len();
                let shard = Published {
                    memtable: &s.memtable,
                    cache: &s.cache,
                    expiries: &s.expiries,
                };
                publish(&shard, records, vec![false; n], revision);
                revision += n as u64;
            }
        }
        Ok(firsts)
    }
}

/// The states a transaction has decided on so far, and its records.
struct Deciding<'a> {
    storage: &'a Storage,
    states: HashMap<String, State>,
    records: Vec<LogRecord>,
    /// What the transaction being decided replaced in `states`, oldest
    /// first, for [`Deciding::roll_back`]. A journal of its own changes
    /// rather than a copy of every state before each transaction, which
    /// made a batch cost the square of its size.
    undo: Vec<(String, Option<State>)>,
}

impl Deciding<'_> {
    /// Starts deciding a transaction; the mark to roll back to.
    fn begin(&mut self) -> usize {
        self.undo.clear();
        self.records.len()
    }

    /// Forgets what the transaction begun at `mark` changed. States read
    /// from the stores stay: the decision locks keep them true.
    fn roll_back(&mut self, mark: usize) {
        while let Some((key, before)) = self.undo.pop() {
            match before {
                Some(state) => self.states.insert(key, state),
                None => self.states.remove(&key),
            };
        }
        self.records.truncate(mark);
    }

    fn state(&mut self, key: &str) -> Result<State, StoreError> {
        if let Some(state) = self.states.get(key) {
            return Ok(state.clone());
        }
        let shard =
            &self.storage.shards[self.storage.key_hash(key).shard(self.storage.shards.len())];
        let (value, _) = committed(
            &shard.memtable,
            &shard.cache,
            &shard.filter,
            &shard.store,
            key,
        )?;
        // An expired state is absent to a transaction as to every read.
        let now = super::expiry::now_ms();
        let state = State::Committed(value.filter(|v| !v.is_expired(now)));
        self.states.insert(key.to_owned(), state.clone());
        Ok(state)
    }

    /// The key's version as conditions see it: one written in this batch
    /// has none a client can hold yet (`u64::MAX`, as in the writers).
    fn committed_version(&mut self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.previous(key)?.map(|v| v.version))
    }

    /// The state an operation or a compare sees, as a value (one written
    /// in this batch with the version no client holds).
    fn previous(&mut self, key: &str) -> Result<Option<Arc<StoredValue>>, StoreError> {
        Ok(match self.state(key)? {
            State::Committed(v) => v,
            State::Written {
                json, expires_at, ..
            } => json.map(|json| {
                Arc::new(StoredValue {
                    version: u64::MAX,
                    json,
                    expires_at,
                })
            }),
        })
    }

    /// Decides one transaction against the states so far: its operations
    /// and where its records start and end, or the outcome that ends it
    /// without writing (the caller then forgets what it changed).
    fn decide_txn(&mut self, plan: &TxnPlan) -> Result<Result<DecidedTxn, TxnOutcome>, StoreError> {
        let start = self.records.len();
        for (key, expect) in &plan.expect {
            let current = self.committed_version(key)?;
            if !expect.holds(current) {
                let key = key.clone();
                return Ok(Err(TxnOutcome::Stale { key, current }));
            }
        }
        let mut succeeded = true;
        for (key, compare) in &plan.compares {
            if !compare(self.previous(key)?.as_deref()) {
                succeeded = false;
                break;
            }
        }
        let branch = if succeeded {
            &plan.success
        } else {
            &plan.failure
        };
        let mut ops = Vec::with_capacity(branch.len());
        for (index, TxnOp { key, op, expiry }) in branch.iter().enumerate() {
            let previous = self.previous(key)?;
            match self.decide(key, op, *expiry)? {
                Some(d) => ops.push((d, previous)),
                None => return Ok(Err(TxnOutcome::Declined { succeeded, index })),
            }
        }
        Ok(Ok(DecidedTxn {
            succeeded,
            start,
            end: self.records.len(),
            ops,
        }))
    }

    /// Decides one operation; `None` when a derivation declines.
    fn decide(
        &mut self,
        key: &str,
        op: &WriteOp,
        expiry: Expiry,
    ) -> Result<Option<Decided>, StoreError> {
        let state = self.state(key)?;
        let new = match op {
            WriteOp::Put(json) => Some(json.clone()),
            WriteOp::Delete | WriteOp::Expire => None,
            WriteOp::Derive(derive) => match derive(state.json()) {
                Some(json) => Some(json),
                None => return Ok(None),
            },
        };
        let expires_at = match (&new, expiry) {
            (None, _) | (_, Expiry::Never) => None,
            (_, Expiry::Keep) => state.expires_at(),
            (_, Expiry::At(at)) => Some(at),
            (_, Expiry::KeepOrAt(at)) => state.expires_at().or(Some(at)),
        };
        let unchanged =
            |json: &Bytes| state.json() == Some(&json[..]) && state.expires_at() == expires_at;
        let decided = match (&state, new) {
            (State::Committed(Some(v)), Some(json)) if unchanged(&json) => {
                Decided::Unchanged(v.version)
            }
            (State::Written { record, .. }, Some(json)) if unchanged(&json) => {
                Decided::UnchangedNew(*record)
            }
            (_, Some(json)) => {
                let exists = state.json().is_some();
                let i = self.push(key, Some(json), expires_at);
                if exists {
                    Decided::Replaced(i)
                } else {
                    Decided::Created(i)
                }
            }
            (State::Committed(Some(v)), None) => {
                let removed = Removed::Known(v.version);
                let by = self.push(key, None, None);
                Decided::Deleted { removed, by }
            }
            (
                State::Written {
                    record,
                    json: Some(_),
                    ..
                },
                None,
            ) => {
                let removed = Removed::New(*record);
                let by = self.push(key, None, None);
                Decided::Deleted { removed, by }
            }
            (_, None) => Decided::Missing,
        };
        Ok(Some(decided))
    }

    fn push(&mut self, key: &str, json: Option<Bytes>, expires_at: Option<u64>) -> usize {
        let record = self.records.len();
        self.records.push(LogRecord {
            key: key.to_owned(),
            value: json.clone(),
            expires_at,
        });
        let state = State::Written {
            record,
            json,
            expires_at,
        };
        let before = self.states.insert(key.to_owned(), state);
        self.undo.push((key.to_owned(), before));
        record
    }
}

impl Decided {
    fn outcome(self, revisions: &[u64]) -> WriteOutcome {
        let rev = |i: usize| revisions.get(i).copied().unwrap_or(0);
        match self {
            Self::Created(i) => WriteOutcome::Created { version: rev(i) },
            Self::Replaced(i) => WriteOutcome::Replaced { version: rev(i) },
            Self::Unchanged(version) => WriteOutcome::Unchanged { version },
            Self::UnchangedNew(i) => WriteOutcome::Unchanged { version: rev(i) },
            Self::Deleted { removed, by } => WriteOutcome::Deleted {
                version: match removed {
                    Removed::Known(v) => v,
                    Removed::New(i) => rev(i),
                },
                revision: rev(by),
            },
            Self::Missing => WriteOutcome::Missing,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{CacheSettings, StorageSettings};

    fn open(dir: &std::path::Path) -> Storage {
        let settings = StorageSettings {
            data_dir: dir.to_owned(),
            shards: 4,
            ..StorageSettings::default()
        };
        let cache = CacheSettings {
            capacity_bytes: 1 << 20,
            warm_on_start: false,
        };
        Storage::open(&settings, &cache).unwrap()
    }

    fn put(v: &'static str) -> WriteOp {
        WriteOp::Put(Bytes::from_static(v.as_bytes()))
    }

    /// Keys on every shard, one per shard.
    fn spread(storage: &Storage) -> Vec<String> {
        let mut keys: Vec<Option<String>> = vec![None; storage.shard_count()];
        for i in 0.. {
            let key = format!("k{i}");
            let shard = storage.key_hash(&key).shard(storage.shard_count());
            keys[shard].get_or_insert(key);
            if keys.iter().all(Option::is_some) {
                break;
            }
        }
        keys.into_iter().flatten().collect()
    }

    fn exists(want: bool) -> Compare {
        Arc::new(move |v: Option<&StoredValue>| v.is_some() == want)
    }

    #[test]
    fn a_transaction_across_shards_is_one_unit_with_consecutive_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path());
        let keys = spread(&storage);
        let plan = TxnPlan {
            compares: vec![(keys[0].clone(), exists(false))],
            success: keys.iter().map(|k| (k.clone(), put("1")).into()).collect(),
            failure: vec![(keys[0].clone(), WriteOp::Delete).into()],
            ..TxnPlan::default()
        };
        let TxnOutcome::Done {
            succeeded,
            revision,
            ops,
        } = storage.commit_txn(plan).unwrap()
        else {
            panic!("not done");
        };
        assert!(succeeded);
        let versions: Vec<u64> = ops
            .iter()
            .map(|op| match op.outcome {
                WriteOutcome::Created { version } => version,
                other => panic!("{other:?}"),
            })
            .collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [1, 2, 3, 4]);
        assert_eq!(revision, Some(4));
        // Readable at once, and after a reopen (replayed from the one frame).
        let rt = tokio::runtime::Runtime::new().unwrap();
        for (key, version) in keys.iter().zip(&versions) {
            let v = rt.block_on(storage.get(key)).unwrap().unwrap();
            assert_eq!(v.version, *version);
        }
        storage.close();
        drop(storage);
        let storage = open(dir.path());
        for (key, version) in keys.iter().zip(&versions) {
            let v = rt.block_on(storage.get(key)).unwrap().unwrap();
            assert_eq!((v.version, &v.json[..]), (*version, &b"1"[..]));
        }
        // The compare fails now: the failure branch runs.
        let plan = TxnPlan {
            compares: vec![(keys[0].clone(), exists(false))],
            success: vec![(keys[1].clone(), put("2")).into()],
            failure: vec![(keys[0].clone(), WriteOp::Delete).into()],
            ..TxnPlan::default()
        };
        let TxnOutcome::Done { succeeded, ops, .. } = storage.commit_txn(plan).unwrap() else {
            panic!("not done");
        };
        assert!(!succeeded);
        assert!(
            matches!(ops[0].outcome, WriteOutcome::Deleted { version, .. } if version == versions[0])
        );
        assert_eq!(&ops[0].previous.as_ref().unwrap().json[..], b"1");
        assert!(rt.block_on(storage.get(&keys[0])).unwrap().is_none());
        storage.close();
    }

    #[test]
    fn nothing_is_written_when_a_derivation_declines_or_a_read_went_stale() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path());
        let keys = spread(&storage);
        let decline: crate::storage::Derivation = Arc::new(|_| None);
        let plan = TxnPlan {
            success: vec![
                (keys[0].clone(), put("1")).into(),
                (keys[1].clone(), WriteOp::Derive(decline)).into(),
            ],
            ..TxnPlan::default()
        };
        let outcome = storage.commit_txn(plan).unwrap();
        assert!(matches!(
            outcome,
            TxnOutcome::Declined {
                succeeded: true,
                index: 1
            }
        ));
        let plan = TxnPlan {
            expect: vec![(keys[2].clone(), Expect::Present)],
            success: vec![(keys[0].clone(), put("1")).into()],
            ..TxnPlan::default()
        };
        let outcome = storage.commit_txn(plan).unwrap();
        assert!(matches!(outcome, TxnOutcome::Stale { current: None, .. }));
        let rt = tokio::runtime::Runtime::new().unwrap();
        assert!(rt.block_on(storage.get(&keys[0])).unwrap().is_none());
        // Operations on one key see each other.
        let incr: crate::storage::Derivation = Arc::new(|cur| {
            let n: i64 = cur.map_or(0, |c| std::str::from_utf8(c).unwrap().parse().unwrap());
            Some(Bytes::from((n + 1).to_string()))
        });
        let plan = TxnPlan {
            success: vec![
                (keys[3].clone(), WriteOp::Derive(incr.clone())).into(),
                (keys[3].clone(), WriteOp::Derive(incr.clone())).into(),
                (keys[3].clone(), WriteOp::Derive(incr)).into(),
            ],
            ..TxnPlan::default()
        };
        let TxnOutcome::Done { ops, revision, .. } = storage.commit_txn(plan).unwrap() else {
            panic!("not done");
        };
        assert!(matches!(ops[0].outcome, WriteOutcome::Created { .. }));
        assert!(matches!(ops[2].outcome, WriteOutcome::Replaced { .. }));
        let v = rt.block_on(storage.get(&keys[3])).unwrap().unwrap();
        assert_eq!((&v.json[..], Some(v.version)), (&b"3"[..], revision));
        storage.close();
    }

    /// In one batch, a transaction that ends without writing leaves the
    /// states as the ones before it left them, for the ones after it.
    #[test]
    fn a_declined_transaction_in_a_batch_leaves_the_states_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path());
        let keys = spread(&storage);
        let incr: crate::storage::Derivation = Arc::new(|cur| {
            let n: i64 = cur.map_or(0, |c| std::str::from_utf8(c).unwrap().parse().unwrap());
            Some(Bytes::from((n + 1).to_string()))
        });
        let decline: crate::storage::Derivation = Arc::new(|_| None);
        let every = |last: Option<TxnOp>| TxnPlan {
            success: keys
                .iter()
                .map(|k| (k.clone(), WriteOp::Derive(incr.clone())).into())
                .chain(last)
                .collect(),
            ..TxnPlan::default()
        };
        let declining = (keys[0].clone(), WriteOp::Derive(decline.clone())).into();
        let delete_then_decline = TxnPlan {
            success: vec![
                (keys[0].clone(), WriteOp::Delete).into(),
                (keys[1].clone(), WriteOp::Derive(decline)).into(),
            ],
            ..TxnPlan::default()
        };
        let outcomes = storage.commit_batch(vec![
            every(None),
            every(Some(declining)),
            delete_then_decline,
            every(None),
        ]);
        let kinds: Vec<_> = outcomes
            .into_iter()
            .map(|o| match o.unwrap() {
                TxnOutcome::Done { .. } => "done".to_owned(),
                TxnOutcome::Declined { index, .. } => format!("declined at {index}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["done", "declined at 4", "declined at 1", "done"]);
        let rt = tokio::runtime::Runtime::new().unwrap();
        for key in &keys {
            let v = rt.block_on(storage.get(key)).unwrap().unwrap();
            assert_eq!(&v.json[..], b"2", "{key}");
        }
        storage.close();
    }

    /// Transactions from many threads are decided in batches, each seeing
    /// the ones before it; one that declines changes nothing, the others
    /// go on; every one gets its own answer.
    #[test]
    fn concurrent_transactions_share_batches_and_each_sees_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(open(dir.path()));
        let keys = spread(&storage);
        let incr: crate::storage::Derivation = Arc::new(|cur| {
            let n: i64 = cur.map_or(0, |c| std::str::from_utf8(c).unwrap().parse().unwrap());
            Some(Bytes::from((n + 1).to_string()))
        });
        let decline: crate::storage::Derivation = Arc::new(|_| None);
        let threads: Vec<_> = (0..32)
            .map(|t| {
                let (storage, keys) = (Arc::clone(&storage), keys.clone());
                let (incr, decline) = (incr.clone(), decline.clone());
                std::thread::spawn(move || {
                    let mut success: Vec<TxnOp> = keys
                        .iter()
                        .map(|k| (k.clone(), WriteOp::Derive(incr.clone())).into())
                        .collect();
                    if t % 4 == 0 {
                        success.push((keys[0].clone(), WriteOp::Derive(decline)).into());
                    }
                    let plan = TxnPlan {
                        success,
                        ..TxnPlan::default()
                    };
                    (t, storage.commit_txn(plan).unwrap())
                })
            })
            .collect();
        let mut revisions = Vec::new();
        for thread in threads {
            match thread.join().unwrap() {
                (t, TxnOutcome::Declined { index, .. }) => {
                    assert_eq!((t % 4, index), (0, 4));
                }
                (t, TxnOutcome::Done { revision, .. }) => {
                    assert_ne!(t % 4, 0);
                    revisions.push(revision.unwrap());
                }
                (_, other) => panic!("{other:?}"),
            }
        }
        revisions.sort_unstable();
        revisions.dedup();
        assert_eq!(
            revisions.len(),
            24,
            "each transaction has revisions of its own"
        );
        let rt = tokio::runtime::Runtime::new().unwrap();
        for key in &keys {
            let v = rt.block_on(storage.get(key)).unwrap().unwrap();
            assert_eq!(&v.json[..], b"24", "{key}");
        }
        storage.close();
    }
}
