//! A replica's storage: read-only to clients, written only by applying the
//! primary's changes at the revisions the primary gave them (see "Read
//! replicas" in `docs/design/write-path.md`).

use std::collections::BTreeSet;

use super::committer::Parts;
use super::feed::{Change, ChangeKind};
use super::log::LogRecord;
use super::{Storage, StoreError};

impl Storage {
    /// Makes every client write fail with [`StoreError::ReadOnly`] naming
    /// `primary` (`None`: writable again, after a promotion).
    pub fn set_read_only(&self, primary: Option<String>) {
        *self.read_only.write().unwrap_or_else(|p| p.into_inner()) = primary;
    }

    /// The refusal of a client write on a replica.
    pub(super) fn refuse_if_read_only(&self) -> Result<(), StoreError> {
        match self
            .read_only
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(primary) => Err(StoreError::ReadOnly(primary.clone())),
            None => Ok(()),
        }
    }

    /// Logs and publishes `changes`, the primary's, which must continue
    /// this log without a gap and end at a unit's end: each gets the
    /// revision the primary gave it. One append for all, one frame per
    /// unit (so a crash keeps or loses a unit whole, as on the primary),
    /// under the decision locks of their shards and the publish gate, as a
    /// transaction. Returns the last revision applied.
    pub fn apply_replicated(&self, changes: Vec<Change>) -> Result<u64, StoreError> {
        let Some(last) = changes.last().map(|c| c.revision) else {
            return Ok(self.feed.head());
        };
        let count = self.shards.len();
        let shard_of = |key: &str| self.key_hash(key).shard(count);
        let touched: BTreeSet<usize> = changes.iter().map(|c| shard_of(&c.key)).collect();
        let touched: Vec<usize> = touched.into_iter().collect();
        let _locks = self.lock_decisions(&touched);
        let expected = self.feed.head() + 1;
        let first = changes[0].revision;
        let contiguous = changes
            .iter()
            .enumerate()
            .all(|(i, c)| c.revision == first + i as u64);
        if first != expected || !contiguous {
            return Err(StoreError::Corrupt(format!(
                "the primary's changes start at revision {first}, not {expected}, or have gaps; this replica no longer follows its primary"
            )));
        }
        if changes.iter().any(|c| c.unit_end > last) {
            return Err(StoreError::Corrupt(format!(
                "the primary's changes up to revision {last} end inside a unit"
            )));
        }
        let frames = frames_by_unit(changes, shard_of);
        for (shard, records) in frames.iter().flat_map(|f| f.iter()) {
            let s = &self.shards[*shard as usize];
            s.memtable
                .wait_for_room(records.len(), super::log::payload_bytes(records));
            for record in records.iter().filter(|r| r.value.is_some()) {
                s.filter.insert(&record.key);
            }
        }
        let _gate = self.publish_gate.read().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = self.log_failure.get() {
            return Err(StoreError::LogFailed(why.clone()));
        }
        let firsts = self.append_and_publish(frames)?;
        if firsts.first() != Some(&first) {
            // Not reachable while this replica takes no other writes
            // (checked above under the locks); if it were, stop here.
            return Err(StoreError::Corrupt(format!(
                "the log gave revision {:?} to the primary's revision {first}",
                firsts.first()
            )));
        }
        Ok(last)
    }
}

/// The changes as log frames: one per unit, its parts the runs of its
/// consecutive changes on one shard, so the log's revisions follow the
/// changes' order.
fn frames_by_unit(changes: Vec<Change>, shard_of: impl Fn(&str) -> usize) -> Vec<Parts> {
    let mut frames: Vec<Parts> = Vec::new();
    // The end of the unit the last frame holds.
    let mut unit_end = 0;
    for change in changes {
        let shard = shard_of(&change.key) as u16;
        if change.revision > unit_end {
            frames.push(Vec::new());
            unit_end = change.unit_end;
        }
        let record = match change.kind {
            ChangeKind::Put => LogRecord {
                key: change.key,
                value: change.value,
                expires_at: change.expires_at,
            },
            ChangeKind::Delete => LogRecord::delete(change.key),
            ChangeKind::Expire => LogRecord::expiry(change.key, change.expires_at.unwrap_or(0)),
        };
        let Some(frame) = frames.last_mut() else {
            continue;
        };
        match frame.last_mut() {
            Some((s, records)) if *s == shard => records.push(record),
            _ => frame.push((shard, vec![record])),
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{CacheSettings, StorageSettings};
    use bytes::Bytes;
    use std::sync::Arc;

    fn open(dir: &std::path::Path) -> Arc<Storage> {
        let settings = StorageSettings {
            data_dir: dir.to_owned(),
            ..StorageSettings::default()
        };
        Arc::new(Storage::open(&settings, &CacheSettings::default()).unwrap())
    }

    fn put(revision: u64, key: &str, value: &'static str) -> Change {
        Change {
            revision,
            key: key.into(),
            kind: ChangeKind::Put,
            value: Some(Bytes::from_static(value.as_bytes())),
            expires_at: None,
            unit_end: revision,
        }
    }

    /// A unit of the primary's is one unit here too, in the replica's own
    /// feed from memory and from its log after a restart; changes that
    /// end inside a unit are refused and write nothing.
    #[test]
    fn a_unit_is_applied_whole_as_one_frame() {
        use super::super::feed::ReadBound;
        let dir = tempfile::tempdir().unwrap();
        let all = ReadBound {
            changes: 100,
            bytes: 1 << 20,
            scan: 100,
        };
        let unit = |revision: u64, key: &str| Change {
            unit_end: 4,
            ..put(revision, key, "2")
        };
        let ends = |batch: super::super::feed::Batch| -> Vec<(u64, u64)> {
            batch
                .changes
                .iter()
                .map(|c| (c.revision, c.unit_end))
                .collect()
        };
        {
            let storage = open(dir.path());
            storage.set_read_only(Some("http://primary".into()));
            let cut = vec![put(1, "x", "1"), unit(2, "a"), unit(3, "b")];
            assert!(storage.apply_replicated(cut).is_err());
            assert_eq!(storage.feed().head(), 0, "nothing of a cut unit is written");
            let whole = vec![put(1, "x", "1"), unit(2, "a"), unit(3, "b"), unit(4, "c")];
            assert_eq!(storage.apply_replicated(whole).unwrap(), 4);
            let from_ring = storage.feed().read_ring(1, &|_| true, all).unwrap();
            assert_eq!(ends(from_ring), [(1, 1), (2, 4), (3, 4), (4, 4)]);
            storage.close();
        }
        let storage = open(dir.path());
        let from_log = storage.feed().read_disk(1, &|_| true, all).unwrap();
        assert_eq!(ends(from_log), [(1, 1), (2, 4), (3, 4), (4, 4)]);
        storage.close();
    }

    /// Changes get the primary's revisions, as versions and in the feed,
    /// across shards and a restart; a gap is refused and writes nothing.
    #[test]
    fn changes_keep_the_primary_revisions_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        {
            let storage = open(dir.path());
            storage.set_read_only(Some("http://primary".into()));
            let changes: Vec<Change> = (1..=40)
                .map(|i| put(i, &format!("k{}", i % 7), "1"))
                .collect();
            assert_eq!(storage.apply_replicated(changes).unwrap(), 40);
            let mut more = vec![put(41, "k1", "2")];
            more.push(Change {
                revision: 42,
                key: "k2".into(),
                kind: ChangeKind::Delete,
                value: None,
                expires_at: None,
                unit_end: 42,
            });
            storage.apply_replicated(more).unwrap();
            assert!(storage.apply_replicated(vec![put(44, "k3", "3")]).is_err());
            let k1 = rt.block_on(storage.get("k1")).unwrap().unwrap();
            assert_eq!((k1.version, &k1.json[..]), (41, &b"2"[..]));
            assert!(rt.block_on(storage.get("k2")).unwrap().is_none());
            let refused = rt.block_on(storage.write(
                "x".into(),
                super::super::WriteOp::Put(Bytes::from_static(b"1")),
                super::super::Expect::Any,
            ));
            assert!(matches!(refused, Err(StoreError::ReadOnly(_))));
            storage.close();
        }
        let storage = open(dir.path());
        assert_eq!(storage.feed().head(), 42);
        let k1 = rt.block_on(storage.get("k1")).unwrap().unwrap();
        assert_eq!(k1.version, 41);
        storage.apply_replicated(vec![put(43, "k3", "3")]).unwrap();
        storage.close();
    }
}
