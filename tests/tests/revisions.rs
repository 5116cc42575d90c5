//! One global order of writes: every write's `X-Exdaas-Revision` comes from
//! one counter over all shards, a key's version is the revision that wrote
//! it, and neither is ever handed out twice, across kill -9, clean restarts
//! and the commit log's replay.
#![allow(clippy::unwrap_used)]

mod common;

use common::{temp_data_dir, Server};

fn revision(r: &common::Resp) -> u64 {
    r.header("x-exdaas-revision")
        .unwrap_or_else(|| panic!("no revision header: {r:?}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_are_numbered_in_one_order_that_survives_crashes() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let mut seen = Vec::new();
    // Keys on every shard, one after another: consecutive revisions.
    for key in ["a", "b", "c", "d", "e", "f"] {
        let r = c.put_json(&format!("/v1/kv/{key}"), "1").await;
        assert_eq!(r.json()["version"].as_u64().unwrap(), revision(&r));
        seen.push(revision(&r));
    }
    let r = c.delete("/v1/kv/a").await;
    assert_eq!(r.status, 204);
    seen.push(revision(&r));
    assert_eq!(seen, (1..=7).collect::<Vec<u64>>());
    // An unchanged write hands out nothing new.
    let r = c.put_json("/v1/kv/b", "1").await;
    assert_eq!(revision(&r), 2);

    // Killed while the writes are (probably) only in the commit log.
    server.kill9();
    let server = Server::start(&data);
    let c = server.client();
    assert_eq!(c.get("/v1/kv/b").await.header("etag").unwrap(), "\"2\"");
    assert_eq!(c.get("/v1/kv/a").await.status, 404);
    let r = c.put_json("/v1/kv/a", "2").await;
    assert_eq!(revision(&r), 8, "revisions continue after the replay");

    // A clean stop applies and trims everything; the count goes on.
    assert!(server.stop().success());
    let server = Server::start(&data);
    let c = server.client();
    let r = c.put_json("/v1/kv/g", "3").await;
    assert_eq!(revision(&r), 9);
    assert_eq!(c.get("/v1/kv/a").await.header("etag").unwrap(), "\"8\"");
}
