//! The ExDaas `/api` contract: every case of the original controller tests,
//! form bodies, nested query parameters, the defects it fixed, the shared
//! keyspace with `/v1`, and the "slam" test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{example_plugin, plugin_toml, temp_data_dir, Client, Options, Server};
use serde_json::json;
use tokio::sync::Semaphore;

#[tokio::test(flavor = "multi_thread")]
async fn original_controller_cases() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();

    // Create without id: ids from the counter, starting at 1.
    let r = c
        .post_json("/api", r#"{"id":null,"data":{"color":"blue"}}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"id":1,"data":{"color":"blue"}}));
    let r = c
        .post_json("/api", r#"{"id":null,"data":{"color":"blue"}}"#)
        .await;
    assert_eq!(r.json()["id"], 2);

    // Read.
    let r = c.get("/api?id=2").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"id":2,"data":{"color":"blue"}}));

    // Update with an id twice: id kept, counter not advanced.
    for _ in 0..2 {
        let r = c
            .post_json("/api", r#"{"id":1,"data":{"color":"blue"}}"#)
            .await;
        assert_eq!(r.json(), json!({"id":1,"data":{"color":"blue"}}));
    }
    let r = c
        .post_json("/api", r#"{"id":"1","data":{"color":"red"}}"#)
        .await;
    assert_eq!(r.json(), json!({"id":1,"data":{"color":"red"}}));
    assert_eq!(
        c.post_json("/api", r#"{"data":{"n":3}}"#).await.json()["id"],
        3
    );

    // Unknown id reads as null data.
    assert_eq!(
        c.get("/api?id=999").await.json(),
        json!({"id":999,"data":null})
    );

    // ONLY, with a missing key.
    c.post_json("/api", r#"{"id":1,"data":{"color":"blue"}}"#)
        .await;
    let r = c
        .get("/api/cmd?id=1&cmd[query]=ONLY&cmd[keys][]=color&cmd[keys][]=uhh%20oh")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"values":["blue",null]}));
    // The same with percent-encoded brackets, as most clients send them.
    let r = c
        .get("/api/cmd?id=1&cmd%5Bquery%5D=ONLY&cmd%5Bkeys%5D%5B%5D=color")
        .await;
    assert_eq!(r.json(), json!({"values":["blue"]}));

    // Unsupported command.
    let r = c.get("/api/cmd?id=1&cmd[query]=NOPE").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json(), json!({"message":"NOPE not supported"}));

    // FILTER_BOOL.
    let r = c
        .post_json("/api", r#"{"id":null,"data":{"colors":[{"type":"blue","is_blue":true},{"type":"red","is_blue":false}]}}"#)
        .await;
    let id = r.json()["id"].as_u64().unwrap();
    let r = c
        .get(&format!(
            "/api/cmd?id={id}&cmd[query]=FILTER_BOOL&cmd[keys][key]=colors&cmd[keys][by]=is_blue"
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([{"type":"blue","is_blue":true}]));
}

#[tokio::test(flavor = "multi_thread")]
async fn form_bodies_and_shared_keyspace() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let form = ("content-type", "application/x-www-form-urlencoded");
    let r = c
        .send(
            "POST",
            "/api",
            &[form],
            b"id=&data[color]=blue&data[size][w]=3",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.json(),
        json!({"id":1,"data":{"color":"blue","size":{"w":"3"}}})
    );
    let r = c
        .send("POST", "/api", &[form], b"id=1&data[color]=green")
        .await
        .unwrap();
    assert_eq!(r.json(), json!({"id":1,"data":{"color":"green"}}));

    // Record N is native key "N", and /v1 creates share the counter.
    assert_eq!(c.get("/v1/kv/1").await.json(), json!({"color":"green"}));
    let r = c.post_json("/v1/kv", r#"{"from":"v1"}"#).await;
    assert_eq!(r.json()["key"], "2");
    assert_eq!(
        c.get("/api?id=2").await.json(),
        json!({"id":2,"data":{"from":"v1"}})
    );
    assert_eq!(
        c.post_json("/api", r#"{"data":{"x":1}}"#).await.json()["id"],
        3
    );
    c.put_json("/v1/kv/4", r#"{"explicit":true}"#).await;
    // The counter skips ids whose key exists instead of overwriting them.
    assert_eq!(
        c.post_json("/api", r#"{"data":{"x":2}}"#).await.json()["id"],
        5
    );
    assert_eq!(
        c.get("/api?id=4").await.json()["data"],
        json!({"explicit":true})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_input_gets_clear_errors() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    for path in [
        "/api?id=abc",
        "/api?id=-1",
        "/api?id=0",
        "/api?id=1.5",
        "/api",
        "/api/cmd?id=x&cmd[query]=ONLY",
    ] {
        let r = c.get(path).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.error_code(), "invalid_id", "{path}");
    }
    let cases: [(&str, &str); 6] = [
        (r#"{"id":"abc","data":{}}"#, "invalid_id"),
        (r#"{"id":-4,"data":{}}"#, "invalid_id"),
        (r#"{"id":1,"data":[1]}"#, "invalid_data"),
        (r#"{"id":1}"#, "invalid_data"),
        (r#"[1]"#, "invalid_body"),
        (r#"{"id":1,"data":"#, "invalid_json"),
    ];
    for (body, code) in cases {
        let r = c.post_json("/api", body).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.error_code(), code, "{body}");
    }
    let r = c
        .send("POST", "/api", &[("content-type", "text/plain")], b"id=1")
        .await
        .unwrap();
    assert_eq!(r.status, 415);
    let r = c.get("/api/cmd?id=1&cmd[query]=ONLY").await;
    assert_eq!(r.status, 400);
    let r = c.get("/api/cmd?id=1&cmd=1&cmd[query]=ONLY").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        c.send("DELETE", "/api", &[], b"").await.unwrap().status,
        405
    );
    // Nothing was stored by any of it.
    assert_eq!(c.get("/v1/kv").await.json()["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn api_writes_run_the_plugin_chain() {
    let (_root, data) = temp_data_dir();
    let config = plugin_toml(
        "schema",
        &example_plugin("require_fields"),
        "config = { required = { color = \"string\" } }",
    ) + &plugin_toml("rev", &example_plugin("revision"), "");
    let server = Server::start_with(&data, Options::default().config(&config));
    let c = server.client();
    let r = c.post_json("/api", r#"{"data":{"size":1}}"#).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["error"]["plugin"], "schema");
    let r = c.post_json("/api", r#"{"data":{"color":"blue"}}"#).await;
    assert_eq!(r.status, 200);
    // The rejected create may have used up an id (gaps are allowed).
    let id = r.json()["id"].as_u64().unwrap();
    assert_eq!(
        r.json(),
        json!({"id":id,"data":{"color":"blue","revision":1}})
    );
    let r = c
        .post_json(
            "/api",
            &format!(r#"{{"id":{id},"data":{{"color":"red"}}}}"#),
        )
        .await;
    assert_eq!(r.json()["data"], json!({"color":"red","revision":2}));
}

/// The original's "slam" test: 20,001 concurrent creates, then 20,001
/// concurrent identical updates, then reads of every record.
#[tokio::test(flavor = "multi_thread")]
async fn slam() {
    const N: u64 = 20_001;
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let ids = run_concurrently(&c, N, |_| {
        r#"{"id":null,"data":{"color":"blue"}}"#.to_owned()
    })
    .await;
    let distinct: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(distinct.len() as u64, N, "ids handed out twice");
    assert_eq!(
        *distinct.iter().max().unwrap(),
        N,
        "a fresh server hands out 1..=N"
    );

    let updated = run_concurrently(&c, N, |i| {
        format!(r#"{{"id":{},"data":{{"color":"blue"}}}}"#, i + 1)
    })
    .await;
    assert_eq!(updated.iter().copied().collect::<HashSet<u64>>(), distinct);

    let sem = Arc::new(Semaphore::new(64));
    let mut reads = Vec::new();
    for id in 1..=N {
        let (c, sem) = (c.clone(), sem.clone());
        reads.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let r = c.get(&format!("/api?id={id}")).await;
            assert_eq!(r.json(), json!({"id":id,"data":{"color":"blue"}}));
        }));
    }
    for r in reads {
        r.await.unwrap();
    }
    // The updates were all "unchanged": the next create continues the count.
    assert_eq!(
        c.post_json("/api", r#"{"data":{}}"#).await.json()["id"],
        N + 1
    );
}

/// Sends `n` POSTs to /api, all in flight together (bounded by open
/// connections), and returns the ids answered.
async fn run_concurrently(c: &Client, n: u64, body: impl Fn(u64) -> String) -> Vec<u64> {
    let sem = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (c, sem, body) = (c.clone(), sem.clone(), body(i));
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let r = c.post_json("/api", &body).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            r.json()["id"].as_u64().unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids
}
