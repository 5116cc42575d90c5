//! The state every request handler shares, and the write path all write
//! routes go through (so `/v1` and any other API cannot diverge).
//!
//! # How plugins and concurrent writes fit together
//! A plugin must judge the value a write actually replaces. When plugins
//! match a key, the write takes that key's lock (one of `KEY_LOCKS` striped
//! async mutexes, fair, so writers to one hot key queue instead of starving
//! each other), reads the current value and version, runs the chain against
//! it (off the async workers), then hands the chain's output to the shard
//! writer with the condition "the key is still at the version the chain
//! saw". The condition is what makes this correct: should any write slip
//! past the lock (one that matched no plugin before a reload, say), the
//! writer refuses without writing and the chain runs again against the new
//! value. So no update is lost and no validator is bypassed, and plugin work
//! for different keys runs in parallel on all cores rather than inside a
//! shard's single writer.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::auth::Tokens;
use crate::config::Settings;
use crate::error::ApiError;
use crate::http::body_budget::BodyBudget;
use crate::ijson::ValueLimits;
use crate::metrics::RequestMetrics;
use crate::plugin::{
    ChainRun, ChainStop, PluginChain, PluginLoadError, Record, SharedChain, WorkerPool,
};
use crate::plugin_host::PluginHost;
use crate::storage::hash::KeyHash;
use crate::storage::{
    Derivation, Expect, Expiry, Reply, Storage, StoreError, StoredValue, WriteOp, WriteOutcome,
};
use crate::update::Update;

/// How often a write through plugins is retried when other writes to the
/// same key keep committing first (only writes that bypass the key lock can
/// cause this).
const MAX_CHAIN_ATTEMPTS: usize = 16;

/// Number of striped key locks for writes through plugins: enough that
/// unrelated keys rarely share one at realistic concurrency.
const KEY_LOCKS: usize = 4096;

/// Collisions a server-assigned id may meet before a create gives up; with
/// the counter jumping 2^n ids after the n-th, this spans the whole range.
const MAX_ID_ATTEMPTS: u32 = 63;

/// Shared server state.
pub struct App {
    /// The effective settings.
    pub settings: Settings,
    /// All shards.
    pub storage: Arc<Storage>,
    /// The plugin chain and its configured and managed plugins.
    pub plugins: PluginHost,
    /// Serialises writes through plugins per key (striped by key hash).
    key_locks: Vec<tokio::sync::Mutex<()>>,
    /// Threads for the plugin pipeline's blocking work.
    workers: WorkerPool,
    /// The tokens in force (none: open to this machine), reloadable.
    pub tokens: Tokens,
    /// Request counters for `/metrics`.
    pub metrics: RequestMetrics,
    /// Request body bytes the server holds at once.
    pub body_budget: BodyBudget,
    /// The audit trail, when kept.
    pub audit: Option<crate::audit::Audit>,
    /// The listener's TLS configuration, when it speaks TLS.
    pub tls: Option<crate::tls::Tls>,
    /// Set when this server is a read replica.
    pub replica: Option<Arc<crate::replication::Replica>>,
}

/// Milliseconds since the Unix epoch, the clock plugins are given.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl App {
    /// State for a server with these settings, storage and plugins.
    pub fn new(
        settings: Settings,
        storage: Arc<Storage>,
        plugins: PluginHost,
        workers: WorkerPool,
        tokens: Tokens,
    ) -> Self {
        Self {
            storage,
            plugins,
            key_locks: (0..KEY_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            workers,
            tokens,
            metrics: RequestMetrics::default(),
            body_budget: BodyBudget::new(settings.server.max_body_bytes_in_flight),
            replica: None,
            tls: None,
            audit: None,
            settings,
        }
    }

    /// The chain writes use right now.
    pub fn chain(&self) -> SharedChain {
        self.plugins.chain()
    }

    /// Re-reads the plugin section of the configuration (file and
    /// environment) and swaps in the new chain. On any error the running
    /// chain stays active and the error is returned.
    pub async fn reload_plugins(&self) -> Result<usize, PluginLoadError> {
        self.plugins.reload().await
    }

    /// Reads the tokens again (configuration and tokens file) and puts
    /// them in force, or keeps the old set when an entry is bad. Logged
    /// either way; `cause` says what asked.
    pub fn reload_tokens(&self, cause: &str) -> Result<usize, crate::auth::SpecError> {
        match self.tokens.reload() {
            Ok(set) => {
                tracing::info!(cause, tokens = set.len(), "tokens reloaded");
                Ok(set.len())
            }
            Err(e) => {
                let error = crate::logsafe::escape(&e.to_string(), 512);
                tracing::error!(cause, %error, "token reload refused; the tokens in force stay");
                Err(e)
            }
        }
    }

    /// Records an admin action taken on a signal in the audit trail.
    pub fn audit_signal(&self, action: &str, ok: bool) {
        if let Some(audit) = &self.audit {
            let status = if ok { 200 } else { 400 };
            let record = crate::audit::Record::new("SIGHUP", String::new(), action, "", status, "");
            audit.record(record);
        }
    }

    /// Reads the TLS certificate, key and client CA again; new connections
    /// take them, open ones keep theirs. A bad file keeps what is in force.
    pub fn reload_tls(&self, cause: &str) {
        let Some(tls) = &self.tls else { return };
        match tls.reload() {
            Ok(()) => tracing::info!(cause, "TLS certificate reloaded"),
            Err(e) => {
                let error = crate::logsafe::escape(&e.to_string(), 512);
                tracing::error!(cause, %error, "TLS reload refused; the certificate in force stays");
            }
        }
    }

    /// Reads the key's current value, runs the chain against it and (unless
    /// this is a dry run) writes the result if the key is unchanged since
    /// the read.
    ///
    /// Where this runs: a chain of plugins known to be fast (see
    /// [`PluginChain::runs_inline`]) over a value in memory runs right
    /// here, since a hop to another thread costs more than such a call.
    /// Anything else goes in ONE hop to the plugin workers: the read may
    /// touch disk and a call may run up to its timeout. The writer answers
    /// the waiting request directly, so a write through plugins costs at
    /// most one thread hand-off more than a plain write, not two.
    async fn judge(
        &self,
        chain: &SharedChain,
        key: &str,
        hash: KeyHash,
        incoming: Incoming,
        expect: &Expect,
        record: Record,
    ) -> Result<Judgement, ApiError> {
        let limits = self.settings.limits.value_limits();
        let delete = incoming.is_delete();
        if chain.runs_inline(key, delete) {
            if let Some(current) = self.storage.peek_in_memory(key, hash) {
                if record == Record::Yes {
                    chain.count_inline(key, delete);
                }
                return match decide(chain, key, current, incoming, expect, record, limits)? {
                    Decision::Done(judgement) => Ok(judgement),
                    Decision::Write(write) => {
                        let outcome = self
                            .storage
                            .write_expiring(key.to_owned(), write.op, write.expect, write.expiry)
                            .await?;
                        let output = write.output;
                        Ok(Judgement::Written { outcome, output })
                    }
                };
            }
        }
        let (chain, key, expect) = (chain.clone(), key.to_owned(), expect.clone());
        let storage = Arc::clone(&self.storage);
        let (tx, rx) = oneshot::channel::<Result<Judgement, ApiError>>();
        self.workers.spawn(move || {
            let decided = storage
                .peek_blocking(&key, hash)
                .map_err(ApiError::from)
                .and_then(|current| {
                    decide(&chain, &key, current, incoming, &expect, record, limits)
                });
            let write = match decided {
                Ok(Decision::Write(write)) => write,
                Ok(Decision::Done(judgement)) => return drop(tx.send(Ok(judgement))),
                Err(e) => return drop(tx.send(Err(e))),
            };
            let output = write.output;
            let reply: Reply = Box::new(move |result| {
                let written = result.map(|outcome| Judgement::Written { outcome, output });
                let _ = tx.send(written.map_err(ApiError::from));
            });
            storage.submit_blocking(key, hash, write.op, write.expect, write.expiry, reply);
        });
        rx.await
            .map_err(|_| ApiError::Store(StoreError::Io("plugin pipeline job failed".into())))?
    }

    /// Stores `json` (already checked to be JSON within limits) under `key`
    /// if `expect` holds, after the plugin chain, and waits until durable.
    pub async fn put(
        &self,
        key: &str,
        json: Bytes,
        expect: Expect,
    ) -> Result<WriteOutcome, ApiError> {
        self.put_expiring(key, json, expect, Expiry::Never).await
    }

    /// Like [`App::put`], with what the write does to the key's expiry.
    pub async fn put_expiring(
        &self,
        key: &str,
        json: Bytes,
        expect: Expect,
        expiry: Expiry,
    ) -> Result<WriteOutcome, ApiError> {
        let outcome = self.write(key, Some(json), expect, expiry).await?.0;
        if let WriteOutcome::Created { .. } = outcome {
            self.note_explicit_id(key).await;
        }
        Ok(outcome)
    }

    /// Like [`App::put`], also returning the value as stored (after any
    /// transforms), for APIs that echo it.
    pub async fn put_returning(
        &self,
        key: &str,
        json: Bytes,
        expect: Expect,
    ) -> Result<(WriteOutcome, Bytes), ApiError> {
        let (outcome, stored) = self.write(key, Some(json), expect, Expiry::Never).await?;
        if let WriteOutcome::Created { .. } = outcome {
            self.note_explicit_id(key).await;
        }
        Ok((outcome, stored.unwrap_or_default()))
    }

    /// Removes `key` if `expect` holds, and waits until that is durable.
    pub async fn delete(&self, key: &str, expect: Expect) -> Result<WriteOutcome, ApiError> {
        Ok(self.write(key, None, expect, Expiry::Never).await?.0)
    }

    /// Stores what `update` makes of `key`'s current value, if `expect`
    /// holds, after the plugin chain, and waits until durable. `create`
    /// lets a patch start from an absent key. Returns the outcome and the
    /// value as stored.
    pub async fn update(
        &self,
        key: &str,
        update: Update,
        create: bool,
        expect: Expect,
        expiry: Expiry,
    ) -> Result<(WriteOutcome, Bytes), ApiError> {
        let chain = self.chain();
        if chain.applies(key, false) {
            let incoming = Incoming::Update {
                update: Arc::new(update),
                create,
                expiry,
            };
            let (outcome, stored) = self
                .write_through_chain(&chain, key, incoming, expect)
                .await?;
            return Ok((outcome, stored.unwrap_or_default()));
        }
        // No plugin judges the result: the shard writer computes it against
        // the key's latest state, and keeps the result (or why there is
        // none) here for the answer.
        let limits = self.settings.limits.value_limits();
        let result = Arc::new(std::sync::Mutex::new(None));
        let derive: Derivation = {
            let result = Arc::clone(&result);
            Arc::new(move |current: Option<&[u8]>| {
                let applied = update.apply(current, create, limits);
                let value = applied.as_ref().ok().cloned();
                *result.lock().unwrap_or_else(|p| p.into_inner()) = Some(applied);
                value
            })
        };
        let outcome = self
            .storage
            .write_expiring(key.to_owned(), WriteOp::Derive(derive), expect, expiry)
            .await?;
        let applied = result.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (outcome, applied) {
            (WriteOutcome::Conflict { .. }, _) => Ok((outcome, Bytes::new())),
            (_, Some(Err(e))) => Err(e.into()),
            (_, Some(Ok(stored))) => {
                if let WriteOutcome::Created { .. } = outcome {
                    self.note_explicit_id(key).await;
                }
                Ok((outcome, stored))
            }
            (outcome, None) => Err(ApiError::unexpected(outcome)),
        }
    }

    /// The one write path: plugins (when any match), then the shard writer.
    /// Returns the outcome and the value written (`None` for deletes).
    async fn write(
        &self,
        key: &str,
        value: Option<Bytes>,
        expect: Expect,
        expiry: Expiry,
    ) -> Result<(WriteOutcome, Option<Bytes>), ApiError> {
        let op = |v: Option<Bytes>| v.map_or(WriteOp::Delete, WriteOp::Put);
        let chain = self.chain();
        if !chain.applies(key, value.is_none()) {
            let outcome = self
                .storage
                .write_expiring(key.to_owned(), op(value.clone()), expect, expiry)
                .await?;
            return Ok((outcome, value));
        }
        let incoming = Incoming::Value(value, expiry);
        self.write_through_chain(&chain, key, incoming, expect)
            .await
    }

    /// A write whose key plugins match: under the key's lock, read, judge,
    /// write if unchanged since the read, again while other writes win.
    async fn write_through_chain(
        &self,
        chain: &SharedChain,
        key: &str,
        incoming: Incoming,
        expect: Expect,
    ) -> Result<(WriteOutcome, Option<Bytes>), ApiError> {
        let hash = self.storage.key_hash(key);
        let _key_lock = self.key_locks[hash.shard(KEY_LOCKS)].lock().await;
        for _ in 0..MAX_CHAIN_ATTEMPTS {
            let judged = self
                .judge(chain, key, hash, incoming.clone(), &expect, Record::Yes)
                .await?;
            let (outcome, output) = match judged {
                Judgement::Conflict(seen) => {
                    return Ok((WriteOutcome::Conflict { current: seen }, None))
                }
                Judgement::Missing => return Ok((WriteOutcome::Missing, None)),
                Judgement::Written { outcome, output } => (outcome, output),
                Judgement::Ran { .. } => unreachable!("only dry runs stop after running the chain"),
            };
            match outcome {
                WriteOutcome::Conflict { .. } => continue,
                outcome => return Ok((outcome, output)),
            }
        }
        Err(ApiError::Conflict(format!(
            "key {key:?} changed {MAX_CHAIN_ATTEMPTS} times while its plugins ran; retry the write"
        )))
    }

    /// The plugin path's locks of `keys` (deduplicated, in lock order, so
    /// two holders of several never wait for each other in a cycle).
    pub(crate) async fn lock_keys(&self, keys: &[&str]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut slots: Vec<usize> = keys
            .iter()
            .map(|k| self.storage.key_hash(k).shard(KEY_LOCKS))
            .collect();
        slots.sort_unstable();
        slots.dedup();
        let mut guards = Vec::with_capacity(slots.len());
        for slot in slots {
            guards.push(self.key_locks[slot].lock().await);
        }
        guards
    }

    /// Runs `work` on the plugin pipeline's threads; `None` if it panicked.
    pub(crate) async fn on_workers<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.workers.spawn(move || {
            let _ = tx.send(work());
        });
        rx.await.ok()
    }

    /// What the chain would do to a put of `json` under `key` right now,
    /// without writing or counting anything.
    pub async fn dry_run(
        &self,
        key: &str,
        json: Bytes,
    ) -> Result<(Option<u64>, ChainRun), ApiError> {
        let chain = self.chain();
        match self
            .judge(
                &chain,
                key,
                self.storage.key_hash(key),
                Incoming::Value(Some(json), Expiry::Never),
                &Expect::Any,
                Record::No,
            )
            .await?
        {
            Judgement::Ran { seen, run } => Ok((seen, run)),
            _ => unreachable!("a dry run of a put without a condition always runs the chain"),
        }
    }

    /// Stores `json` under a new server-assigned numeric key. An id whose key
    /// already exists (written explicitly by a client) is skipped, so this
    /// never overwrites; after each such collision the counter jumps twice
    /// as far as before, so even a long run of client-written numeric keys
    /// costs a few attempts, never one per key. Returns the id (the key is
    /// its decimal form), the version and the stored value.
    pub async fn create_returning(
        &self,
        json: Bytes,
        expiry: Expiry,
    ) -> Result<(u64, u64, Bytes), ApiError> {
        for attempt in 0..MAX_ID_ATTEMPTS {
            let counter = self.storage.next_id().await?;
            let id = self.settings.cluster.id_of(counter);
            match self
                .write(&id.to_string(), Some(json.clone()), Expect::Absent, expiry)
                .await?
            {
                (WriteOutcome::Created { version }, stored) => {
                    return Ok((id, version, stored.unwrap_or_default()))
                }
                (WriteOutcome::Conflict { .. }, _) => {
                    self.storage
                        .skip_ids_past(counter.saturating_add(1 << attempt))
                        .await;
                }
                (other, _) => return Err(ApiError::unexpected(other)),
            }
        }
        Err(ApiError::Conflict(format!(
            "no free id found in {MAX_ID_ATTEMPTS} attempts; store the value under a key of your choice"
        )))
    }

    /// A client stored a value under a canonical decimal key: keep the id
    /// counter from handing that id out later.
    async fn note_explicit_id(&self, key: &str) {
        let canonical = !key.is_empty()
            && key.len() <= 19
            && !key.starts_with('0')
            && key.bytes().all(|b| b.is_ascii_digit());
        if let (true, Ok(id)) = (canonical, key.parse::<u64>()) {
            let past = self.settings.cluster.counter_past(id);
            self.storage.skip_ids_past(past).await;
        }
    }
}

/// What [`decide`] found: an answer, or a write to make.
enum Decision {
    Done(Judgement),
    Write(ChainWrite),
}

/// The chain's output, to be written if the key is still as it was read.
struct ChainWrite {
    op: WriteOp,
    expect: Expect,
    expiry: Expiry,
    /// The value written (`None`: a delete).
    output: Option<Bytes>,
}

/// Checks the write's condition against `current`, computes the incoming
/// value and runs the chain on it: the plugin pipeline's work between the
/// read and the write, wherever it runs.
fn decide(
    chain: &PluginChain,
    key: &str,
    current: Option<Arc<StoredValue>>,
    incoming: Incoming,
    expect: &Expect,
    record: Record,
    limits: ValueLimits,
) -> Result<Decision, ApiError> {
    let seen = current.as_ref().map(|v| v.version);
    if !expect.holds(seen) {
        return Ok(Decision::Done(Judgement::Conflict(seen)));
    }
    let old = current.as_ref().map(|v| &v.json[..]);
    let (value, expiry) = match incoming {
        Incoming::Value(value, expiry) => (value, expiry),
        Incoming::Update {
            update,
            create,
            expiry,
        } => (Some(update.apply(old, create, limits)?), expiry),
    };
    if value.is_none() && current.is_none() {
        return Ok(Decision::Done(Judgement::Missing));
    }
    let run = chain.run(key, value, old, now_ms(), record);
    if record == Record::No {
        return Ok(Decision::Done(Judgement::Ran { seen, run }));
    }
    let output = run.result?;
    Ok(Decision::Write(ChainWrite {
        op: output.clone().map_or(WriteOp::Delete, WriteOp::Put),
        expect: Expect::unchanged_since(seen),
        expiry,
        output,
    }))
}

/// What a write through the chain stores: a value (`None`: delete), or
/// what an update makes of the current one.
#[derive(Clone)]
enum Incoming {
    Value(Option<Bytes>, Expiry),
    Update {
        update: Arc<Update>,
        create: bool,
        expiry: Expiry,
    },
}

impl Incoming {
    fn is_delete(&self) -> bool {
        matches!(self, Incoming::Value(None, _))
    }
}

/// What reading the current value and running the chain found.
enum Judgement {
    /// The write's own condition does not hold for the current version.
    Conflict(Option<u64>),
    /// A delete of a key that does not exist.
    Missing,
    /// The chain ran against the value at version `seen` and stopped the
    /// write, or this is a dry run.
    Ran {
        /// Version the chain saw (`None`: absent).
        seen: Option<u64>,
        /// What it decided.
        run: ChainRun,
    },
    /// The chain accepted and the writer processed its output under the
    /// condition that the key is still at the version the chain saw.
    Written {
        /// What the writer did (`Conflict`: the key changed meanwhile).
        outcome: WriteOutcome,
        /// The value written (`None`: a delete).
        output: Option<Bytes>,
    },
}

impl From<ChainStop> for ApiError {
    fn from(stop: ChainStop) -> Self {
        match stop {
            ChainStop::Rejected {
                plugin,
                code,
                message,
                path,
            } => ApiError::Rejected {
                plugin,
                reason: code,
                message,
                path,
            },
            ChainStop::Failed {
                plugin,
                kind,
                detail,
            } => ApiError::PluginFailed {
                plugin,
                kind,
                detail,
            },
        }
    }
}
