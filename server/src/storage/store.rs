//! One shard's persy file: the durable truth for the keys the shard owns.
//!
//! Layout inside the file:
//! - segment `values`: one record per key, `[version: u64 LE][JSON bytes]`;
//! - index `kv`: key -> record id of its value (replace mode);
//! - index `meta`: `"seq"` -> the shard's applied revision: every write of
//!   this shard up to that revision is in this file (the commit log holds
//!   the rest; see `log`).
//!
//! Only the shard's applier writes to it. Reads go through a persy snapshot
//! so the index lookup and the record read see one committed state. All
//! calls block on disk I/O: they run on the storage threads or in
//! `spawn_blocking`, never on an async worker.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use persy::{Config, Persy, PersyId, Transaction, ValueMode};

use super::StoreError;

const VALUES: &str = "values";
const KEYS: &str = "kv";
const META: &str = "meta";
const SEQ: &str = "seq";
/// Set (in `META`) once the store holds its first expiring value, so a
/// start walks for expiring keys only where there can be some.
const EXPIRING_MARK: &str = "expiring";

/// A committed value as readers see it. Shared (`Arc`) between the cache
/// and responses so a cached read copies nothing.
#[derive(Debug, PartialEq, Eq)]
pub struct StoredValue {
    /// The key's version: the revision of the write that stored it.
    pub version: u64,
    /// The JSON document, exactly as stored.
    pub json: Bytes,
    /// When the key expires (milliseconds since the Unix epoch); from then
    /// on every read finds it absent.
    pub expires_at: Option<u64>,
}

impl StoredValue {
    /// A value that does not expire.
    pub fn lasting(version: u64, json: Bytes) -> Self {
        Self {
            version,
            json,
            expires_at: None,
        }
    }

    /// Whether the value has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now_ms)
    }
}

/// Marks a value record that carries an expiry: the byte after the
/// version, where a JSON text (which never starts with a NUL) begins in a
/// record without one.
const EXPIRING: u8 = 0x00;

/// Attempts at a store file whose lock is held (50 ms apart) before
/// reporting it in use.
const LOCK_ATTEMPTS: u32 = 20;

/// Handle to one shard's store file.
#[derive(Clone)]
pub struct ShardStore {
    persy: Persy,
    /// Tests set this to make commits fail, to exercise poisoning.
    #[cfg(test)]
    pub(crate) fail_commits: Arc<std::sync::atomic::AtomicBool>,
}

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Io(format!("{what}: {e}"))
}

/// Encodes a value record: `[u64 version][json]`, or with an expiry
/// `[u64 version][0x00][u64 expires at][json]`.
fn encode(value: &StoredValue) -> Vec<u8> {
    let mut rec = Vec::with_capacity(17 + value.json.len());
    rec.extend_from_slice(&value.version.to_le_bytes());
    if let Some(at) = value.expires_at {
        rec.push(EXPIRING);
        rec.extend_from_slice(&at.to_le_bytes());
    }
    rec.extend_from_slice(&value.json);
    rec
}

/// The version and expiry at the head of a value record, and where its
/// JSON starts.
fn decode_head(record: PersyId, bytes: &[u8]) -> Result<(u64, Option<u64>, usize), StoreError> {
    let short = || StoreError::Corrupt(format!("value record {record} is {} bytes", bytes.len()));
    let u64_at = |at: usize| -> Result<u64, StoreError> {
        let b: [u8; 8] = bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(short)?;
        Ok(u64::from_le_bytes(b))
    };
    let version = u64_at(0)?;
    if bytes.get(8) == Some(&EXPIRING) {
        return Ok((version, Some(u64_at(9)?), 17));
    }
    Ok((version, None, 8))
}

/// Decodes a value record.
fn decode(record: PersyId, bytes: Vec<u8>) -> Result<StoredValue, StoreError> {
    let (version, expires_at, start) = decode_head(record, &bytes)?;
    // An exact-size copy: the buffer persy returns may be larger than the
    // record, and cached values should cost what they weigh.
    Ok(StoredValue {
        version,
        json: Bytes::copy_from_slice(&bytes[start..]),
        expires_at,
    })
}

/// How much one page of a listing may hold.
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    /// Most keys.
    pub limit: usize,
    /// Whether values are wanted.
    pub values: bool,
    /// With values: stop adding keys once this many value bytes are in.
    pub max_value_bytes: usize,
    /// The time expired keys are left out at (ms since the Unix epoch).
    pub now_ms: u64,
}

/// One key of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedKey {
    /// The key.
    pub key: String,
    /// Its version.
    pub version: u64,
    /// Its value, when the listing asked for values.
    pub json: Option<Bytes>,
}

/// What one shard's scan found.
#[derive(Debug)]
pub struct ScanPage {
    /// Keys in ascending order.
    pub items: Vec<ListedKey>,
    /// True when no key with the prefix follows the last one.
    pub complete: bool,
}

/// Decodes the record an index entry points at; a missing record means
/// the file is damaged.
fn decode_found(
    key: &str,
    id: PersyId,
    bytes: Option<Vec<u8>>,
) -> Result<Arc<StoredValue>, StoreError> {
    match bytes {
        Some(bytes) => Ok(Arc::new(decode(id, bytes)?)),
        None => Err(StoreError::Corrupt(format!(
            "key {key:?} points at missing record {id}"
        ))),
    }
}

impl ShardStore {
    /// Opens (creating if absent) the store at `path`. Opening runs persy's
    /// recovery, which completes transactions that were prepared (fsynced)
    /// before a crash: those are exactly the writes that may have been
    /// acknowledged.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        // A lock held for a moment (a handle of this process still being
        // released, a child between fork and exec holding the descriptor)
        // is waited out; one a running server holds is reported.
        let mut attempt = 0;
        loop {
            match Self::open_once(path, cache_bytes) {
                Err(StoreError::InUse(_)) if attempt < LOCK_ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let mut config = Config::new();
        config.change_cache_size(cache_bytes);
        let persy = Persy::open_or_create_with(path, config, |persy| {
            let mut tx = persy.begin()?;
            tx.create_segment(VALUES)?;
            tx.create_index::<String, PersyId>(KEYS, ValueMode::Replace)?;
            tx.create_index::<String, u64>(META, ValueMode::Replace)?;
            tx.put::<String, u64>(META, SEQ.to_owned(), 0)?;
            tx.prepare()?.commit()?;
            Ok(())
        })
        .map_err(|e| match e.error() {
            persy::OpenError::AlreadyInUse(_) => StoreError::InUse(path.display().to_string()),
            other => StoreError::Open(format!("{}: {other}", path.display())),
        })?;
        Ok(Self {
            persy,
            #[cfg(test)]
            fail_commits: Arc::default(),
        })
    }

    /// The shard's applied revision (see the module documentation).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .persy
            .one::<String, u64>(META, &SEQ.to_owned())
            .map_err(err("reading sequence"))?
            .unwrap_or(0))
    }

    /// Whether the store has ever held an expiring value.
    pub fn has_expiring(&self) -> Result<bool, StoreError> {
        Ok(self
            .persy
            .one::<String, u64>(META, &EXPIRING_MARK.to_owned())
            .map_err(err("reading the expiry mark"))?
            .is_some())
    }

    /// The committed value of `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Arc<StoredValue>>, StoreError> {
        // One lookup in one snapshot: absent keys mostly never get here (the
        // shard's key filter answers them), so a snapshot-free absence check
        // first would cost present keys a second lookup.
        let snap = self.persy.snapshot().map_err(err("snapshot"))?;
        let Some(id) = snap
            .one::<String, PersyId>(KEYS, &key.to_owned())
            .map_err(err("index lookup"))?
        else {
            return Ok(None);
        };
        let bytes = snap.read(VALUES, &id).map_err(err("record read"))?;
        decode_found(key, id, bytes).map(Some)
    }

    /// Keys in ascending order that start with `prefix` and sort after
    /// `after`, from one consistent snapshot: at most `page.limit` of them,
    /// and, with values, only as many as fit `page.max_value_bytes` (at least
    /// one). Without values, each record is read for its version only and
    /// dropped at once, so memory stays small whatever the values weigh.
    pub fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        page: PageLimits,
    ) -> Result<ScanPage, StoreError> {
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        let mut out = ScanPage {
            items: Vec::new(),
            complete: true,
        };
        let mut bytes = 0usize;
        self.walk_records(start, |key, id, record| {
            if !key.starts_with(prefix) {
                return Ok(false);
            }
            let full = out.items.len() >= page.limit
                || (page.values && bytes >= page.max_value_bytes && !out.items.is_empty());
            if full {
                out.complete = false;
                return Ok(false);
            }
            let (version, expires_at, start) = decode_head(id, &record)?;
            if expires_at.is_some_and(|at| at <= page.now_ms) {
                return Ok(true);
            }
            let json = if page.values {
                bytes += record.len() - start;
                Some(Bytes::copy_from_slice(&record[start..]))
            } else {
                None
            };
            out.items.push(ListedKey { key, version, json });
            Ok(true)
        })?;
        Ok(out)
    }

    /// Calls `f` with every key and value, ascending, from ONE snapshot: a
    /// state between two committed batches, never half of one. Stops early
    /// when `f` returns `Ok(false)`.
    pub fn for_each(
        &self,
        mut f: impl FnMut(&str, &StoredValue) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.walk(Bound::Unbounded, |key, value| f(&key, &value))
    }

    /// Calls `f` with every key, from the index alone (no record is read).
    pub fn for_each_key(&self, mut f: impl FnMut(&str)) -> Result<(), StoreError> {
        let snap = self.persy.snapshot().map_err(err("snapshot"))?;
        let range = snap
            .range::<String, PersyId, _>(KEYS, ..)
            .map_err(err("index scan"))?;
        for (key, _) in range {
            f(&key);
        }
        Ok(())
    }

    /// Visits keys from `start` on, in order, with their values, from one
    /// snapshot, until `f` returns `Ok(false)`.
    fn walk(
        &self,
        start: Bound<String>,
        f: impl FnMut(String, Arc<StoredValue>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.snapshot()?.walk(start, f)
    }

    /// Visits keys from `start` on, in order, with their raw records, from
    /// one snapshot, until `f` returns `Ok(false)`.
    fn walk_records(
        &self,
        start: Bound<String>,
        f: impl FnMut(String, PersyId, Vec<u8>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.snapshot()?.walk_records(start, f)
    }

    /// The store's committed state now, readable for as long as it is kept
    /// (later commits do not change what it shows).
    pub fn snapshot(&self) -> Result<StoreSnapshot, StoreError> {
        Ok(StoreSnapshot(
            self.persy.snapshot().map_err(err("snapshot"))?,
        ))
    }

    /// Starts a write transaction; only the shard writer and restore call this.
    pub(crate) fn begin(&self) -> Result<WriteTx, StoreError> {
        Ok(WriteTx {
            tx: self.persy.begin().map_err(err("begin transaction"))?,
            #[cfg(test)]
            fail: self.fail_commits.clone(),
        })
    }
}

/// One committed state of a shard's store (see [`ShardStore::snapshot`]).
pub struct StoreSnapshot(persy::Snapshot);

impl StoreSnapshot {
    /// Visits keys from `start` on, in order, with their values, until `f`
    /// returns `Ok(false)`.
    pub fn walk(
        &self,
        start: Bound<String>,
        mut f: impl FnMut(String, Arc<StoredValue>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.walk_records(start, |key, id, record| {
            let value = Arc::new(decode(id, record)?);
            f(key, value)
        })
    }

    fn walk_records(
        &self,
        start: Bound<String>,
        mut f: impl FnMut(String, PersyId, Vec<u8>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let snap = &self.0;
        let range = snap
            .range::<String, PersyId, _>(KEYS, (start, Bound::Unbounded))
            .map_err(err("index scan"))?;
        for (key, mut ids) in range {
            let Some(id) = ids.next() else { continue };
            let Some(record) = snap.read(VALUES, &id).map_err(err("record read"))? else {
                return Err(StoreError::Corrupt(format!(
                    "key {key:?} points at missing record {id}"
                )));
            };
            if !f(key, id, record)? {
                break;
            }
        }
        Ok(())
    }
}

/// A transaction of the shard writer: one group-commit batch.
pub(crate) struct WriteTx {
    tx: Transaction,
    #[cfg(test)]
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl WriteTx {
    /// Stores a new value; returns where it lives.
    pub fn insert(&mut self, key: &str, value: &StoredValue) -> Result<PersyId, StoreError> {
        let id = self
            .tx
            .insert(VALUES, &encode(value))
            .map_err(err("insert"))?;
        self.tx
            .put::<String, PersyId>(KEYS, key.to_owned(), id)
            .map_err(err("index put"))?;
        Ok(id)
    }

    /// Sets `key` to a value at `version`, whether or not it exists.
    pub fn upsert(&mut self, key: &str, value: &StoredValue) -> Result<(), StoreError> {
        let owned = key.to_owned();
        match self.existing(&owned)? {
            Some(record) => self
                .tx
                .update(VALUES, &record, &encode(value))
                .map_err(err("update")),
            None => self.insert(key, value).map(|_| ()),
        }
    }

    /// Removes `key` and its value record, if it exists.
    pub fn remove(&mut self, key: &str) -> Result<(), StoreError> {
        let owned = key.to_owned();
        let Some(record) = self.existing(&owned)? else {
            return Ok(());
        };
        self.tx.delete(VALUES, &record).map_err(err("delete"))?;
        self.tx
            .remove::<String, PersyId>(KEYS, owned, None)
            .map_err(err("index remove"))
    }

    /// The record id of `key` as this transaction sees it.
    fn existing(&mut self, key: &String) -> Result<Option<PersyId>, StoreError> {
        self.tx
            .one::<String, PersyId>(KEYS, key)
            .map_err(err("index lookup"))
    }

    /// Marks the store as holding expiring values (see `has_expiring`).
    pub fn mark_expiring(&mut self) -> Result<(), StoreError> {
        self.tx
            .put::<String, u64>(META, EXPIRING_MARK.to_owned(), 1)
            .map_err(err("expiry mark put"))
    }

    /// Records the highest revision this store holds every write up to
    /// (the shard's `applied_revision`; a format-1 store's version sequence).
    pub fn set_seq(&mut self, seq: u64) -> Result<(), StoreError> {
        self.tx
            .put::<String, u64>(META, SEQ.to_owned(), seq)
            .map_err(err("sequence put"))
    }

    /// Makes the batch durable. persy fsyncs in `prepare`; recovery completes
    /// a prepared transaction, so once `prepare` returns the batch survives a
    /// crash, and after `commit` it is visible to readers.
    pub fn commit(self) -> Result<(), StoreError> {
        #[cfg(test)]
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = self.tx.rollback();
            return Err(StoreError::Io("injected commit failure".into()));
        }
        self.tx
            .prepare()
            .map_err(err("prepare (fsync)"))?
            .commit()
            .map_err(err("commit"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn value(version: u64, json: &'static [u8]) -> StoredValue {
        StoredValue::lasting(version, Bytes::from_static(json))
    }

    /// A value's expiry goes into its record and comes back, and a listing
    /// leaves out what has expired; a record without one reads as before.
    #[test]
    fn expiring_values_round_trip_and_list_only_while_live() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(&dir.path().join("s.persy"), 1 << 20).unwrap();
        assert!(!store.has_expiring().unwrap());
        let mut tx = store.begin().unwrap();
        tx.insert(
            "soon",
            &StoredValue {
                expires_at: Some(1_000),
                ..value(1, b"1")
            },
        )
        .unwrap();
        tx.insert(
            "later",
            &StoredValue {
                expires_at: Some(5_000),
                ..value(2, b" [2]")
            },
        )
        .unwrap();
        tx.insert("never", &value(3, b"3")).unwrap();
        tx.mark_expiring().unwrap();
        tx.commit().unwrap();
        assert!(store.has_expiring().unwrap());
        let later = store.get("later").unwrap().unwrap();
        assert_eq!(
            (later.expires_at, &later.json[..]),
            (Some(5_000), &b" [2]"[..])
        );
        assert_eq!(store.get("never").unwrap().unwrap().expires_at, None);
        let at = |now_ms| PageLimits {
            limit: 10,
            values: true,
            max_value_bytes: 1 << 20,
            now_ms,
        };
        let keys = |now| -> Vec<String> {
            let page = store.scan("", None, at(now)).unwrap();
            page.items.into_iter().map(|i| i.key).collect()
        };
        assert_eq!(keys(999), ["later", "never", "soon"]);
        assert_eq!(keys(1_000), ["later", "never"]);
        assert_eq!(keys(9_000), ["never"]);
    }

    #[test]
    fn write_read_scan_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.persy");
        let store = ShardStore::open(&path, 1 << 20).unwrap();
        let mut tx = store.begin().unwrap();
        tx.insert("a", &value(1, b"{\"x\":1}")).unwrap();
        tx.insert("ab", &value(2, b"2")).unwrap();
        tx.insert("b", &value(3, b"3")).unwrap();
        tx.set_seq(3).unwrap();
        tx.commit().unwrap();
        let got = store.get("a").unwrap().unwrap();
        assert_eq!((got.version, &got.json[..]), (1, &b"{\"x\":1}"[..]));
        let page = |values, limit, max_value_bytes| PageLimits {
            limit,
            values,
            max_value_bytes,
            now_ms: 0,
        };
        let found = store.scan("a", None, page(false, 10, 0)).unwrap();
        let keys: Vec<&str> = found.items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["a", "ab"]);
        assert!(found.complete && found.items.iter().all(|i| i.json.is_none()));
        assert_eq!(found.items[1].version, 2);
        let found = store.scan("", Some("a"), page(true, 1, 1 << 20)).unwrap();
        assert_eq!(found.items[0].key, "ab");
        assert_eq!(found.items[0].json.as_deref(), Some(&b"2"[..]));
        assert!(!found.complete);
        // With values, a page stops at its byte budget (but holds one key).
        let found = store.scan("", None, page(true, 10, 1)).unwrap();
        assert_eq!(found.items.len(), 1);
        assert!(!found.complete);

        let mut tx = store.begin().unwrap();
        tx.upsert("a", &value(4, b"4")).unwrap();
        tx.upsert("new", &value(4, b"5")).unwrap();
        tx.set_seq(4).unwrap();
        tx.commit().unwrap();
        drop(store);
        let store = ShardStore::open(&path, 1 << 20).unwrap();
        assert_eq!(store.last_seq().unwrap(), 4);
        let got = store.get("a").unwrap().unwrap();
        assert_eq!((got.version, &got.json[..]), (4, &b"4"[..]));
        let mut tx = store.begin().unwrap();
        tx.remove("a").unwrap();
        tx.remove("never-there").unwrap();
        tx.commit().unwrap();
        assert!(store.get("a").unwrap().is_none());
    }
}
