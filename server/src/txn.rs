//! Transactions as clients ask for them (`POST /v1/txn`): compares that
//! choose one of two lists of operations, run atomically across keys and
//! shards, through the plugin chain (see "Multi-key transactions across
//! shards" in `docs/design/write-path.md`).
//!
//! Where no plugin matches a key of the transaction, the storage decides
//! everything under its shards' decision locks: compares, patches and
//! increments see the latest state and nothing can come between. Where one
//! does, the transaction reads the keys, evaluates and computes, runs the
//! chain on every write, and commits on condition that no key changed
//! since it read them, again while other writes win (a bounded number of
//! times).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::app::{now_ms, App};
use crate::config::LimitSettings;
use crate::error::ApiError;
use crate::http::ttl::TtlAsked;
use crate::ijson::ValueLimits;
use crate::plugin::{ChainStop, Record, SharedChain};
use crate::storage::txn::{Compare, OpResult, TxnOp, TxnOutcome, TxnPlan};
use crate::storage::{Derivation, Expect, Expiry, StoreError, StoredValue, WriteOp, WriteOutcome};
use crate::update::{Update, UpdateError};

/// Attempts of a transaction through plugins while other writes keep
/// changing its keys.
const MAX_ATTEMPTS: usize = 16;

/// A transaction as the client sent it.
#[derive(Debug)]
pub struct TxnRequest {
    /// All must hold for `success` to run; else `failure` runs.
    pub compare: Vec<CompareSpec>,
    /// Operations when every compare holds.
    pub success: Vec<OpSpec>,
    /// Operations when one does not.
    pub failure: Vec<OpSpec>,
}

/// The body as it parses, before each operation is checked for the
/// members its kind takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    compare: Vec<CompareSpec>,
    #[serde(default)]
    success: Vec<RawOp>,
    #[serde(default)]
    failure: Vec<RawOp>,
}

/// One operation as it parses: every member any kind takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOp {
    op: String,
    key: String,
    #[serde(default, deserialize_with = "crate::ijson::present_raw_owned")]
    value: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "given")]
    return_old: Option<bool>,
    #[serde(default, deserialize_with = "present_value")]
    merge: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    json_patch: Option<Value>,
    #[serde(default, deserialize_with = "given")]
    create: Option<bool>,
    #[serde(default, deserialize_with = "given")]
    path: Option<String>,
    #[serde(default, deserialize_with = "whole_i64")]
    by: Option<i64>,
    #[serde(default, deserialize_with = "given")]
    ttl: Option<String>,
    #[serde(default, deserialize_with = "given")]
    keep_ttl: Option<bool>,
}

/// A member that, when present, must hold its type: `null` is refused,
/// not read as absent.
fn given<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// An integer, also when written with a zero fraction (`3.0`), as JSON
/// Schema's `integer` allows; within the integers a double holds exactly.
fn whole(n: f64) -> Option<i64> {
    let safe = crate::update::MAX_SAFE_INTEGER as f64;
    (n.fract() == 0.0 && n.abs() <= safe).then_some(n as i64)
}

fn whole_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    n.as_i64()
        .filter(|i| i.abs() <= crate::update::MAX_SAFE_INTEGER)
        .or_else(|| n.as_f64().and_then(whole))
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!("{n} is not an integer within +/-(2^53 - 1)"))
        })
}

fn whole_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    whole_i64(d)?
        .map(|n| {
            u64::try_from(n).map_err(|_| serde::de::Error::custom("a version is not negative"))
        })
        .transpose()
}

impl RawOp {
    /// The operation, if it gives exactly the members its kind takes.
    fn into_op(self, max_ttl: std::time::Duration) -> Result<OpSpec, String> {
        let given = [
            ("value", self.value.is_some()),
            ("return_old", self.return_old.is_some()),
            ("merge", self.merge.is_some()),
            ("json_patch", self.json_patch.is_some()),
            ("create", self.create.is_some()),
            ("path", self.path.is_some()),
            ("by", self.by.is_some()),
            ("ttl", self.ttl.is_some()),
            ("keep_ttl", self.keep_ttl.is_some()),
        ];
        let takes: &[&str] = match self.op.as_str() {
            "put" => &["value", "ttl", "keep_ttl"],
            "delete" => &["return_old"],
            "patch" => &["merge", "json_patch", "create", "ttl", "keep_ttl"],
            "incr" => &["path", "by", "ttl", "keep_ttl"],
            other => {
                return Err(format!(
                    "unknown op {other:?}; ops are put, delete, patch, incr"
                ))
            }
        };
        if let Some((name, _)) = given.iter().find(|(n, g)| *g && !takes.contains(n)) {
            return Err(format!("{} takes no {name}", self.op));
        }
        let ttl = TtlAsked {
            ttl: self
                .ttl
                .map(|t| crate::http::ttl::parse(&t, max_ttl).map_err(|e| format!("ttl: {e}")))
                .transpose()?,
            keep: self.keep_ttl.unwrap_or(false),
        };
        let key = self.key;
        Ok(match self.op.as_str() {
            "put" => OpSpec::Put {
                key,
                value: self.value.ok_or("a put needs a value")?,
                ttl,
            },
            "delete" => OpSpec::Delete {
                key,
                return_old: self.return_old.unwrap_or(false),
            },
            "patch" => OpSpec::Patch {
                key,
                merge: self.merge,
                json_patch: self
                    .json_patch
                    .map(crate::update::json_patch_from)
                    .transpose()
                    .map_err(|e| format!("json_patch: {e}"))?,
                create: self.create.unwrap_or(false),
                ttl,
            },
            _ => OpSpec::Incr {
                key,
                path: self.path.unwrap_or_default(),
                by: self.by.unwrap_or(1),
                ttl,
            },
        })
    }
}

/// One compare: exactly one of `version`, `exists`, `pointer` + `equals`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareSpec {
    /// The key.
    pub key: String,
    /// Holds when the key exists at this version.
    #[serde(default, deserialize_with = "whole_u64")]
    pub version: Option<u64>,
    /// Holds when the key exists (`true`) or not (`false`).
    #[serde(default, deserialize_with = "given")]
    pub exists: Option<bool>,
    /// With `equals`: holds when the value at this JSON pointer equals it.
    #[serde(default, deserialize_with = "given")]
    pub pointer: Option<String>,
    /// See `pointer`.
    #[serde(default, deserialize_with = "present_value")]
    pub equals: Option<Value>,
}

/// A present `null` is `Some(Null)`: `"equals": null` is a compare.
fn present_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Deserialize::deserialize(d).map(Some)
}

/// One operation.
#[derive(Debug)]
pub enum OpSpec {
    /// Store `value` under `key`.
    Put {
        /// The key.
        key: String,
        /// The value, stored as sent.
        value: Box<RawValue>,
        /// Its expiry (`ttl`, `keep_ttl`).
        ttl: TtlAsked,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: String,
        /// Answer the removed value too.
        return_old: bool,
    },
    /// A merge patch (`merge`) or a JSON patch (`json_patch`).
    Patch {
        /// The key.
        key: String,
        /// RFC 7396 merge patch.
        merge: Option<Value>,
        /// RFC 6902 JSON patch.
        json_patch: Option<json_patch::Patch>,
        /// Create the key when absent.
        create: bool,
        /// Its expiry (`ttl`, `keep_ttl`).
        ttl: TtlAsked,
    },
    /// Add `by` to the integer at `path`, creating what is absent.
    Incr {
        /// The key.
        key: String,
        /// JSON pointer; the whole value when empty.
        path: String,
        /// What to add.
        by: i64,
        /// Its expiry (`ttl`, `keep_ttl`).
        ttl: TtlAsked,
    },
}

impl TxnRequest {
    /// Every key the transaction may touch, whichever branch runs, with
    /// what it needs: compares read, operations write.
    pub fn keys(&self) -> impl Iterator<Item = (&str, crate::auth::scope::Level)> {
        use crate::auth::scope::Level;
        let compared = self.compare.iter().map(|c| (c.key.as_str(), Level::Read));
        let written = self
            .success
            .iter()
            .chain(&self.failure)
            .map(|op| (op.key(), Level::Write));
        compared.chain(written)
    }
}

impl OpSpec {
    fn key(&self) -> &str {
        match self {
            Self::Put { key, .. }
            | Self::Delete { key, .. }
            | Self::Patch { key, .. }
            | Self::Incr { key, .. } => key,
        }
    }

    /// What it does to the key's expiry: a put's value lasts unless it
    /// gives a TTL; a patch or an increment keeps the key's.
    fn expiry(&self) -> Expiry {
        let (ttl, default) = match self {
            Self::Put { ttl, .. } => (ttl, Expiry::Never),
            Self::Patch { ttl, .. } | Self::Incr { ttl, .. } => (ttl, Expiry::Keep),
            Self::Delete { .. } => return Expiry::Never,
        };
        ttl.expiry(default).unwrap_or(default)
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Put { .. } => "put",
            Self::Delete { .. } => "delete",
            Self::Patch { .. } => "patch",
            Self::Incr { .. } => "incr",
        }
    }
}

/// Parses and checks a transaction body: its size is the caller's; here
/// every key, value, pointer and count.
pub fn parse(bytes: &[u8], limits: &LimitSettings) -> Result<TxnRequest, ApiError> {
    let (max_ops, max_key_bytes) = (limits.max_txn_ops, limits.max_key_bytes);
    let values = limits.value_limits();
    let max_ttl = limits.max_ttl();
    // The envelope nests values three levels deeper than a PUT would.
    let envelope = ValueLimits {
        max_bytes: usize::MAX,
        max_depth: values.max_depth.saturating_add(3),
    };
    crate::ijson::check(bytes, envelope)?;
    let invalid = |m: String| ApiError::bad_request("invalid_txn", m);
    let body: Body =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not a transaction: {e}")))?;
    let ops = |branch: &str, raw: Vec<RawOp>| {
        raw.into_iter()
            .enumerate()
            .map(|(i, op)| {
                op.into_op(max_ttl)
                    .map_err(|m| invalid(format!("{branch}[{i}]: {m}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let txn = TxnRequest {
        compare: body.compare,
        success: ops("success", body.success)?,
        failure: ops("failure", body.failure)?,
    };
    let count = txn.compare.len() + txn.success.len() + txn.failure.len();
    if count > max_ops {
        return Err(ApiError::bad_request(
            "txn_too_large",
            format!("{count} compares and operations; limits.max_txn_ops is {max_ops}"),
        ));
    }
    for (i, c) in txn.compare.iter().enumerate() {
        let at = |m: String| ApiError::bad_request("invalid_txn", format!("compare {i}: {m}"));
        crate::http::request::check_key(&c.key, max_key_bytes)?;
        let kinds = [c.version.is_some(), c.exists.is_some(), c.pointer.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 || c.pointer.is_some() != c.equals.is_some() {
            return Err(at(
                "give exactly one of version, exists, or pointer with equals".into(),
            ));
        }
        if let Some(p) = &c.pointer {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(at(format!("pointer {p:?} is not a JSON pointer")));
            }
        }
    }
    for (branch, ops) in [("success", &txn.success), ("failure", &txn.failure)] {
        for (i, op) in ops.iter().enumerate() {
            let at =
                |m: String| ApiError::bad_request("invalid_txn", format!("{branch}[{i}]: {m}"));
            crate::http::request::check_key(op.key(), max_key_bytes)?;
            match op {
                OpSpec::Put { value, .. } => {
                    crate::ijson::check(value.get().as_bytes(), values)
                        .map_err(|v| at(v.to_string()))?;
                }
                OpSpec::Patch {
                    merge, json_patch, ..
                } if merge.is_some() == json_patch.is_some() => {
                    return Err(at("a patch gives exactly one of merge or json_patch".into()));
                }
                OpSpec::Incr { path, by, .. } => {
                    if !path.is_empty() && !path.starts_with('/') {
                        return Err(at(format!("path {path:?} is not a JSON pointer")));
                    }
                    if by.abs() > crate::update::MAX_SAFE_INTEGER {
                        return Err(at(format!("by {by} is past +/-(2^53 - 1)")));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(txn)
}

/// What a transaction did, for the answer.
#[derive(Debug)]
pub struct TxnAnswer {
    /// Whether every compare held.
    pub succeeded: bool,
    /// The revision of its last write (`None`: it wrote nothing).
    pub revision: Option<u64>,
    /// One entry per operation of the branch that ran.
    pub results: Vec<Value>,
}

impl TxnAnswer {
    /// The answer's body.
    pub fn body(&self) -> Value {
        json!({
            "succeeded": self.succeeded,
            "revision": self.revision,
            "results": self.results,
        })
    }
}

/// Why an operation stopped the transaction.
fn op_failed(branch: bool, index: usize, op: &OpSpec, e: ApiError) -> ApiError {
    ApiError::TxnOperation {
        branch: if branch { "success" } else { "failure" },
        index,
        op: op.name(),
        error: Box::new(e),
    }
}

impl CompareSpec {
    fn check(&self) -> Compare {
        let (version, exists) = (self.version, self.exists);
        let (pointer, equals) = (self.pointer.clone(), self.equals.clone());
        Arc::new(move |v: Option<&StoredValue>| {
            if let Some(version) = version {
                return v.is_some_and(|v| v.version == version);
            }
            if let Some(exists) = exists {
                return v.is_some() == exists;
            }
            let (Some(pointer), Some(equals)) = (&pointer, &equals) else {
                return false;
            };
            v.and_then(|v| serde_json::from_slice::<Value>(&v.json).ok())
                .is_some_and(|doc| doc.pointer(pointer) == Some(equals))
        })
    }
}

/// What an update operation made of its key, recorded when the storage
/// ran it: the value, or why it declined.
type Applied = Arc<Mutex<Option<Result<Bytes, UpdateError>>>>;

/// The update an operation makes, if it is one.
fn update_of(op: &OpSpec) -> Option<(Update, bool)> {
    match op {
        OpSpec::Patch {
            merge: Some(m),
            create,
            ..
        } => Some((Update::MergePatch(m.clone()), *create)),
        OpSpec::Patch {
            json_patch: Some(p),
            create,
            ..
        } => Some((Update::JsonPatch(p.clone()), *create)),
        OpSpec::Incr { path, by, .. } => Some((
            Update::Increment {
                pointer: path.clone(),
                by: *by,
            },
            true,
        )),
        _ => None,
    }
}

/// An operation as the storage takes it, and where an update keeps what
/// it made.
fn write_op(op: &OpSpec, limits: ValueLimits) -> (WriteOp, Applied) {
    let applied = Applied::default();
    let write = match op {
        OpSpec::Put { value, .. } => WriteOp::Put(Bytes::copy_from_slice(value.get().as_bytes())),
        OpSpec::Delete { .. } => WriteOp::Delete,
        other => {
            let (update, create) =
                update_of(other).unwrap_or((Update::MergePatch(Value::Null), false));
            let slot = Arc::clone(&applied);
            let derive: Derivation = Arc::new(move |current: Option<&[u8]>| {
                let result = update.apply(current, create, limits);
                let value = result.as_ref().ok().cloned();
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                value
            });
            WriteOp::Derive(derive)
        }
    };
    (write, applied)
}

/// One operation's entry in the answer.
fn result_entry(op: &OpSpec, result: &OpResult, stored: Option<&Bytes>) -> Value {
    let (outcome, version) = match result.outcome {
        WriteOutcome::Created { version } => ("created", Some(version)),
        WriteOutcome::Replaced { version } => ("replaced", Some(version)),
        WriteOutcome::Unchanged { version } => ("unchanged", Some(version)),
        WriteOutcome::Deleted { revision, .. } => ("deleted", Some(revision)),
        WriteOutcome::Missing => ("missing", None),
        WriteOutcome::Conflict { .. } | WriteOutcome::Declined { .. } => ("declined", None),
    };
    let mut entry =
        json!({"op": op.name(), "key": op.key(), "outcome": outcome, "version": version});
    match op {
        OpSpec::Delete {
            return_old: true, ..
        } => {
            let old = result
                .previous
                .as_ref()
                .and_then(|v| serde_json::from_slice::<Value>(&v.json).ok());
            entry["old"] = old.unwrap_or(Value::Null);
        }
        OpSpec::Incr { path, .. } => {
            let value = stored
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                .and_then(|v| v.pointer(path).cloned());
            entry["value"] = value.unwrap_or(Value::Null);
        }
        _ => {}
    }
    entry
}

impl App {
    /// Runs `txn` atomically (see the module doc).
    pub async fn transact(&self, txn: TxnRequest) -> Result<TxnAnswer, ApiError> {
        let chain = self.chain();
        let judged = txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|op| chain.applies(op.key(), matches!(op, OpSpec::Delete { .. })));
        let txn = Arc::new(txn);
        if !judged {
            return self.transact_in_storage(txn).await;
        }
        let mut keys: Vec<&str> = txn
            .success
            .iter()
            .chain(&txn.failure)
            .map(OpSpec::key)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let _locks = self.lock_keys(&keys).await;
        for _ in 0..MAX_ATTEMPTS {
            if let Some(answer) = self.transact_through_chain(&chain, &txn).await? {
                return Ok(answer);
            }
        }
        Err(ApiError::Conflict(format!(
            "the transaction's keys changed {MAX_ATTEMPTS} times while its plugins ran; retry it"
        )))
    }

    /// Every step in the storage, under its decision locks.
    async fn transact_in_storage(&self, txn: Arc<TxnRequest>) -> Result<TxnAnswer, ApiError> {
        let limits = self.settings.limits.value_limits();
        let mut plan = TxnPlan {
            compares: txn
                .compare
                .iter()
                .map(|c| (c.key.clone(), c.check()))
                .collect(),
            ..TxnPlan::default()
        };
        let mut applied = (Vec::new(), Vec::new());
        for (ops, into, slots) in [
            (&txn.success, &mut plan.success, &mut applied.0),
            (&txn.failure, &mut plan.failure, &mut applied.1),
        ] {
            for op in ops {
                let (write, slot) = write_op(op, limits);
                let (key, expiry) = (op.key().to_owned(), op.expiry());
                into.push(TxnOp {
                    key,
                    op: write,
                    expiry,
                });
                slots.push(slot);
            }
        }
        let outcome = self.commit(plan).await?;
        let take = |succeeded: bool, index: usize| {
            let slots = if succeeded { &applied.0 } else { &applied.1 };
            slots[index]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
        };
        match outcome {
            TxnOutcome::Declined { succeeded, index } => {
                let ops = if succeeded {
                    &txn.success
                } else {
                    &txn.failure
                };
                let e = match take(succeeded, index) {
                    Some(Err(e)) => ApiError::from(e),
                    _ => ApiError::Internal("an update declined without a reason".into()),
                };
                Err(op_failed(succeeded, index, &ops[index], e))
            }
            TxnOutcome::Stale { .. } => Err(ApiError::Internal(
                "a transaction without conditions went stale".into(),
            )),
            TxnOutcome::Done {
                succeeded,
                revision,
                ops: results,
            } => {
                let ops = if succeeded {
                    &txn.success
                } else {
                    &txn.failure
                };
                let results = ops
                    .iter()
                    .zip(&results)
                    .enumerate()
                    .map(|(i, (op, r))| {
                        let stored = take(succeeded, i).and_then(Result::ok);
                        result_entry(op, r, stored.as_ref())
                    })
                    .collect();
                Ok(TxnAnswer {
                    succeeded,
                    revision,
                    results,
                })
            }
        }
    }

    async fn commit(&self, plan: TxnPlan) -> Result<TxnOutcome, ApiError> {
        let storage = Arc::clone(&self.storage);
        tokio::task::spawn_blocking(move || storage.commit_txn(plan))
            .await
            .map_err(|e| ApiError::Store(StoreError::Io(format!("transaction task failed: {e}"))))?
            .map_err(ApiError::from)
    }

    /// One optimistic attempt through the chain; `None` when a key changed
    /// since it was read.
    async fn transact_through_chain(
        &self,
        chain: &SharedChain,
        txn: &Arc<TxnRequest>,
    ) -> Result<Option<TxnAnswer>, ApiError> {
        let limits = self.settings.limits.value_limits();
        // Read every key once: compares and operations judge these states.
        let mut read: HashMap<String, Option<Arc<StoredValue>>> = HashMap::new();
        let keys = txn
            .compare
            .iter()
            .map(|c| c.key.as_str())
            .chain(txn.success.iter().chain(&txn.failure).map(OpSpec::key));
        for key in keys {
            if !read.contains_key(key) {
                read.insert(key.to_owned(), self.storage.get(key).await?);
            }
        }
        let succeeded = txn
            .compare
            .iter()
            .all(|c| (c.check())(read.get(&c.key).and_then(|v| v.as_deref())));
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        // Each operation's value, seeing the ones before it, then judged.
        let mut states: HashMap<&str, Option<Bytes>> = HashMap::new();
        let mut plan = TxnPlan {
            expect: read
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Expect::unchanged_since(v.as_ref().map(|v| v.version)),
                    )
                })
                .collect(),
            ..TxnPlan::default()
        };
        let mut written = Vec::with_capacity(ops.len());
        for (index, op) in ops.iter().enumerate() {
            let key = op.key();
            let current = match states.get(key) {
                Some(state) => state.clone(),
                None => read.get(key).cloned().flatten().map(|v| v.json.clone()),
            };
            let fail = |e: ApiError| op_failed(succeeded, index, op, e);
            let value = match op {
                OpSpec::Put { value, .. } => Some(Bytes::copy_from_slice(value.get().as_bytes())),
                OpSpec::Delete { .. } => None,
                other => {
                    let (update, create) =
                        update_of(other).unwrap_or((Update::MergePatch(Value::Null), false));
                    Some(
                        update
                            .apply(current.as_deref(), create, limits)
                            .map_err(|e| fail(e.into()))?,
                    )
                }
            };
            let output = if chain.applies(key, value.is_none()) {
                self.judge_blocking(chain, key, value, current.clone())
                    .await
                    .map_err(|stop| fail(stop.into()))?
            } else {
                value
            };
            states.insert(key, output.clone());
            written.push(output.clone());
            let write = output.map_or(WriteOp::Delete, WriteOp::Put);
            plan.success.push(TxnOp {
                key: key.to_owned(),
                op: write,
                expiry: op.expiry(),
            });
        }
        let TxnOutcome::Done {
            revision,
            ops: results,
            ..
        } = self.commit(plan).await?
        else {
            return Ok(None);
        };
        let results = ops
            .iter()
            .zip(&results)
            .zip(&written)
            .map(|((op, r), w)| result_entry(op, r, w.as_ref()))
            .collect();
        Ok(Some(TxnAnswer {
            succeeded,
            revision,
            results,
        }))
    }

    /// Runs the chain on one write of a transaction, off the async workers.
    async fn judge_blocking(
        &self,
        chain: &SharedChain,
        key: &str,
        value: Option<Bytes>,
        old: Option<Bytes>,
    ) -> Result<Option<Bytes>, ChainStop> {
        let (chain, key) = (chain.clone(), key.to_owned());
        let run = self
            .on_workers(move || {
                chain
                    .run(&key, value, old.as_deref(), now_ms(), Record::Yes)
                    .result
            })
            .await;
        match run {
            Some(result) => result,
            None => Err(ChainStop::Failed {
                plugin: String::new(),
                kind: crate::plugin::FailureKind::Trap,
                detail: "plugin pipeline job failed".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits() -> LimitSettings {
        LimitSettings::default()
    }

    proptest::proptest! {
        /// Whatever the bytes, parsing ends with a transaction or a 4xx,
        /// never a panic.
        #[test]
        fn any_body_parses_or_is_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&bytes, &limits());
        }

        /// Bodies shaped like transactions, with members of any JSON type,
        /// parse or are refused with a 400.
        #[test]
        fn transaction_shaped_bodies_parse_or_get_a_400(
            op in proptest::sample::select(vec!["put", "delete", "patch", "incr", "swap"]),
            member in proptest::sample::select(vec!["value", "by", "path", "ttl", "keep_ttl", "merge", "json_patch", "create", "return_old"]),
            value in proptest::sample::select(vec!["null", "1", "-3.0", "1e300", "\"/a\"", "\"30s\"", "true", "[]", "{}", "[{\"op\":\"add\",\"path\":\"/x\",\"value\":1}]"]),
        ) {
            let body = format!(r#"{{"success":[{{"op":"{op}","key":"k","{member}":{value}}}]}}"#);
            if let Err(e) = parse(body.as_bytes(), &limits()) {
                let status = e.into_response().status();
                proptest::prop_assert_eq!(status, hyper::StatusCode::BAD_REQUEST, "{}", body);
            }
        }
    }

    #[test]
    fn operations_take_only_their_members() {
        let ok = br#"{"compare":[{"key":"a","version":3.0}],"success":[{"op":"incr","key":"a","by":2,"ttl":"1m","keep_ttl":true}]}"#;
        let txn = parse(ok, &limits()).unwrap();
        assert_eq!(txn.compare[0].version, Some(3));
        assert!(matches!(txn.success[0].expiry(), Expiry::KeepOrAt(_)));
        for bad in [
            r#"{"success":[{"op":"delete","key":"a","ttl":"1m"}]}"#,
            r#"{"success":[{"op":"put","key":"a"}]}"#,
            r#"{"success":[{"op":"incr","key":"a","by":1.5}]}"#,
            r#"{"compare":[{"key":"a","version":-1}]}"#,
            r#"{"success":[{"op":"put","key":"a","value":1,"ttl":null}]}"#,
        ] {
            assert!(parse(bad.as_bytes(), &limits()).is_err(), "{bad}");
        }
    }
}
