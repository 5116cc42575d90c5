//! One shard's applier: copies committed writes from the shard's memtable
//! into its persy store in large transactions, off the request path.
//!
//! persy is fast when fed large transactions (see `bench/ENGINE.md`), so the
//! applier waits for a few thousand entries or a few milliseconds, whichever
//! comes first, and applies the latest state of every key in one
//! transaction together with the shard's new applied revision. Applying is
//! idempotent (it sets each key to its state at a revision), which is what
//! lets recovery replay the log over a store that already has part of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::committer::Progress;
use super::memtable::{ApplyBatch, Memtable};
use super::store::ShardStore;
use super::StoreError;

/// Entries that start an apply at once, and the most one apply takes (the
/// oldest): writers held back by a full memtable wait for a whole
/// transaction, so bounded ones free room in steady steps, and persy's
/// cost per write has flattened out well below this size.
const APPLY_MAX: usize = 1_024;
/// Longest an entry waits before it is applied: long enough for batches of
/// hundreds under load, where persy's cost per write is lowest.
const APPLY_WAIT: Duration = Duration::from_millis(200);

/// Writes `entries` (latest state per key) into `store` with `upto` as its
/// applied revision, in one transaction.
pub fn apply(store: &ShardStore, batch: &ApplyBatch) -> Result<(), StoreError> {
    let mut tx = store.begin()?;
    for (key, pending) in &batch.entries {
        match &pending.value {
            Some(value) if pending.not_in_store => {
                tx.insert(key, value.version, &value.json)?;
            }
            Some(value) => tx.upsert(key, value.version, &value.json)?,
            None => tx.remove(key)?,
        }
    }
    tx.set_seq(batch.upto)?;
    tx.commit()
}

/// How much lower than the request path the appliers run (a nice value).
/// Their work can wait: the memtable absorbs what they have not applied
/// yet, up to its bound, while a request waiting for a core waits in
/// front of a client. Measured: 3-4% more durable PUTs and 15% off their
/// p99 (docs/design/write-path.md).
const APPLIER_NICENESS: i32 = 10;

/// Lowers the calling thread's scheduling priority, where the platform
/// allows it per thread; a failure costs only the gain.
fn yield_to_requests(shard: usize) {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), APPLIER_NICENESS) {
            tracing::debug!(shard, error = %e, "applier keeps the default priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (shard, APPLIER_NICENESS);
}

/// The applier thread's body: runs until the memtable stops and is drained.
/// A failed apply poisons the shard (its writes stop; reads go on from the
/// memtable and the store) and ends the thread.
pub fn run(
    shard: usize,
    store: ShardStore,
    memtable: Arc<Memtable>,
    progress: Arc<Progress>,
    poisoned: Arc<AtomicBool>,
) {
    yield_to_requests(shard);
    while let Some(batch) = memtable.next_batch(APPLY_MAX, APPLY_MAX, APPLY_WAIT) {
        match super::writer::guarded(|| apply(&store, &batch)) {
            Ok(()) => {
                progress.applied.fetch_max(batch.upto, Ordering::AcqRel);
                memtable.remove_applied(&batch);
            }
            Err(e) => {
                tracing::error!(shard, error = %e, "applying committed writes failed; shard refuses writes until restart");
                poisoned.store(true, Ordering::Release);
                memtable.stop();
                return;
            }
        }
    }
    tracing::debug!(shard, "shard applier stopped");
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn appliers_run_below_the_request_path() {
        let (before, after) = std::thread::spawn(|| {
            let tid = Some(rustix::thread::gettid());
            let before = rustix::process::getpriority_process(tid).unwrap();
            yield_to_requests(0);
            (before, rustix::process::getpriority_process(tid).unwrap())
        })
        .join()
        .unwrap();
        // Only the applier's own thread changed, to the niceness asked for
        // (or stayed where it was if it already ran lower).
        assert_eq!(after, APPLIER_NICENESS.max(before));
        let here = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        assert_eq!(here, before);
    }
}
