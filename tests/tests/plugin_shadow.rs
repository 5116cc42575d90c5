//! Shadow mode: a shadow plugin runs on every matching write, its would-be
//! verdicts are counted and sampled, and writes proceed as if it were
//! absent; one call promotes it to enforce; a reload brings back the
//! configured mode.
#![allow(clippy::unwrap_used)]

mod common;

use common::{example_plugin, plugin_toml, temp_data_dir, Options, Server};

#[tokio::test(flavor = "multi_thread")]
async fn shadow_records_and_promotion_enforces() {
    let (_root, data) = temp_data_dir();
    let config = [
        plugin_toml(
            "schema",
            &example_plugin("require_fields"),
            "mode = \"shadow\"\nconfig = { required = { a = \"number\" } }",
        ),
        plugin_toml("stamp", &example_plugin("revision"), "mode = \"shadow\""),
    ]
    .concat();
    let server = Server::start_with(&data, Options::default().config(&config));
    let c = server.client();

    // Writes proceed as if neither plugin were there.
    assert_eq!(c.put_json("/v1/kv/bad/1", r#"{"b":1}"#).await.status, 201);
    assert_eq!(c.put_json("/v1/kv/good", r#"{"a":1}"#).await.status, 201);
    assert_eq!(c.get("/v1/kv/good").await.body.as_ref(), br#"{"a":1}"#);

    let record = c.get("/v1/plugins/schema/shadow").await;
    assert_eq!(record.status, 200);
    let record = record.json();
    assert_eq!(record["mode"], "shadow");
    assert_eq!(record["calls"], 2);
    assert_eq!(record["would_reject"], 1);
    assert_eq!(record["would_accept"], 1);
    assert_eq!(record["samples"][0]["key"], "bad/1");
    assert_eq!(record["samples"][0]["verdict"], "reject");
    assert!(record["samples"][0]["detail"]
        .as_str()
        .unwrap()
        .starts_with("missing_field"));
    let stamp = c.get("/v1/plugins/stamp/shadow").await.json();
    assert_eq!(stamp["would_replace"], 2);
    assert_eq!(stamp["samples"].as_array().unwrap().len(), 2);
    // The replacement was recorded, not stored.
    assert_eq!(c.get("/v1/kv/bad/1").await.body.as_ref(), br#"{"b":1}"#);

    // Promotion: one call, then the plugin enforces.
    let r = c
        .send("POST", "/v1/admin/plugins/schema/promote", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["changed"], true);
    let r = c.put_json("/v1/kv/bad/2", r#"{"b":2}"#).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["error"]["reason"], "missing_field");
    let again = c
        .send("POST", "/v1/admin/plugins/schema/promote", &[], b"")
        .await
        .unwrap();
    assert_eq!(again.json()["changed"], false);
    let listed = c.get("/v1/plugins").await.json();
    assert_eq!(listed["plugins"][0]["mode"], "enforce");
    assert_eq!(listed["plugins"][1]["mode"], "shadow");

    // Unknown names are 404; a reload reapplies the configured mode.
    assert_eq!(c.get("/v1/plugins/nope/shadow").await.status, 404);
    let r = c
        .send("POST", "/v1/admin/plugins/reload", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(c.put_json("/v1/kv/bad/3", r#"{"b":3}"#).await.status, 201);
}

/// Promoting a configured plugin lasts across chain changes that are not
/// a reload of the configuration: an unrelated upload, and its delete.
#[tokio::test(flavor = "multi_thread")]
async fn a_promotion_lasts_across_unrelated_chain_changes() {
    let (_root, data) = temp_data_dir();
    let config = plugin_toml(
        "schema",
        &example_plugin("require_fields"),
        "mode = \"shadow\"\nconfig = { required = { a = \"number\" } }",
    );
    let server = Server::start_with(&data, Options::default().config(&config));
    let c = server.client();
    let promoted = c
        .send("POST", "/v1/admin/plugins/schema/promote", &[], b"")
        .await
        .unwrap();
    assert_eq!(promoted.status, 200);
    assert_eq!(c.put_json("/v1/kv/bad/1", r#"{"b":1}"#).await.status, 422);

    let module = std::fs::read(example_plugin("max_size")).unwrap();
    let uploaded = common::upload_module(&c, "size", &module).await;
    assert_eq!(uploaded.status, 201);
    assert_eq!(c.put_json("/v1/kv/bad/2", r#"{"b":1}"#).await.status, 422);
    let deleted = c
        .send("DELETE", "/v1/admin/plugins/size", &[], b"")
        .await
        .unwrap();
    assert_eq!(deleted.status, 200);
    assert_eq!(c.put_json("/v1/kv/bad/3", r#"{"b":1}"#).await.status, 422);

    // A reload reads the configuration again: shadow, as it says.
    let reloaded = c
        .send("POST", "/v1/admin/plugins/reload", &[], b"")
        .await
        .unwrap();
    assert_eq!(reloaded.status, 200);
    assert_eq!(c.put_json("/v1/kv/bad/4", r#"{"b":1}"#).await.status, 201);
}
