//! Keys that expire: the clock their instants are read against, and the
//! sweeper that deletes them once they have.
//!
//! An expired value is absent to every read at once (each read checks its
//! instant); the sweeper only gives its space back. It deletes through the
//! shard writers, one logged write per key (`WriteOp::Expire`, which only
//! removes a state that has expired), so a restart, a backup and (later)
//! the change feed all see the expiry as a write in the one order.
//!
//! Which keys to look at comes from an in-memory index per shard of
//! (instant, key), filled as expiring values are published and, after a
//! start, by one walk of each store that holds any (a store marks itself
//! once it applies its first expiring value). The index may name a key
//! whose value was replaced since: the sweeper checks the state before it
//! deletes anything.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::{Expect, Expiry, Storage, StoreError, WriteOp, WriteOutcome};

/// How often the sweeper looks for expired keys.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Most keys one shard has deleted per sweep: deletes are writes, and a
/// burst of expiries should not crowd out the writes clients wait for.
const SWEEP_BATCH: usize = 256;

/// Milliseconds since the Unix epoch: what expiry instants are.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One shard's expiring keys, by instant.
#[derive(Debug, Default)]
pub struct ExpiryIndex {
    due: Mutex<BTreeSet<(u64, String)>>,
}

impl ExpiryIndex {
    /// Notes that `key` expires at `at`.
    pub fn insert(&self, at: u64, key: &str) {
        self.lock().insert((at, key.to_owned()));
    }

    /// Takes up to `most` entries due at `now`.
    pub fn take_due(&self, now: u64, most: usize) -> Vec<(u64, String)> {
        let mut due = self.lock();
        let mut taken = Vec::new();
        while taken.len() < most {
            match due.first() {
                Some((at, _)) if *at <= now => {}
                _ => break,
            }
            if let Some(entry) = due.pop_first() {
                taken.push(entry);
            }
        }
        taken
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<(u64, String)>> {
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts for `/metrics`.
#[derive(Debug, Default)]
pub struct ExpiryStats {
    /// Keys the sweeper deleted.
    pub expired: AtomicU64,
}

/// Stops the sweeper: set, then notified.
#[derive(Debug, Default)]
pub struct SweepStop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl SweepStop {
    /// Asks the sweeper to stop and wakes it.
    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Whether `stop` was called.
    pub fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `period`; `false` once stopped.
    pub fn wait(&self, period: Duration) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        if *stopped {
            return false;
        }
        let (stopped, _) = self
            .wake
            .wait_timeout(stopped, period)
            .unwrap_or_else(|p| p.into_inner());
        !*stopped
    }
}

impl Storage {
    /// Starts the sweeper (see the module doc), and the walks that fill the
    /// expiry indexes from stores holding expiring values. `close` stops it.
    pub fn start_sweeper(self: &Arc<Self>) {
        for index in 0..self.shards.len() {
            let storage = Arc::clone(self);
            let walk = std::thread::Builder::new()
                .name(format!("expiry-index-{index}"))
                .spawn(move || storage.index_expiring(index));
            if let Err(e) = walk {
                tracing::warn!(error = %e, "cannot start the expiry index walk");
            }
        }
        let storage = Arc::clone(self);
        let sweeper = std::thread::Builder::new()
            .name("expiry-sweeper".into())
            .spawn(move || {
                while storage.sweep_stop.wait(SWEEP_EVERY) {
                    for index in 0..storage.shards.len() {
                        storage.sweep_shard(index);
                    }
                }
            });
        match sweeper {
            Ok(handle) => {
                *self.sweeper.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
            }
            Err(e) => tracing::warn!(error = %e, "cannot start the expiry sweeper"),
        }
    }

    /// Keys the expiry indexes hold (expiring keys, and replaced ones not
    /// yet swept from the index).
    pub fn expiring_keys(&self) -> usize {
        self.shards.iter().map(|s| s.expiries.len()).sum()
    }

    /// Fills shard `index`'s expiry index from its store, if the store has
    /// ever held an expiring value.
    fn index_expiring(&self, index: usize) {
        let shard = &self.shards[index];
        match shard.store.has_expiring() {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => return tracing::warn!(shard = index, error = %e, "expiring keys not indexed"),
        }
        let walked = shard.store.for_each(|key, value| {
            if let Some(at) = value.expires_at {
                shard.expiries.insert(at, key);
            }
            Ok(!self.sweep_stop.is_stopped())
        });
        if let Err(e) = walked {
            tracing::warn!(shard = index, error = %e, "expiring keys not indexed");
        }
    }

    /// Deletes what has expired on shard `index` (up to a batch); entries
    /// whose delete could not be made are kept for the next sweep.
    fn sweep_shard(&self, index: usize) {
        let shard = &self.shards[index];
        let now = now_ms();
        let due = shard.expiries.take_due(now, SWEEP_BATCH);
        if due.is_empty() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let mut sent = 0;
        for (at, key) in due {
            let hash = self.key_hash(&key);
            let state = match self.get_any_blocking(&key, hash) {
                Ok(state) => state,
                Err(_) => {
                    shard.expiries.insert(at, &key);
                    continue;
                }
            };
            // Replaced since (with another expiry or none), or gone.
            let Some(value) = state.filter(|v| v.expires_at == Some(at)) else {
                continue;
            };
            let tx = tx.clone();
            let retry = (at, key.clone());
            let reply: super::Reply = Box::new(move |result| {
                let _ = tx.send((retry, result));
            });
            let expect = Expect::OneOf(vec![value.version]);
            self.submit_blocking(key, hash, WriteOp::Expire, expect, Expiry::Never, reply);
            sent += 1;
        }
        drop(tx);
        for ((at, key), result) in rx.iter().take(sent) {
            match result {
                Ok(WriteOutcome::Deleted { .. }) => {
                    self.expiry_stats.expired.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(StoreError::ShuttingDown) => {}
                Err(_) => shard.expiries.insert(at, &key),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_out_in_instant_order_and_no_earlier() {
        let index = ExpiryIndex::default();
        index.insert(30, "c");
        index.insert(10, "a");
        index.insert(20, "b");
        index.insert(10, "a");
        assert_eq!(index.len(), 3);
        assert_eq!(index.take_due(5, 10), []);
        assert_eq!(index.take_due(20, 1), [(10, "a".to_owned())]);
        assert_eq!(index.take_due(20, 10), [(20, "b".to_owned())]);
        assert_eq!(index.len(), 1);
    }
}
