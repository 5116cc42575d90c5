//! The change feed end to end: every committed write once and in order
//! (from every write route), Server-Sent Events read by curl and resumed
//! across a `kill -9` and restart, long polls, retention's `410`, slow
//! streams ended with their resume point, progress heartbeats, the bound
//! on readers, and streams ending cleanly when the server stops.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::{metric, temp_data_dir, Client, Options, Server};
use serde_json::Value;

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Event {
    id: Option<u64>,
    name: String,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// Reads SSE lines into events (comments and `retry:` skipped).
fn parse_events(lines: impl Iterator<Item = String>, out: std::sync::mpsc::Sender<Event>) {
    let (mut id, mut name, mut data) = (None, String::new(), String::new());
    for line in lines {
        if line.is_empty() {
            if !name.is_empty() || !data.is_empty() {
                let event = Event {
                    id: id.take(),
                    name: std::mem::take(&mut name),
                    data: std::mem::take(&mut data),
                };
                if out.send(event).is_err() {
                    return;
                }
            }
        } else if let Some(v) = line.strip_prefix("id: ") {
            id = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("event: ") {
            name = v.to_owned();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = v.to_owned();
        }
    }
}

/// `curl -N` reading a stream: a real client, as a user would run it.
struct Curl {
    child: Child,
    events: Receiver<Event>,
}

impl Curl {
    fn open(url: &str, last_event_id: Option<u64>) -> Curl {
        let mut cmd = Command::new("curl");
        cmd.args(["-sSN", "--fail", url]);
        if let Some(id) = last_event_id {
            cmd.args(["-H", &format!("Last-Event-ID: {id}")]);
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = channel();
        std::thread::spawn(move || {
            parse_events(BufReader::new(stdout).lines().map_while(Result::ok), tx)
        });
        Curl { child, events }
    }

    /// The next event within 30 s; `None` when the stream ended.
    fn next(&self) -> Option<Event> {
        self.events.recv_timeout(Duration::from_secs(30)).ok()
    }

    /// Events until `done` says enough (or the stream ends).
    fn until(&self, mut done: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
        let mut got = Vec::new();
        while !done(&got) {
            match self.next() {
                Some(e) => got.push(e),
                None => break,
            }
        }
        got
    }

    fn wait(mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Curl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(feed: &str) -> String {
    format!("[feed]\n{feed}\n")
}

/// Every change from `from` on, by long polls, until the head.
async fn drain(c: &Client, prefix: &str, from: u64) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = from;
    loop {
        let r = c
            .get(&format!(
                "/v1/changes?prefix={prefix}&from={from}&limit=1000&values=true"
            ))
            .await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        let body = r.json();
        events.extend(body["events"].as_array().unwrap().iter().cloned());
        from = body["next"].as_u64().unwrap();
        if from > body["revision"].as_u64().unwrap() {
            return events;
        }
    }
}

/// Puts, deletes, a transaction, an `/api` record and an expiry: each
/// appears exactly once, at the revision its answer named, in order, and
/// the revisions run without a gap.
#[tokio::test(flavor = "multi_thread")]
async fn every_committed_write_appears_once_in_revision_order() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let mut expected: BTreeMap<u64, (String, &str)> = BTreeMap::new();
    let mut writers = Vec::new();
    for w in 0..4 {
        let c = c.clone();
        writers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for n in 0..25 {
                let key = format!("w{w}/{n}");
                let r = c
                    .put_json(&format!("/v1/kv/{key}"), &format!("{{\"n\":{n}}}"))
                    .await;
                mine.push((r.json()["version"].as_u64().unwrap(), key, "put"));
            }
            mine
        }));
    }
    for w in writers {
        for (rev, key, op) in w.await.unwrap() {
            expected.insert(rev, (key, op));
        }
    }
    let r = c.delete("/v1/kv/w0/3").await;
    assert_eq!(r.status, 204);
    let rev: u64 = r.header("x-exdaas-revision").unwrap().parse().unwrap();
    expected.insert(rev, ("w0/3".into(), "delete"));
    let txn = r#"{"success":[{"op":"put","key":"t/a","value":1},{"op":"delete","key":"w1/1"},{"op":"put","key":"t/b","value":2}]}"#;
    let r = c.post_json("/v1/txn", txn).await;
    assert_eq!(r.status, 200);
    for result in r.json()["results"].as_array().unwrap() {
        let op = if result["op"] == "delete" {
            "delete"
        } else {
            "put"
        };
        expected.insert(
            result["version"].as_u64().unwrap(),
            (result["key"].as_str().unwrap().into(), op),
        );
    }
    let r = c
        .post_json("/api", r#"{"id":null,"data":{"color":"blue"}}"#)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let r = c.put_json("/v1/kv/short?ttl=100ms", "1").await;
    expected.insert(
        r.json()["version"].as_u64().unwrap(),
        ("short".into(), "put"),
    );

    // The expiry is a write of its own, once the sweeper gets to it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = drain(&c, "", 1).await;
        if events.iter().any(|e| e["op"] == "expire") {
            break events;
        }
        assert!(Instant::now() < deadline, "no expire event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let revisions: Vec<u64> = events
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    let head = *revisions.last().unwrap();
    assert_eq!(revisions, (1..=head).collect::<Vec<_>>(), "gaps or repeats");
    for (rev, (key, op)) in &expected {
        let e = &events[(*rev - 1) as usize];
        assert_eq!(
            (e["key"].as_str().unwrap(), e["op"].as_str().unwrap()),
            (key.as_str(), *op),
            "{e}"
        );
        if *op == "put" {
            assert_eq!(e["version"], *rev);
        }
    }
    // The transaction's events are consecutive (in shard order); the /api
    // record is there.
    let txn_revisions: BTreeSet<u64> = events
        .iter()
        .filter(|e| {
            let key = e["key"].as_str().unwrap();
            key.starts_with("t/") || (key == "w1/1" && e["op"] == "delete")
        })
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    let (low, high) = (
        txn_revisions.first().unwrap(),
        txn_revisions.last().unwrap(),
    );
    assert_eq!(high - low, 2, "{txn_revisions:?}");
    // All but the last say where their transaction ends; writes alone
    // say nothing.
    for e in &events {
        let revision = e["revision"].as_u64().unwrap();
        let expected = (txn_revisions.contains(&revision) && revision < *high)
            .then_some(serde_json::json!(high));
        assert_eq!(e.get("unit_end").cloned(), expected, "{e}");
    }
    assert!(events
        .iter()
        .any(|e| e["value"] == serde_json::json!({"color":"blue"})));
    let expiry = events.iter().find(|e| e["op"] == "expire").unwrap();
    assert_eq!(expiry["key"], "short");
    assert!(expiry["expires_at"].is_string());
    // A prefix sees only its keys.
    let w2 = drain(&c, "w2/", 1).await;
    assert_eq!(w2.len(), 25);
    assert!(w2
        .iter()
        .all(|e| e["key"].as_str().unwrap().starts_with("w2/")));
}

/// curl reads the stream; the server is killed with `-9` mid-stream and
/// started again; curl, reconnecting with the last `id:` it got as
/// `Last-Event-ID` (as `EventSource` does), gets every acknowledged write
/// exactly once, in order, then new ones live.
#[tokio::test(flavor = "multi_thread")]
async fn a_curl_stream_resumes_across_kill_9_and_restart() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let curl = Curl::open(&server.url("/v1/watch?prefix=k/&values=true&from=1"), None);
    let mut acked = Vec::new();
    for n in 0..100 {
        let r = c.put_json(&format!("/v1/kv/k/{n}"), &format!("{n}")).await;
        assert_eq!(r.status, 201);
        acked.push(r.json()["version"].as_u64().unwrap());
    }
    c.put_json("/v1/kv/other", "0").await;
    let first = curl.until(|got| got.len() >= 40);
    assert!(first.iter().all(|e| e.name == "put"));
    server.kill9();
    assert!(
        curl.until(|_| false).len() <= 60,
        "the stream goes on after kill -9"
    );
    let last = first.last().unwrap().id.unwrap();

    let server = Server::start(&data);
    let c = server.client();
    let curl = Curl::open(&server.url("/v1/watch?prefix=k/&values=true"), Some(last));
    for n in 100..120 {
        let r = c.put_json(&format!("/v1/kv/k/{n}"), &format!("{n}")).await;
        acked.push(r.json()["version"].as_u64().unwrap());
    }
    let events: Vec<Event> = first
        .into_iter()
        .chain(curl.until(|got| got.iter().filter(|e| e.name == "put").count() >= 80))
        .filter(|e| e.name == "put")
        .collect();
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, acked, "every acknowledged write once, in order");
    for (n, e) in events.iter().enumerate() {
        assert_eq!(e.json()["key"], format!("k/{n}"));
        assert_eq!(e.json()["value"], n);
    }
}

/// With no history kept, the log's applied segments go, and a revision
/// older than the oldest held is `410` with `oldest`, on both routes.
#[tokio::test(flavor = "multi_thread")]
async fn revisions_retention_dropped_are_410_with_the_oldest_held() {
    let (_root, data) = temp_data_dir();
    let opts = Options::default().config(&config("retain_bytes = 0\nbuffer_bytes = 0"));
    let server = Server::start_with(&data, opts);
    let c = server.client();
    let value = format!("\"{}\"", "x".repeat(8 * 1024));
    let mut n = 0;
    while metric(&c, "exdaas_feed_oldest_revision").await <= 1.0 {
        assert!(n < 20_000, "the log was never trimmed");
        c.put_json(&format!("/v1/kv/big/{n}"), &value).await;
        n += 1;
    }
    let oldest = metric(&c, "exdaas_feed_oldest_revision").await as u64;
    for path in ["/v1/changes?from=1", "/v1/watch?from=1"] {
        let r = c.get(path).await;
        assert_eq!(r.status, 410, "{path}");
        assert_eq!(r.error_code(), "compacted");
        assert_eq!(r.json()["error"]["oldest"], oldest);
    }
    // From the oldest held on, everything is there (read from disk).
    let r = c.get(&format!("/v1/changes?from={oldest}&limit=5")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["events"][0]["revision"], oldest);
}

/// A stream that stops reading while writes pour in is, once it reads
/// again, ended with `event: lagged` naming where to resume; resuming
/// there loses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_falls_behind_is_ended_with_its_resume_point() {
    let (_root, data) = temp_data_dir();
    let cfg = format!(
        "[server]\nwrite_timeout_ms = 120000\n{}",
        config("max_lag_revisions = 50")
    );
    let server = Server::start_with(&data, Options::default().config(&cfg));
    let c = server.client();
    let addr = server.url("").trim_start_matches("http://").to_owned();
    let mut sock = TcpStream::connect(&addr).unwrap();
    write!(
        sock,
        "GET /v1/watch?prefix=s/&values=true HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 512];
    let n = sock.read(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).contains("text/event-stream"));
    // A stream that never ends would fail the read, not hang the test.
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // Not reading: 30 MiB of events fill the socket buffers.
    let value = format!("\"{}\"", "v".repeat(64 * 1024));
    let mut acked = BTreeSet::new();
    for n in 0..480 {
        let r = c.put_json(&format!("/v1/kv/s/{n}"), &value).await;
        acked.insert(r.json()["version"].as_u64().unwrap());
    }
    let mut text = Vec::new();
    sock.read_to_end(&mut text).unwrap();
    let (tx, rx) = channel();
    let lines = String::from_utf8_lossy(&text)
        .lines()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    parse_events(lines.into_iter(), tx);
    let events: Vec<Event> = rx.try_iter().collect();
    let lagged = events
        .iter()
        .find(|e| e.name == "lagged")
        .expect("no lagged event");
    let resume = lagged.id.unwrap() + 1;
    assert_eq!(lagged.json()["resume_from"], resume);
    let mut seen: BTreeSet<u64> = events
        .iter()
        .filter(|e| e.name == "put")
        .map(|e| e.id.unwrap())
        .collect();
    assert!(seen.iter().all(|id| *id < resume));
    for e in drain(&c, "s/", resume).await {
        assert!(
            seen.insert(e["revision"].as_u64().unwrap()),
            "sent twice: {e}"
        );
    }
    assert_eq!(seen, acked);
    assert_eq!(
        metric(&c, "exdaas_feed_disconnects_total{cause=\"lagged\"}").await,
        1.0
    );
}

/// A quiet prefix's stream gets progress events whose `id:` passes the
/// writes made elsewhere, so a reconnect starts near the head.
#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_carry_the_revision_looked_at() {
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(
        &data,
        Options::default().config(&config("heartbeat_ms = 100")),
    );
    let c = server.client();
    let curl = Curl::open(&server.url("/v1/watch?prefix=quiet/&from=1"), None);
    let mut last = 0;
    for n in 0..10 {
        last = c.put_json(&format!("/v1/kv/loud/{n}"), "1").await.json()["version"]
            .as_u64()
            .unwrap();
    }
    let got = curl.until(|got| {
        got.last()
            .is_some_and(|e| e.name == "progress" && e.id.unwrap() >= last)
    });
    assert!(got.iter().all(|e| e.name == "progress"), "{got:?}");
    assert_eq!(
        got.last().unwrap().json()["revision"],
        got.last().unwrap().id.unwrap()
    );
}

/// A long poll answers as soon as a change comes, and with nothing but a
/// cursor when its wait runs out.
#[tokio::test(flavor = "multi_thread")]
async fn long_polls_wait_for_a_change() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { c.get("/v1/changes?prefix=lp/&wait=60s&values=true").await })
    };
    // The poll starts after the head; wait until it is counted, then write.
    while metric(&c, "exdaas_feed_subscribers").await < 1.0 {
        tokio::task::yield_now().await;
    }
    let version = c.put_json("/v1/kv/lp/1", "{\"x\":1}").await.json()["version"].clone();
    let body = waiting.await.unwrap().json();
    assert_eq!(body["events"][0]["key"], "lp/1");
    assert_eq!(body["events"][0]["version"], version);
    assert_eq!(body["events"][0]["value"], serde_json::json!({"x":1}));
    let r = c.get("/v1/changes?prefix=none/&wait=100ms").await;
    let body = r.json();
    assert_eq!(body["events"], serde_json::json!([]));
    assert_eq!(
        body["next"].as_u64().unwrap(),
        body["revision"].as_u64().unwrap() + 1
    );
    for bad in [
        "/v1/changes?wait=soon",
        "/v1/changes?limit=0",
        "/v1/watch?limit=5",
    ] {
        assert_eq!(c.get(bad).await.status, 400, "{bad}");
    }
}

/// `feed.max_subscribers` readers at once: one more is `503` with
/// `Retry-After`; a slot comes back when its reader leaves.
#[tokio::test(flavor = "multi_thread")]
async fn readers_past_the_bound_are_refused_until_one_leaves() {
    let (_root, data) = temp_data_dir();
    let cfg = config("max_subscribers = 2\nheartbeat_ms = 100");
    let server = Server::start_with(&data, Options::default().config(&cfg));
    let c = server.client();
    let one = Curl::open(&server.url("/v1/watch"), None);
    let _two = Curl::open(&server.url("/v1/watch"), None);
    while metric(&c, "exdaas_feed_subscribers").await < 2.0 {
        tokio::task::yield_now().await;
    }
    let r = c.get("/v1/changes").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "too_many_subscribers");
    assert!(r.header("retry-after").is_some());
    drop(one);
    // The stream notices at its next heartbeat that its reader is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.get("/v1/changes").await.status != 200 {
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metric(&c, "exdaas_feed_disconnects_total{cause=\"refused\"}").await >= 1.0);
}

/// Stopping the server ends open streams cleanly (curl sees the body's
/// end, not a cut connection) instead of waiting out the drain.
#[tokio::test(flavor = "multi_thread")]
async fn streams_end_cleanly_when_the_server_stops() {
    let (_root, data) = temp_data_dir();
    let cfg = "[server]\nshutdown_timeout_ms = 600000\n";
    let server = Server::start_with(&data, Options::default().config(cfg));
    let c = server.client();
    let curl = Curl::open(&server.url("/v1/watch"), None);
    while metric(&c, "exdaas_feed_subscribers").await < 1.0 {
        tokio::task::yield_now().await;
    }
    assert!(server.stop().success());
    assert!(curl.wait().success(), "curl saw the stream cut off");
}
