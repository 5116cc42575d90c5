//! A per-shard Bloom filter of the keys the shard's store may hold, so that
//! deciding a write of a new key does not cost a persy index lookup (in the
//! profile, deserialising B-tree nodes for lookups that find nothing was a
//! quarter of the server's CPU under a write load of new keys).
//!
//! "No" is certain: a key the filter has never seen is not in the store.
//! "Maybe" sends the writer to the store as before. Keys are added when a
//! write is decided and, in the background after a start, from the store's
//! index; until that scan is done the filter answers "maybe" to everything.
//! Deleted keys stay in the filter (they only cost a lookup), so its false
//! positives grow with churn until the next start.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Bits per shard: 2 MiB, under 1% false positives up to about 1.5 million
/// keys per shard, about 25% at 5 million.
const BITS: usize = 1 << 24;
/// Probes per key.
const PROBES: u64 = 4;

/// See the module documentation.
pub struct KeyFilter {
    words: Vec<AtomicU64>,
    ready: AtomicBool,
    hasher: std::hash::RandomState,
}

impl Default for KeyFilter {
    fn default() -> Self {
        Self {
            words: (0..BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            ready: AtomicBool::new(false),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl KeyFilter {
    /// The bit positions of `key`, by double hashing.
    fn positions(&self, key: &str) -> impl Iterator<Item = usize> {
        let h1 = self.hasher.hash_one(key);
        let h2 = h1.rotate_left(32) | 1;
        (0..PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % BITS as u64) as usize)
    }

    /// Records that the store may hold `key`.
    pub fn insert(&self, key: &str) {
        for bit in self.positions(key) {
            self.words[bit / 64].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
    }

    /// False only if the store certainly lacks `key`.
    pub fn may_contain(&self, key: &str) -> bool {
        if !self.ready.load(Ordering::Acquire) {
            return true;
        }
        self.positions(key)
            .all(|bit| self.words[bit / 64].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0)
    }

    /// Every key of the store has been inserted: "no" answers are now certain.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_means_no_and_nothing_is_certain_before_ready() {
        let filter = KeyFilter::default();
        filter.insert("present");
        assert!(filter.may_contain("absent"), "not ready: always maybe");
        filter.mark_ready();
        assert!(filter.may_contain("present"));
        let false_positives = (0..10_000)
            .filter(|i| filter.may_contain(&format!("k{i}")))
            .count();
        assert!(false_positives < 10, "{false_positives}");
        for i in 0..10_000 {
            filter.insert(&format!("k{i}"));
        }
        assert!((0..10_000).all(|i| filter.may_contain(&format!("k{i}"))));
    }
}
