//! The per-shard read cache.
//!
//! Entries are a value, a key known to be absent, or a marker for a value
//! too large to cache. Caching absence makes repeated misses (404s, and the
//! existence check every write of a new key needs) as cheap as hits.
//!
//! Weighted by bytes so `cache.capacity_bytes` bounds memory, not entry
//! count. Only two code paths put values in: the shard writer, after a commit
//! (`insert`/`remove`), and readers filling a miss through a quick_cache
//! placeholder. A writer's `insert` invalidates any placeholder for
//! the key, so a reader that loaded an older value from disk cannot put it
//! back over a newer one: its `guard.insert` fails instead.

use std::sync::Arc;

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, Weighter};

use super::store::StoredValue;

/// Bookkeeping bytes per entry on top of key and value bytes: the key's
/// `String`, the `Arc<StoredValue>` and its `Bytes`, allocator rounding and
/// the cache's own slot (measured: RSS per cached 100-byte value is about
/// 400 bytes on x86_64 with glibc).
const ENTRY_OVERHEAD: u64 = 300;

/// Internal lock shards of each cache. Fixed (quick_cache's default depends
/// on the machine's core count) so the largest admitted entry is known.
const LOCK_SHARDS: usize = 16;

/// Charges an entry its key and value bytes plus bookkeeping.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteWeighter;

impl Weighter<String, Cached> for ByteWeighter {
    fn weight(&self, key: &String, value: &Cached) -> u64 {
        let value_bytes = match value {
            Cached::Present(v) => v.json.len() as u64,
            Cached::Absent | Cached::TooLarge => 0,
        };
        key.len() as u64 + value_bytes + ENTRY_OVERHEAD
    }
}

/// A cached committed state of a key.
#[derive(Debug, Clone)]
pub enum Cached {
    /// The key holds no value.
    Absent,
    /// The key's committed value.
    Present(Arc<StoredValue>),
    /// The key holds a value too large to cache: read it from the store.
    /// quick_cache silently refuses an entry heavier than a fraction of one
    /// lock shard, and such a refusal would leave a reader's placeholder (and
    /// the older value that reader loaded) in place; this light marker
    /// replaces both instead.
    TooLarge,
}

impl Cached {
    /// The committed state, unless it must be read from the store.
    pub fn known(&self) -> Option<Option<Arc<StoredValue>>> {
        match self {
            Self::Absent => Some(None),
            Self::Present(v) => Some(Some(v.clone())),
            Self::TooLarge => None,
        }
    }

    /// The entry for a state loaded from the store or just committed.
    pub fn of(cache: &ShardCache, key: &str, state: Option<Arc<StoredValue>>) -> Self {
        match state {
            None => Self::Absent,
            Some(v) if weight_of(key, &v) <= max_entry_weight(cache) => Self::Present(v),
            Some(_) => Self::TooLarge,
        }
    }
}

/// What an entry holding `value` weighs.
fn weight_of(key: &str, value: &StoredValue) -> u64 {
    key.len() as u64 + value.json.len() as u64 + ENTRY_OVERHEAD
}

/// The heaviest entry this cache keeps: well under what one lock shard
/// admits (its capacity share times the hot fraction), so quick_cache never
/// refuses one of ours.
fn max_entry_weight(cache: &ShardCache) -> u64 {
    cache.capacity() / LOCK_SHARDS as u64 / 4
}

/// One shard's cache of committed values.
pub type ShardCache = Cache<String, Cached, ByteWeighter>;

/// A cache holding about `capacity_bytes` of entries.
pub fn new_cache(capacity_bytes: u64) -> ShardCache {
    let capacity = capacity_bytes.max(ENTRY_OVERHEAD * 64);
    let estimated_items = (capacity / 256).clamp(16, 4_000_000) as usize;
    let options = OptionsBuilder::new()
        .shards(LOCK_SHARDS)
        .estimated_items_capacity(estimated_items)
        .weight_capacity(capacity)
        .build();
    match options {
        Ok(options) => Cache::with_options(
            options,
            ByteWeighter,
            DefaultHashBuilder::default(),
            DefaultLifecycle::default(),
        ),
        // Every option above is set, so building cannot fail; fall back anyway.
        Err(_) => Cache::with_weighter(estimated_items, capacity, ByteWeighter),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;

    fn value(len: usize, version: u64) -> Arc<StoredValue> {
        Arc::new(StoredValue::lasting(version, Bytes::from(vec![b'1'; len])))
    }

    /// The reported bug: a reader misses, loads version 1 from disk, the
    /// writer commits a large version 2; the reader must not cache version 1.
    #[test]
    fn a_large_commit_invalidates_a_pending_read() {
        let cache = new_cache(64 * 1024);
        let guard = match cache.get_value_or_guard("k", None) {
            quick_cache::sync::GuardResult::Guard(g) => g,
            _ => panic!("expected a placeholder"),
        };
        let big = value(60 * 1024, 2);
        let entry = Cached::of(&cache, "k", Some(big));
        assert!(matches!(entry, Cached::TooLarge));
        cache.insert("k".to_owned(), entry);
        assert!(guard.insert(Cached::Present(value(10, 1))).is_err());
        assert!(cache.get("k").unwrap().known().is_none());
    }

    #[test]
    fn small_values_are_cached() {
        let cache = new_cache(64 * 1024);
        let entry = Cached::of(&cache, "k", Some(value(10, 3)));
        cache.insert("k".to_owned(), entry);
        let got = cache.get("k").unwrap().known().unwrap().unwrap();
        assert_eq!(got.version, 3);
        cache.insert("k".to_owned(), Cached::of(&cache, "k", None));
        assert!(cache.get("k").unwrap().known().unwrap().is_none());
    }
}
