//! One shard's committed writes that its store does not have yet.
//!
//! A write is committed when its log frame is synced; the shard's applier
//! copies it into the persy store later, in large transactions. Until then
//! readers (and the shard writer's decisions) find it here. The table holds
//! the latest committed state of each key, so it never holds more entries
//! than keys written since the last apply, and it is bounded: the shard
//! writer waits for room before it logs more (back-pressure).
//!
//! Revisions enter in increasing order (the writer logs one batch at a
//! time), so "everything up to the newest revision the applier saw" is a
//! prefix of the shard's history: that is what `applied_revision` records.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::store::StoredValue;

/// A committed, not yet applied, state of a key: its value, or `None` for a
/// delete, and the revision that wrote it.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Revision of the write.
    pub revision: u64,
    /// The value written; `None`: deleted.
    pub value: Option<Arc<StoredValue>>,
    /// The shard's store certainly lacks the key (the write found it absent
    /// with nothing pending), so the applier can insert without looking.
    pub not_in_store: bool,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<String, Pending>,
    /// The same entries by revision, oldest first: the applier takes the
    /// oldest when it cannot take everything.
    by_revision: BTreeMap<u64, String>,
    /// Key and value bytes of `entries`.
    bytes: usize,
    /// Highest revision inserted so far.
    newest: u64,
    stopping: bool,
    /// Tests hold the applier with this, to keep entries pending.
    #[cfg(test)]
    held: bool,
}

/// What an entry costs against the byte bound.
fn weight(key: &str, pending: &Pending) -> usize {
    key.len() + pending.value.as_ref().map_or(0, |v| v.json.len())
}

/// See the module documentation.
pub struct Memtable {
    state: Mutex<State>,
    changed: Condvar,
    max_entries: usize,
    max_bytes: usize,
}

/// What the applier takes in one go.
pub struct ApplyBatch {
    /// Keys with their latest committed state.
    pub entries: Vec<(String, Pending)>,
    /// Every revision of this shard up to here is covered by `entries` (or
    /// by earlier batches).
    pub upto: u64,
}

impl Memtable {
    /// An empty table holding at most about `max_entries` keys and
    /// `max_bytes` of keys and values.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            max_entries: max_entries.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Whether the table is past half its bounds: time to apply at once.
    fn pressing(&self, state: &State) -> bool {
        state.entries.len() * 2 >= self.max_entries || state.bytes * 2 >= self.max_bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key's committed state if the store does not have it yet:
    /// `Some(None)` for a delete.
    pub fn get(&self, key: &str) -> Option<Option<Arc<StoredValue>>> {
        self.lock().entries.get(key).map(|p| p.value.clone())
    }

    /// Every key's committed, not yet applied, state: a copy, for a cut.
    pub fn pending(&self) -> BTreeMap<String, Pending> {
        self.lock().entries.clone()
    }

    /// Keys from `start` on that begin with `prefix`, with their states.
    pub fn range(&self, prefix: &str, start: Bound<String>) -> Vec<(String, Pending)> {
        let state = self.lock();
        state
            .entries
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect()
    }

    /// Waits until `n` more keys of `bytes` in all fit (or the table is
    /// stopping). An empty table always takes a batch, however large.
    pub fn wait_for_room(&self, n: usize, bytes: usize) {
        let mut state = self.lock();
        while !state.stopping
            && !state.entries.is_empty()
            && (state.entries.len() + n > self.max_entries || state.bytes + bytes > self.max_bytes)
        {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Records committed states, in revision order.
    pub fn insert(&self, committed: impl IntoIterator<Item = (String, Pending)>) {
        let mut state = self.lock();
        for (key, pending) in committed {
            state.newest = state.newest.max(pending.revision);
            state.bytes += weight(&key, &pending);
            state.by_revision.insert(pending.revision, key.clone());
            if let Some(old) = state.entries.insert(key.clone(), pending) {
                state.bytes -= weight(&key, &old);
                state.by_revision.remove(&old.revision);
            }
        }
        drop(state);
        self.changed.notify_all();
    }

    /// For the applier: waits until there are `min` entries or `max_wait`
    /// has passed with at least one, then returns at most `max` of them,
    /// the oldest. `None` once the table is stopping and empty.
    pub fn next_batch(&self, min: usize, max: usize, max_wait: Duration) -> Option<ApplyBatch> {
        let mut state = self.lock();
        let mut deadline: Option<Instant> = None;
        loop {
            #[cfg(test)]
            if state.held && !state.stopping {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            if state.entries.len() >= min
                || (!state.entries.is_empty() && (state.stopping || self.pressing(&state)))
            {
                break;
            }
            if state.stopping {
                return None;
            }
            let wait = match (state.entries.is_empty(), deadline) {
                (true, _) => Duration::from_secs(3600),
                (false, None) => {
                    deadline = Some(Instant::now() + max_wait);
                    max_wait
                }
                (false, Some(d)) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => break,
                },
            };
            state = self
                .changed
                .wait_timeout(state, wait)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        Some(Self::oldest(&state, max.max(1)))
    }

    /// The `max` entries of the oldest revisions. Every revision below the
    /// oldest one left out is covered: by these entries, or by a newer
    /// state of its key that is still pending (and will be applied later).
    fn oldest(state: &State, max: usize) -> ApplyBatch {
        let mut taken = state.by_revision.iter();
        let mut entries: Vec<(String, Pending)> = taken
            .by_ref()
            .take(max)
            .filter_map(|(_, key)| state.entries.get(key).map(|p| (key.clone(), p.clone())))
            .collect();
        let upto = match taken.next() {
            Some((&next, _)) => next - 1,
            None => state.newest,
        };
        // Key order: persy's B-tree does less work on sorted inserts.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        ApplyBatch { entries, upto }
    }

    /// Drops the entries of `batch` that no newer write has replaced: the
    /// store has them now.
    pub fn remove_applied(&self, batch: &ApplyBatch) {
        let mut state = self.lock();
        for (key, applied) in &batch.entries {
            if state.entries.get(key).map(|p| p.revision) == Some(applied.revision) {
                if let Some(gone) = state.entries.remove(key) {
                    state.bytes -= weight(key, &gone);
                    state.by_revision.remove(&gone.revision);
                }
            }
        }
        drop(state);
        self.changed.notify_all();
    }

    /// Holds the applier before its next batch, or lets it go on.
    #[cfg(test)]
    pub fn hold(&self, held: bool) {
        self.lock().held = held;
        self.changed.notify_all();
    }

    /// Waits up to `pause` for the table to stop; whether it has.
    pub fn stopping_within(&self, pause: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, pause, |s| !s.stopping)
            .unwrap_or_else(|p| p.into_inner());
        state.stopping
    }

    /// Lets the applier drain what is left and stop, and writers stop waiting.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.changed.notify_all();
    }

    /// Keys waiting to be applied.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pending(revision: u64, deleted: bool) -> Pending {
        Pending {
            revision,
            not_in_store: false,
            value: (!deleted).then(|| {
                Arc::new(StoredValue::lasting(
                    revision,
                    bytes::Bytes::from_static(b"1"),
                ))
            }),
        }
    }

    #[test]
    fn applied_entries_leave_unless_replaced() {
        let table = Memtable::new(100, 1 << 20);
        table.insert([
            ("a".to_owned(), pending(1, false)),
            ("b".to_owned(), pending(2, true)),
        ]);
        assert!(table.get("a").unwrap().is_some());
        assert!(table.get("b").unwrap().is_none());
        assert!(table.get("c").is_none());
        let batch = table.next_batch(1, 100, Duration::ZERO).unwrap();
        assert_eq!((batch.entries.len(), batch.upto), (2, 2));
        // A newer write to "a" arrives while the batch is applied.
        table.insert([("a".to_owned(), pending(3, false))]);
        table.remove_applied(&batch);
        assert_eq!(table.len(), 1);
        assert_eq!(table.get("a").unwrap().unwrap().version, 3);
        table.stop();
        assert_eq!(
            table
                .next_batch(100, 100, Duration::from_secs(60))
                .unwrap()
                .upto,
            3
        );
        table.remove_applied(&table.next_batch(1, 100, Duration::ZERO).unwrap());
        assert!(table.next_batch(1, 100, Duration::ZERO).is_none());
    }

    #[test]
    fn bytes_are_bounded_too() {
        let table = Memtable::new(1000, 100);
        let big = |revision| Pending {
            revision,
            not_in_store: false,
            value: Some(Arc::new(StoredValue::lasting(
                revision,
                bytes::Bytes::from(vec![b'1'; 60]),
            ))),
        };
        table.insert([("a".to_owned(), big(1))]);
        // Past half the bytes: the applier does not wait for more.
        let started = Instant::now();
        let batch = table
            .next_batch(1000, 1000, Duration::from_secs(60))
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(30));
        // A writer with 60 more bytes waits until the applier is done.
        let table = Arc::new(table);
        let writer = {
            let table = table.clone();
            std::thread::spawn(move || {
                table.wait_for_room(1, 61);
                table.insert([("b".to_owned(), big(2))]);
            })
        };
        table.remove_applied(&batch);
        writer.join().unwrap();
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_capped_batch_takes_the_oldest_and_covers_what_it_must() {
        let table = Memtable::new(100, 1 << 20);
        // "a" was written at 1 and again at 5: its pending state is 5.
        table.insert([("a".to_owned(), pending(1, false))]);
        table.insert([
            ("c".to_owned(), pending(2, false)),
            ("b".to_owned(), pending(3, false)),
            ("a".to_owned(), pending(5, false)),
            ("d".to_owned(), pending(7, true)),
        ]);
        let batch = table.next_batch(1, 2, Duration::ZERO).unwrap();
        let keys: Vec<&str> = batch.entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "c"], "the two oldest, in key order");
        // Revision 1 is covered by a's pending state 5, which is left out:
        // the store may claim everything below 5, not more.
        assert_eq!(batch.upto, 4);
        table.remove_applied(&batch);
        let rest = table.next_batch(1, 2, Duration::ZERO).unwrap();
        assert_eq!((rest.entries.len(), rest.upto), (2, 7));
        table.remove_applied(&rest);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn ranges_follow_key_order() {
        let table = Memtable::new(100, 1 << 20);
        table.insert(["b/2", "a/1", "b/1", "c"].map(|k| (k.to_owned(), pending(1, false))));
        let keys: Vec<String> = table
            .range("b/", Bound::Included("b/".into()))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["b/1", "b/2"]);
    }
}
