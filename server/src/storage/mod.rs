//! Durable, sharded storage: keys are placed on shards by a stable hash;
//! writes become durable in one commit log shared by all shards, then reach
//! each shard's persy file in the background (`docs/design/write-path.md`).
//!
//! - `hash`: key -> shard (part of the on-disk format);
//! - `manifest`: the data directory's shard count and format version;
//! - `log`: the commit log's files and frames;
//! - `committer`: the one thread that appends and syncs the log;
//! - `writer`: one shard's writer, which decides its writes in order;
//! - `memtable`: one shard's committed writes its store lacks yet;
//! - `applier`: one shard's thread that moves them into the store;
//! - `recovery`: replaying the log into the stores at start;
//! - `held`: a failing shard's unapplied writes, kept outside the log;
//! - `store`: one shard's persy file;
//! - `cache`: one shard's byte-weighted read cache;
//! - `keyfilter`: one shard's Bloom filter of the keys its store may hold;
//! - `snapshot`: a consistent cut of every shard at one revision;
//! - `ids`: the persistent counter for server-assigned keys;
//! - `metrics`: group-commit counters;
//! - `bulk`: loading a data set into a new directory (restore).

mod applier;
pub mod bulk;
mod cache;
mod committer;
pub mod expiry;
pub mod feed;
pub mod hash;
mod held;
pub mod ids;
mod keyfilter;
pub mod log;
pub mod manifest;
mod memtable;
pub mod metrics;
mod recovery;
mod replica;
mod segment;
mod snapshot;
pub mod store;
pub mod txn;
pub mod writer;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::config::{CacheSettings, StorageSettings};
use applier::ApplyHealth;
use cache::{new_cache, Cached, ShardCache};
use committer::{LogFailure, LogHandle, Progress};
pub use expiry::now_ms;
use ids::IdAllocator;
use keyfilter::KeyFilter;
use memtable::{Memtable, Pending};
use metrics::ShardMetrics;
pub use snapshot::Snapshot;
use store::ScanPage;
use store::ShardStore;
pub use store::{ListedKey, PageLimits, StoredValue};
pub use writer::{Derivation, Expect, Expiry, Reply, WriteOp, WriteOutcome};
use writer::{ShardWriter, WriteCommand, WriterMsg};

/// Storage failures. Mapped to HTTP answers in `crate::error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A store file could not be opened.
    #[error("cannot open store {0}")]
    Open(String),
    /// The data directory's layout does not match the settings.
    #[error("{0}")]
    Manifest(String),
    /// Disk I/O failed.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// Stored bytes are not what this build wrote.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// An earlier commit of this shard failed; it takes no writes until restart.
    #[error("shard {0} refuses writes after a failed commit; restart the server to recover")]
    Poisoned(usize),
    /// The server is stopping and takes no more writes.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The disk is full: nothing was written, and writes resume by
    /// themselves once space is freed.
    /// (The detail is logged, not shown to clients: it names server paths.)
    #[error("the disk is full; nothing was written, and writes resume once space is freed")]
    NoSpace(String),
    /// A resource the write needs (a file descriptor, a new log segment) is
    /// not available now; nothing was written, and the write may be retried.
    #[error("storage is temporarily unavailable; nothing was written, retry later")]
    Unavailable(String),
    /// The commit log failed: what reached the disk is unknown, so no shard
    /// takes writes until a restart, whose recovery reads the log.
    #[error("the commit log failed ({0}); no shard takes writes until restart")]
    LogFailed(String),
    /// The storage engine panicked: its state is unknown.
    #[error("storage engine failed: {0}")]
    Engine(String),
    /// A key longer than a log record can carry.
    #[error("key is {0} bytes; the commit log carries at most {max}", max = log::MAX_KEY_BYTES)]
    KeyTooLong(usize),
    /// Another process (a running server) holds the store file.
    #[error(
        "{0} is in use by another exdaas process (a running server?); stop it first, or back up the running server with `exdaas backup --out FILE --server HOST:PORT`"
    )]
    InUse(String),
    /// This server is a read replica of the primary named; writes go there.
    #[error("this server is a read-only replica; send writes to its primary {0}")]
    ReadOnly(String),
}

impl StoreError {
    /// Whether the failed operation certainly wrote nothing, so the shard
    /// can go on (the failure is the caller's, or passes by itself).
    pub fn wrote_nothing(&self) -> bool {
        matches!(
            self,
            Self::NoSpace(_)
                | Self::Unavailable(_)
                | Self::KeyTooLong(_)
                | Self::ShuttingDown
                | Self::ReadOnly(_)
        )
    }
}

/// One shard: its store, cache, memtable, and its threads.
struct Shard {
    store: ShardStore,
    cache: Arc<ShardCache>,
    memtable: Arc<Memtable>,
    filter: Arc<KeyFilter>,
    queue: mpsc::Sender<WriterMsg>,
    writer: Mutex<Option<JoinHandle<()>>>,
    applier: Mutex<Option<JoinHandle<()>>>,
    poisoned: Arc<AtomicBool>,
    /// Set while the applier's transactions fail and it keeps trying.
    apply_health: Arc<ApplyHealth>,
    progress: Arc<Progress>,
    metrics: Arc<ShardMetrics>,
    /// Held by the writer for each batch, by a transaction while it
    /// decides on this shard's keys (`txn`).
    decision: Arc<Mutex<()>>,
    /// Keys with an expiry, by instant, for the sweeper.
    expiries: Arc<expiry::ExpiryIndex>,
}

/// All shards of one data directory, and the commit log in front of them.
pub struct Storage {
    shards: Vec<Shard>,
    ids: IdAllocator,
    /// The log writer thread; it ends once every shard writer has.
    log_thread: Mutex<Option<JoinHandle<()>>>,
    /// Shards whose cache is still being warmed after start.
    warming: AtomicUsize,
    /// Held shared by each shard writer from a log append to its
    /// publication, exclusively by a cut (`snapshot`).
    publish_gate: Arc<RwLock<()>>,
    /// Set once the commit log failed.
    log_failure: LogFailure,
    /// The log writer, for transactions (each shard writer has its own);
    /// taken at close, so the log writer can stop.
    log: RwLock<Option<LogHandle>>,
    /// Stops the expiry sweeper.
    sweep_stop: expiry::SweepStop,
    /// The expiry sweeper, once started.
    sweeper: Mutex<Option<JoinHandle<()>>>,
    /// Keys the sweeper deleted.
    pub expiry_stats: expiry::ExpiryStats,
    /// Transactions waiting to be decided together (`txn`).
    txns: txn::TxnQueue,
    /// Every committed record, by revision, for the change feed.
    feed: Arc<feed::Feed>,
    /// On a replica, its primary: client writes are refused (`replica`).
    read_only: RwLock<Option<String>>,
    /// How this directory's keys map to shards (from its manifest).
    placement: hash::Placement,
}

/// What the change feed keeps: how much applied log on disk, how many
/// bytes of recent changes in memory.
#[derive(Debug, Clone, Copy)]
pub struct FeedOptions {
    /// Applied log segments kept for readers.
    pub retention: log::Retention,
    /// Bytes of recent changes in memory.
    pub buffer_bytes: usize,
}

impl FeedOptions {
    /// From the `[feed]` settings.
    pub fn of(settings: &crate::config::FeedSettings) -> Self {
        Self {
            retention: log::Retention {
                bytes: settings.retain_bytes,
                revisions: settings.retain_revisions,
            },
            buffer_bytes: usize::try_from(settings.buffer_bytes).unwrap_or(usize::MAX),
        }
    }
}

impl Default for FeedOptions {
    fn default() -> Self {
        Self::of(&crate::config::FeedSettings::default())
    }
}

/// Keys, and bytes of keys and values, a shard's memtable holds before its
/// writer waits for the applier (values may be up to a MiB each).
const MEMTABLE_ENTRIES: usize = 65_536;
const MEMTABLE_BYTES: usize = 32 * 1024 * 1024;

/// Where the outcome of a queued write arrives.
type WriteAnswer = oneshot::Receiver<Result<WriteOutcome, StoreError>>;

/// One page of a key listing.
#[derive(Debug)]
pub struct Listing {
    /// Keys in ascending order, with their versions (and values if asked).
    pub items: Vec<ListedKey>,
    /// Whether more keys follow the last one.
    pub more: bool,
}

/// Fills `filter` from the store's index in the background; writes decided
/// meanwhile add their keys themselves, and the filter answers "maybe"
/// until the scan is done.
fn fill_filter(
    index: usize,
    store: &ShardStore,
    filter: &Arc<KeyFilter>,
) -> Result<(), StoreError> {
    let (store, filter) = (store.clone(), filter.clone());
    spawn(format!("key-filter-{index}"), move || {
        match store.for_each_key(|key| filter.insert(key)) {
            Ok(()) => filter.mark_ready(),
            Err(e) => tracing::warn!(shard = index, error = %e, "key filter not built; every write looks its key up"),
        }
    })
    .map(|_| ())
}

/// A state as readers see it: none once it has expired.
fn live(state: Option<Arc<StoredValue>>) -> Option<Arc<StoredValue>> {
    // The clock is read only for values that expire.
    state.filter(|v| v.expires_at.is_none_or(|at| at > now_ms()))
}

/// Starts a named storage thread.
fn spawn(name: String, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(body)
        .map_err(|e| StoreError::Io(format!("cannot start a storage thread: {e}")))
}

/// One shard's part of a listing: its store's keys overlaid with the
/// memtable's committed, not yet applied, states. The memtable is read
/// first: an entry applied meanwhile then shows in the store too, and of
/// two states of a key the newer (higher version) wins.
fn shard_page(
    store: &ShardStore,
    memtable: &Memtable,
    prefix: &str,
    after: Option<&str>,
    page: PageLimits,
) -> Result<ScanPage, StoreError> {
    let start = match after {
        Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_owned()),
        _ => std::ops::Bound::Included(prefix.to_owned()),
    };
    let pending = memtable.range(prefix, start);
    // An expired state lists as a delete does.
    let live = |p: &Pending| p.value.clone().filter(|v| !v.is_expired(page.now_ms));
    let deletes = pending.iter().filter(|(_, p)| live(p).is_none()).count();
    // One more than asked, to learn whether another page follows, plus room
    // for keys the memtable deletes.
    let limits = PageLimits {
        limit: page.limit + 1 + deletes,
        ..page
    };
    let stored = store.scan(prefix, after, limits)?;
    let boundary = (!stored.complete)
        .then(|| stored.items.last().map(|i| i.key.clone()))
        .flatten();
    let mut merged: std::collections::BTreeMap<String, ListedKey> = stored
        .items
        .into_iter()
        .map(|i| (i.key.clone(), i))
        .collect();
    for (key, state) in pending {
        if boundary.as_ref().is_some_and(|b| key > *b) {
            break;
        }
        let newer = merged.get(&key).is_none_or(|i| i.version < state.revision);
        if !newer {
            continue;
        }
        match live(&state) {
            Some(value) => {
                let json = page.values.then(|| value.json.clone());
                merged.insert(
                    key.clone(),
                    ListedKey {
                        key,
                        version: value.version,
                        json,
                    },
                );
            }
            None => {
                merged.remove(&key);
            }
        }
    }
    Ok(ScanPage {
        items: merged.into_values().collect(),
        complete: stored.complete,
    })
}

/// Merges the shards' pages into one page of the listing. A shard that
/// stopped early (at its count or byte budget) has keys beyond its last one
/// that the others know nothing about, so the merged page may only reach up
/// to the smallest such last key; past it, keys could be missing.
fn merge_pages(pages: Vec<ScanPage>, page: PageLimits) -> Listing {
    let boundary = pages
        .iter()
        .filter(|p| !p.complete)
        .filter_map(|p| p.items.last().map(|i| i.key.clone()))
        .min();
    let mut all: Vec<ListedKey> = pages.into_iter().flat_map(|p| p.items).collect();
    all.sort_by(|a, b| a.key.cmp(&b.key));
    let total = all.len();
    if let Some(boundary) = &boundary {
        all.retain(|i| i.key <= *boundary);
    }
    let mut more = boundary.is_some() || all.len() < total;
    let mut bytes = 0usize;
    let mut keep = 0;
    for item in &all {
        let full = keep >= page.limit || (keep > 0 && bytes >= page.max_value_bytes);
        if full {
            more = true;
            break;
        }
        bytes += item.json.as_ref().map_or(0, |j| j.len());
        keep += 1;
    }
    all.truncate(keep);
    Listing { items: all, more }
}

impl Storage {
    /// Opens every shard of the data directory (creating it if new),
    /// replays the commit log into the stores (see `recovery`), and starts
    /// the log writer, one writer and one applier thread per shard.
    pub fn open(settings: &StorageSettings, cache: &CacheSettings) -> Result<Self, StoreError> {
        Self::open_with_feed(settings, cache, FeedOptions::default())
    }

    /// [`Storage::open`], keeping what `feed` says for the change feed.
    pub fn open_with_feed(
        settings: &StorageSettings,
        cache: &CacheSettings,
        feed: FeedOptions,
    ) -> Result<Self, StoreError> {
        let data_dir = settings.data_dir.clone();
        let found = manifest::open_or_create(&data_dir, settings.shards)?;
        log::remove_leftovers(&data_dir)?;
        let ids = IdAllocator::open(&data_dir)?;
        let count = settings.shards as usize;
        let stores = (0..count)
            .map(|i| {
                ShardStore::open(
                    &manifest::shard_file(&data_dir, i),
                    settings.store_cache_bytes,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let applied = stores
            .iter()
            .map(ShardStore::last_seq)
            .collect::<Result<Vec<_>, _>>()?;
        let floor = applied.iter().copied().max().unwrap_or(0) + 1;
        let feed_options_retention = feed.retention;
        let keep_from = applied.iter().copied().min().unwrap_or(0) + 1;
        let recovered = log::CommitLog::open_keeping(&data_dir, floor, keep_from)?;
        let mut log = recovered.log;
        let (held_frames, held_files) = held::read_all(&data_dir.join(log::LOG_DIR))?;
        let mut frames = recovered.frames;
        frames.extend(held_frames);
        let replayed = recovery::replay(&stores, &applied, frames)?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "replayed the commit log into the stores"
            );
        }
        log.reset(feed.retention)?;
        let feed = Arc::new(feed::Feed::new(
            data_dir.join(log::LOG_DIR),
            log.oldest_revision(),
            log.next_revision().saturating_sub(1),
            feed.buffer_bytes,
        ));
        // The stores have every held write now.
        for file in held_files {
            std::fs::remove_file(&file)
                .map_err(|e| StoreError::Io(format!("{}: {e}", file.display())))?;
        }
        manifest::upgrade(&data_dir, &found)?;
        // The shard files may have just been created: make their names
        // durable before any write to them is acknowledged.
        manifest::sync_dir(&data_dir)?;

        let progress: Vec<Arc<Progress>> = stores
            .iter()
            .map(|s| {
                let p = Progress::default();
                let applied = s.last_seq().unwrap_or(0);
                p.applied.store(applied, Ordering::Release);
                p.logged.store(applied, Ordering::Release);
                Arc::new(p)
            })
            .collect();
        let log_failure = LogFailure::default();
        let followers = committer::Followers {
            progress: progress.clone(),
            failure: log_failure.clone(),
            feed: Arc::clone(&feed),
            retention: feed_options_retention,
        };
        let (log, log_thread) = committer::start(log, settings.queue_depth, followers)?;
        let publish_gate = Arc::new(RwLock::new(()));
        let per_shard_cache = cache.capacity_bytes / count as u64;
        let mut shards = Vec::with_capacity(count);
        for (index, store) in stores.into_iter().enumerate() {
            let cache = Arc::new(new_cache(per_shard_cache));
            let memtable = Arc::new(Memtable::new(MEMTABLE_ENTRIES, MEMTABLE_BYTES));
            let filter = Arc::new(KeyFilter::default());
            fill_filter(index, &store, &filter)?;
            let (queue, rx) = mpsc::channel(settings.queue_depth);
            let poisoned = Arc::new(AtomicBool::new(false));
            let metrics = Arc::new(ShardMetrics::default());
            let apply_health = Arc::new(ApplyHealth::default());
            let decision = Arc::new(Mutex::new(()));
            let expiries = Arc::new(expiry::ExpiryIndex::default());
            let writer = ShardWriter {
                shard: index,
                store: store.clone(),
                cache: cache.clone(),
                memtable: memtable.clone(),
                filter: filter.clone(),
                log: log.clone(),
                publish_gate: publish_gate.clone(),
                apply_health: apply_health.clone(),
                decision: decision.clone(),
                expiries: expiries.clone(),
                rx,
                max_batch: settings.max_batch,
                poisoned: poisoned.clone(),
                metrics: metrics.clone(),
            };
            let writer = spawn(format!("shard-writer-{index}"), move || writer.run())?;
            let applier = applier::Applier {
                shard: index,
                store: store.clone(),
                memtable: memtable.clone(),
                progress: progress[index].clone(),
                poisoned: poisoned.clone(),
                health: apply_health.clone(),
                max_batch: settings.apply_batch,
                data_dir: data_dir.clone(),
                publish_gate: publish_gate.clone(),
            };
            let applier = spawn(format!("shard-applier-{index}"), move || applier.run())?;
            shards.push(Shard {
                store,
                cache,
                memtable,
                filter,
                queue,
                writer: Mutex::new(Some(writer)),
                applier: Mutex::new(Some(applier)),
                poisoned,
                apply_health,
                progress: progress[index].clone(),
                metrics,
                decision,
                expiries,
            });
        }
        Ok(Self {
            shards,
            ids,
            log_thread: Mutex::new(Some(log_thread)),
            warming: AtomicUsize::new(0),
            publish_gate,
            log_failure,
            log: RwLock::new(Some(log)),
            sweep_stop: expiry::SweepStop::default(),
            sweeper: Mutex::new(None),
            expiry_stats: expiry::ExpiryStats::default(),
            txns: txn::TxnQueue::default(),
            feed,
            read_only: RwLock::new(None),
            placement: found.placement(),
        })
    }

    /// The change feed's source.
    pub fn feed(&self) -> &Arc<feed::Feed> {
        &self.feed
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn shard(&self, key: &str) -> &Shard {
        &self.shards[self.key_hash(key).shard(self.shards.len())]
    }

    /// `key`'s placement hash in this directory: its shard, and the
    /// stripe of the locks that keep writes of one key apart.
    pub fn key_hash(&self, key: &str) -> hash::KeyHash {
        self.placement.hash(key)
    }

    /// The committed value of `key`: from the cache, else from disk (off the
    /// async workers), filling the cache.
    pub async fn get(&self, key: &str) -> Result<Option<Arc<StoredValue>>, StoreError> {
        self.get_any(key).await.map(live)
    }

    /// [`Storage::get`], expired states included.
    async fn get_any(&self, key: &str) -> Result<Option<Arc<StoredValue>>, StoreError> {
        let shard = self.shard(key);
        // Hits, the common case, skip the placeholder machinery.
        let cached = match shard.cache.get(key) {
            Some(cached) => Some(cached),
            None => match shard.cache.get_value_or_guard_async(key).await {
                Ok(cached) => Some(cached),
                Err(guard) => {
                    let loaded = self.read_store(shard, key).await?;
                    // Fails harmlessly if a writer published a newer state meanwhile.
                    let _ = guard.insert(Cached::of(&shard.cache, key, loaded.clone()));
                    return Ok(loaded);
                }
            },
        };
        match cached.and_then(|c| c.known()) {
            Some(known) => Ok(known),
            None => self.read_store(shard, key).await,
        }
    }

    /// Reads `key`'s committed state that the cache lacks: the memtable,
    /// else the shard's store off the async workers.
    async fn read_store(
        &self,
        shard: &Shard,
        key: &str,
    ) -> Result<Option<Arc<StoredValue>>, StoreError> {
        if let Some(state) = shard.memtable.get(key) {
            return Ok(state);
        }
        if !shard.filter.may_contain(key) {
            return Ok(None);
        }
        let store = shard.store.clone();
        let owned = key.to_owned();
        tokio::task::spawn_blocking(move || store.get(&owned))
            .await
            .map_err(|e| StoreError::Io(format!("read task failed: {e}")))?
    }

    /// Like `read_store`, on the calling (blocking) thread.
    fn read_store_blocking(
        shard: &Shard,
        key: &str,
    ) -> Result<Option<Arc<StoredValue>>, StoreError> {
        match shard.memtable.get(key) {
            Some(state) => Ok(state),
            None if !shard.filter.may_contain(key) => Ok(None),
            None => shard.store.get(key),
        }
    }

    /// Like [`Storage::get`] for blocking contexts (plugin pipeline threads).
    /// `hash` is the key's [`hash::KeyHash`], computed once by the caller.
    pub fn get_blocking(
        &self,
        key: &str,
        hash: hash::KeyHash,
    ) -> Result<Option<Arc<StoredValue>>, StoreError> {
        self.get_any_blocking(key, hash).map(live)
    }

    /// Like [`Storage::get_blocking`] without filling the cache on a miss:
    /// for the plugin pipeline, whose write replaces the entry moments
    /// later (filling it first would cost every write of a new key a cache
    /// insertion of its absence).
    pub fn peek_blocking(
        &self,
        key: &str,
        hash: hash::KeyHash,
    ) -> Result<Option<Arc<StoredValue>>, StoreError> {
        let shard = &self.shards[hash.shard(self.shards.len())];
        let state = match shard.cache.peek(key).and_then(|c| c.known()) {
            Some(known) => known,
            None => Self::read_store_blocking(shard, key)?,
        };
        Ok(live(state))
    }

    /// [`Storage::peek_blocking`] when the answer is in memory (the cache,
    /// the memtable, or the key filter ruling the key out); `None` when it
    /// needs the store on disk.
    pub fn peek_in_memory(
        &self,
        key: &str,
        hash: hash::KeyHash,
    ) -> Option<Option<Arc<StoredValue>>> {
        let shard = &self.shards[hash.shard(self.shards.len())];
        let state = match shard.cache.peek(key).and_then(|c| c.known()) {
            Some(known) => known,
            None => match shard.memtable.get(key) {
                Some(state) => state,
                None if !shard.filter.may_contain(key) => None,
                None => return None,
            },
        };
        Some(live(state))
    }

    /// [`Storage::get_blocking`], expired states included.
    fn get_any_blocking(
        &self,
        key: &str,
        hash: hash::KeyHash,
    ) -> Result<Option<Arc<StoredValue>>, StoreError> {
        let shard = &self.shards[hash.shard(self.shards.len())];
        match shard.cache.get_value_or_guard(key, None) {
            quick_cache::sync::GuardResult::Value(cached) => match cached.known() {
                Some(known) => Ok(known),
                None => Self::read_store_blocking(shard, key),
            },
            quick_cache::sync::GuardResult::Guard(guard) => {
                let loaded = Self::read_store_blocking(shard, key)?;
                let _ = guard.insert(Cached::of(&shard.cache, key, loaded.clone()));
                Ok(loaded)
            }
            quick_cache::sync::GuardResult::Timeout => Self::read_store_blocking(shard, key),
        }
    }

    /// Queues a write on the key's shard writer and waits until it is durable
    /// (or refused). Waiting for queue space is the server's back-pressure.
    pub async fn write(
        &self,
        key: String,
        op: WriteOp,
        expect: Expect,
    ) -> Result<WriteOutcome, StoreError> {
        let expiry = Expiry::default_for(&op);
        self.write_expiring(key, op, expect, expiry).await
    }

    /// Like [`Storage::write`], with what the write does to the key's expiry.
    pub async fn write_expiring(
        &self,
        key: String,
        op: WriteOp,
        expect: Expect,
        expiry: Expiry,
    ) -> Result<WriteOutcome, StoreError> {
        let index = self.refusal(self.key_hash(&key))?;
        if expiry == Expiry::Never {
            if let Some(version) = self.already_stored(index, &key, &op, &expect) {
                return Ok(WriteOutcome::Unchanged { version });
            }
        }
        let (cmd, answer) = Self::command(key, op, expect, expiry);
        let shard = &self.shards[index];
        shard
            .queue
            .send(WriterMsg::Write(cmd))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        answer.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// When the key's latest committed state (its pending one, else the
    /// cached one) holds exactly these bytes and the condition holds, the
    /// write is already done: acknowledge it without queueing, as the
    /// writer would after a round trip. Both only hold committed states, so
    /// this never acknowledges anything not on disk; a shard that refuses
    /// writes never gets here.
    fn already_stored(
        &self,
        index: usize,
        key: &str,
        op: &WriteOp,
        expect: &Expect,
    ) -> Option<u64> {
        let WriteOp::Put(json) = op else { return None };
        let shard = &self.shards[index];
        let current = match shard.memtable.get(key) {
            Some(pending) => pending?,
            None => shard.cache.peek(key)?.known()??,
        };
        // Only a lasting value is the same as a put that does not expire.
        let same = current.json == *json && current.expires_at.is_none();
        (same && expect.holds(Some(current.version))).then_some(current.version)
    }

    /// The key's shard, unless it takes no writes now: the log failed, or
    /// the shard did.
    fn refusal(&self, hash: hash::KeyHash) -> Result<usize, StoreError> {
        self.refuse_if_read_only()?;
        if let Some(why) = self.log_failure.get() {
            return Err(StoreError::LogFailed(why.clone()));
        }
        let index = hash.shard(self.shards.len());
        let shard = &self.shards[index];
        if shard.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned(index));
        }
        match shard.apply_health.failure() {
            Some(e) => Err(e),
            None => Ok(index),
        }
    }

    /// Queues a write from a blocking thread (the plugin pipeline). `reply`
    /// is called exactly once with the result, on the writer thread (or here
    /// if the write cannot be queued), so the pipeline's answer reaches the
    /// waiting request without another hop through the async runtime.
    pub fn submit_blocking(
        &self,
        key: String,
        hash: hash::KeyHash,
        op: WriteOp,
        expect: Expect,
        expiry: Expiry,
        reply: Reply,
    ) {
        let index = match self.refusal(hash) {
            Ok(index) => index,
            Err(e) => return reply(Err(e)),
        };
        let cmd = WriteCommand {
            key,
            op,
            expect,
            expiry,
            reply,
        };
        if let Err(mpsc::error::SendError(WriterMsg::Write(cmd))) = self.shards[index]
            .queue
            .blocking_send(WriterMsg::Write(cmd))
        {
            (cmd.reply)(Err(StoreError::ShuttingDown));
        }
    }

    fn command(
        key: String,
        op: WriteOp,
        expect: Expect,
        expiry: Expiry,
    ) -> (WriteCommand, WriteAnswer) {
        let (tx, answer) = oneshot::channel();
        let reply: Reply = Box::new(move |result| {
            let _ = tx.send(result);
        });
        let cmd = WriteCommand {
            key,
            op,
            expect,
            expiry,
            reply,
        };
        (cmd, answer)
    }

    /// The next server-assigned id.
    pub async fn next_id(&self) -> Result<u64, StoreError> {
        self.ids.next().await
    }

    /// Keeps the id counter from handing out `taken` or anything below it.
    pub async fn skip_ids_past(&self, taken: u64) {
        self.ids.skip_past(taken).await
    }

    /// Keys starting with `prefix` that sort after `after`, ascending, merged
    /// over all shards: at most `page.limit`, and with values at most about
    /// `page.max_value_bytes` of them (a page always holds one key, so a
    /// listing always moves on).
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        page: PageLimits,
    ) -> Result<Listing, StoreError> {
        let mut tasks = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let store = shard.store.clone();
            let memtable = shard.memtable.clone();
            let prefix = prefix.to_owned();
            let after = after.map(str::to_owned);
            tasks.push(tokio::task::spawn_blocking(move || {
                shard_page(&store, &memtable, &prefix, after.as_deref(), page)
            }));
        }
        let mut pages = Vec::with_capacity(tasks.len());
        for task in tasks {
            pages.push(
                task.await
                    .map_err(|e| StoreError::Io(format!("scan task failed: {e}")))??,
            );
        }
        Ok(merge_pages(pages, page))
    }

    /// Shards that cannot take writes right now, each with the reason: a
    /// failed commit poisoned it, or its writer or applier thread is gone.
    pub fn unavailable_shards(&self) -> Vec<(usize, String)> {
        if self.log_failure.get().is_some() {
            let why = "the commit log failed; no shard takes writes until restart";
            return (0..self.shards.len())
                .map(|i| (i, why.to_owned()))
                .collect();
        }
        let gone = |thread: &Mutex<Option<JoinHandle<()>>>| match thread.lock() {
            Ok(handle) => handle.as_ref().is_none_or(JoinHandle::is_finished),
            Err(_) => true,
        };
        let mut out = Vec::new();
        for (index, shard) in self.shards.iter().enumerate() {
            let writer_gone = gone(&shard.writer) || gone(&shard.applier);
            let reason = if shard.poisoned.load(Ordering::Acquire) {
                "a commit failed; the shard refuses writes until restart".to_owned()
            } else if let Some(e) = shard.apply_health.failure() {
                format!("{e}; retrying, writes resume once it works")
            } else if writer_gone {
                "the shard's writer or applier has stopped".to_owned()
            } else {
                continue;
            };
            out.push((index, reason));
        }
        out
    }

    /// Holds every applier before its next batch (`true`) or lets them go
    /// on: tests use it to keep committed writes in the memtables.
    #[cfg(test)]
    pub(crate) fn hold_appliers(&self, hold: bool) {
        for shard in &self.shards {
            shard.memtable.hold(hold);
        }
    }

    /// Why the commit log stopped taking writes, once it has.
    pub fn log_failure(&self) -> Option<&str> {
        self.log_failure.get().map(String::as_str)
    }

    /// Whether the background cache warm-up is still running.
    pub fn is_warming(&self) -> bool {
        self.warming.load(Ordering::Acquire) > 0
    }

    /// Refills each shard's cache from disk in the background, up to its
    /// capacity, while requests are served. Each key is loaded through the
    /// same placeholder path as a read miss, so warming never overwrites a
    /// newer value published by a writer.
    pub fn start_warming(self: &Arc<Self>) {
        self.warming.store(self.shards.len(), Ordering::Release);
        for index in 0..self.shards.len() {
            let storage = Arc::clone(self);
            std::thread::Builder::new()
                .name(format!("cache-warm-{index}"))
                .spawn(move || {
                    let started = std::time::Instant::now();
                    let loaded = storage.warm_shard(index);
                    match loaded {
                        Ok(n) => tracing::info!(
                            shard = index,
                            keys = n,
                            ms = started.elapsed().as_millis() as u64,
                            "cache warmed"
                        ),
                        Err(e) => {
                            tracing::warn!(shard = index, error = %e, "cache warm-up stopped")
                        }
                    }
                    storage.warming.fetch_sub(1, Ordering::AcqRel);
                })
                .map(|_| ())
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot start cache warm-up");
                    self.warming.fetch_sub(1, Ordering::AcqRel);
                });
        }
    }

    fn warm_shard(&self, index: usize) -> Result<usize, StoreError> {
        let shard = &self.shards[index];
        let capacity = shard.cache.capacity();
        let mut after: Option<String> = None;
        let mut loaded = 0;
        loop {
            let keys_only = PageLimits {
                limit: 1024,
                values: false,
                max_value_bytes: 0,
                // Expired keys are cached too: reads leave them out.
                now_ms: 0,
            };
            let page = shard.store.scan("", after.as_deref(), keys_only)?;
            let Some(last) = page.items.last() else {
                return Ok(loaded);
            };
            after = Some(last.key.clone());
            for ListedKey { key, .. } in page.items {
                if shard.cache.weight() + shard.cache.weight() / 16 >= capacity {
                    return Ok(loaded);
                }
                if let quick_cache::sync::GuardResult::Guard(guard) =
                    shard.cache.get_value_or_guard(&key, None)
                {
                    // Through the memtable, like every read: the store may
                    // hold an older state than one committed but not applied.
                    if let Some(value) = Self::read_store_blocking(shard, &key)? {
                        let _ = guard.insert(Cached::of(&shard.cache, &key, Some(value)));
                        loaded += 1;
                    }
                }
            }
        }
    }

    /// The states of `keys` (`None`: absent) all at one revision R, the
    /// newest: every write up to R shows and none after. Each key is read
    /// once first, to bring it into the cache; then writers pause (the
    /// publish gate, as a cut takes it) while every key is read again,
    /// which is now mostly from the cache.
    pub async fn get_many(
        self: &Arc<Self>,
        keys: Vec<String>,
    ) -> Result<(u64, Vec<Option<Arc<StoredValue>>>), StoreError> {
        for key in &keys {
            self.get(key).await?;
        }
        let storage = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _gate = storage
                .publish_gate
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let revision = storage.last_seq()?;
            let values = keys
                .iter()
                .map(|key| storage.get_blocking(key, storage.key_hash(key)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((revision, values))
        })
        .await
        .map_err(|e| StoreError::Io(format!("read task failed: {e}")))?
    }

    /// A consistent cut of every shard at the newest revision (see
    /// `snapshot`). Writers pause for as long as it takes to copy each
    /// shard's pending states (bounded by the memtable's size).
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let asked = std::time::Instant::now();
        let gate = self.publish_gate.write().unwrap_or_else(|p| p.into_inner());
        let held = std::time::Instant::now();
        let revision = self.last_seq()?;
        let mut shards = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            // The memtable first: see `snapshot` for why this order.
            let pending = shard.memtable.pending();
            let store = shard.store.snapshot()?;
            shards.push(snapshot::ShardCut { store, pending });
        }
        drop(gate);
        let pending: usize = shards.iter().map(|s| s.pending.len()).sum();
        tracing::info!(
            revision,
            pending,
            wait_us = (held - asked).as_micros() as u64,
            pause_us = held.elapsed().as_micros() as u64,
            "storage cut taken"
        );
        Ok(Snapshot::new(revision, shards))
    }

    /// The highest revision handed out: every version so far is at most this.
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .shards
            .iter()
            .map(|s| {
                s.progress
                    .logged
                    .load(Ordering::Acquire)
                    .max(s.progress.applied.load(Ordering::Acquire))
            })
            .max()
            .unwrap_or(0))
    }

    /// The id counter's durable high-water mark.
    pub async fn id_high_water(&self) -> u64 {
        self.ids.high_water().await
    }

    /// Per-shard group-commit counters.
    pub fn shard_metrics(&self) -> Vec<Arc<ShardMetrics>> {
        self.shards.iter().map(|s| s.metrics.clone()).collect()
    }

    /// Per shard, keys committed but not yet applied to its store.
    pub fn unapplied(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.memtable.len()).collect()
    }

    /// Per-shard (hits, misses, bytes used, queued writes).
    pub fn cache_stats(&self) -> Vec<(u64, u64, u64, usize)> {
        self.shards
            .iter()
            .map(|s| {
                let queued = s.queue.max_capacity() - s.queue.capacity();
                (s.cache.hits(), s.cache.misses(), s.cache.weight(), queued)
            })
            .collect()
    }

    /// Drains every writer (everything queued is still committed and
    /// answered), lets every applier apply what is left, and joins all the
    /// threads, the log writer last. Writes arriving afterwards get
    /// `ShuttingDown`.
    pub fn close(&self) {
        // The sweeper first: it writes through the shard writers.
        self.sweep_stop.stop();
        if let Some(sweeper) = self.sweeper.lock().ok().and_then(|mut h| h.take()) {
            let _ = sweeper.join();
        }
        for shard in &self.shards {
            // try_send would drop Stop when the queue is full; block instead.
            let _ = shard.queue.blocking_send(WriterMsg::Stop);
        }
        let join = |thread: &Mutex<Option<JoinHandle<()>>>| {
            if let Some(handle) = thread.lock().ok().and_then(|mut h| h.take()) {
                let _ = handle.join();
            }
        };
        for shard in &self.shards {
            join(&shard.writer);
        }
        drop(self.log.write().map(|mut log| log.take()));
        for shard in &self.shards {
            shard.memtable.stop();
        }
        for shard in &self.shards {
            join(&shard.applier);
        }
        // The writers and transactions held the only handles to the log writer.
        join(&self.log_thread);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn page(keys: &[&str], complete: bool) -> ScanPage {
        ScanPage {
            items: keys
                .iter()
                .map(|k| ListedKey {
                    key: (*k).to_owned(),
                    version: 1,
                    json: Some(bytes::Bytes::from(vec![b'1'; 10])),
                })
                .collect(),
            complete,
        }
    }

    fn keys(listing: &Listing) -> Vec<&str> {
        listing.items.iter().map(|i| i.key.as_str()).collect()
    }

    /// Segments are trimmed oldest first, once every shard has applied
    /// them. A crash part way through leaves the newer ones; the restart
    /// must serve every write with its version and keep counting.
    #[test]
    fn a_trim_cut_short_by_a_crash_loses_nothing() {
        use bytes::Bytes;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (settings, cache) = small(dir.path(), 2);
        let value = |i: usize| format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(100_000));
        let storage = Storage::open(&settings, &cache).unwrap();
        let mut versions = Vec::new();
        for i in 0..30 {
            let op = WriteOp::Put(Bytes::from(value(i)));
            match rt.block_on(storage.write(format!("k{i}"), op, Expect::Any)) {
                Ok(WriteOutcome::Created { version }) => versions.push(version),
                other => panic!("write {i}: {other:?}"),
            }
        }
        // Closing applies everything; the log still holds its segments.
        storage.close();
        drop(storage);
        let log_dir = dir.path().join(log::LOG_DIR);
        let mut segments: Vec<_> = std::fs::read_dir(&log_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        segments.sort();
        assert!(segments.len() >= 2, "{segments:?}");
        std::fs::remove_file(&segments[0]).unwrap();

        let storage = Storage::open(&settings, &cache).unwrap();
        for (i, version) in versions.iter().enumerate() {
            let got = rt.block_on(storage.get(&format!("k{i}"))).unwrap().unwrap();
            assert_eq!(
                (&got.json[..], got.version),
                (value(i).as_bytes(), *version)
            );
        }
        let op = WriteOp::Put(Bytes::from_static(b"1"));
        let again = rt.block_on(storage.write("k0".into(), op, Expect::Any));
        let newest = versions.iter().copied().max().unwrap();
        assert!(matches!(again, Ok(WriteOutcome::Replaced { version }) if version > newest));
        storage.close();
    }

    /// A runtime, a temporary directory and a one-shard storage in it.
    fn setup() -> (tokio::runtime::Runtime, tempfile::TempDir, Storage) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let storage = one_shard(dir.path());
        (rt, dir, storage)
    }

    /// Settings for `shards` shards in `dir`, with a small cache.
    fn small(dir: &std::path::Path, shards: u32) -> (StorageSettings, CacheSettings) {
        let settings = StorageSettings {
            data_dir: dir.to_owned(),
            shards,
            ..StorageSettings::default()
        };
        let cache = CacheSettings {
            capacity_bytes: 1 << 20,
            warm_on_start: false,
        };
        (settings, cache)
    }

    fn one_shard(dir: &std::path::Path) -> Storage {
        let (settings, cache) = small(dir, 1);
        Storage::open(&settings, &cache).unwrap()
    }

    fn put(
        rt: &tokio::runtime::Runtime,
        storage: &Storage,
        key: &str,
        json: &'static [u8],
    ) -> Result<WriteOutcome, StoreError> {
        let op = WriteOp::Put(bytes::Bytes::from_static(json));
        rt.block_on(storage.write(key.into(), op, Expect::Any))
    }

    /// A directory made before hash tags (its manifest names `fnv1a-64`)
    /// keeps placing whole keys, across restarts; `reshard` moves it to
    /// hash tags, which new directories use, and every key reads back.
    #[test]
    fn old_directories_keep_their_placement_until_resharded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (settings, cache) = small(dir.path(), 4);
        let old = manifest::Manifest {
            format_version: manifest::FORMAT_VERSION,
            shards: 4,
            key_hash: hash::Placement::WholeKey.name().into(),
        };
        std::fs::create_dir_all(dir.path()).unwrap();
        manifest::write_durably(
            &dir.path().join(manifest::MANIFEST_FILE),
            &serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        let keys: Vec<String> = (0..16).map(|i| format!("{{user42}}/{i}")).collect();
        let shards_of = |storage: &Storage| -> std::collections::BTreeSet<usize> {
            keys.iter().map(|k| storage.key_hash(k).shard(4)).collect()
        };
        {
            let storage = Storage::open(&settings, &cache).unwrap();
            assert_eq!(storage.placement, hash::Placement::WholeKey);
            for key in &keys {
                put(&rt, &storage, key, b"1").unwrap();
            }
            assert!(shards_of(&storage).len() > 1, "whole keys spread");
            storage.close();
        }
        {
            let storage = Storage::open(&settings, &cache).unwrap();
            assert_eq!(storage.placement, hash::Placement::WholeKey);
            for key in &keys {
                assert!(rt.block_on(storage.get(key)).unwrap().is_some(), "{key}");
            }
            storage.close();
        }
        crate::backup::reshard(dir.path(), 4, 1 << 20).unwrap();
        let storage = Storage::open(&settings, &cache).unwrap();
        assert_eq!(storage.placement, hash::Placement::HashTag);
        assert_eq!(shards_of(&storage).len(), 1, "one tag, one shard");
        for key in &keys {
            assert!(rt.block_on(storage.get(key)).unwrap().is_some(), "{key}");
        }
        storage.close();
        let fresh = tempfile::tempdir().unwrap();
        let (settings, cache) = small(fresh.path(), 4);
        let storage = Storage::open(&settings, &cache).unwrap();
        assert_eq!(storage.placement, hash::Placement::NEW);
        storage.close();
    }

    /// A newer state still in the memtable, whose cache entry was evicted,
    /// is what warm-up caches: not the older one in the store.
    #[test]
    fn warm_up_sees_writes_not_yet_applied() {
        let (rt, dir, storage) = setup();
        put(&rt, &storage, "k", b"1").unwrap();
        storage.close();
        drop(storage);

        let storage = one_shard(dir.path());
        storage.hold_appliers(true);
        let Ok(WriteOutcome::Replaced { version }) = put(&rt, &storage, "k", b"2") else {
            panic!("not replaced")
        };
        storage.shards[0].cache.remove("k");
        storage.warm_shard(0).unwrap();
        let got = rt.block_on(storage.get("k")).unwrap().unwrap();
        assert_eq!((&got.json[..], got.version), (&b"2"[..], version));
        // Writing the old bytes again is a new write, not "unchanged".
        let again = put(&rt, &storage, "k", b"1").unwrap();
        assert!(matches!(again, WriteOutcome::Replaced { .. }), "{again:?}");
        storage.hold_appliers(false);
        storage.close();
    }

    /// A shard that refuses writes refuses one that would change nothing
    /// too: the cached value it matches may not be what recovery restores.
    #[test]
    fn a_refusing_shard_acknowledges_nothing() {
        let (rt, _dir, storage) = setup();
        put(&rt, &storage, "k", b"1").unwrap();
        storage.shards[0].poisoned.store(true, Ordering::Release);
        let again = put(&rt, &storage, "k", b"1");
        assert!(matches!(again, Err(StoreError::Poisoned(0))), "{again:?}");
        storage.close();
    }

    /// A shard whose store refuses its applies refuses new writes (nothing
    /// is lost: its committed ones stay readable from the memtable), and
    /// takes writes again by itself once an apply succeeds.
    #[test]
    fn a_failing_apply_refuses_writes_until_it_works_again() {
        let (rt, dir, storage) = setup();
        let store = &storage.shards[0].store;
        store.fail_commits.store(true, Ordering::SeqCst);
        put(&rt, &storage, "k", b"1").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let refused = loop {
            match put(&rt, &storage, "j", b"2") {
                Err(e) => break e,
                Ok(_) => assert!(std::time::Instant::now() < deadline, "never refused"),
            }
            std::thread::yield_now();
        };
        assert!(matches!(refused, StoreError::Unavailable(_)), "{refused}");
        assert_eq!(storage.unavailable_shards().len(), 1);
        let got = rt.block_on(storage.get("k")).unwrap().unwrap();
        assert_eq!(&got.json[..], b"1");

        store.fail_commits.store(false, Ordering::SeqCst);
        while put(&rt, &storage, "later", b"3").is_err() {
            assert!(std::time::Instant::now() < deadline, "writes never resumed");
            std::thread::yield_now();
        }
        assert!(storage.unavailable_shards().is_empty());
        // Writes came back once the held ones were in the store: no held
        // file is left, and the log keeps the shard's writes again.
        let (_, held_files) = held::read_all(&dir.path().join(log::LOG_DIR)).unwrap();
        assert!(held_files.is_empty());
        assert!(!storage.shards[0].progress.held.load(Ordering::Acquire));
        storage.close();
        drop(storage);
        let storage = one_shard(dir.path());
        for (key, value) in [("k", "1"), ("later", "3")] {
            let got = rt.block_on(storage.get(key)).unwrap().unwrap();
            assert_eq!(&got.json[..], value.as_bytes());
        }
        storage.close();
    }

    /// A shard whose applies keep failing sets its unapplied writes aside,
    /// so the log is trimmed while the other shards write on; the held
    /// writes come back at the next start.
    #[test]
    fn a_failing_shard_does_not_keep_the_log_from_being_trimmed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (settings, cache) = small(dir.path(), 2);
        let on_shard = |shard: usize, n: usize| {
            (0..)
                .map(|i| format!("k{i}"))
                .filter(|k| hash::shard_for(k, 2) == shard)
                .nth(n)
                .unwrap()
        };
        let no_history = FeedOptions {
            retention: log::Retention::NONE,
            buffer_bytes: 0,
        };
        let storage = Storage::open_with_feed(&settings, &cache, no_history).unwrap();
        storage.shards[0]
            .store
            .fail_commits
            .store(true, Ordering::SeqCst);
        let held_key = on_shard(0, 0);
        put(&rt, &storage, &held_key, b"1").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !storage.shards[0].progress.held.load(Ordering::Acquire) {
            assert!(std::time::Instant::now() < deadline, "never held");
            std::thread::yield_now();
        }
        let first_segment = dir.path().join(log::LOG_DIR).join(format!("{:020}.wal", 1));
        let value = bytes::Bytes::from(format!("\"{}\"", "x".repeat(10_000)));
        let mut written = 0;
        while first_segment.exists() {
            assert!(written < 5_000, "the log was never trimmed");
            let op = WriteOp::Put(value.clone());
            rt.block_on(storage.write(on_shard(1, written), op, Expect::Any))
                .unwrap();
            written += 1;
        }
        storage.close();
        drop(storage);

        let storage = Storage::open(&settings, &cache).unwrap();
        let got = rt.block_on(storage.get(&held_key)).unwrap().unwrap();
        assert_eq!(&got.json[..], b"1");
        let last = rt.block_on(storage.get(&on_shard(1, written - 1))).unwrap();
        assert_eq!(last.unwrap().json, value);
        let (frames, files) = held::read_all(&dir.path().join(log::LOG_DIR)).unwrap();
        assert!(frames.is_empty() && files.is_empty());
        storage.close();
    }

    #[test]
    fn merged_pages_stop_where_a_shard_stopped() {
        let limits = |limit, max_value_bytes| PageLimits {
            limit,
            values: true,
            max_value_bytes,
            now_ms: 0,
        };
        // Shard 0 stopped early at "c" (its budget): "d" from shard 1 may not
        // follow, since shard 0 may hold keys between "c" and "d".
        let merged = merge_pages(
            vec![page(&["a", "c"], false), page(&["b", "d"], true)],
            limits(10, 1 << 20),
        );
        assert_eq!((keys(&merged), merged.more), (vec!["a", "b", "c"], true));
        // Both complete: everything, no next page.
        let merged = merge_pages(
            vec![page(&["a", "c"], true), page(&["b", "d"], true)],
            limits(10, 1 << 20),
        );
        assert_eq!(
            (keys(&merged), merged.more),
            (vec!["a", "b", "c", "d"], false)
        );
        // The count and the byte budget cut the merged page too.
        let merged = merge_pages(
            vec![page(&["a", "c"], true), page(&["b", "d"], true)],
            limits(3, 1 << 20),
        );
        assert_eq!((keys(&merged), merged.more), (vec!["a", "b", "c"], true));
        let merged = merge_pages(
            vec![page(&["a", "c"], true), page(&["b", "d"], true)],
            limits(10, 15),
        );
        assert_eq!((keys(&merged), merged.more), (vec!["a", "b"], true));
        // A page always moves on, however large its first value.
        let merged = merge_pages(vec![page(&["a"], true)], limits(10, 1));
        assert_eq!((keys(&merged), merged.more), (vec!["a"], false));
    }
}
