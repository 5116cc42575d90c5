//! The per-shard read cache.
//!
//! Entries are `Some(value)` or `None`: a key known to be absent. Caching
//! absence makes repeated misses (404s, and the existence check every write
//! of a new key needs) as cheap as hits.
//!
//! Weighted by bytes so `cache.capacity_bytes` bounds memory, not entry
//! count. Only two code paths put values in: the shard writer, after a commit
//! (`insert`/`remove`), and readers filling a miss through a quick_cache
//! placeholder. A writer's `insert` invalidates any placeholder for
//! the key, so a reader that loaded an older value from disk cannot put it
//! back over a newer one: its `guard.insert` fails instead.

use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use super::store::StoredValue;

/// Bookkeeping bytes per entry on top of key and value bytes: the key's
/// `String`, the `Arc<StoredValue>` and its `Bytes`, allocator rounding and
/// the cache's own slot (measured: RSS per cached 100-byte value is about
/// 400 bytes on x86_64 with glibc).
const ENTRY_OVERHEAD: u64 = 300;

/// Charges an entry its key and value bytes plus bookkeeping.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteWeighter;

impl Weighter<String, Cached> for ByteWeighter {
    fn weight(&self, key: &String, value: &Cached) -> u64 {
        key.len() as u64 + value.as_ref().map_or(0, |v| v.json.len() as u64) + ENTRY_OVERHEAD
    }
}

/// A cached committed state of a key: its value, or `None` for absent.
pub type Cached = Option<Arc<StoredValue>>;

/// One shard's cache of committed values.
pub type ShardCache = Cache<String, Cached, ByteWeighter>;

/// A cache holding about `capacity_bytes` of entries.
pub fn new_cache(capacity_bytes: u64) -> ShardCache {
    let capacity = capacity_bytes.max(ENTRY_OVERHEAD * 16);
    let estimated_items = (capacity / 256).clamp(16, 4_000_000) as usize;
    Cache::with_weighter(estimated_items, capacity, ByteWeighter)
}
