//! Recovery at start: bring every shard's store up to the end of the
//! commit log. A record is replayed into its shard's store when its revision
//! is above the store's applied revision; applying is idempotent, so a crash
//! during recovery only repeats it. Afterwards every committed write is in
//! the stores and the log can start over empty.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::applier;
use super::log::Frame;
use super::memtable::{ApplyBatch, Pending};
use super::store::{ShardStore, StoredValue};
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
            let value = record.value.map(|json| {
                Arc::new(StoredValue {
                    version: revision,
                    json,
                })
            });
            table.insert(record.key, Pending { revision, value });
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
