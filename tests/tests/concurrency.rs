//! Many clients at once: same and different keys, compare-and-set races,
//! and server-assigned ids under a burst of creates.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::{temp_data_dir, Server};

#[tokio::test(flavor = "multi_thread")]
async fn exactly_one_cas_writer_wins() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    for round in 0..10 {
        let key = format!("/v1/kv/cas{round}");
        let v = c.put_json(&key, "\"start\"").await.json()["version"]
            .as_u64()
            .unwrap();
        let tag = format!("\"{v}\"");
        let mut tasks = Vec::new();
        for n in 0..32 {
            let (c, key, tag) = (c.clone(), key.clone(), tag.clone());
            tasks.push(tokio::spawn(async move {
                let body = format!("{n}");
                let r = c
                    .send(
                        "PUT",
                        &key,
                        &[("content-type", "application/json"), ("if-match", &tag)],
                        body.as_bytes(),
                    )
                    .await
                    .unwrap();
                (n, r.status)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (n, status) = t.await.unwrap();
            match status {
                200 => winners.push(n),
                412 => {}
                other => panic!("unexpected status {other}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        assert_eq!(c.get(&key).await.body, winners[0].to_string());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_never_share_a_key() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let mut tasks = Vec::new();
    for n in 0..1000 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let r = c.post_json("/v1/kv", &format!("{{\"n\":{n}}}")).await;
            assert_eq!(r.status, 201);
            (n, r.json()["key"].as_str().unwrap().to_owned())
        }));
    }
    let mut keys = HashSet::new();
    let mut pairs = Vec::new();
    for t in tasks {
        let (n, key) = t.await.unwrap();
        assert!(keys.insert(key.clone()), "key {key} handed out twice");
        pairs.push((n, key));
    }
    for (n, key) in pairs.iter().step_by(37) {
        assert_eq!(c.get(&format!("/v1/kv/{key}")).await.json()["n"], *n);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn many_writers_same_and_different_keys() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let mut tasks = Vec::new();
    for w in 0..24 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = c.connect().await.unwrap();
            let mut versions = Vec::new();
            for n in 0..40 {
                let ct = [("content-type", "application/json")];
                let own = conn
                    .send(
                        "PUT",
                        &format!("/v1/kv/own{w}"),
                        &ct,
                        n.to_string().as_bytes(),
                    )
                    .await
                    .unwrap();
                assert!(own.status == 200 || own.status == 201);
                let shared = conn
                    .send(
                        "PUT",
                        "/v1/kv/shared",
                        &ct,
                        format!("{{\"w\":{w},\"n\":{n}}}").as_bytes(),
                    )
                    .await
                    .unwrap();
                assert!(shared.status == 200 || shared.status == 201);
                versions.push(shared.json()["version"].as_u64().unwrap());
            }
            versions
        }));
    }
    let mut all_versions = HashSet::new();
    for t in tasks {
        let versions = t.await.unwrap();
        // One client's writes are applied in its order.
        assert!(versions.windows(2).all(|p| p[0] < p[1]));
        for v in versions {
            // Distinct writes get distinct versions (byte-equal ones may share).
            all_versions.insert(v);
        }
    }
    assert!(all_versions.len() > 24 * 40 / 2);
    for w in 0..24 {
        assert_eq!(c.get(&format!("/v1/kv/own{w}")).await.body, "39");
    }
    let last = c.get("/v1/kv/shared").await;
    assert_eq!(last.json()["n"], 39);
    let max = all_versions.iter().max().unwrap();
    assert_eq!(last.header("etag").unwrap(), format!("\"{max}\""));
}
