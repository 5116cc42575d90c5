//! Counters a shard writer keeps about its work, read by `/metrics`-style
//! reporting and by tests. Plain atomics: the writer is the only updater.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Group-commit statistics of one shard.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Batches taken off the queue.
    pub batches: AtomicU64,
    /// Commands in those batches (mean batch size = commands / batches).
    pub commands: AtomicU64,
    /// Transactions committed (batches with at least one change).
    pub commits: AtomicU64,
    /// Total time spent staging and committing, in microseconds.
    pub commit_micros: AtomicU64,
    /// Largest batch seen.
    pub max_batch: AtomicU64,
}

impl ShardMetrics {
    pub(crate) fn record_batch(&self, size: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.commands.fetch_add(size as u64, Ordering::Relaxed);
        self.max_batch.fetch_max(size as u64, Ordering::Relaxed);
    }

    pub(crate) fn record_commit(&self, took: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}
