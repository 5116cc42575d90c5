//! Data written before a clean stop is all served after a restart, including
//! versions, the id counter, and values evicted from (or never in) the cache.
#![allow(clippy::unwrap_used)]

mod common;

use common::{temp_data_dir, Options, Server};

#[tokio::test(flavor = "multi_thread")]
async fn everything_written_is_served_after_restart() {
    let (_root, data) = temp_data_dir();
    // A tiny cache so most reads after restart come from disk.
    let opts = Options::default().env("EXDAAS_CACHE__CAPACITY_BYTES", "4096");
    let server = Server::start_with(&data, opts.clone());
    let c = server.client();
    let mut versions = Vec::new();
    for i in 0..300 {
        let r = c
            .put_json(
                &format!("/v1/kv/k{i}"),
                &format!("{{\"i\":{i},\"pad\":\"{}\"}}", "p".repeat(i % 50)),
            )
            .await;
        assert_eq!(r.status, 201);
        versions.push(r.json()["version"].as_u64().unwrap());
    }
    assert_eq!(c.delete("/v1/kv/k7").await.status, 204);
    let id = c.post_json("/v1/kv", "true").await.json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = server.stop();
    assert!(status.success(), "clean exit expected, got {status:?}");

    let server = Server::start_with(&data, opts);
    let c = server.client();
    for (i, version) in versions.iter().enumerate() {
        let r = c.get(&format!("/v1/kv/k{i}")).await;
        if i == 7 {
            assert_eq!(r.status, 404);
            continue;
        }
        assert_eq!(r.status, 200, "k{i}");
        assert_eq!(r.json()["i"], i);
        assert_eq!(r.header("etag").unwrap(), format!("\"{version}\""));
    }
    assert_eq!(c.get(&format!("/v1/kv/{id}")).await.body, "true");
    // Versions and ids continue past everything handed out before.
    let max = *versions.iter().max().unwrap();
    let r = c.put_json("/v1/kv/k0", "0").await;
    assert!(r.json()["version"].as_u64().unwrap() > max);
    let next: u64 = c.post_json("/v1/kv", "1").await.json()["key"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(next > id.parse::<u64>().unwrap());
    let listed = c.get("/v1/kv?limit=1000").await.json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 299 + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_cache_serves_while_warming_and_after() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    for i in 0..200 {
        c.put_json(&format!("/v1/kv/w{i}"), &i.to_string()).await;
    }
    assert!(server.stop().success());
    let server = Server::start_with(
        &data,
        Options::default().env("EXDAAS_CACHE__WARM_ON_START", "true"),
    );
    let c = server.client();
    assert_eq!(c.get("/v1/kv/w5").await.body, "5");
    // Warming finishes and reports ok.
    let mut status = String::new();
    for _ in 0..200 {
        status = c.get("/health").await.json()["status"]
            .as_str()
            .unwrap()
            .to_owned();
        if status == "ok" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(status, "ok");
    assert!(server.logged("cache warmed"));
    for i in 0..200 {
        assert_eq!(c.get(&format!("/v1/kv/w{i}")).await.body, i.to_string());
    }
}
