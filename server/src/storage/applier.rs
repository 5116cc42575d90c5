//! One shard's applier: copies committed writes from the shard's memtable
//! into its persy store in large transactions, off the request path.
//!
//! persy is fast when fed large transactions (see `bench/ENGINE.md`), so the
//! applier waits for a few thousand entries or a few milliseconds, whichever
//! comes first, and applies the latest state of every key in one
//! transaction together with the shard's new applied revision. Applying is
//! idempotent (it sets each key to its state at a revision), which is what
//! lets recovery replay the log over a store that already has part of it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::committer::Progress;
use super::held;
use super::memtable::{ApplyBatch, Memtable, Pending};
use super::store::ShardStore;
use super::StoreError;

/// Longest an entry waits before it is applied: long enough for batches of
/// hundreds under load, where persy's cost per write is lowest.
const APPLY_WAIT: Duration = Duration::from_millis(200);

/// Writes `entries` (latest state per key) into `store` with `upto` as its
/// applied revision, in one transaction.
pub fn apply(store: &ShardStore, batch: &ApplyBatch) -> Result<(), StoreError> {
    let mut tx = store.begin()?;
    let expiring = batch
        .entries
        .iter()
        .any(|(_, p)| p.value.as_ref().is_some_and(|v| v.expires_at.is_some()));
    if expiring {
        tx.mark_expiring()?;
    }
    for (key, pending) in &batch.entries {
        match &pending.value {
            Some(value) if pending.not_in_store => {
                tx.insert(key, value)?;
            }
            Some(value) => tx.upsert(key, value)?,
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

/// First wait before an apply that failed is tried again; it doubles up
/// to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Why the shard's store does not take its committed writes right now,
/// while the applier keeps trying: the shard refuses new writes meanwhile
/// (its memtable would only fill), and takes them again by itself once an
/// apply succeeds (a full disk freed, for one).
#[derive(Default)]
pub struct ApplyHealth {
    failing: AtomicBool,
    error: Mutex<Option<StoreError>>,
}

impl ApplyHealth {
    /// The error writes to the shard get while applies fail.
    pub fn failure(&self) -> Option<StoreError> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        self.error.lock().ok().and_then(|e| e.clone())
    }

    fn set(&self, error: Option<StoreError>) {
        if let Ok(mut slot) = self.error.lock() {
            self.failing.store(error.is_some(), Ordering::Release);
            *slot = error;
        }
    }
}

/// What writes are told while applying fails with `e`: a full disk is the
/// client's 507; anything else is a temporary 503. Either way nothing new
/// was written.
fn refusal(e: &StoreError) -> StoreError {
    let text = e.to_string();
    if ["(os error 28)", "(os error 122)"]
        .iter()
        .any(|m| text.contains(m))
    {
        StoreError::NoSpace(format!("applying to the store: {text}"))
    } else {
        StoreError::Unavailable(format!("applying to the store: {text}"))
    }
}

/// The applier thread's body: runs until the memtable stops and is drained.
/// A failed apply leaves its entries in the memtable (reads go on from it
/// and the store) and is tried again after a growing pause, while the shard
/// refuses new writes; once one succeeds the shard takes writes again. A
/// panic inside the engine is different: the engine's state is unknown, so
/// it poisons the shard until restart and ends the thread.
///
/// `max_batch` (`storage.apply_batch`) entries start an apply at once, and
/// it is the most one apply takes (the oldest): writers held back by a
/// full memtable wait for a whole transaction, so bounded ones free room
/// in steady steps, and persy's cost per write has flattened out well
/// below the default of 1,024.
pub struct Applier {
    /// The shard's index, for logs.
    pub shard: usize,
    pub store: ShardStore,
    pub memtable: Arc<Memtable>,
    pub progress: Arc<Progress>,
    pub poisoned: Arc<AtomicBool>,
    pub health: Arc<ApplyHealth>,
    /// `storage.apply_batch`.
    pub max_batch: usize,
    /// Where the shard's held file goes.
    pub data_dir: PathBuf,
    /// The writers' publish gate (see `writer`).
    pub publish_gate: Arc<RwLock<()>>,
}

impl Applier {
    /// The thread body; see [`run`].
    pub fn run(self) {
        run(self)
    }
}

fn run(a: Applier) {
    yield_to_requests(a.shard);
    let mut retry = RETRY_FIRST;
    // The newest revision set aside in the held file, while there is one.
    let mut held_upto: Option<u64> = None;
    while let Some(batch) = a.memtable.next_batch(a.max_batch, a.max_batch, APPLY_WAIT) {
        match super::writer::guarded(|| apply(&a.store, &batch)) {
            Ok(()) => {
                a.progress.applied.fetch_max(batch.upto, Ordering::AcqRel);
                a.memtable.remove_applied(&batch);
                if let Some(upto) = held_upto {
                    // Writes stay refused until the store has every held one.
                    if a.progress.applied.load(Ordering::Acquire) < upto {
                        continue;
                    }
                    if let Err(e) = a.release_held() {
                        tracing::warn!(shard = a.shard, error = %e, "cannot delete the held writes file; trying again");
                        continue;
                    }
                    held_upto = None;
                }
                if retry != RETRY_FIRST {
                    tracing::info!(
                        shard = a.shard,
                        "applying committed writes works again; the shard takes writes"
                    );
                    a.health.set(None);
                    retry = RETRY_FIRST;
                }
            }
            Err(e @ StoreError::Engine(_)) => {
                tracing::error!(shard = a.shard, error = %e, "the storage engine failed; shard refuses writes until restart");
                a.poisoned.store(true, Ordering::Release);
                if held_upto.is_none() {
                    a.hold_pending();
                }
                a.memtable.stop();
                return;
            }
            Err(e) => {
                tracing::warn!(shard = a.shard, error = %e, retry_ms = retry.as_millis() as u64, "applying committed writes failed; the shard refuses writes until it works again");
                a.health.set(Some(refusal(&e)));
                if held_upto.is_none() {
                    held_upto = a.hold_pending();
                }
                if a.memtable.stopping_within(retry) {
                    // The log or the held file has every entry left: the
                    // next start replays them.
                    break;
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
    tracing::debug!(shard = a.shard, "shard applier stopped");
}

impl Applier {
    /// Sets the shard's unapplied writes aside in its held file, so the
    /// log need not keep them (see `held`); returns the newest revision
    /// held. The shard refuses writes already (poisoned, or its health
    /// says so), and taking the publish gate waits out a batch that was
    /// past that check: the copy has every write the shard will publish.
    fn hold_pending(&self) -> Option<u64> {
        let pending: Vec<(String, Pending)> = {
            let _gate = self.publish_gate.write().unwrap_or_else(|p| p.into_inner());
            self.memtable.pending().into_iter().collect()
        };
        let upto = pending.iter().map(|(_, p)| p.revision).max()?;
        match held::write(&self.data_dir, self.shard, &pending) {
            Ok(()) => {
                self.progress.held.store(true, Ordering::Release);
                tracing::warn!(
                    shard = self.shard,
                    writes = pending.len(),
                    "the shard's unapplied writes are held outside the commit log, which goes on being trimmed"
                );
                Some(upto)
            }
            Err(e) => {
                tracing::warn!(shard = self.shard, error = %e, "cannot hold the shard's unapplied writes; the log keeps them");
                None
            }
        }
    }

    /// The store has every held write: the log keeps this shard's writes
    /// again, and the held file goes.
    fn release_held(&self) -> Result<(), StoreError> {
        self.progress.held.store(false, Ordering::Release);
        held::remove(&self.data_dir, self.shard)
    }
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
