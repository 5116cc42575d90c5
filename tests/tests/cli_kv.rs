//! `exdaas kv`: put, get, list and delete against a running server, with
//! exit codes a script can branch on, compare-and-set, stdin values and
//! tokens from the environment.
#![allow(clippy::unwrap_used)]

mod common;

use common::{example_plugin, plugin_toml, run_cli, temp_data_dir, Options, Server};

const TOKEN: &str = "cli-test-token-0123456789";

#[tokio::test(flavor = "multi_thread")]
async fn kv_commands_speak_the_api_with_useful_exit_codes() {
    let (root, data) = temp_data_dir();
    let config = format!(
        "[auth]\ntokens = [{{ name = \"ops\", token = \"{TOKEN}\", role = \"admin\" }}]\n{}",
        plugin_toml(
            "schema",
            &example_plugin("require_fields"),
            "prefixes = [\"users/\"]\nconfig = { required = { email = \"string\" } }"
        )
    );
    let server = Server::start_with(&data, Options::default().config(&config));
    let dir = root.path();
    let kv = |args: &[&str], token: bool| {
        let mut all = vec!["kv", "--server", server.addr.as_str()];
        all.extend_from_slice(args);
        let env: &[(&str, &str)] = if token {
            &[("EXDAAS_TOKEN", TOKEN)]
        } else {
            &[]
        };
        run_cli(dir, &all, env)
    };

    let (code, out, _) = kv(&["put", "users/ada lovelace", r#"{"email":"a@x"}"#], true);
    assert_eq!(code, 0);
    let put: serde_json::Value = serde_json::from_str(&out).unwrap();
    let version = put["version"].as_u64().unwrap();

    let (code, out, _) = kv(&["get", "users/ada lovelace"], true);
    assert_eq!(code, 0);
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["value"]["email"], "a@x");
    assert_eq!(got["version"].as_u64(), Some(version));
    let (_, raw, _) = kv(&["get", "--raw", "users/ada lovelace"], true);
    assert_eq!(raw.trim_end(), r#"{"email":"a@x"}"#);

    // Exit codes: not found 3, condition failed 4, rejected 5, denied 6.
    assert_eq!(kv(&["get", "nope"], true).0, 3);
    let stale = (version + 100).to_string();
    let (code, _, err) = kv(
        &[
            "put",
            "--if-version",
            &stale,
            "users/ada lovelace",
            r#"{"email":"b@x"}"#,
        ],
        true,
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("precondition_failed"), "{err}");
    assert_eq!(
        kv(&["put", "--if-absent", "users/ada lovelace", "{}"], true).0,
        4
    );
    let (code, _, err) = kv(&["put", "users/bob", r#"{"name":"bob"}"#], true);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("rejected"), "{err}");
    assert_eq!(kv(&["put", "plain", "not json"], true).0, 5);
    assert_eq!(kv(&["get", "users/ada lovelace"], false).0, 6);

    // Compare-and-set with the right version, and a value from stdin.
    let v = version.to_string();
    assert_eq!(
        kv(
            &[
                "put",
                "--if-version",
                &v,
                "users/ada lovelace",
                r#"{"email":"c@x"}"#
            ],
            true
        )
        .0,
        0
    );
    let out = std::process::Command::new(common::binary())
        .current_dir(dir)
        .env("EXDAAS_TOKEN", TOKEN)
        .args(["kv", "--server", &server.addr, "put", "piped", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"[1,2,3]")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    assert_eq!(kv(&["get", "--raw", "piped"], true).1.trim_end(), "[1,2,3]");

    let (code, out, _) = kv(&["list", "--prefix", "users/", "--raw"], true);
    assert_eq!((code, out.trim_end()), (0, "users/ada lovelace"));
    let (_, out, _) = kv(&["list", "--values"], true);
    let page: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);

    assert_eq!(kv(&["delete", "piped"], true).0, 0);
    assert_eq!(kv(&["delete", "piped"], true).0, 3);
    // A server that is not there: a plain failure.
    assert_eq!(
        run_cli(dir, &["kv", "--server", "127.0.0.1:1", "get", "x"], &[]).0,
        1
    );
}

/// `exdaas kv patch`, `incr`, `mget` and `txn`: the computed writes and
/// transactions from the command line, with the same exit codes.
#[tokio::test(flavor = "multi_thread")]
async fn kv_updates_and_transactions_from_the_command_line() {
    let (root, data) = temp_data_dir();
    let server = Server::start(&data);
    let dir = root.path();
    let kv = |args: &[&str]| {
        let mut all = vec!["kv", "--server", server.addr.as_str()];
        all.extend_from_slice(args);
        run_cli(dir, &all, &[])
    };
    let json = |out: &str| serde_json::from_str::<serde_json::Value>(out).unwrap();

    assert_eq!(kv(&["patch", "doc", r#"{"a":1}"#]).0, 3);
    let (code, out, err) = kv(&["patch", "--create", "doc", r#"{"a":1,"b":null}"#]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out), serde_json::json!({"a": 1}));
    let (code, out, _) = kv(&[
        "patch",
        "--json-patch",
        "doc",
        r#"[{"op":"add","path":"/c","value":[1]}]"#,
    ]);
    assert_eq!(
        (code, json(&out)),
        (0, serde_json::json!({"a": 1, "c": [1]}))
    );
    let (code, _, err) = kv(&[
        "patch",
        "--json-patch",
        "doc",
        r#"[{"op":"test","path":"/a","value":2}]"#,
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("test_failed"), "{err}");

    let (code, _, err) = kv(&["put", "--ttl", "1h", "brief", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(kv(&["put", "--ttl", "soon", "brief", "1"]).0, 5);
    let (code, out, _) = kv(&["incr", "--path", "/hits", "--by", "-3", "counter"]);
    assert_eq!(
        (code, json(&out)["value"].clone()),
        (0, serde_json::json!(-3))
    );
    assert_eq!(kv(&["incr", "--path", "/a", "doc"]).0, 0);
    assert_eq!(kv(&["incr", "--path", "/c", "doc"]).0, 4);

    let (code, out, _) = kv(&["mget", "doc", "counter", "none"]);
    assert_eq!(code, 0);
    let got = json(&out);
    assert_eq!(got["missing"], serde_json::json!(["none"]));
    assert_eq!(got["items"].as_array().unwrap().len(), 2);

    let file = dir.join("txn.json");
    std::fs::write(
        &file,
        r#"{"compare":[{"key":"counter","pointer":"/hits","equals":-3}],
            "success":[{"op":"incr","key":"counter","path":"/hits","by":3},{"op":"delete","key":"doc"}],
            "failure":[{"op":"put","key":"missed","value":true}]}"#,
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (code, out, err) = kv(&["txn", file]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["succeeded"], true);
    // Again: the compare fails now, and the exit code says so.
    let (code, out, _) = kv(&["txn", file]);
    assert_eq!(
        (code, json(&out)["succeeded"].clone()),
        (4, serde_json::json!(false))
    );
    assert_eq!(kv(&["get", "missed"]).0, 0);
    let (code, _, err) = kv(&["txn", "/no/such/file.json"]);
    assert_eq!(code, 1);
    assert!(err.contains("/no/such/file.json"), "{err}");
}
