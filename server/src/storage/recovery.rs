//! Recovery at start: bring every shard's store up to the end of the
//! commit log. A record is replayed into its shard's store when its revision
//! is above the store's applied revision; applying is idempotent, so a crash
//! during recovery only repeats it. Afterwards every committed write is in
//! the stores and the log can start over empty.

use std::collections::BTreeMap;

use super::applier;
use super::log::Frame;
use super::memtable::{ApplyBatch, Pending};
use super::store::ShardStore;
use super::StoreError;

/// Replays `frames` (in log order) into `stores`, whose applied revisions
/// are `applied`; returns how many records were replayed.
pub fn replay(
    stores: &[ShardStore],
    applied: &[u64],
    frames: Vec<Frame>,
) -> Result<u64, StoreError> {
    let mut latest: Vec<BTreeMap<String, Pending>> = vec![BTreeMap::new(); stores.len()];
    let mut upto = applied.to_vec();
    let mut replayed = 0;
    for frame in frames {
        let shard = frame.shard as usize;
        let Some(table) = latest.get_mut(shard) else {
            return Err(StoreError::Corrupt(format!(
                "the commit log names shard {shard}, the directory has {}",
                stores.len()
            )));
        };
        for (i, record) in frame.records.into_iter().enumerate() {
            let revision = frame.first_revision + i as u64;
            if revision <= applied[shard] {
                continue;
            }
            let value = record.state_at(revision);
            // Held frames (`held`) come with the log's: the highest
            // revision of a key wins, whatever the order read.
            if table
                .get(&record.key)
                .is_some_and(|p| p.revision > revision)
            {
                continue;
            }
            table.insert(
                record.key,
                Pending {
                    revision,
                    value,
                    not_in_store: false,
                },
            );
            upto[shard] = upto[shard].max(revision);
            replayed += 1;
        }
    }
    for (shard, table) in latest.into_iter().enumerate() {
        if table.is_empty() {
            continue;
        }
        let batch = ApplyBatch {
            entries: table.into_iter().collect(),
            upto: upto[shard],
        };
        applier::apply(&stores[shard], &batch)?;
    }
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::log::LogRecord;
    use crate::storage::store::StoredValue;
    use bytes::Bytes;

    fn frame(first_revision: u64, shard: u16, records: &[(&str, Option<&str>)]) -> Frame {
        Frame {
            first_revision,
            shard,
            starts_append: true,
            records: records
                .iter()
                .map(|(k, v)| LogRecord {
                    key: (*k).into(),
                    value: v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
                    expires_at: None,
                })
                .collect(),
            unit_last: None,
        }
    }

    /// A crash after the log append and part of the applying: only what a
    /// store lacks is replayed, and replaying twice changes nothing.
    #[test]
    fn replay_applies_what_each_store_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let stores: Vec<ShardStore> = (0..2)
            .map(|i| ShardStore::open(&dir.path().join(format!("{i}.persy")), 1 << 20).unwrap())
            .collect();
        let frames = vec![
            frame(1, 0, &[("a", Some("1")), ("b", Some("1"))]),
            frame(3, 1, &[("x", Some("1"))]),
            frame(4, 0, &[("a", Some("2")), ("b", None)]),
            frame(6, 1, &[("x", Some("2"))]),
        ];
        // Shard 0 had applied up to revision 2 before the crash, shard 1 nothing.
        let mut tx = stores[0].begin().unwrap();
        let one = |v| StoredValue::lasting(v, Bytes::from_static(b"1"));
        tx.upsert("a", &one(1)).unwrap();
        tx.upsert("b", &one(2)).unwrap();
        tx.set_seq(2).unwrap();
        tx.commit().unwrap();
        for _ in 0..2 {
            let applied: Vec<u64> = stores.iter().map(|s| s.last_seq().unwrap()).collect();
            replay(&stores, &applied, frames.clone()).unwrap();
            let a = stores[0].get("a").unwrap().unwrap();
            assert_eq!((a.version, &a.json[..]), (4, &b"2"[..]));
            assert!(stores[0].get("b").unwrap().is_none());
            let x = stores[1].get("x").unwrap().unwrap();
            assert_eq!((x.version, &x.json[..]), (6, &b"2"[..]));
            assert_eq!(
                (stores[0].last_seq().unwrap(), stores[1].last_seq().unwrap()),
                (5, 6)
            );
        }
        // A frame for a shard the directory does not have is damage.
        assert!(replay(&stores, &[0, 0], vec![frame(9, 7, &[("z", None)])]).is_err());
    }
}
