//! Hot reload over HTTP and SIGHUP: a good configuration swaps the chain, a
//! broken one is refused with the error and the old chain stays active.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{example_plugin, plugin_toml, temp_data_dir, test_plugin, Options, Server};

#[tokio::test(flavor = "multi_thread")]
async fn reload_swaps_good_chains_and_keeps_the_old_one_on_errors() {
    let (_root, data) = temp_data_dir();
    let config_path = data.with_extension("toml");
    let schema = plugin_toml(
        "schema",
        &example_plugin("require_fields"),
        "config = { required = { a = \"number\" } }",
    );
    let server = Server::start_with(&data, Options::default().config(""));
    let c = server.client();
    assert_eq!(c.put_json("/v1/kv/k", "{}").await.status, 201);

    std::fs::write(&config_path, &schema).unwrap();
    let r = c
        .send("POST", "/v1/admin/plugins/reload", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["plugins"], 1);
    assert_eq!(c.put_json("/v1/kv/k", "{}").await.status, 422);

    // Broken: a missing module. Refused, named, old chain still enforced.
    let broken = schema.clone() + &plugin_toml("gone", &test_plugin("nope.wasm"), "");
    std::fs::write(&config_path, broken).unwrap();
    let r = c
        .send("POST", "/v1/admin/plugins/reload", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 422);
    assert_eq!(r.error_code(), "reload_failed");
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("\"gone\"") && message.contains("nope.wasm"),
        "{message}"
    );
    assert_eq!(c.put_json("/v1/kv/k", "{}").await.status, 422);
    assert_eq!(
        c.get("/v1/plugins").await.json()["plugins"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Broken: a syntax error in the file.
    std::fs::write(&config_path, "[[plugins]\n").unwrap();
    let r = c
        .send("POST", "/v1/admin/plugins/reload", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 422);
    assert_eq!(c.put_json("/v1/kv/k", "{}").await.status, 422);

    // SIGHUP with an empty plugin list removes the validator.
    std::fs::write(&config_path, "").unwrap();
    let pid = server_pid(&server);
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let mut reloaded = false;
    for _ in 0..100 {
        if c.get("/v1/plugins").await.json()["plugins"]
            .as_array()
            .unwrap()
            .is_empty()
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(reloaded, "SIGHUP did not reload");
    assert_eq!(c.put_json("/v1/kv/k", "{\"b\":1}").await.status, 200);
    assert_eq!(
        c.send("GET", "/v1/admin/plugins/reload", &[], b"")
            .await
            .unwrap()
            .status,
        405
    );
}

fn server_pid(server: &Server) -> String {
    server.pid().to_string()
}
