//! The state every request handler shares, and the write path all write
//! routes go through (so `/v1` and the ExDaas layer cannot diverge).

use std::sync::Arc;

use bytes::Bytes;

use crate::config::Settings;
use crate::error::ApiError;
use crate::storage::{Expect, Storage, WriteOp, WriteOutcome};

/// Shared server state.
pub struct App {
    /// The effective settings.
    pub settings: Settings,
    /// All shards.
    pub storage: Arc<Storage>,
}

impl App {
    /// Stores `json` (already checked to be JSON within limits) under `key`
    /// if `expect` holds, and waits until it is durable.
    pub async fn put(
        &self,
        key: &str,
        json: Bytes,
        expect: Expect,
    ) -> Result<WriteOutcome, ApiError> {
        Ok(self
            .storage
            .write(key.to_owned(), WriteOp::Put(json), expect)
            .await?)
    }

    /// Removes `key` if `expect` holds, and waits until that is durable.
    pub async fn delete(&self, key: &str, expect: Expect) -> Result<WriteOutcome, ApiError> {
        Ok(self
            .storage
            .write(key.to_owned(), WriteOp::Delete, expect)
            .await?)
    }

    /// Stores `json` under a new server-assigned numeric key. An id whose key
    /// already exists (written explicitly by a client) is skipped, so this
    /// never overwrites.
    pub async fn create(&self, json: Bytes) -> Result<(String, u64), ApiError> {
        loop {
            let key = self.storage.next_id().await?.to_string();
            match self.put(&key, json.clone(), Expect::Absent).await? {
                WriteOutcome::Created { version } => return Ok((key, version)),
                WriteOutcome::Conflict { .. } => continue,
                other => {
                    return Err(ApiError::Store(crate::storage::StoreError::Corrupt(
                        format!("unexpected outcome {other:?} creating {key}"),
                    )))
                }
            }
        }
    }
}
