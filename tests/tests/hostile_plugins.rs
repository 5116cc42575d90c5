//! Hostile plugins: each failure leaves nothing stored, gets its own failure
//! kind, and the server keeps serving other writes at once. Modules that
//! cannot be loaded stop the server at start with a message naming them.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{example_plugin, plugin_toml, run_cli, temp_data_dir, test_plugin, Options, Server};

/// Starts a server where `bad/` keys go through the plugin and `ok/` keys do not.
fn server_with(file: &str, extra: &str) -> (tempfile::TempDir, Server) {
    let (root, data) = temp_data_dir();
    let config = plugin_toml(
        "hostile",
        &test_plugin(file),
        &format!("prefixes = [\"bad/\"]\n{extra}"),
    );
    let server = Server::start_with(
        &data,
        Options::default()
            .config(&config)
            .env("EXDAAS_LIMITS__MAX_VALUE_BYTES", "64"),
    );
    (root, server)
}

async fn assert_fails_cleanly(server: &Server, kind: &str) {
    let c = server.client();
    let failures = |stats: serde_json::Value| {
        stats["plugins"][0]["stats"]["failures"][kind]
            .as_u64()
            .unwrap()
    };
    let before = failures(c.get("/v1/plugins").await.json());
    let r = c.put_json("/v1/kv/bad/1", r#"{"a":1}"#).await;
    assert_eq!(r.status, 500, "{:?}", r.body);
    let e = r.json();
    assert_eq!(e["error"]["code"], "plugin_failed");
    assert_eq!(e["error"]["plugin"], "hostile");
    assert_eq!(e["error"]["kind"], kind);
    assert_eq!(
        c.get("/v1/kv/bad/1").await.status,
        404,
        "nothing may be stored"
    );
    // Other writes are served, and the plugin keeps failing the same way
    // (a fresh instance replaces the broken one).
    assert_eq!(c.put_json("/v1/kv/ok/1", "1").await.status, 201);
    let again = c.put_json("/v1/kv/bad/2", "2").await;
    assert_eq!(again.json()["error"]["kind"], kind);
    assert_eq!(failures(c.get("/v1/plugins").await.json()), before + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_is_stopped_at_its_timeout_while_others_are_served() {
    let (_root, server) = server_with("infinite_loop.wat", "timeout_ms = 300");
    let c = server.client();
    let looping = {
        let c = c.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = c.put_json("/v1/kv/bad/loop", "1").await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // While the plugin spins, other writes and reads complete.
    assert_eq!(c.put_json("/v1/kv/ok/during", "1").await.status, 201);
    assert_eq!(c.get("/v1/kv/ok/during").await.status, 200);
    assert!(
        !looping.is_finished(),
        "the looping write finished before its timeout"
    );
    let (r, took) = looping.await.unwrap();
    assert_eq!(r.json()["error"]["kind"], "timeout");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert_fails_cleanly(&server, "timeout").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_growth_is_stopped_at_its_cap() {
    let (_root, server) = server_with("memory_hog.wat", "max_memory_bytes = 1048576");
    assert_fails_cleanly(&server, "out_of_memory").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_budget_is_enforced() {
    let (_root, server) = server_with("infinite_loop.wat", "fuel = 100000\ntimeout_ms = 5000");
    assert_fails_cleanly(&server, "out_of_fuel").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn traps_are_contained() {
    let (_root, server) = server_with("unreachable.wat", "");
    assert_fails_cleanly(&server, "trap").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_bounds_output_is_malformed() {
    let (_root, server) = server_with("out_of_bounds.wat", "");
    assert_fails_cleanly(&server, "malformed_output").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn non_json_output_is_malformed() {
    let (_root, server) = server_with("not_json.wat", "");
    assert_fails_cleanly(&server, "malformed_output").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_outputs_are_refused() {
    let (_root, server) = server_with("huge_output.wat", "");
    assert_fails_cleanly(&server, "output_too_large").await;
    let (_root, server) = server_with("oversized_replace.wat", "");
    assert_fails_cleanly(&server, "output_too_large").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn skip_policy_lets_writes_through_and_counts() {
    let (_root, server) = server_with("unreachable.wat", "on_failure = \"skip\"");
    let c = server.client();
    assert_eq!(c.put_json("/v1/kv/bad/1", "7").await.status, 201);
    assert_eq!(c.get("/v1/kv/bad/1").await.body, "7");
    let stats = c.get("/v1/plugins").await.json();
    assert_eq!(stats["plugins"][0]["stats"]["failures"]["trap"], 1);
    assert_eq!(stats["plugins"][0]["stats"]["skipped_failures"], 1);
    assert!(server.logged("plugin failed"));
}

fn start_refused(plugin: &std::path::Path) -> String {
    let (root, data) = temp_data_dir();
    let config = plugin_toml("broken", plugin, "");
    std::fs::write(root.path().join("c.toml"), config).unwrap();
    let (code, _, err) = run_cli(
        root.path(),
        &["--config", "c.toml"],
        &[
            ("EXDAAS_STORAGE__DATA_DIR", data.to_str().unwrap()),
            ("EXDAAS_SERVER__LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_ne!(code, 0, "server started with a broken plugin");
    assert!(err.contains("\"broken\""), "{err}");
    assert!(err.contains(&plugin.display().to_string()), "{err}");
    err
}

#[test]
fn unloadable_plugins_stop_the_server_at_start() {
    let err = start_refused(&test_plugin("wasi_import.wat"));
    assert!(err.contains("wasi_snapshot_preview1.fd_write"), "{err}");
    let err = start_refused(&test_plugin("not_wasm.wasm"));
    assert!(err.contains("not a valid WebAssembly module"), "{err}");
    let err = start_refused(&test_plugin("wrong_abi.wat"));
    assert!(err.contains("ABI version 99"), "{err}");
    let err = start_refused(&test_plugin("does_not_exist.wasm"));
    assert!(err.contains("cannot read"), "{err}");
    // A configured plugin's file is not the managed plugins' business.
    assert!(!err.contains("registry.json"), "{err}");
    // An unknown plugin setting is a configuration error naming the file.
    let (root, _data) = temp_data_dir();
    let config = plugin_toml("x", &example_plugin("max_size"), "colour = \"red\"");
    std::fs::write(root.path().join("c.toml"), config).unwrap();
    let (code, _, err) = run_cli(root.path(), &["check-config", "--config", "c.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("colour") && err.contains("c.toml"), "{err}");
}

#[test]
fn an_abi_version_that_never_returns_is_refused_at_start() {
    let started = Instant::now();
    let err = start_refused(&test_plugin("abi_version_hangs.wat"));
    assert!(err.contains("timeout"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_plugin_on_reload_is_refused_and_sigterm_still_exits() {
    let (_root, data) = temp_data_dir();
    let config_path = data.with_extension("toml");
    let server = Server::start_with(&data, Options::default().config(""));
    let c = server.client();
    std::fs::write(
        &config_path,
        plugin_toml(
            "hangs",
            &test_plugin("abi_version_hangs.wat"),
            "timeout_ms = 200",
        ),
    )
    .unwrap();
    for _ in 0..3 {
        let reload = c.send("POST", "/v1/admin/plugins/reload", &[], b"");
        let r = tokio::time::timeout(Duration::from_secs(20), reload)
            .await
            .expect("reload never answered")
            .unwrap();
        assert_eq!(r.status, 422, "{:?}", r.body);
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("hangs") && message.contains("timeout"),
            "{message}"
        );
    }
    assert_eq!(c.put_json("/v1/kv/k", "1").await.status, 201);
    let started = Instant::now();
    assert!(server.stop().success());
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_log_text_cannot_forge_records() {
    let (_root, data) = temp_data_dir();
    let config = plugin_toml("forger", &test_plugin("log_forger.wat"), "");
    let server = Server::start_with(&data, Options::default().config(&config));
    assert_eq!(server.client().put_json("/v1/kv/k", "1").await.status, 201);
    assert!(server.logged("FORGED"));
    let log = server.log.lock().unwrap().clone();
    let forged: Vec<&str> = log.lines().filter(|l| l.contains("FORGED")).collect();
    assert_eq!(forged.len(), 1, "one log call, one record:\n{log}");
    assert!(forged[0].contains("forger"), "{}", forged[0]);
    assert!(
        log.lines()
            .all(|l| !l.starts_with("FORGED") && !l.starts_with("{\"level\"")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_details_are_capped_in_logs_and_error_bodies() {
    let (root, data) = temp_data_dir();
    // A trap whose backtrace names a function with a 50 KB name.
    let long_name = "n".repeat(50_000);
    let trapping = root.path().join("long_name.wat");
    std::fs::write(
        &trapping,
        format!(
            r#"(module
  (memory (export "memory") 1)
  (func (export "exdaas_abi_version") (result i32) (i32.const 1))
  (func (export "exdaas_alloc") (param i32) (result i32) (i32.const 1024))
  (func ${long_name} unreachable)
  (func (export "exdaas_on_write") (param i32 i32 i32 i32 i32 i32 i64) (result i64)
    (call ${long_name}) (i64.const 0)))"#
        ),
    )
    .unwrap();
    let config = plugin_toml("trapper", &trapping, "prefixes = [\"trap/\"]")
        + &plugin_toml(
            "shouter",
            &test_plugin("huge_action.wat"),
            "prefixes = [\"huge/\"]",
        );
    let server = Server::start_with(&data, Options::default().config(&config));
    let c = server.client();
    let before = server.log.lock().unwrap().len();
    let r = c.put_json("/v1/kv/trap/1", "1").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["kind"], "trap");
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("unreachable"),
        "the trap's reason is kept: {message}"
    );
    assert!(r.body.len() < 2048, "error body of {} bytes", r.body.len());
    let r = c.put_json("/v1/kv/huge/1", "1").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["kind"], "malformed_output");
    assert!(r.body.len() < 2048, "error body of {} bytes", r.body.len());
    let logged = server.log.lock().unwrap().len() - before;
    assert!(logged < 8192, "{logged} bytes of log for two failed writes");
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_is_per_plugin() {
    let (_root, data) = temp_data_dir();
    let config = plugin_toml("metered", &test_plugin("accept.wat"), "fuel = 100000")
        + &plugin_toml("unmetered", &test_plugin("accept.wat"), "");
    let server = Server::start_with(&data, Options::default().config(&config));
    assert_eq!(server.client().put_json("/v1/kv/k", "1").await.status, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allocator_answering_zero_fails_the_call() {
    let (_root, server) = server_with("alloc_fails.wat", "");
    assert_fails_cleanly(&server, "out_of_memory").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replacements_must_be_i_json() {
    let (root, data) = temp_data_dir();
    let dup = root.path().join("dup_replace.wat");
    let verdict = r#"{"action":"replace","value":{"a":1,"a":2}}"#;
    std::fs::write(
        &dup,
        format!(
            r#"(module
  (memory (export "memory") 1)
  (data (i32.const 16) "{}")
  (func (export "exdaas_abi_version") (result i32) (i32.const 1))
  (func (export "exdaas_alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "exdaas_on_write") (param i32 i32 i32 i32 i32 i32 i64) (result i64)
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const {}))))"#,
            verdict.replace('"', "\\\""),
            verdict.len()
        ),
    )
    .unwrap();
    let config = plugin_toml("dup", &dup, "");
    let server = Server::start_with(&data, Options::default().config(&config));
    let r = server.client().put_json("/v1/kv/k", "1").await;
    assert_eq!(r.status, 500, "{:?}", r.body);
    assert_eq!(r.json()["error"]["kind"], "malformed_output");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("more than once"));
    assert_eq!(server.client().get("/v1/kv/k").await.status, 404);
}

/// A module that would make the compiler take unbounded time or memory
/// (here: loops nested thousands deep, which compile in quadratic time)
/// is refused with the bound it broke before any compile starts, and
/// nothing changes.
#[tokio::test(flavor = "multi_thread")]
async fn compile_bombs_are_refused_before_compiling() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let depth = 3_000;
    let body = "(loop ".repeat(depth) + &")".repeat(depth);
    let module = format!("(module (memory (export \"memory\") 1) (func (export \"bomb\") {body}))");
    let r = common::upload_module(&c, "bomb", module.as_bytes()).await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 422, "{text}");
    assert!(text.contains("nests blocks more than 256 deep"), "{text}");
    let listed = c.get("/v1/plugins").await.json();
    assert_eq!(listed["plugins"].as_array().unwrap().len(), 0, "{listed}");
}

/// Reads of the plugins never wait behind a change that is compiling.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_reads_do_not_wait_behind_a_compile() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let module = common::slow_module(9_000, 256);
    let upload = {
        let c = c.clone();
        tokio::spawn(async move { common::upload_module(&c, "slow", &module).await })
    };
    // The upload holds the change lock from before it logs this until
    // its compile is over.
    assert!(server.logged("plugin upload: storing and compiling"));
    let r = c.get("/v1/admin/plugins/nothing").await;
    assert_eq!(r.status, 404);
    assert_eq!(c.get("/v1/plugins").await.status, 200);
    assert!(
        !upload.is_finished(),
        "the reads were answered only once the compile was over"
    );
    let refused = upload.await.unwrap();
    assert_eq!(
        refused.status,
        422,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
}
