//! Read replicas end to end: the first copy and following, the primary's
//! versions on the replica, writes refused with the primary's address,
//! read-your-writes with `X-Exdaas-Min-Revision`, a replica killed with
//! `-9` mid-stream, a primary killed with `-9` (reads go on, lag is
//! reported) and promotion.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{metric, temp_data_dir, Client, Options, Server};
use serde_json::Value;

fn replica_of(primary: &Server, data: &Path) -> Server {
    let config = format!(
        "[replication]\nprimary = \"{}\"\npoll_wait_ms = 1000\n",
        primary.url("")
    );
    Server::start_with(data, Options::default().config(&config))
}

/// Waits until `replica` has applied `revision` (a read that asks for it).
async fn caught_up(replica: &Client, revision: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = replica
            .send(
                "GET",
                "/v1/kv?limit=1",
                &[("x-exdaas-min-revision", &revision.to_string())],
                b"",
            )
            .await;
        if let Ok(r) = r {
            if r.status == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "replica never reached {revision}"
        );
    }
}

/// Every key of `c` under `prefix` with its version and value.
async fn contents(c: &Client, prefix: &str) -> BTreeMap<String, (u64, Value)> {
    let mut all = BTreeMap::new();
    let mut after = String::new();
    loop {
        let page = c
            .get(&format!(
                "/v1/kv?prefix={prefix}&values=true&limit=1000&after={after}"
            ))
            .await
            .json();
        for item in page["items"].as_array().unwrap() {
            let key = item["key"].as_str().unwrap().to_owned();
            all.insert(
                key,
                (item["version"].as_u64().unwrap(), item["value"].clone()),
            );
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return all,
        }
    }
}

async fn write(c: &Client, key: &str, value: &str) -> u64 {
    let r = c.put_json(&format!("/v1/kv/{key}"), value).await;
    assert!(r.status == 200 || r.status == 201, "{}", r.status);
    r.json()["version"].as_u64().unwrap()
}

/// A replica started after writes copies them, follows new ones
/// (transactions, deletes, expiries included), holds the primary's
/// versions, refuses writes with the primary's address, and a read that
/// names a revision waits for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_copies_follows_and_refuses_writes() {
    let (_a, primary_data) = temp_data_dir();
    let primary = Server::start(&primary_data);
    let p = primary.client();
    for n in 0..50 {
        write(&p, &format!("k/{n}"), &format!("{{\"n\":{n}}}")).await;
    }
    p.delete("/v1/kv/k/7").await;
    let (_b, replica_data) = temp_data_dir();
    let replica = replica_of(&primary, &replica_data);
    let r = replica.client();
    for n in 50..80 {
        write(&p, &format!("k/{n}"), &format!("{{\"n\":{n}}}")).await;
    }
    let txn = r#"{"success":[{"op":"put","key":"k/a","value":1},{"op":"delete","key":"k/3"},{"op":"incr","key":"k/c","path":"/n","by":2}]}"#;
    let head = p.post_json("/v1/txn", txn).await.json()["revision"]
        .as_u64()
        .unwrap();
    write(&p, "k/short?ttl=100ms", "1").await;
    // Read your writes: the revision a write answered, asked of the replica.
    let last = write(&p, "k/last", "\"x\"").await;
    let read = r
        .send(
            "GET",
            "/v1/kv/k/last",
            &[("x-exdaas-min-revision", &last.to_string())],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(read.status, 200);
    assert_eq!(read.header("etag").unwrap(), format!("\"{last}\""));
    assert!(last > head);
    // The expiry arrives as the primary's own write.
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.get("/v1/changes?prefix=k/short&from=1").await.json()["events"]
        .as_array()
        .unwrap()
        .len()
        < 2
    {
        assert!(Instant::now() < deadline, "no expiry on the primary");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let primary_head = p.get("/v1/changes?wait=0").await.json()["revision"]
        .as_u64()
        .unwrap();
    caught_up(&r, primary_head).await;
    assert_eq!(contents(&r, "k/").await, contents(&p, "k/").await);
    let changes = |c: &Client| {
        let c = c.clone();
        async move { c.get("/v1/changes?from=1&limit=1000").await.json()["events"].clone() }
    };
    // The copy holds no history before its copy's revision; from there on
    // its feed is the primary's.
    let theirs = changes(&p).await;
    let ours = r
        .get(&format!("/v1/changes?from={}&limit=1000", 60))
        .await
        .json()["events"]
        .clone();
    assert_eq!(
        ours.as_array().unwrap()[..],
        theirs.as_array().unwrap()[59..]
    );
    // Writes go to the primary.
    let json = "application/json";
    let txn = r#"{"success":[{"op":"put","key":"x","value":1}]}"#;
    for (method, path, body, media) in [
        ("PUT", "/v1/kv/k/new", "1", json),
        ("DELETE", "/v1/kv/k/1", "", json),
        ("POST", "/v1/kv", "1", json),
        ("POST", "/v1/txn", txn, json),
        (
            "PATCH",
            "/v1/kv/k/2",
            r#"{"m":1}"#,
            "application/merge-patch+json",
        ),
        ("POST", "/v1/kv/k/2?op=incr&path=/n", "", json),
        ("POST", "/api", r#"{"id":null,"data":{"a":1}}"#, json),
    ] {
        let resp = r
            .send(method, path, &[("content-type", media)], body.as_bytes())
            .await
            .unwrap();
        assert_eq!(resp.status, 421, "{method} {path}");
        assert_eq!(resp.json()["error"]["code"], "read_only_replica");
        assert_eq!(resp.json()["error"]["primary"], primary.url(""));
    }
    // A revision not reached in the read's wait is 503 with the replica's.
    let far = (primary_head + 1000).to_string();
    let resp = r
        .send(
            "GET",
            "/v1/kv/k/1",
            &[
                ("x-exdaas-min-revision", &far),
                ("x-exdaas-max-wait-ms", "50"),
            ],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["error"]["code"], "behind");
    assert_eq!(resp.json()["error"]["revision"], primary_head);
    let ready = r.get("/ready").await.json();
    assert_eq!(ready["replication"]["lag_revisions"], 0, "{ready}");
    assert_eq!(ready["replication"]["connected"], true);
}

/// A replica killed with `-9` while the primary writes, and started again,
/// resumes from its own log: every write the primary acknowledged is on
/// it afterwards, with the primary's version.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_stream_resumes_and_loses_nothing() {
    let (_a, primary_data) = temp_data_dir();
    let primary = Server::start(&primary_data);
    let p = primary.client();
    write(&p, "seed", "0").await;
    let (_b, replica_data) = temp_data_dir();
    let mut replica = replica_of(&primary, &replica_data);
    for round in 0..3 {
        let writer = {
            let p = p.clone();
            tokio::spawn(async move {
                for n in 0..150 {
                    write(&p, &format!("r{round}/{n}"), &format!("{n}")).await;
                }
            })
        };
        // Kill once the replica has applied some of this round.
        let r = replica.client();
        while metric(&r, "exdaas_feed_head_revision").await < 1.0 + 150.0 * round as f64 + 20.0 {
            tokio::task::yield_now().await;
        }
        replica.kill9();
        writer.await.unwrap();
        replica = replica_of(&primary, &replica_data);
    }
    let head = p.get("/v1/changes").await.json()["revision"]
        .as_u64()
        .unwrap();
    let r = replica.client();
    caught_up(&r, head).await;
    assert_eq!(contents(&r, "").await, contents(&p, "").await);
}

/// With its primary killed, a replica goes on serving reads and says it
/// cannot reach the primary; promoted, it takes writes whose versions
/// follow the primary's.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_serves_reads_without_its_primary_and_can_be_promoted() {
    let (_a, primary_data) = temp_data_dir();
    let primary = Server::start(&primary_data);
    let p = primary.client();
    let mut last = 0;
    for n in 0..20 {
        last = write(&p, &format!("k/{n}"), &format!("{n}")).await;
    }
    let (_b, replica_data) = temp_data_dir();
    let replica = replica_of(&primary, &replica_data);
    let r = replica.client();
    caught_up(&r, last).await;
    // A primary that is not one refuses promotion.
    assert_eq!(p.post_json("/v1/admin/promote", "").await.status, 409);
    primary.kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&r, "exdaas_replication_primary_up").await != 0.0 {
        assert!(Instant::now() < deadline, "the replica never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(r.get("/v1/kv/k/3").await.json(), serde_json::json!(3));
    let ready = r.get("/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["replication"]["connected"], false);
    assert_eq!(r.put_json("/v1/kv/k/new", "1").await.status, 421);
    let promoted = r.post_json("/v1/admin/promote?max_lag=0", "").await;
    assert_eq!(promoted.status, 200, "{:?}", promoted.json());
    assert_eq!(promoted.json()["revision"], last);
    let version = write(&r, "k/new", "1").await;
    assert_eq!(version, last + 1);
    assert_eq!(
        r.get("/ready").await.json()["replication"]["role"],
        "promoted"
    );
}

/// A replica that has applied its primary's one write (revision 1, to
/// `key`), and the address its stopped primary listened on, for a
/// stand-in to take.
async fn replica_without_its_primary(key: &str) -> ([tempfile::TempDir; 2], Server, String) {
    let (a, primary_data) = temp_data_dir();
    let primary = Server::start(&primary_data);
    assert_eq!(write(&primary.client(), key, "0").await, 1);
    let (b, replica_data) = temp_data_dir();
    let replica = replica_of(&primary, &replica_data);
    caught_up(&replica.client(), 1).await;
    let addr = primary.url("").trim_start_matches("http://").to_owned();
    primary.stop();
    ([a, b], replica, addr)
}

/// Reads a request's line (reported on `lines`) and headers from
/// `stream`; returns the reader, to read on or not.
fn read_request(
    stream: &std::net::TcpStream,
    lines: &std::sync::mpsc::Sender<String>,
) -> std::io::BufReader<std::net::TcpStream> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    let _ = lines.send(line.trim_end().to_owned());
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    reader
}

/// A stand-in for a primary on `addr`: answers every request with a 200
/// whose chunked body sends `bytes` and then waits, and reports each
/// request line on the channel.
fn endless_primary(addr: &str, bytes: usize) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind(addr).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = read_request(&stream, &tx);
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = [b' '; 65536];
                for _ in 0..bytes / chunk.len() {
                    let sent = stream
                        .write_all(b"10000\r\n")
                        .and_then(|_| stream.write_all(&chunk))
                        .and_then(|_| stream.write_all(b"\r\n"));
                    if sent.is_err() {
                        return;
                    }
                }
                // Hold the answer open, unfinished, until the replica hangs up.
                let _ = reader.read_line(&mut String::new());
            });
        }
    });
    rx
}

/// A replica reads no more of one answer than a primary with its limits
/// can send for one poll (about 30 MiB by default): a primary sending
/// without end is cut off there, the next poll asks for half as many
/// changes, and the replica reports itself disconnected.
#[tokio::test]
async fn a_replica_reads_no_more_of_an_answer_than_a_primary_can_send() {
    let (_dirs, replica, addr) = replica_without_its_primary("k/1").await;
    let r = replica.client();
    let before_kib = common::rss_kib(replica.pid());
    let polls = endless_primary(&addr, 256 << 20);
    let mut peak_kib = before_kib;
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "polls seen: {seen:?}");
        peak_kib = peak_kib.max(common::rss_kib(replica.pid()));
        if let Ok(line) = polls.recv_timeout(Duration::from_millis(5)) {
            seen.push(line);
        }
    }
    let grown_mib = peak_kib.saturating_sub(before_kib) / 1024;
    assert!(
        grown_mib < 100,
        "the replica grew by {grown_mib} MiB on an answer of 256 MiB"
    );
    assert!(seen[0].contains("limit=1000"), "{seen:?}");
    assert!(seen[1].contains("limit=500"), "{seen:?}");
    assert!(replica.logged("over "), "the cut-off answer is logged");
    assert!(metric(&r, "exdaas_replication_answers_over_cap_total").await >= 1.0);
    assert_eq!(
        r.get("/ready").await.json()["replication"]["connected"],
        false
    );
    assert_eq!(r.get("/v1/kv/k/1").await.json(), serde_json::json!(0));
}

/// A stand-in for a primary on `addr` that answers its `n`th request with
/// `answers[n]` (JSON) once `gates[n]` lets it (an empty answer past the
/// list, after a pause), and reports each request line.
fn scripted_primary(
    addr: &str,
    answers: Vec<String>,
    mut gates: Vec<std::sync::mpsc::Receiver<()>>,
) -> std::sync::mpsc::Receiver<String> {
    use std::io::Write;
    let listener = std::net::TcpListener::bind(addr).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            read_request(&stream, &tx);
            if let Some(gate) = gates.get_mut(n) {
                let _ = gate.recv();
            }
            let body = answers.get(n).cloned().unwrap_or_else(|| {
                std::thread::sleep(Duration::from_millis(200));
                r#"{"events":[],"next":6,"revision":5}"#.to_owned()
            });
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
    });
    rx
}

/// A primary transaction cut short by a long poll's answer is held back
/// by the replica until the rest of it arrives: its readers never see
/// part of it, while the change before it shows at once.
#[tokio::test]
async fn a_replica_never_shows_part_of_a_transaction() {
    let (_dirs, replica, addr) = replica_without_its_primary("k/0").await;
    let r = replica.client();
    // Revision 2 alone, then a transaction of 3..=5 whose last change the
    // first answer leaves out.
    let first = r#"{"events":[
        {"revision":2,"key":"x/1","op":"put","version":2,"value":1},
        {"revision":3,"key":"t/a","op":"put","version":3,"value":1,"unit_end":5},
        {"revision":4,"key":"t/b","op":"put","version":4,"value":1,"unit_end":5}],
        "next":5,"revision":5}"#;
    let rest = r#"{"events":[
        {"revision":5,"key":"t/c","op":"put","version":5,"value":1,"unit_end":5}],
        "next":6,"revision":5}"#;
    let (open_second, second_gate) = std::sync::mpsc::channel();
    // The first answer goes at once: its gate's sender is gone.
    let (_, first_gate) = std::sync::mpsc::channel::<()>();
    let polls = scripted_primary(
        &addr,
        vec![first.to_owned(), rest.to_owned()],
        vec![first_gate, second_gate],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "polls: {seen:?}");
        if let Ok(line) = polls.recv_timeout(Duration::from_millis(50)) {
            seen.push(line);
        }
    }
    assert!(seen[1].contains("from=5"), "it asks for the rest: {seen:?}");
    // The second answer is held back: the replica shows revision 2 and
    // nothing of the transaction.
    assert_eq!(r.get("/v1/kv/x/1").await.json(), serde_json::json!(1));
    for key in ["t/a", "t/b", "t/c"] {
        assert_eq!(r.get(&format!("/v1/kv/{key}")).await.status, 404, "{key}");
    }
    assert_eq!(metric(&r, "exdaas_replication_held_changes").await, 2.0);
    open_second.send(()).unwrap();
    caught_up(&r, 5).await;
    assert_eq!(metric(&r, "exdaas_replication_held_changes").await, 0.0);
    for key in ["t/a", "t/b", "t/c"] {
        let got = r.get(&format!("/v1/kv/{key}")).await;
        assert_eq!(got.status, 200, "{key}");
    }
    // The replica's own feed keeps the unit.
    let events = r.get("/v1/changes?from=3").await.json()["events"].clone();
    let ends: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["unit_end"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(ends, [5, 5, 0], "{events}");
}
