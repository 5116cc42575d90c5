//! The shard writer: the only code that changes a shard's store, and the
//! place where a write becomes durable and is then acknowledged.
//!
//! Each shard has one dedicated OS thread (persy blocks on disk I/O, so this
//! work never runs on an async worker) fed by a bounded channel. The thread
//! waits for a command, then takes whatever else is already queued, up to
//! `storage.max_batch`, and applies the whole batch in ONE transaction: a
//! single fsync for all of them (group commit). Only after that transaction
//! is prepared and committed does it update the cache and answer every
//! command in the batch. So a 2xx always means "on disk", and the cache
//! never holds a value that is not committed.
//!
//! If anything in the write path fails, the batch's commands all get an
//! error and the shard is poisoned: it refuses further writes until the
//! process restarts and persy's recovery establishes what reached the disk,
//! instead of guessing. Reads keep working.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::cache::{Cached, ShardCache};
use super::metrics::ShardMetrics;
use super::store::{ShardStore, StoredValue, WriteTx};
use super::StoreError;

/// What a write does to its key.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Store this JSON document (already validated).
    Put(Bytes),
    /// Remove the key.
    Delete,
}

/// The state the key must be in for the write to apply; checked by the
/// writer against the latest state, so it is race-free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No condition.
    Any,
    /// The key must be absent (`If-None-Match: *`).
    Absent,
    /// The key must exist, at any version (`If-Match: *`).
    Present,
    /// The key must hold one of these versions (`If-Match: "3"`).
    OneOf(Vec<u64>),
    /// The key must be absent or hold none of these versions
    /// (`If-None-Match: "3"`).
    NoneOf(Vec<u64>),
    /// Every one of these must hold (`If-Match` and `If-None-Match` together).
    All(Vec<Expect>),
}

impl Expect {
    /// "The key is still as I saw it": backs the plugin chain's re-check
    /// that the old value it ran against is the one the write replaces.
    pub fn unchanged_since(version: Option<u64>) -> Self {
        match version {
            Some(v) => Self::OneOf(vec![v]),
            None => Self::Absent,
        }
    }

    /// Whether a key at `current` (`None`: absent) satisfies the condition.
    pub fn holds(&self, current: Option<u64>) -> bool {
        match (self, current) {
            (Self::Any, _) => true,
            (Self::Absent, v) => v.is_none(),
            (Self::Present, v) => v.is_some(),
            (Self::OneOf(list), Some(v)) => list.contains(&v),
            (Self::OneOf(_), None) => false,
            (Self::NoneOf(list), Some(v)) => !list.contains(&v),
            (Self::NoneOf(_), None) => true,
            (Self::All(all), v) => all.iter().all(|e| e.holds(v)),
        }
    }
}

/// What happened to a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The key did not exist and now holds `version`.
    Created {
        /// The new version.
        version: u64,
    },
    /// The key existed and now holds `version`.
    Replaced {
        /// The new version.
        version: u64,
    },
    /// The same bytes were already stored; nothing was written.
    Unchanged {
        /// The version already stored.
        version: u64,
    },
    /// The key was removed; `version` is the one it held.
    Deleted {
        /// The version that was removed.
        version: u64,
    },
    /// A delete found nothing to remove.
    Missing,
    /// The `Expect` did not hold; nothing was written.
    Conflict {
        /// The version found (`None`: absent).
        current: Option<u64>,
    },
}

/// Called once with a write's result, on the writer thread. A callback
/// rather than a channel so the plugin pipeline can route the answer
/// straight to the waiting request.
pub type Reply = Box<dyn FnOnce(Result<WriteOutcome, StoreError>) + Send>;

/// A write waiting for its shard writer.
pub(crate) struct WriteCommand {
    pub key: String,
    pub op: WriteOp,
    pub expect: Expect,
    pub reply: Reply,
}

/// Messages to a writer thread.
pub(crate) enum WriterMsg {
    Write(WriteCommand),
    /// Finish what was queued before this message, then exit.
    Stop,
}

/// Runs storage work, turning a panic inside the engine into an error.
/// persy panics when it cannot roll back a failed transaction (a failing
/// disk); that must poison the shard, not kill its writer thread and leave
/// the waiting requests without an answer.
fn guarded<T>(work: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(StoreError::Io(format!("storage engine failed: {what}")))
        }
    }
}

/// State owned by one writer thread.
pub(crate) struct ShardWriter {
    pub shard: usize,
    pub store: ShardStore,
    pub cache: Arc<ShardCache>,
    pub rx: mpsc::Receiver<WriterMsg>,
    pub max_batch: usize,
    /// Last version handed out; persisted with every batch that uses one.
    pub seq: u64,
    /// Set after a failed commit; shared so the HTTP layer can report it.
    pub poisoned: Arc<AtomicBool>,
    pub metrics: Arc<ShardMetrics>,
}

impl ShardWriter {
    /// The thread body: batch, apply, commit, publish, answer; until `Stop`
    /// or every sender is gone.
    pub fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            let mut stop = false;
            match self.rx.blocking_recv() {
                Some(WriterMsg::Write(cmd)) => batch.push(cmd),
                Some(WriterMsg::Stop) | None => break,
            }
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(WriterMsg::Write(cmd)) => batch.push(cmd),
                    Ok(WriterMsg::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.metrics.record_batch(batch.len());
            self.apply(&mut batch);
            if stop {
                break;
            }
        }
        tracing::debug!(shard = self.shard, "shard writer stopped");
    }

    /// Applies one batch and answers every command in it.
    fn apply(&mut self, batch: &mut Vec<WriteCommand>) {
        if self.poisoned.load(Ordering::Acquire) {
            for cmd in batch.drain(..) {
                (cmd.reply)(Err(StoreError::Poisoned(self.shard)));
            }
            return;
        }
        let started = std::time::Instant::now();
        let durable = guarded(|| {
            let (outcomes, changes, tx) = self.stage(batch)?;
            if let Some(tx) = tx {
                tx.commit()?;
            }
            Ok((outcomes, changes))
        });
        match durable {
            Ok((outcomes, changes)) => {
                self.metrics.record_commit(started.elapsed());
                // Publish to readers only now that the batch is durable.
                // A deleted key is cached as absent, so the next read or
                // create of it needs no disk lookup.
                for (key, value) in changes {
                    let entry = Cached::of(&self.cache, &key, value);
                    self.cache.insert(key, entry);
                }
                for (cmd, outcome) in batch.drain(..).zip(outcomes) {
                    (cmd.reply)(outcome);
                }
            }
            Err(e) => self.poison(batch, e),
        }
    }

    fn poison(&mut self, batch: &mut Vec<WriteCommand>, e: StoreError) {
        // A `Poisoned` answer, not the failure itself: the batch may or may
        // not be on disk, and only recovery at the next start can tell.
        tracing::error!(shard = self.shard, error = %e, "commit failed; shard refuses writes until restart");
        self.poisoned.store(true, Ordering::Release);
        for cmd in batch.drain(..) {
            (cmd.reply)(Err(StoreError::Poisoned(self.shard)));
        }
    }

    /// Decides every command's outcome against the latest state (committed
    /// plus earlier commands of this batch) and stages the changes in one
    /// transaction. A failure here fails the whole batch.
    #[allow(clippy::type_complexity)]
    fn stage(
        &mut self,
        batch: &[WriteCommand],
    ) -> Result<
        (
            Vec<Result<WriteOutcome, StoreError>>,
            HashMap<String, Option<Arc<StoredValue>>>,
            Option<WriteTx>,
        ),
        StoreError,
    > {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut changes: HashMap<String, Option<Arc<StoredValue>>> = HashMap::new();
        let mut tx: Option<WriteTx> = None;
        let seq_before = self.seq;
        for cmd in batch {
            let current = match changes.get(&cmd.key) {
                Some(v) => v.clone(),
                None => match self.cache.peek(cmd.key.as_str()).and_then(|c| c.known()) {
                    Some(cached) => cached,
                    None => self.store.get_as_writer(&cmd.key)?,
                },
            };
            let current_version = current.as_ref().map(|v| v.version);
            if !cmd.expect.holds(current_version) {
                outcomes.push(Ok(WriteOutcome::Conflict {
                    current: current_version,
                }));
                continue;
            }
            let outcome = match (&cmd.op, current) {
                (WriteOp::Put(json), Some(cur)) if cur.json == *json => WriteOutcome::Unchanged {
                    version: cur.version,
                },
                (WriteOp::Put(json), cur) => {
                    if tx.is_none() {
                        tx = Some(self.store.begin()?);
                    }
                    let Some(t) = tx.as_mut() else {
                        unreachable!("transaction begun above")
                    };
                    self.seq += 1;
                    let version = self.seq;
                    let (record, outcome) = match cur {
                        Some(cur) => {
                            t.update(cur.record, version, json)?;
                            (cur.record, WriteOutcome::Replaced { version })
                        }
                        None => (
                            t.insert(&cmd.key, version, json)?,
                            WriteOutcome::Created { version },
                        ),
                    };
                    let stored = StoredValue {
                        version,
                        json: json.clone(),
                        record,
                    };
                    changes.insert(cmd.key.clone(), Some(Arc::new(stored)));
                    outcome
                }
                (WriteOp::Delete, None) => WriteOutcome::Missing,
                (WriteOp::Delete, Some(cur)) => {
                    if tx.is_none() {
                        tx = Some(self.store.begin()?);
                    }
                    let Some(t) = tx.as_mut() else {
                        unreachable!("transaction begun above")
                    };
                    t.delete(&cmd.key, cur.record)?;
                    changes.insert(cmd.key.clone(), None);
                    WriteOutcome::Deleted {
                        version: cur.version,
                    }
                }
            };
            outcomes.push(Ok(outcome));
        }
        if self.seq != seq_before {
            if let Some(t) = tx.as_mut() {
                t.set_seq(self.seq)?;
            }
        }
        Ok((outcomes, changes, tx))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::cache::new_cache;

    /// Sends one command and waits for its answer.
    fn send(
        queue: &mpsc::Sender<WriterMsg>,
        key: &str,
        op: WriteOp,
    ) -> Result<WriteOutcome, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let reply: Reply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        let cmd = WriteCommand {
            key: key.into(),
            op,
            expect: Expect::Any,
            reply,
        };
        queue.blocking_send(WriterMsg::Write(cmd)).unwrap();
        rx.recv().unwrap()
    }

    /// A writer over a fresh store in `dir`, with its queue and store.
    fn fixture(dir: &std::path::Path) -> (ShardWriter, mpsc::Sender<WriterMsg>, ShardStore) {
        let store = ShardStore::open(&dir.join("s.persy"), 1 << 20).unwrap();
        let (queue, rx) = mpsc::channel(16);
        let writer = ShardWriter {
            shard: 0,
            store: store.clone(),
            cache: Arc::new(new_cache(1 << 20)),
            rx,
            max_batch: 8,
            seq: 0,
            poisoned: Arc::default(),
            metrics: Arc::default(),
        };
        (writer, queue, store)
    }

    #[test]
    fn a_failed_commit_poisons_the_shard_and_loses_nothing_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, queue, store) = fixture(dir.path());
        let poisoned = writer.poisoned.clone();
        let thread = std::thread::spawn(move || writer.run());
        let put = |v: &'static str| WriteOp::Put(Bytes::from_static(v.as_bytes()));

        assert_eq!(
            send(&queue, "a", put("1")).unwrap(),
            WriteOutcome::Created { version: 1 }
        );
        store.fail_commits.store(true, Ordering::SeqCst);
        assert!(matches!(
            send(&queue, "b", put("2")),
            Err(StoreError::Poisoned(0))
        ));
        assert!(poisoned.load(Ordering::SeqCst));
        // Healthy again underneath, but the shard refuses writes until restart.
        store.fail_commits.store(false, Ordering::SeqCst);
        assert!(matches!(
            send(&queue, "c", put("3")),
            Err(StoreError::Poisoned(0))
        ));
        // Reads keep working, and only the acknowledged write is there.
        assert_eq!(&store.get("a").unwrap().unwrap().json[..], b"1");
        assert!(store.get("b").unwrap().is_none());
        assert!(store.get("c").unwrap().is_none());
        queue.blocking_send(WriterMsg::Stop).unwrap();
        thread.join().unwrap();
    }

    #[test]
    fn a_batch_sees_its_own_earlier_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, queue, store) = fixture(dir.path());
        // Stage a batch directly: create, replace, unchanged, delete, missing.
        let (tx, answers) = std::sync::mpsc::channel();
        let cmd = |key: &str, op: WriteOp| {
            let tx = tx.clone();
            let reply: Reply = Box::new(move |r| {
                let _ = tx.send(r);
            });
            WriteCommand {
                key: key.into(),
                op,
                expect: Expect::Any,
                reply,
            }
        };
        let mut batch = vec![
            cmd("k", WriteOp::Put(Bytes::from_static(b"1"))),
            cmd("k", WriteOp::Put(Bytes::from_static(b"2"))),
            cmd("k", WriteOp::Put(Bytes::from_static(b"2"))),
            cmd("k", WriteOp::Delete),
            cmd("k", WriteOp::Delete),
        ];
        writer.apply(&mut batch);
        let got: Vec<WriteOutcome> = (0..5).map(|_| answers.recv().unwrap().unwrap()).collect();
        assert_eq!(
            got,
            [
                WriteOutcome::Created { version: 1 },
                WriteOutcome::Replaced { version: 2 },
                WriteOutcome::Unchanged { version: 2 },
                WriteOutcome::Deleted { version: 2 },
                WriteOutcome::Missing,
            ]
        );
        assert!(store.get("k").unwrap().is_none());
        assert_eq!(store.last_seq().unwrap(), 2);
        drop(queue);
    }
}
