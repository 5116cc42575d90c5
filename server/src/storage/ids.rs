//! The persistent counter behind server-assigned keys (`POST /v1/kv`, and
//! ExDaas's `POST /api` without an id).
//!
//! An id must never be handed out twice, also across crashes, while a durable
//! write per id would cost an fsync each. So ids are reserved in blocks: the
//! file `ids` holds the first id *not yet reserved*, written durably before any
//! id of a new block is handed out. After a crash the server continues from
//! that mark; ids reserved but unused before the crash become gaps, which the
//! contract allows.

use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

use super::manifest::write_durably;
use super::StoreError;

/// File name of the counter's high-water mark inside the data directory.
pub const IDS_FILE: &str = "ids";

/// Ids reserved per durable write of the high-water mark.
const BLOCK: u64 = 1024;

/// Hands out increasing, never-repeated ids starting at 1.
#[derive(Debug)]
pub struct IdAllocator {
    /// Where the high-water mark lives.
    path: PathBuf,
    /// A tokio mutex: the holder may await the durable write of a new block,
    /// and callers queue behind it rather than racing to reserve twice.
    state: Mutex<IdRange>,
}

#[derive(Debug)]
struct IdRange {
    /// Next id to hand out.
    next: u64,
    /// First id beyond the durably reserved block.
    limit: u64,
}

impl IdAllocator {
    /// Reads the high-water mark of `data_dir` (1 for a new directory).
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(IDS_FILE);
        let mark = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                StoreError::Corrupt(format!(
                    "{}: not a counter value: {:?}",
                    path.display(),
                    text
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(StoreError::Io(format!("{}: {e}", path.display()))),
        };
        Ok(Self {
            path,
            state: Mutex::new(IdRange {
                next: mark,
                limit: mark,
            }),
        })
    }

    /// The first id that has certainly never been handed out: the durable
    /// high-water mark. A backup records it so a restored server continues
    /// after every id the old one may have used.
    pub async fn high_water(&self) -> u64 {
        let range = self.state.lock().await;
        range.limit.max(range.next)
    }

    /// The durable mark of a stopped server's `data_dir`.
    pub fn stored_mark(data_dir: &Path) -> Result<u64, StoreError> {
        let ids = Self::open(data_dir)?;
        let mark = ids.state.try_lock().map(|r| r.limit).unwrap_or(1);
        Ok(mark)
    }

    /// Raises the durable mark of `data_dir` to at least `mark` (restore).
    pub fn raise_mark(data_dir: &Path, mark: u64) -> Result<(), StoreError> {
        let current = Self::open(data_dir)?;
        let existing = current.state.try_lock().map(|r| r.limit).unwrap_or(1);
        if mark > existing {
            write_durably(&data_dir.join(IDS_FILE), mark.to_string().as_bytes())?;
        }
        Ok(())
    }

    /// Makes sure no id up to `taken` is handed out from now on (a client
    /// stored that key itself). In memory: the block reservation that
    /// `next` makes durable before using the ids covers it.
    pub async fn skip_past(&self, taken: u64) {
        let mut range = self.state.lock().await;
        range.next = range.next.max(taken.saturating_add(1));
    }

    /// The next id; reserves a new block durably first when needed.
    pub async fn next(&self) -> Result<u64, StoreError> {
        let mut range = self.state.lock().await;
        if range.next >= range.limit {
            let new_limit = range.next + BLOCK;
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || {
                write_durably(&path, new_limit.to_string().as_bytes())
            })
            .await
            .map_err(|e| StoreError::Io(format!("id reservation task failed: {e}")))??;
            range.limit = new_limit;
        }
        let id = range.next;
        range.next += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn ids_increase_and_survive_reopen_without_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let ids = IdAllocator::open(dir.path()).unwrap();
        assert_eq!(ids.next().await.unwrap(), 1);
        assert_eq!(ids.next().await.unwrap(), 2);
        drop(ids);
        // A restart (or crash) skips the rest of the reserved block.
        let ids = IdAllocator::open(dir.path()).unwrap();
        let n = ids.next().await.unwrap();
        assert!(n > 2, "{n}");
    }

    #[tokio::test]
    async fn skipped_ids_are_never_handed_out_even_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ids = IdAllocator::open(dir.path()).unwrap();
        assert_eq!(ids.next().await.unwrap(), 1);
        ids.skip_past(5000).await;
        ids.skip_past(10).await;
        assert_eq!(ids.next().await.unwrap(), 5001);
        drop(ids);
        let ids = IdAllocator::open(dir.path()).unwrap();
        assert!(ids.next().await.unwrap() > 5001);
    }

    #[test]
    fn corrupt_mark_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IDS_FILE), "x").unwrap();
        assert!(IdAllocator::open(dir.path()).is_err());
    }
}
