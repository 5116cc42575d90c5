//! Loading a whole data set into a new data directory (restore), bypassing
//! the writers: records keep their versions, each shard's sequence is set
//! past the highest version it holds, and the id counter past `next_id`.

use std::collections::BTreeMap;
use std::path::Path;

use super::ids::IdAllocator;
use super::manifest;
use super::store::StoredValue;
use super::store::{ShardStore, WriteTx};
use super::{hash, StoreError};

/// Records per transaction while loading.
const LOAD_BATCH: usize = 1_000;

/// Writes records into a fresh data directory with `shards` shards.
pub struct BulkLoader {
    stores: Vec<ShardStore>,
    txs: Vec<Option<WriteTx>>,
    pending: Vec<usize>,
    max_version: Vec<u64>,
    data_dir: std::path::PathBuf,
    placement: hash::Placement,
}

impl BulkLoader {
    /// Creates the data directory's manifest and empty shard files.
    pub fn create(
        data_dir: &Path,
        shards: u32,
        store_cache_bytes: u64,
    ) -> Result<Self, StoreError> {
        let placement = manifest::open_or_create(data_dir, shards)?.placement();
        let stores = (0..shards as usize)
            .map(|i| ShardStore::open(&manifest::shard_file(data_dir, i), store_cache_bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let n = stores.len();
        Ok(Self {
            stores,
            txs: (0..n).map(|_| None).collect(),
            pending: vec![0; n],
            max_version: vec![0; n],
            data_dir: data_dir.to_owned(),
            placement,
        })
    }

    /// Adds one record (keys must be unique).
    pub fn add(&mut self, key: &str, value: &StoredValue) -> Result<(), StoreError> {
        let version = value.version;
        let shard = self.placement.hash(key).shard(self.stores.len());
        if self.txs[shard].is_none() {
            self.txs[shard] = Some(self.stores[shard].begin()?);
        }
        if let Some(tx) = self.txs[shard].as_mut() {
            if value.expires_at.is_some() {
                tx.mark_expiring()?;
            }
            tx.insert(key, value)?;
        }
        self.max_version[shard] = self.max_version[shard].max(version);
        self.pending[shard] += 1;
        if self.pending[shard] >= LOAD_BATCH {
            self.commit(shard)?;
        }
        Ok(())
    }

    fn commit(&mut self, shard: usize) -> Result<(), StoreError> {
        if let Some(mut tx) = self.txs[shard].take() {
            tx.set_seq(self.max_version[shard])?;
            tx.commit()?;
        }
        self.pending[shard] = 0;
        Ok(())
    }

    /// Commits what is left, records the sequences and the id counter.
    /// Every shard's sequence starts at `seq_floor` or above, so no version
    /// the source server handed out (even to a key since deleted) is handed
    /// out again.
    pub fn finish(
        mut self,
        next_id: u64,
        seq_floor: u64,
    ) -> Result<BTreeMap<usize, u64>, StoreError> {
        for shard in 0..self.stores.len() {
            self.max_version[shard] = self.max_version[shard].max(seq_floor);
            self.commit(shard)?;
            let mut tx = self.stores[shard].begin()?;
            tx.set_seq(self.max_version[shard])?;
            tx.commit()?;
        }
        IdAllocator::raise_mark(&self.data_dir, next_id)?;
        Ok(self.max_version.iter().copied().enumerate().collect())
    }
}
