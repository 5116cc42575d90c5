//! Keys that expire (`?ttl=`, `Exdaas-Ttl`): absent to every read the
//! moment their time is up, swept from the store as logged deletes, kept
//! across restarts and backups, and the rate-limiter pattern of counters
//! with a TTL.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::{example_plugin, metric, plugin_toml, temp_data_dir, Client, Options, Resp, Server};

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

async fn put_with(c: &Client, path: &str, body: &str, headers: &[(&str, &str)]) -> Resp {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    c.send("PUT", path, &all, body.as_bytes()).await.unwrap()
}

/// The `Exdaas-Expires-At` a GET of `path` answers.
async fn expiry_of(c: &Client, path: &str) -> Option<String> {
    c.get(path)
        .await
        .header("exdaas-expires-at")
        .map(str::to_owned)
}

/// Polls until `key` reads as absent; panics after `within`.
async fn until_gone(c: &Client, key: &str, within: Duration) {
    let started = Instant::now();
    while c.get(&format!("/v1/kv/{key}")).await.status != 404 {
        assert!(
            started.elapsed() < within,
            "{key} still there after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_key_is_absent_to_every_read_at_once() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let r = put_with(&c, "/v1/kv/short?ttl=700ms", r#"{"a":1}"#, &[]).await;
    assert_eq!(r.status, 201, "{}", text(&r));
    put_with(&c, "/v1/kv/long", "2", &[("exdaas-ttl", "1h")]).await;
    c.put_json("/v1/kv/plain", "3").await;
    let got = c.get("/v1/kv/short").await;
    assert_eq!(got.status, 200);
    let expires = got.header("exdaas-expires-at").unwrap().to_owned();
    assert!(expires.ends_with('Z') && expires.contains('T'), "{expires}");
    assert!(expiry_of(&c, "/v1/kv/plain").await.is_none());
    until_gone(&c, "short", Duration::from_secs(5)).await;
    // Gone for listings, multi-gets, conditions and the ExDaas API too.
    let listed = c.get("/v1/kv?values=true").await.json();
    let keys: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["long", "plain"]);
    let many = c
        .post_json("/v1/kv/get", r#"{"keys":["short","long"]}"#)
        .await
        .json();
    assert_eq!(many["missing"], json!(["short"]));
    let r = put_with(&c, "/v1/kv/short", "4", &[("if-none-match", "*")]).await;
    assert_eq!(r.status, 201, "{}", text(&r));
    assert!(expiry_of(&c, "/v1/kv/short").await.is_none());
    assert_eq!(c.delete("/v1/kv/short").await.status, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_without_ttl_clears_it_unless_asked_to_keep_it() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    put_with(&c, "/v1/kv/k?ttl=1h", "1", &[]).await;
    let first = expiry_of(&c, "/v1/kv/k").await.unwrap();
    // The same bytes with keep_ttl: nothing changes.
    let r = put_with(&c, "/v1/kv/k?keep_ttl=true", "2", &[]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(expiry_of(&c, "/v1/kv/k").await.unwrap(), first);
    // Patches and increments keep it by default.
    let r = c
        .send(
            "PATCH",
            "/v1/kv/k",
            &[("content-type", "application/merge-patch+json")],
            b"{\"b\":1}",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(expiry_of(&c, "/v1/kv/k").await.unwrap(), first);
    // A plain PUT, even of the same bytes, makes the key last.
    let r = c.put_json("/v1/kv/k", r#"{"b":1}"#).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(expiry_of(&c, "/v1/kv/k").await.is_none());
    for bad in [
        "?ttl=0",
        "?ttl=soon",
        "?ttl=-1s",
        "?ttl=200y",
        "?color=red",
        "?keep_ttl=maybe",
    ] {
        let r = put_with(&c, &format!("/v1/kv/k{bad}"), "1", &[]).await;
        assert_eq!(r.status, 400, "{bad}: {}", text(&r));
    }
    let r = put_with(&c, "/v1/kv/k?ttl=1h", "1", &[("exdaas-ttl", "never")]).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("invalid_ttl"))
    );
    // POST /v1/kv takes a TTL too.
    let r = c
        .send(
            "POST",
            "/v1/kv?ttl=1h",
            &[("content-type", "application/json")],
            b"5",
        )
        .await
        .unwrap();
    let key = r.json()["key"].as_str().unwrap().to_owned();
    assert!(expiry_of(&c, &format!("/v1/kv/{key}")).await.is_some());
}

/// A counter per client and window with a TTL: the first increment of a
/// window sets the TTL, the rest keep it, and the next window starts over.
#[tokio::test(flavor = "multi_thread")]
async fn counters_with_a_ttl_make_a_rate_limiter() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    // Every hit says the same; only the window's first sets the expiry.
    let hit = || {
        let path = "/v1/kv/rate/client-7?op=incr&path=/hits&ttl=800ms&keep_ttl=true";
        c.send("POST", path, &[], b"")
    };
    let first = hit().await.unwrap();
    let expires = expiry_of(&c, "/v1/kv/rate/client-7")
        .await
        .unwrap()
        .to_owned();
    assert_eq!(first.json()["value"], 1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = hit().await.unwrap();
    assert_eq!(second.json()["value"], 2);
    assert_eq!(
        expiry_of(&c, "/v1/kv/rate/client-7").await.unwrap(),
        expires
    );
    until_gone(&c, "rate/client-7", Duration::from_secs(5)).await;
    assert_eq!(hit().await.unwrap().json()["value"], 1);
}

/// The sweeper deletes expired keys as writes (counted), so a restart
/// finds them gone from the store too, and keys that expire later keep
/// their instant across the restart.
#[tokio::test(flavor = "multi_thread")]
async fn expired_keys_are_swept_and_expiries_survive_restarts() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    for i in 0..20 {
        put_with(&c, &format!("/v1/kv/temp/{i}?ttl=300ms"), "1", &[]).await;
    }
    put_with(&c, "/v1/kv/keep?ttl=1h", "1", &[]).await;
    let expires = expiry_of(&c, "/v1/kv/keep").await.unwrap();
    let started = Instant::now();
    while metric(&c, "exdaas_expired_keys_total").await < 20.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the sweeper did not delete the expired keys"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&c, "exdaas_expiring_keys").await, 1.0);
    server.kill9();
    let server = Server::start(&data);
    let c = server.client();
    assert_eq!(expiry_of(&c, "/v1/kv/keep").await.unwrap(), expires);
    let listed = c.get("/v1/kv?prefix=temp/").await.json();
    assert_eq!(listed["items"], json!([]));
    // The restarted server finds the expiring key in its store again.
    let started = Instant::now();
    while metric(&c, "exdaas_expiring_keys").await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the expiring key was not found again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Backups carry expiry instants and leave out what has expired; a
/// restore and a reshard bring the instants back.
#[tokio::test(flavor = "multi_thread")]
async fn backups_and_reshards_carry_expiries() {
    let (root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    put_with(&c, "/v1/kv/keep?ttl=1h", "1", &[]).await;
    put_with(&c, "/v1/kv/brief?ttl=200ms", "2", &[]).await;
    c.put_json("/v1/kv/plain", "3").await;
    let expires = expiry_of(&c, "/v1/kv/keep").await.unwrap();
    until_gone(&c, "brief", Duration::from_secs(5)).await;
    let image = root.path().join("b.ndjson");
    let (code, _, err) = common::backup_from_server(root.path(), &image, &server.addr, &[]);
    assert_eq!(code, 0, "{err}");
    let lines = std::fs::read_to_string(&image).unwrap();
    assert!(lines.contains("\"expires_at\""), "{lines}");
    assert!(!lines.contains("\"brief\""), "{lines}");
    let restored = root.path().join("restored");
    let (code, _, err) = common::restore(root.path(), &image, &restored);
    assert_eq!(code, 0, "{err}");
    let server = Server::start(&restored);
    let c = server.client();
    assert_eq!(expiry_of(&c, "/v1/kv/keep").await.unwrap(), expires);
    assert!(expiry_of(&c, "/v1/kv/plain").await.is_none());
    // A reshard keeps them too.
    server.stop();
    let (code, _, err) = common::reshard(root.path(), &restored, "2");
    assert_eq!(code, 0, "{err}");
    let two = Options::default().env("EXDAAS_STORAGE__SHARDS", "2");
    let server = Server::start_with(&restored, two);
    let c = server.client();
    assert_eq!(expiry_of(&c, "/v1/kv/keep").await.unwrap(), expires);
    assert!(expiry_of(&c, "/v1/kv/plain").await.is_none());
}

/// A plugin sees no old value for an expired key.
#[tokio::test(flavor = "multi_thread")]
async fn plugins_see_no_old_value_for_an_expired_key() {
    let (_root, data) = temp_data_dir();
    let config = plugin_toml(
        "owner-is-fixed",
        &example_plugin("immutable_fields"),
        "prefixes = [\"acct/\"]\nconfig = { fields = [\"owner\"] }",
    );
    let server = Server::start_with(&data, Options::default().config(&config));
    let c = server.client();
    put_with(&c, "/v1/kv/acct/1?ttl=300ms", r#"{"owner":"ada"}"#, &[]).await;
    let r = c.put_json("/v1/kv/acct/1", r#"{"owner":"bob"}"#).await;
    assert_eq!(r.status, 422, "{}", text(&r));
    until_gone(&c, "acct/1", Duration::from_secs(5)).await;
    let r = c.put_json("/v1/kv/acct/1", r#"{"owner":"bob"}"#).await;
    assert_eq!(r.status, 201, "{}", text(&r));
}

/// Transaction operations take a TTL as single writes do.
#[tokio::test(flavor = "multi_thread")]
async fn transaction_operations_take_a_ttl() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let body = json!({"success": [
        {"op": "put", "key": "session/1", "value": {"user": "ada"}, "ttl": "1h"},
        {"op": "incr", "key": "rate/ada", "path": "/n", "ttl": "300ms", "keep_ttl": true},
        {"op": "put", "key": "plain", "value": 1}
    ]});
    let r = c.post_json("/v1/txn", &body.to_string()).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(expiry_of(&c, "/v1/kv/session/1").await.is_some());
    assert!(expiry_of(&c, "/v1/kv/plain").await.is_none());
    until_gone(&c, "rate/ada", Duration::from_secs(5)).await;
    for bad in [json!("soon"), json!(30), json!("0s")] {
        let body = json!({"success": [{"op": "put", "key": "k", "value": 1, "ttl": bad}]});
        let r = c.post_json("/v1/txn", &body.to_string()).await;
        assert_eq!(r.status, 400, "{bad}: {}", text(&r));
    }
    let body = json!({"success": [{"op": "delete", "key": "k", "ttl": "1h"}]});
    assert_eq!(c.post_json("/v1/txn", &body.to_string()).await.status, 400);
}
