//! A storage cut: every shard as it stood at one revision R of the global
//! order, the same R for all shards. Every committed write with revision
//! <= R is in it and none after; later writes and applies do not change it.
//!
//! Taking one holds the shard writers' publish gate for an instant: with no
//! batch between its log append and its publication, every logged revision
//! is in its shard's memtable or store, and R is the newest. Each shard's
//! memtable is copied first and its store's snapshot taken second: appliers
//! only move entries from the memtable into the store, and nothing new is
//! published meanwhile, so whatever the store gains in between is in the
//! copy too. A key's state at R is then its pending state if the copy has
//! one (never older than the store's), else the store's.
//!
//! Backups, reshard and (later) replica bootstrap and multi-key reads read
//! through this one type.

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;
use std::sync::Arc;

use super::memtable::Pending;
use super::store::{StoreSnapshot, StoredValue};
use super::StoreError;

/// One shard at the cut: its store's snapshot and its pending states.
pub(super) struct ShardCut {
    pub store: StoreSnapshot,
    pub pending: BTreeMap<String, Pending>,
}

/// See the module documentation.
pub struct Snapshot {
    revision: u64,
    shards: Vec<ShardCut>,
}

impl Snapshot {
    pub(super) fn new(revision: u64, shards: Vec<ShardCut>) -> Self {
        Self { revision, shards }
    }

    /// R: every write in the cut has a revision at most this, and every
    /// committed write up to it is in the cut.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Calls `f` with every key present at the cut and its value, shard by
    /// shard, ascending within a shard, until `f` returns `Ok(false)`.
    pub fn for_each(
        &self,
        mut f: impl FnMut(&str, &StoredValue) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        for shard in &self.shards {
            if !shard.for_each(&mut f)? {
                break;
            }
        }
        Ok(())
    }
}

impl ShardCut {
    /// The store's keys overlaid with the pending states, in key order;
    /// `Ok(false)` when `f` asked to stop.
    fn for_each(
        &self,
        f: &mut impl FnMut(&str, &StoredValue) -> Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        let mut pending = self.pending.iter().peekable();
        let mut go_on = true;
        self.store.walk(Bound::Unbounded, |key, stored| {
            // Pending keys that sort before this one are not in the store.
            go_on = emit_pending_before(&mut pending, Some(&key), f)?;
            if !go_on {
                return Ok(false);
            }
            go_on = match pending.next_if(|(k, _)| **k == key) {
                Some((_, state)) => emit(&key, state.value.as_ref(), f)?,
                None => f(&key, &stored)?,
            };
            Ok(go_on)
        })?;
        if go_on {
            go_on = emit_pending_before(&mut pending, None, f)?;
        }
        Ok(go_on)
    }
}

/// Emits the pending states of keys before `key` (all that are left when
/// `None`).
fn emit_pending_before(
    pending: &mut Peekable<btree_map::Iter<'_, String, Pending>>,
    key: Option<&str>,
    f: &mut impl FnMut(&str, &StoredValue) -> Result<bool, StoreError>,
) -> Result<bool, StoreError> {
    while let Some((k, state)) = pending.next_if(|(k, _)| key.is_none_or(|key| k.as_str() < key)) {
        if !emit(k, state.value.as_ref(), f)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Emits a state: a value, or nothing for a delete.
fn emit(
    key: &str,
    value: Option<&Arc<StoredValue>>,
    f: &mut impl FnMut(&str, &StoredValue) -> Result<bool, StoreError>,
) -> Result<bool, StoreError> {
    match value {
        Some(v) => f(key, v),
        None => Ok(true),
    }
}
