//! The change feed over HTTP: `GET /v1/watch` (Server-Sent Events) and
//! `GET /v1/changes` (long poll). Both read `storage::feed` from a cursor;
//! see "Change feed" in `docs/design/write-path.md`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Channel, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use super::{Body, BodyError};
use crate::app::App;
use crate::auth::scope::Level;
use crate::auth::Caller;
use crate::error::{raw_json_response, ApiError};
use crate::storage::feed::{Batch, Change, ChangeKind, Feed, FeedError, ReadBound};
use crate::storage::Storage;

/// Most events one long poll answers with (`limit`'s bound and default).
pub const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;
/// Most key and value bytes one read takes (a batch of a stream, the
/// events of a long poll): what a reader holds in memory at most.
pub(crate) const READ_BYTES: usize = 4 * 1024 * 1024;
/// Events one read of a stream takes.
const STREAM_BATCH: usize = 256;
/// Changes one read looks at, matching or not.
const SCAN: usize = 16_384;

/// What a feed request asks for.
#[derive(Debug, PartialEq)]
struct FeedQuery {
    prefix: String,
    from: Option<u64>,
    values: bool,
    limit: usize,
    wait: Duration,
}

/// Reads the query of `/v1/watch` (`long_poll` false: prefix, from,
/// values) or `/v1/changes` (also limit and wait, which is shortened to
/// `max_wait`).
fn parse_query(
    query: Option<&str>,
    long_poll: bool,
    max_key_bytes: usize,
    max_wait: Duration,
) -> Result<FeedQuery, ApiError> {
    let bad = |message: String| ApiError::bad_request("invalid_query", message);
    let mut q = FeedQuery {
        prefix: String::new(),
        from: None,
        values: false,
        limit: DEFAULT_LIMIT,
        wait: Duration::ZERO,
    };
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let shown = crate::ijson::quote(&value);
        match name.as_ref() {
            "prefix" if value.len() <= max_key_bytes => q.prefix = value.into_owned(),
            "prefix" => return Err(bad(format!("prefix is longer than {max_key_bytes} bytes"))),
            "from" => {
                let from = value.parse::<u64>();
                q.from =
                    Some(from.map_err(|_| bad(format!("from must be a revision, got {shown}")))?);
            }
            "values" => {
                q.values = match value.as_ref() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad(format!("values must be true or false, got {shown}"))),
                }
            }
            "limit" if long_poll => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad(format!("limit must be 1..={MAX_LIMIT}, got {shown}")))?;
            }
            "wait" if long_poll => q.wait = parse_wait(&value)?.min(max_wait),
            other => {
                let known = if long_poll {
                    "prefix, from, values, limit, wait"
                } else {
                    "prefix, from, values"
                };
                let other = crate::ijson::quote(other);
                return Err(bad(format!("unknown query parameter {other}; use {known}")));
            }
        }
    }
    Ok(q)
}

/// A long poll's wait: plain seconds or a number with a unit (`500ms`,
/// `30s`, `1m`).
fn parse_wait(text: &str) -> Result<Duration, ApiError> {
    let text = text.trim();
    match text.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text).map_err(|e| {
            let text = crate::ijson::quote(text);
            ApiError::bad_request(
                "invalid_query",
                format!("wait {text}: {e} (write e.g. 30, 30s or 500ms)"),
            )
        }),
    }
}

/// A reader's place among `feed.max_subscribers`; given back on drop.
struct Slot(Arc<Feed>);

impl Slot {
    fn take(feed: &Arc<Feed>, max: usize) -> Result<Slot, ApiError> {
        let metrics = &feed.metrics;
        let taken = metrics
            .subscribers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Slot(Arc::clone(feed))),
            Err(_) => {
                metrics.refused.fetch_add(1, Ordering::Relaxed);
                Err(ApiError::FeedFull(format!(
                    "{max} change feed readers are connected (feed.max_subscribers); retry shortly"
                )))
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.metrics.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a reader starts: `from`, else after `last_event` (the revision a
/// stream last sent), else after the head. A revision older than the
/// oldest held is `410`.
fn start_at(feed: &Feed, from: Option<u64>, last_event: Option<u64>) -> Result<u64, ApiError> {
    let from = match (from, last_event) {
        (Some(from), _) => from.max(1),
        (None, Some(last)) => last.saturating_add(1),
        (None, None) => feed.head().saturating_add(1),
    };
    let oldest = feed.oldest();
    if from < oldest {
        return Err(FeedError::Compacted {
            asked: from,
            oldest,
        }
        .into());
    }
    Ok(from)
}

/// Which changes a reader gets: those under its prefix that its caller
/// may read (a scoped token sees only its keys' events).
#[derive(Debug, Clone)]
struct KeyFilter {
    prefix: String,
    caller: Caller,
}

impl KeyFilter {
    fn wants(&self, key: &str) -> bool {
        key.starts_with(&self.prefix) && self.caller.may(key, Level::Read)
    }
}

/// The changes from `from` on under `prefix`: from memory when the ring
/// reaches back that far, else from the log on disk (off the async
/// threads).
async fn read(
    storage: &Arc<Storage>,
    from: u64,
    filter: &KeyFilter,
    bound: ReadBound,
) -> Result<Batch, FeedError> {
    let feed = storage.feed();
    if let Some(batch) = feed.read_ring(from, &|key: &str| filter.wants(key), bound) {
        return Ok(batch);
    }
    let (feed, filter) = (Arc::clone(feed), filter.clone());
    tokio::task::spawn_blocking(move || feed.read_disk(from, &|key: &str| filter.wants(key), bound))
        .await
        .map_err(|e| FeedError::Store(crate::storage::StoreError::Io(e.to_string())))?
}

/// An instant in ms since the epoch as RFC 3339.
fn rfc3339(at_ms: u64) -> String {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(at_ms))
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_default()
}

/// One event as JSON: `{"revision","key","op"[,"version"][,"value"]
/// [,"expires_at"][,"unit_end"]}`. Values are stored JSON text, spliced
/// in as is; `unit_end` only when other changes were committed with it.
fn event_json(change: &Change, values: bool, out: &mut BytesMut) {
    out.put_slice(format!("{{\"revision\":{},\"key\":", change.revision).as_bytes());
    out.put_slice(&serde_json::to_vec(&change.key).unwrap_or_default());
    out.put_slice(format!(",\"op\":\"{}\"", change.kind.as_str()).as_bytes());
    if change.kind == ChangeKind::Put {
        out.put_slice(format!(",\"version\":{}", change.revision).as_bytes());
        if let (true, Some(value)) = (values, &change.value) {
            out.put_slice(b",\"value\":");
            out.put_slice(value);
        }
    }
    if let Some(at) = change.expires_at {
        out.put_slice(format!(",\"expires_at\":\"{}\"", rfc3339(at)).as_bytes());
    }
    if change.unit_end > change.revision {
        out.put_slice(format!(",\"unit_end\":{}", change.unit_end).as_bytes());
    }
    out.put_u8(b'}');
}

/// `GET /v1/changes`: `{"events": [...], "next": R, "revision": H}` once
/// at least one event under the prefix exists from `from` on, or when
/// `wait` runs out; ask again with `from = next`.
pub async fn changes(
    app: &App,
    req: &Request<Incoming>,
    caller: Caller,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let settings = &app.settings.feed;
    let max_wait = Duration::from_millis(settings.max_wait_ms);
    let max_key = app.settings.limits.max_key_bytes;
    let q = parse_query(req.uri().query(), true, max_key, max_wait)?;
    let filter = KeyFilter {
        prefix: q.prefix,
        caller,
    };
    let feed = Arc::clone(app.storage.feed());
    let _slot = Slot::take(&feed, settings.max_subscribers)?;
    let mut cursor = start_at(&feed, q.from, None)?;
    let deadline = tokio::time::Instant::now() + q.wait;
    let mut head = feed.watch_head();
    let mut closed = feed.watch_closed();
    let bound = ReadBound {
        changes: q.limit,
        bytes: READ_BYTES,
        scan: SCAN,
    };
    let batch = loop {
        head.borrow_and_update();
        let batch = read(&app.storage, cursor, &filter, bound).await?;
        cursor = batch.next;
        let done = !batch.changes.is_empty() || *closed.borrow();
        if done || tokio::time::Instant::now() >= deadline {
            break batch;
        }
        if cursor <= feed.head() {
            continue;
        }
        tokio::select! {
            _ = head.changed() => {}
            _ = closed.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    };
    let sent = batch.changes.len() as u64;
    feed.metrics.events_sent.fetch_add(sent, Ordering::Relaxed);
    let mut out = BytesMut::with_capacity(64 + batch.changes.len() * 64);
    out.put_slice(b"{\"events\":[");
    for (i, change) in batch.changes.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        event_json(change, q.values, &mut out);
    }
    let tail = format!("],\"next\":{},\"revision\":{}}}", batch.next, feed.head());
    out.put_slice(tail.as_bytes());
    Ok(raw_json_response(StatusCode::OK, out.freeze()))
}

/// `GET /v1/watch`: Server-Sent Events from `from` (or after the
/// `Last-Event-ID` a reconnecting `EventSource` sends, or after the head),
/// each event's `id:` its revision.
pub fn watch(
    app: &App,
    req: &Request<Incoming>,
    caller: Caller,
) -> Result<Response<Body>, ApiError> {
    let settings = app.settings.feed.clone();
    let max_key = app.settings.limits.max_key_bytes;
    let q = parse_query(req.uri().query(), false, max_key, Duration::ZERO)?;
    let last_event = req
        .headers()
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("invalid_header", "Last-Event-ID must be a revision")
                })
        })
        .transpose()?;
    let feed = Arc::clone(app.storage.feed());
    let slot = Slot::take(&feed, settings.max_subscribers)?;
    let from = start_at(&feed, q.from, last_event)?;
    let (tx, body) = Channel::<Bytes, BodyError>::new(2);
    let stream = Stream {
        storage: Arc::clone(&app.storage),
        feed,
        filter: KeyFilter {
            prefix: q.prefix,
            caller,
        },
        values: q.values,
        heartbeat: Duration::from_millis(settings.heartbeat_ms),
        max_lag: settings.max_lag_revisions,
        tx,
        last_sent: Instant::now(),
    };
    tokio::spawn(stream.run(from, slot));
    let mut response = Response::new(body.boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx passes the events on as they come instead of buffering them.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// One open `/v1/watch` stream.
struct Stream {
    storage: Arc<Storage>,
    feed: Arc<Feed>,
    filter: KeyFilter,
    values: bool,
    heartbeat: Duration,
    max_lag: u64,
    tx: http_body_util::channel::Sender<Bytes, BodyError>,
    last_sent: Instant,
}

/// Whether a send reached the client's connection.
enum Sent {
    /// It did (or there was nothing to send): go on.
    Ok,
    /// The client went away.
    Gone,
}

impl Stream {
    async fn run(mut self, from: u64, _slot: Slot) {
        let opening = Bytes::from_static(b": exdaas change feed\nretry: 1000\n\n");
        if self.tx.send_data(opening).await.is_err() {
            return;
        }
        let mut cursor = from;
        let mut caught_up = false;
        let mut head = self.feed.watch_head();
        let mut closed = self.feed.watch_closed();
        let bound = ReadBound {
            changes: STREAM_BATCH,
            bytes: READ_BYTES,
            scan: SCAN,
        };
        loop {
            if *closed.borrow() {
                self.count(|m| &m.shutdown);
                return;
            }
            head.borrow_and_update();
            let batch = match read(&self.storage, cursor, &self.filter, bound).await {
                Ok(batch) => batch,
                Err(FeedError::Compacted { oldest, .. }) => {
                    let event = format!("event: compacted\ndata: {{\"oldest\":{oldest}}}\n\n");
                    let _ = self.send(event.into_bytes().into()).await;
                    self.count(|m| &m.compacted);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "change feed stream stopped");
                    self.tx.abort(e.to_string().into());
                    return;
                }
            };
            cursor = batch.next;
            if let Sent::Gone = self.send_batch(&batch, cursor).await {
                return;
            }
            let head_now = self.feed.head();
            if cursor > head_now {
                caught_up = true;
                let beat = tokio::time::Instant::from_std(self.last_sent + self.heartbeat);
                tokio::select! {
                    _ = head.changed() => {}
                    _ = closed.changed() => {}
                    _ = tokio::time::sleep_until(beat) => {
                        if let Sent::Gone = self.progress(cursor).await {
                            return;
                        }
                    }
                }
            } else if caught_up && head_now - cursor >= self.max_lag {
                let event = format!(
                    "id: {}\nevent: lagged\ndata: {{\"resume_from\":{cursor},\"revision\":{head_now}}}\n\n",
                    cursor - 1
                );
                let _ = self.send(event.into_bytes().into()).await;
                self.count(|m| &m.lagged);
                return;
            }
        }
    }

    /// Sends the batch's events, or a progress event when none went out
    /// for a heartbeat's time.
    async fn send_batch(&mut self, batch: &Batch, cursor: u64) -> Sent {
        if batch.changes.is_empty() {
            if self.last_sent.elapsed() >= self.heartbeat {
                return self.progress(cursor).await;
            }
            return Sent::Ok;
        }
        let mut out = BytesMut::with_capacity(batch.changes.len() * 96);
        for change in &batch.changes {
            out.put_slice(
                format!(
                    "id: {}\nevent: {}\ndata: ",
                    change.revision,
                    change.kind.as_str()
                )
                .as_bytes(),
            );
            event_json(change, self.values, &mut out);
            out.put_slice(b"\n\n");
        }
        let sent = batch.changes.len() as u64;
        let end = self.send(out.freeze()).await;
        self.feed
            .metrics
            .events_sent
            .fetch_add(sent, Ordering::Relaxed);
        end
    }

    /// A progress event: every event under the prefix up to `cursor - 1`
    /// was sent, so a client resumes from there.
    async fn progress(&mut self, cursor: u64) -> Sent {
        let seen = cursor - 1;
        let event = format!("id: {seen}\nevent: progress\ndata: {{\"revision\":{seen}}}\n\n");
        self.send(event.into_bytes().into()).await
    }

    async fn send(&mut self, bytes: Bytes) -> Sent {
        match self.tx.send_data(bytes).await {
            Ok(()) => {
                self.last_sent = Instant::now();
                Sent::Ok
            }
            Err(_) => Sent::Gone,
        }
    }

    fn count(
        &self,
        cause: impl Fn(&crate::storage::feed::FeedMetrics) -> &std::sync::atomic::AtomicU64,
    ) {
        cause(&self.feed.metrics).fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MAX_WAIT: Duration = Duration::from_secs(60);

    #[test]
    fn queries_read_as_documented() {
        let q = parse_query(
            Some("prefix=users%2F&from=7&values=true&limit=5&wait=2m"),
            true,
            512,
            MAX_WAIT,
        )
        .unwrap();
        assert_eq!(
            q,
            FeedQuery {
                prefix: "users/".into(),
                from: Some(7),
                values: true,
                limit: 5,
                wait: MAX_WAIT,
            }
        );
        assert_eq!(
            parse_query(Some("wait=500ms"), true, 512, MAX_WAIT)
                .unwrap()
                .wait,
            Duration::from_millis(500)
        );
        for bad in [
            "from=-1",
            "limit=0",
            "limit=1001",
            "wait=soon",
            "values=yes",
            "x=1",
        ] {
            assert!(
                parse_query(Some(bad), true, 512, MAX_WAIT).is_err(),
                "{bad}"
            );
        }
        // A stream has no limit or wait.
        assert!(parse_query(Some("wait=1"), false, 512, MAX_WAIT).is_err());
        assert!(parse_query(
            Some(&format!("prefix={}", "k".repeat(513))),
            false,
            512,
            MAX_WAIT
        )
        .is_err());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Any query text parses or is refused, never panics, and what
            /// parses keeps every bound.
            #[test]
            fn any_query_parses_within_bounds_or_is_refused(text in ".{0,96}", long_poll in any::<bool>()) {
                if let Ok(q) = parse_query(Some(&text), long_poll, 16, MAX_WAIT) {
                    prop_assert!(q.prefix.len() <= 16);
                    prop_assert!((1..=MAX_LIMIT).contains(&q.limit));
                    prop_assert!(q.wait <= MAX_WAIT);
                }
            }
        }
    }

    #[test]
    fn events_are_json_with_values_spliced_in() {
        let change = Change {
            revision: 9,
            key: "a\"b".into(),
            kind: ChangeKind::Put,
            value: Some(Bytes::from_static(b"{\"n\":1}")),
            expires_at: Some(1_765_000_000_123),
            unit_end: 9,
        };
        let mut out = BytesMut::new();
        event_json(&change, true, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"revision":9,"key":"a\"b","op":"put","version":9,"value":{"n":1},"expires_at":"2025-12-06T05:46:40.123Z"})
        );
        let mut out = BytesMut::new();
        event_json(
            &Change {
                kind: ChangeKind::Delete,
                value: None,
                expires_at: None,
                unit_end: 12,
                ..change
            },
            true,
            &mut out,
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"revision":9,"key":"a\"b","op":"delete","unit_end":12})
        );
    }
}
