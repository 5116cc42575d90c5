//! Writes computed from the current value (PATCH, increments) and reads of
//! many keys at one revision, as a client sees them: every success and
//! error path, atomicity under concurrent writers, through plugins, and
//! across a crash.
#![allow(clippy::unwrap_used)]

mod common;

use serde_json::{json, Value};

use common::{plugin_toml, temp_data_dir, test_plugin, Client, Options, Resp, Server};

const MERGE: &str = "application/merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";

async fn patch(c: &Client, key: &str, media: &str, body: &str, extra: &[(&str, &str)]) -> Resp {
    let mut headers = vec![("content-type", media)];
    headers.extend_from_slice(extra);
    let path = format!("/v1/kv/{key}");
    c.send("PATCH", &path, &headers, body.as_bytes())
        .await
        .unwrap()
}

async fn incr(c: &Client, key: &str, query: &str) -> Resp {
    let path = format!("/v1/kv/{key}?op=incr{query}");
    c.send("POST", &path, &[], b"").await.unwrap()
}

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_patches_apply_to_the_current_value() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let r = patch(&c, "u/1", MERGE, r#"{"a":1}"#, &[]).await;
    assert_eq!(r.status, 404, "{}", text(&r));
    let r = patch(
        &c,
        "u/1",
        MERGE,
        r#"{"a":1,"gone":null}"#,
        &[("if-none-match", "*")],
    )
    .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    assert_eq!(r.json(), json!({"a": 1}));
    let created = r.header("etag").unwrap().to_owned();
    assert_eq!(
        r.header("x-exdaas-revision").unwrap(),
        created.trim_matches('"')
    );
    c.put_json("/v1/kv/u/1", r#"{"a":1,"b":{"c":2,"d":3},"e":"x"}"#)
        .await;
    let r = patch(&c, "u/1", MERGE, r#"{"b":{"d":null,"f":4},"e":"y"}"#, &[]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let stored = json!({"a": 1, "b": {"c": 2, "f": 4}, "e": "y"});
    assert_eq!(r.json(), stored);
    assert_eq!(c.get("/v1/kv/u/1").await.json(), stored);
    // Conditions hold as for PUT; the wrong media type is named.
    let r = patch(&c, "u/1", MERGE, r#"{"a":2}"#, &[("if-match", &created)]).await;
    assert_eq!(r.status, 412, "{}", text(&r));
    let r = patch(&c, "u/1", "application/json", r#"{"a":2}"#, &[]).await;
    assert_eq!(r.status, 415);
    assert!(text(&r).contains("merge-patch+json"), "{}", text(&r));
    let r = patch(&c, "u/1", MERGE, r#"{"a":"#, &[]).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    // The patched value obeys the value rules like any other.
    let deep = "[".repeat(70) + &"]".repeat(70);
    let r = patch(&c, "u/1", MERGE, &format!(r#"{{"a":{deep}}}"#), &[]).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert_eq!(c.get("/v1/kv/u/1").await.json(), stored);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_patches_apply_all_or_name_the_failing_operation() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    c.put_json("/v1/kv/item", r#"{"stock":3,"tags":[]}"#).await;
    let ops = r#"[{"op":"test","path":"/stock","value":3},
                  {"op":"replace","path":"/stock","value":2},
                  {"op":"add","path":"/tags/-","value":"sold"}]"#;
    let r = patch(&c, "item", JSON_PATCH, ops, &[]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json(), json!({"stock": 2, "tags": ["sold"]}));
    // The same patch again: its test fails, and nothing changes.
    let r = patch(&c, "item", JSON_PATCH, ops, &[]).await;
    assert_eq!(r.status, 409, "{}", text(&r));
    let error = &r.json()["error"];
    assert_eq!(error["code"], "test_failed");
    assert_eq!(error["operation"], 0);
    assert_eq!(error["pointer"], "/stock");
    let r = patch(
        &c,
        "item",
        JSON_PATCH,
        r#"[{"op":"replace","path":"/stock","value":1},{"op":"remove","path":"/nope/x"}]"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 422, "{}", text(&r));
    assert_eq!(r.json()["error"]["code"], "invalid_patch_path");
    assert_eq!(r.json()["error"]["operation"], 1);
    assert_eq!(
        c.get("/v1/kv/item").await.json(),
        json!({"stock": 2, "tags": ["sold"]})
    );
    let r = patch(&c, "item", JSON_PATCH, r#"{"op":"add"}"#, &[]).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert_eq!(r.json()["error"]["code"], "invalid_patch");
}

#[tokio::test(flavor = "multi_thread")]
async fn increments_count_exactly_and_refuse_what_is_not_a_counter() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let r = incr(&c, "hits", "&path=/n&by=5").await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let answer = r.json();
    assert_eq!(answer["value"], 5);
    assert_eq!(answer["path"], "/n");
    assert_eq!(
        answer["version"].to_string(),
        r.header("etag").unwrap().trim_matches('"')
    );
    let r = incr(&c, "hits", "&path=/n&by=-7").await;
    assert_eq!((r.status, r.json()["value"].clone()), (200, json!(-2)));
    assert_eq!(incr(&c, "plain", "").await.json()["value"], 1);
    assert_eq!(c.get("/v1/kv/plain").await.json(), json!(1));
    c.put_json("/v1/kv/s", r#"{"n":"7","big":9007199254740990}"#)
        .await;
    let r = incr(&c, "s", "&path=/n").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (409, json!("not_an_integer"))
    );
    let r = incr(&c, "s", "&path=/big&by=2").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (409, json!("overflow"))
    );
    assert_eq!(r.json()["error"]["pointer"], "/big");
    let r = incr(&c, "s", "&path=/n/deeper").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (422, json!("invalid_path"))
    );
    for bad in ["&by=x", "&path=n", "&by=1e3", "&what=1"] {
        let r = incr(&c, "s", bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", text(&r));
    }
    let r = c.send("POST", "/v1/kv/s", &[], b"").await.unwrap();
    assert_eq!(r.status, 400, "{}", text(&r));
    assert_eq!(
        c.get("/v1/kv/s").await.json(),
        json!({"n": "7", "big": 9007199254740990i64})
    );
}

/// Concurrent increments of one key lose nothing, with and without a
/// plugin judging every result.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_increments_lose_nothing() {
    let (_root, data) = temp_data_dir();
    let config = plugin_toml(
        "judge",
        &test_plugin("accept.wat"),
        "prefixes = [\"judged/\"]",
    );
    let server = Server::start_with(&data, Options::default().config(&config));
    for key in ["free", "judged/k"] {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let c = server.client();
                let key = key.to_owned();
                tokio::spawn(async move {
                    for _ in 0..25 {
                        let r = incr(&c, &key, "&path=/n").await;
                        assert!(r.status == 200 || r.status == 201, "{}", text(&r));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let stored = server.client().get(&format!("/v1/kv/{key}")).await.json();
        assert_eq!(stored, json!({"n": 200}), "{key}");
    }
}

/// A plugin judges the patched value as the new one.
#[tokio::test(flavor = "multi_thread")]
async fn plugins_judge_the_patched_value() {
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(&data, Options::default().config(&common::users_schema()));
    let c = server.client();
    assert_eq!(
        c.put_json("/v1/kv/users/1", r#"{"name":"ada"}"#)
            .await
            .status,
        201
    );
    let r = patch(&c, "users/1", MERGE, r#"{"name":null}"#, &[]).await;
    assert_eq!(r.status, 422, "{}", text(&r));
    assert_eq!(r.json()["error"]["code"], "rejected");
    let r = patch(&c, "users/1", MERGE, r#"{"age":36}"#, &[]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(
        c.get("/v1/kv/users/1").await.json(),
        json!({"name": "ada", "age": 36})
    );
}

/// Acknowledged patches and increments are durable like any write.
#[tokio::test(flavor = "multi_thread")]
async fn updates_survive_a_crash() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    c.put_json("/v1/kv/doc", r#"{"a":1}"#).await;
    assert_eq!(patch(&c, "doc", MERGE, r#"{"b":2}"#, &[]).await.status, 200);
    for _ in 0..3 {
        incr(&c, "count", "").await;
    }
    server.kill9();
    let server = Server::start(&data);
    let c = server.client();
    assert_eq!(c.get("/v1/kv/doc").await.json(), json!({"a": 1, "b": 2}));
    assert_eq!(c.get("/v1/kv/count").await.json(), json!(3));
}

/// The `n` field of a multi-get item.
fn n_of(answer: &Value, key: &str) -> i64 {
    answer["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == key)
        .map_or(0, |i| i["value"]["n"].as_i64().unwrap())
}

/// A writer updates `a` then `b` (each write acknowledged before the next),
/// so at any one revision `b` is `a` or one behind it. Reads of both at
/// once must always find that, however the writes fall between them.
#[tokio::test(flavor = "multi_thread")]
async fn many_keys_are_read_at_one_revision() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let pairs: Vec<(String, String)> = (0..4).map(|i| (format!("a{i}"), format!("b{i}"))).collect();
    let writer = {
        let c = server.client();
        let pairs = pairs.clone();
        tokio::spawn(async move {
            for n in 1..=300 {
                for (a, b) in &pairs {
                    c.put_json(&format!("/v1/kv/{a}"), &format!(r#"{{"n":{n}}}"#))
                        .await;
                    c.put_json(&format!("/v1/kv/{b}"), &format!(r#"{{"n":{n}}}"#))
                        .await;
                }
            }
        })
    };
    let keys: Vec<&str> = pairs
        .iter()
        .flat_map(|(a, b)| [a.as_str(), b.as_str()])
        .collect();
    let body = json!({ "keys": keys }).to_string();
    let mut reads = 0;
    while !writer.is_finished() {
        let r = c.post_json("/v1/kv/get", &body).await;
        assert_eq!(r.status, 200, "{}", text(&r));
        let answer = r.json();
        let revision = answer["revision"].as_u64().unwrap();
        assert_eq!(r.header("x-exdaas-revision").unwrap(), revision.to_string());
        for item in answer["items"].as_array().unwrap() {
            assert!(item["version"].as_u64().unwrap() <= revision, "{answer}");
        }
        for (a, b) in &pairs {
            let (na, nb) = (n_of(&answer, a), n_of(&answer, b));
            assert!(
                nb == na || nb + 1 == na,
                "{a}={na} {b}={nb} at one revision: {answer}"
            );
        }
        reads += 1;
    }
    writer.await.unwrap();
    assert!(reads > 10, "only {reads} reads while writing");
    // Missing keys are listed; errors are named.
    let r = c
        .post_json("/v1/kv/get", r#"{"keys":["a0","nothing"]}"#)
        .await;
    assert_eq!(r.json()["missing"], json!(["nothing"]));
    assert_eq!(r.json()["items"][0]["value"], json!({"n": 300}));
    let many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    let r = c
        .post_json("/v1/kv/get", &json!({ "keys": many }).to_string())
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("too_many_keys"))
    );
    let r = c.post_json("/v1/kv/get", r#"{"key":["a"]}"#).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    let r = c.post_json("/v1/kv/get", r#"{"keys":[""]}"#).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    // The key "get" is still a key.
    assert_eq!(c.put_json("/v1/kv/get", "7").await.status, 201);
    assert_eq!(c.get("/v1/kv/get").await.json(), json!(7));
    assert_eq!(incr(&c, "get", "").await.json()["value"], 8);
}
