//! Transactions across keys and shards: decided under the decision locks of
//! every shard they touch, logged as one transaction frame, published under
//! the publish gate (see "Multi-key transactions across shards" in
//! `docs/design/write-path.md`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use bytes::Bytes;

use super::log::LogRecord;
use super::store::StoredValue;
use super::writer::{committed, publish, Published};
use super::{hash, Expect, Storage, StoreError, WriteOp, WriteOutcome};

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
    pub success: Vec<(String, WriteOp)>,
    /// The operations when one does not.
    pub failure: Vec<(String, WriteOp)>,
}

impl TxnPlan {
    fn keys(&self) -> impl Iterator<Item = &str> {
        let expect = self.expect.iter().map(|(k, _)| k.as_str());
        let compares = self.compares.iter().map(|(k, _)| k.as_str());
        let ops = self.success.iter().chain(&self.failure);
        expect.chain(compares).chain(ops.map(|(k, _)| k.as_str()))
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

impl Storage {
    /// Runs `plan` as one atomic, durable unit (see the module doc).
    /// Blocking: call it off the async workers.
    pub fn commit_txn(&self, plan: TxnPlan) -> Result<TxnOutcome, StoreError> {
        let mut shards: Vec<usize> = plan
            .keys()
            .map(|k| hash::KeyHash::of(k).shard(self.shards.len()))
            .collect();
        shards.sort_unstable();
        shards.dedup();
        for &shard in &shards {
            self.refuse_if_out_of_service(shard)?;
        }
        // Ascending order: two transactions never wait for each other.
        let _locks: Vec<MutexGuard<'_, ()>> = shards
            .iter()
            .map(|&s| {
                self.shards[s]
                    .decision
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            })
            .collect();
        let mut deciding = Deciding {
            storage: self,
            states: HashMap::new(),
            records: Vec::new(),
        };
        for (key, expect) in &plan.expect {
            let current = deciding.committed_version(key)?;
            if !expect.holds(current) {
                return Ok(TxnOutcome::Stale {
                    key: key.clone(),
                    current,
                });
            }
        }
        let mut succeeded = true;
        for (key, compare) in &plan.compares {
            // Nothing is written before the compares: every state is committed.
            let value = match deciding.state(key)? {
                State::Committed(value) => value,
                State::Written { .. } => None,
            };
            if !compare(value.as_deref()) {
                succeeded = false;
                break;
            }
        }
        let branch = if succeeded {
            &plan.success
        } else {
            &plan.failure
        };
        let mut decided = Vec::with_capacity(branch.len());
        let mut previous = Vec::with_capacity(branch.len());
        for (index, (key, op)) in branch.iter().enumerate() {
            previous.push(deciding.previous(key)?);
            match deciding.decide(key, op)? {
                Some(d) => decided.push(d),
                None => return Ok(TxnOutcome::Declined { succeeded, index }),
            }
        }
        let revisions = self.log_and_publish(&shards, deciding.records)?;
        let revision = revisions.iter().max().copied();
        let ops = decided
            .into_iter()
            .zip(previous)
            .map(|(d, previous)| OpResult {
                outcome: d.outcome(&revisions),
                previous,
            })
            .collect();
        Ok(TxnOutcome::Done {
            succeeded,
            revision,
            ops,
        })
    }

    fn refuse_if_out_of_service(&self, shard: usize) -> Result<(), StoreError> {
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

    /// Logs `records` as one frame and publishes them; returns each
    /// record's revision (none when there is nothing to log). The decision
    /// locks of `shards` are held.
    fn log_and_publish(
        &self,
        shards: &[usize],
        records: Vec<LogRecord>,
    ) -> Result<Vec<u64>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        // Parts in ascending shard order; remember where each record went.
        let mut parts: BTreeMap<usize, Vec<(usize, LogRecord)>> = BTreeMap::new();
        for (i, record) in records.into_iter().enumerate() {
            let shard = hash::KeyHash::of(&record.key).shard(self.shards.len());
            parts.entry(shard).or_default().push((i, record));
        }
        let mut order = Vec::new();
        let mut log_parts = Vec::with_capacity(parts.len());
        for (shard, part) in parts {
            let s = &self.shards[shard];
            let bytes = part
                .iter()
                .map(|(_, r)| r.key.len() + r.value.as_ref().map_or(0, Bytes::len))
                .sum();
            s.memtable.wait_for_room(part.len(), bytes);
            let mut recs = Vec::with_capacity(part.len());
            for (i, record) in part {
                if record.value.is_some() {
                    s.filter.insert(&record.key);
                }
                order.push(i);
                recs.push(record);
            }
            log_parts.push((shard as u16, recs));
        }
        let _gate = self.publish_gate.read().unwrap_or_else(|p| p.into_inner());
        // As a writer checks under the gate (see `ShardWriter::commit`).
        for &shard in shards {
            self.refuse_if_out_of_service(shard)?;
        }
        let log = self
            .log
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::ShuttingDown)?;
        let (first, parts) = log.append_parts(log_parts)?;
        let mut revisions = vec![0; order.len()];
        let mut revision = first;
        for (shard, records) in parts {
            let s = &self.shards[shard as usize];
            let n = records.len();
            let not_in_store = vec![false; n];
            let shard = Published {
                memtable: &s.memtable,
                cache: &s.cache,
                expiries: &s.expiries,
            };
            publish(&shard, records, not_in_store, revision);
            revision += n as u64;
        }
        for (offset, i) in order.into_iter().enumerate() {
            revisions[i] = first + offset as u64;
        }
        Ok(revisions)
    }
}

/// The states a transaction has decided on so far, and its records.
struct Deciding<'a> {
    storage: &'a Storage,
    states: HashMap<String, State>,
    records: Vec<LogRecord>,
}

impl Deciding<'_> {
    fn state(&mut self, key: &str) -> Result<State, StoreError> {
        if let Some(state) = self.states.get(key) {
            return Ok(state.clone());
        }
        let shard = &self.storage.shards[hash::KeyHash::of(key).shard(self.storage.shards.len())];
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

    fn committed_version(&mut self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.state(key)? {
            State::Committed(v) => Ok(v.map(|v| v.version)),
            State::Written { .. } => Ok(None),
        }
    }

    /// The committed state an operation replaces (`None` if this
    /// transaction wrote the key before: it had no version yet).
    fn previous(&mut self, key: &str) -> Result<Option<Arc<StoredValue>>, StoreError> {
        match self.state(key)? {
            State::Committed(v) => Ok(v),
            State::Written { .. } => Ok(None),
        }
    }

    /// Decides one operation; `None` when a derivation declines.
    fn decide(&mut self, key: &str, op: &WriteOp) -> Result<Option<Decided>, StoreError> {
        let state = self.state(key)?;
        // A put's value lasts; a computed one keeps its key's expiry.
        let (new, expires_at) = match op {
            WriteOp::Put(json) => (Some(json.clone()), None),
            WriteOp::Delete | WriteOp::Expire => (None, None),
            WriteOp::Derive(derive) => match derive(state.json()) {
                Some(json) => (Some(json), state.expires_at()),
                None => return Ok(None),
            },
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
        self.states.insert(key.to_owned(), state);
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
            let shard = hash::KeyHash::of(&key).shard(storage.shard_count());
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
            success: keys.iter().map(|k| (k.clone(), put("1"))).collect(),
            failure: vec![(keys[0].clone(), WriteOp::Delete)],
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
            success: vec![(keys[1].clone(), put("2"))],
            failure: vec![(keys[0].clone(), WriteOp::Delete)],
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
                (keys[0].clone(), put("1")),
                (keys[1].clone(), WriteOp::Derive(decline)),
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
            success: vec![(keys[0].clone(), put("1"))],
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
                (keys[3].clone(), WriteOp::Derive(incr.clone())),
                (keys[3].clone(), WriteOp::Derive(incr.clone())),
                (keys[3].clone(), WriteOp::Derive(incr)),
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
}
