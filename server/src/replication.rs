//! A read replica: its first copy (the primary's backup), following the
//! primary's change feed, its lag, and promotion to primary (see "Read
//! replicas" in `docs/design/write-path.md`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use hyper::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::admin_client;
use crate::backup::{self, RestoreOptions};
use crate::config::{LimitSettings, ReplicationSettings, Settings};
use crate::http::feed::{MAX_LIMIT, READ_BYTES};
use crate::storage::feed::{Change, ChangeKind};
use crate::storage::{manifest, now_ms, Storage};

/// Longest pause between two attempts to reach the primary.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Attempts at the first copy before the start fails.
const BOOTSTRAP_ATTEMPTS: u32 = 30;
/// Bytes of framing one event of the feed adds at most (revision, op,
/// version, expiry and the JSON around them).
const EVENT_FRAMING_BYTES: usize = 256;

/// The most a replica reads of one answer of its primary: what a primary
/// with the same limits sends for one poll at worst. Its events carry at
/// most `READ_BYTES` of keys and values plus one more event, a key's JSON
/// escaping takes at most six bytes per byte, and each event adds its
/// framing. A faulty or hostile primary cannot make the replica hold more.
pub fn max_answer_bytes(limits: &LimitSettings) -> usize {
    READ_BYTES
        .saturating_add(limits.max_value_bytes)
        .saturating_add(limits.max_key_bytes)
        .saturating_mul(6)
        .saturating_add(MAX_LIMIT * EVENT_FRAMING_BYTES)
}

/// What a replica knows of itself and its primary.
pub struct Replica {
    /// The primary's URL, for clients sent there.
    pub primary: String,
    addr: String,
    token: Option<String>,
    poll_wait: Duration,
    /// See [`max_answer_bytes`].
    max_answer_bytes: usize,
    /// Events the next poll asks for: halved after an answer over
    /// `max_answer_bytes`, doubled back after one that fits.
    poll_events: AtomicUsize,
    /// The changes of a unit an answer cut short, held back until the
    /// rest of it arrives (a replica never shows part of a transaction).
    held: Mutex<Vec<Change>>,
    /// Answers cut off at `max_answer_bytes`.
    answers_over_cap: AtomicU64,
    /// The newest revision applied and visible to reads.
    applied: watch::Sender<u64>,
    /// The newest revision the primary reported.
    primary_head: AtomicU64,
    /// Whether the last attempt to reach the primary succeeded.
    connected: AtomicBool,
    /// When the replica last had everything the primary reported (ms).
    caught_up_at_ms: AtomicU64,
    /// Why it stopped following, if it did.
    stopped: Mutex<Option<String>>,
    promoted: AtomicBool,
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Replica {
    /// A replica of `settings.primary`, having applied up to `applied`,
    /// whose stored values are held to `limits`.
    pub fn new(
        settings: &ReplicationSettings,
        limits: &LimitSettings,
        addr: &str,
        applied: u64,
    ) -> Self {
        Self {
            primary: settings.primary.clone(),
            addr: addr.to_owned(),
            token: settings.token.clone(),
            poll_wait: Duration::from_millis(settings.poll_wait_ms),
            max_answer_bytes: max_answer_bytes(limits),
            poll_events: AtomicUsize::new(MAX_LIMIT),
            held: Mutex::new(Vec::new()),
            answers_over_cap: AtomicU64::new(0),
            applied: watch::Sender::new(applied),
            primary_head: AtomicU64::new(applied),
            connected: AtomicBool::new(false),
            caught_up_at_ms: AtomicU64::new(now_ms()),
            stopped: Mutex::new(None),
            promoted: AtomicBool::new(false),
            follower: Mutex::new(None),
        }
    }

    /// Watches the revision applied (what `X-Exdaas-Min-Revision` waits
    /// for).
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Whether it was promoted to primary.
    pub fn is_promoted(&self) -> bool {
        self.promoted.load(Ordering::Acquire)
    }

    /// Revisions the primary has that this replica has not applied.
    pub fn lag_revisions(&self) -> u64 {
        let applied = *self.applied.borrow();
        self.primary_head
            .load(Ordering::Acquire)
            .saturating_sub(applied)
    }

    /// Seconds since it last had everything the primary reported.
    pub fn lag_seconds(&self) -> f64 {
        if self.lag_revisions() == 0 {
            return 0.0;
        }
        let since = now_ms().saturating_sub(self.caught_up_at_ms.load(Ordering::Acquire));
        since as f64 / 1000.0
    }

    /// Changes held back until the rest of their transaction arrives.
    pub fn held_changes(&self) -> usize {
        self.lock_held().len()
    }

    /// Answers of the primary cut off at this replica's cap.
    pub fn answers_over_cap(&self) -> u64 {
        self.answers_over_cap.load(Ordering::Relaxed)
    }

    /// Whether the primary answered the last poll.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The state `/ready` reports.
    pub fn describe(&self) -> Value {
        let stopped = self
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        json!({
            "role": if self.is_promoted() { "promoted" } else { "replica" },
            "primary": self.primary,
            "connected": self.is_connected(),
            "applied_revision": *self.applied.borrow(),
            "primary_revision": self.primary_head.load(Ordering::Acquire),
            "lag_revisions": self.lag_revisions(),
            "lag_seconds": self.lag_seconds(),
            "stopped": stopped,
        })
    }

    /// Starts following the primary's feed into `storage`.
    pub fn start(self: &Arc<Self>, storage: Arc<Storage>) {
        let replica = Arc::clone(self);
        let task = tokio::spawn(async move { replica.follow(storage).await });
        *self.follower.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    async fn follow(&self, storage: Arc<Storage>) {
        let mut backoff = Duration::from_millis(100);
        while !self.is_promoted() {
            match self.poll_once(&storage).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(Stop(why)) => {
                    tracing::error!(reason = %why, "replica stopped following its primary");
                    *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    return;
                }
                Err(Retry(why)) => {
                    self.connected.store(false, Ordering::Release);
                    tracing::warn!(primary = %self.primary, error = %why, "primary not reached; reads go on");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One long poll of the primary's feed, applied up to the end of the
    /// last unit it completes.
    async fn poll_once(&self, storage: &Arc<Storage>) -> Result<(), FollowError> {
        let held_last = self.lock_held().last().map(|c| c.revision);
        let from = held_last.unwrap_or_else(|| storage.feed().head()) + 1;
        let events = self.poll_events.load(Ordering::Relaxed);
        let path = format!(
            "/v1/changes?from={from}&values=true&limit={events}&wait={}ms",
            self.poll_wait.as_millis()
        );
        let primary = admin_client::Target::plain(&self.addr);
        let send = admin_client::send(
            &primary,
            Method::GET,
            &path,
            self.token.as_deref(),
            &[],
            Bytes::new(),
            self.max_answer_bytes,
        );
        let answer = tokio::time::timeout(self.poll_wait + Duration::from_secs(10), send)
            .await
            .map_err(|_| Retry("the primary did not answer in time".into()))?
            .map_err(|e| self.answer_failed(&e, events))?;
        self.poll_events
            .store((events * 2).min(MAX_LIMIT), Ordering::Relaxed);
        self.connected.store(true, Ordering::Release);
        match answer.status {
            200 => {}
            410 => {
                return Err(Stop(format!(
                    "the primary no longer holds revision {from} (its feed retention dropped it); make a new replica from an empty data directory"
                )))
            }
            status => {
                let body = String::from_utf8_lossy(&answer.body);
                let body = crate::logsafe::escape(&body, 512);
                return Err(Retry(format!("the primary answered {status}: {body}")));
            }
        }
        let (changes, head) = parse_changes(&answer.body).map_err(Retry)?;
        let changes = self.whole_units_of(changes)?;
        let stored = Arc::clone(storage);
        let applied = tokio::task::spawn_blocking(move || stored.apply_replicated(changes))
            .await
            .map_err(|e| Retry(e.to_string()))?
            .map_err(|e| Stop(e.to_string()))?;
        self.applied.send_replace(applied);
        self.primary_head.fetch_max(head, Ordering::AcqRel);
        if applied >= self.primary_head.load(Ordering::Acquire) {
            self.caught_up_at_ms.store(now_ms(), Ordering::Release);
        }
        Ok(())
    }

    /// The changes held back and `new` ones, up to the end of the last
    /// unit they hold whole; the rest is held back for the next answer.
    fn whole_units_of(&self, mut new: Vec<Change>) -> Result<Vec<Change>, FollowError> {
        let mut held = self.lock_held();
        let mut all = std::mem::take(&mut *held);
        all.append(&mut new);
        *held = all.split_off(whole_units(&all));
        let held_bytes: usize = held.iter().map(Change::weight).sum();
        if held_bytes > self.max_answer_bytes {
            return Err(Stop(format!(
                "the primary sent {held_bytes} bytes of one unit without its end, more than this replica reads of one answer ({}); give the replica the primary's [limits] and restart it",
                self.max_answer_bytes
            )));
        }
        Ok(all)
    }

    /// Why a poll that asked for `events` failed. An answer over the cap
    /// is asked again for half as many events; one event over it stops
    /// following, as no retry can fetch it.
    fn answer_failed(&self, error: &anyhow::Error, events: usize) -> FollowError {
        if error
            .downcast_ref::<admin_client::AnswerTooLarge>()
            .is_none()
        {
            return Retry(error.to_string());
        }
        self.answers_over_cap.fetch_add(1, Ordering::Relaxed);
        if events > 1 {
            self.poll_events.store(events / 2, Ordering::Relaxed);
            return Retry(format!(
                "{error} for {events} changes; asking for {} next",
                events / 2
            ));
        }
        Stop(format!(
            "{error} for one change: the primary holds a key or value past this replica's limits; give the replica the primary's [limits] and restart it"
        ))
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, Vec<Change>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops following (a promotion, or the server stopping).
    pub fn stop(&self) {
        let task = self
            .follower
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            task.abort();
        }
    }

    /// Stops following and takes writes, unless more than `max_lag`
    /// revisions behind the newest the primary reported. Returns the
    /// revision it starts from.
    pub fn promote(&self, storage: &Arc<Storage>, max_lag: u64) -> Result<u64, String> {
        let lag = self.lag_revisions();
        if lag > max_lag {
            return Err(format!(
                "{lag} revisions behind the newest the primary reported (max_lag {max_lag}); wait for it to catch up or ask with a larger max_lag"
            ));
        }
        if self.promoted.swap(true, Ordering::AcqRel) {
            return Ok(storage.feed().head());
        }
        self.stop();
        storage.set_read_only(None);
        storage.start_sweeper();
        let head = storage.feed().head();
        tracing::warn!(revision = head, "replica promoted: it takes writes now");
        Ok(head)
    }
}

/// Why following stopped for now, or for good.
enum FollowError {
    /// The primary is unreachable or answered oddly: try again.
    Retry(String),
    /// Going on would diverge from the primary.
    Stop(String),
}
use FollowError::{Retry, Stop};

#[derive(Deserialize)]
struct Changes<'a> {
    #[serde(borrow)]
    events: Vec<Event<'a>>,
    revision: u64,
}

#[derive(Deserialize)]
struct Event<'a> {
    revision: u64,
    key: String,
    op: String,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    unit_end: Option<u64>,
}

/// A long poll's answer as changes (values byte for byte as the primary
/// stored them) and the primary's newest revision.
fn parse_changes(body: &[u8]) -> Result<(Vec<Change>, u64), String> {
    let answer: Changes<'_> =
        serde_json::from_slice(body).map_err(|e| format!("the primary's changes: {e}"))?;
    let mut changes = Vec::with_capacity(answer.events.len());
    for event in answer.events {
        let kind = match event.op.as_str() {
            "put" => ChangeKind::Put,
            "delete" => ChangeKind::Delete,
            "expire" => ChangeKind::Expire,
            other => return Err(format!("unknown change {other:?}")),
        };
        let expires_at = match event.expires_at {
            Some(text) => Some(instant_ms(&text)?),
            None => None,
        };
        let value = (kind == ChangeKind::Put).then(|| {
            let text = event.value.map_or("null", RawValue::get);
            Bytes::copy_from_slice(text.as_bytes())
        });
        changes.push(Change {
            revision: event.revision,
            key: event.key,
            kind,
            value,
            expires_at,
            unit_end: event.unit_end.unwrap_or(0).max(event.revision),
        });
    }
    Ok((changes, answer.revision))
}

/// How many of `changes` (consecutive revisions) a replica may apply
/// now: those up to the end of the last unit they hold whole.
fn whole_units(changes: &[Change]) -> usize {
    let mut unit_end = 0;
    let mut whole = 0;
    for (i, change) in changes.iter().enumerate() {
        unit_end = unit_end.max(change.unit_end);
        if change.revision >= unit_end {
            whole = i + 1;
        }
    }
    whole
}

fn instant_ms(text: &str) -> Result<u64, String> {
    let at = humantime::parse_rfc3339(text).map_err(|e| format!("expires_at {text:?}: {e}"))?;
    let since = at.duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?;
    u64::try_from(since.as_millis()).map_err(|e| e.to_string())
}

/// Makes a new replica's data directory a copy of the primary's: its
/// backup, checked whole, restored without a revision bump so the log
/// continues where the primary's stood. Does nothing for a directory
/// that already holds data.
pub async fn bootstrap(settings: &Settings, addr: &str) -> anyhow::Result<()> {
    let data_dir = settings.storage.data_dir.clone();
    if data_dir.join(manifest::MANIFEST_FILE).exists() {
        return Ok(());
    }
    let image = data_dir.with_extension("replica-bootstrap.ndjson");
    let mut backoff = Duration::from_millis(200);
    for attempt in 1..=BOOTSTRAP_ATTEMPTS {
        match copy_backup(settings, addr, &image).await {
            Ok(()) => break,
            Err(e) if attempt == BOOTSTRAP_ATTEMPTS => {
                let _ = std::fs::remove_file(&image);
                anyhow::bail!("cannot copy the primary's backup from {addr}: {e}");
            }
            Err(e) => {
                tracing::warn!(primary = %addr, error = %e, attempt, "first copy from the primary failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    let options = RestoreOptions {
        shards: settings.storage.shards,
        store_cache_bytes: settings.storage.store_cache_bytes,
        bump_revision: 0,
        plugins: None,
    };
    let (path, dir) = (image.clone(), data_dir.clone());
    let restored = tokio::task::spawn_blocking(move || backup::restore(&path, &dir, &options))
        .await?
        .map_err(|e| anyhow::anyhow!("cannot restore the primary's backup: {e}"));
    let _ = std::fs::remove_file(&image);
    let summary = restored?;
    tracing::info!(records = summary.records, revision = summary.seq, primary = %addr, "replica copied its primary");
    Ok(())
}

/// Downloads the primary's backup to `image`.
async fn copy_backup(settings: &Settings, addr: &str, image: &Path) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(image)?;
    let token = settings.replication.token.as_deref();
    let primary = admin_client::Target::plain(addr);
    let status = admin_client::get(&primary, "/v1/admin/backup", token, &mut file).await?;
    if status != 200 {
        anyhow::bail!("GET /v1/admin/backup answered {status}");
    }
    file.sync_all()?;
    backup::validate(image)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn changes_parse_with_values_byte_for_byte() {
        let body = br#"{"events":[{"revision":5,"key":"a","op":"put","version":5,"value":{ "x" : [1, 2] },"expires_at":"2025-12-06T05:46:40.123Z"},{"revision":6,"key":"a","op":"expire","expires_at":"2025-12-06T05:46:40.123Z"},{"revision":7,"key":"n","op":"put","version":7,"value":null},{"revision":8,"key":"b","op":"delete"}],"next":9,"revision":12}"#;
        let (changes, head) = parse_changes(body).unwrap();
        assert_eq!(head, 12);
        assert_eq!(
            changes[0].value.as_deref(),
            Some(&br#"{ "x" : [1, 2] }"#[..])
        );
        assert_eq!(changes[0].expires_at, Some(1_765_000_000_123));
        assert_eq!(changes[1].kind, ChangeKind::Expire);
        assert_eq!(changes[2].value.as_deref(), Some(&b"null"[..]));
        assert_eq!(changes[3].kind, ChangeKind::Delete);
        assert!(
            parse_changes(br#"{"events":[{"revision":1,"key":"a","op":"zap"}],"revision":1}"#)
                .is_err()
        );
    }

    /// A replica applies up to the end of the last unit an answer holds
    /// whole, whatever the cut, and never past it.
    #[test]
    fn only_whole_units_are_applied() {
        // Units: 1 | 2..=4 | 5 | 6..=7 (a later event may name a unit's end
        // too low; the highest seen decides).
        let ends = [1, 4, 4, 4, 5, 7, 6];
        let changes: Vec<Change> = ends
            .iter()
            .enumerate()
            .map(|(i, &unit_end)| Change {
                revision: i as u64 + 1,
                key: "k".into(),
                kind: ChangeKind::Delete,
                value: None,
                expires_at: None,
                unit_end,
            })
            .collect();
        let whole: Vec<usize> = (0..=changes.len())
            .map(|cut| whole_units(&changes[..cut]))
            .collect();
        assert_eq!(whole, [0, 1, 1, 1, 4, 5, 5, 7]);
        let body = br#"{"events":[{"revision":3,"key":"a","op":"delete","unit_end":4},{"revision":4,"key":"b","op":"delete","unit_end":2}],"revision":4}"#;
        let (parsed, _) = parse_changes(body).unwrap();
        let read: Vec<u64> = parsed.iter().map(|c| c.unit_end).collect();
        assert_eq!(read, [4, 4], "an end below its own revision is its own");
    }

    proptest::proptest! {
        /// Whatever the units and wherever an answer cuts them, what is
        /// applied ends at a unit's end and nothing whole is held back.
        #[test]
        fn whole_units_never_split_one(sizes in proptest::collection::vec(1u64..6, 0..20), cut in 0usize..100) {
            let mut changes = Vec::new();
            for size in sizes {
                let first = changes.len() as u64 + 1;
                for revision in first..first + size {
                    changes.push(Change {
                        revision,
                        key: "k".into(),
                        kind: ChangeKind::Delete,
                        value: None,
                        expires_at: None,
                        unit_end: first + size - 1,
                    });
                }
            }
            let cut = cut.min(changes.len());
            let whole = whole_units(&changes[..cut]);
            proptest::prop_assert!(whole <= cut);
            // Applied: every unit it touches ends inside it.
            proptest::prop_assert!(changes[..whole].iter().all(|c| c.unit_end <= whole as u64));
            // Held: the start of one unit that the cut left unfinished.
            proptest::prop_assert!(changes[whole..cut].iter().all(|c| c.unit_end > cut as u64));
        }
    }
}
