//! Test vectors and the local runner: every example passes the vectors it
//! ships (`exdaas plugin test`), a failing vector is named with what came
//! back, `exdaas plugin run` prints one verdict, and the server refuses a
//! plugin whose vectors fail, at start and on reload.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{example_plugin, plugin_toml, repo_root, run_cli, temp_data_dir, Options, Server};

/// A copy of an example module in `dir` with `vectors` beside it.
fn module_with_vectors(dir: &Path, example: &str, vectors: &str) -> PathBuf {
    let module = dir.join(format!("{example}.wasm"));
    std::fs::copy(example_plugin(example), &module).unwrap();
    std::fs::write(dir.join(format!("{example}.vectors.json")), vectors).unwrap();
    module
}

const FAILING: &str = r#"[
  {"name": "right", "key": "u", "config": {"required": {"a": "number"}},
   "value": {"a": 1}, "expect": {"action": "accept"}},
  {"name": "wrong", "key": "u", "config": {"required": {"a": "number"}},
   "value": {}, "expect": {"action": "accept"}}
]"#;

#[test]
fn every_example_passes_the_vectors_it_ships() {
    let dist = repo_root().join("examples/dist");
    let mut tested = 0;
    for entry in std::fs::read_dir(&dist).unwrap().flatten() {
        let module = entry.path();
        if module.extension().and_then(|e| e.to_str()) != Some("wasm") {
            continue;
        }
        let vectors = module.with_extension("vectors.json");
        assert!(vectors.exists(), "{} ships no vectors", module.display());
        let (code, out, err) = run_cli(&dist, &["plugin", "test", module.to_str().unwrap()], &[]);
        assert_eq!(code, 0, "{}:\n{out}\n{err}", module.display());
        assert!(out.contains(" 0 failed"), "{out}");
        tested += 1;
    }
    assert!(
        tested >= 6,
        "only {tested} example modules in {}",
        dist.display()
    );
}

#[test]
fn a_failing_vector_is_named_with_what_came_back() {
    let (root, _data) = temp_data_dir();
    let module = module_with_vectors(root.path(), "require_fields", FAILING);
    let (code, out, _) = run_cli(
        root.path(),
        &["plugin", "test", module.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ok    #1 \"right\""), "{out}");
    assert!(
        out.contains("FAIL  #2 \"wrong\": expected accept, got reject missing_field"),
        "{out}"
    );
    assert!(out.contains("1 passed, 1 failed"), "{out}");

    // A vectors file that is not vectors is a usage error naming the file.
    std::fs::write(root.path().join("bad.json"), r#"[{"key":"k"}]"#).unwrap();
    let (code, _, err) = run_cli(
        root.path(),
        &[
            "plugin",
            "test",
            module.to_str().unwrap(),
            "--vectors",
            "bad.json",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("bad.json") && err.contains("expect"), "{err}");
}

#[test]
fn plugin_run_prints_one_verdict() {
    let (root, _data) = temp_data_dir();
    let module = example_plugin("require_fields");
    let run = |extra: &[&str]| {
        let mut args = vec!["plugin", "run", module.to_str().unwrap(), "--key", "u/1"];
        args.extend_from_slice(extra);
        run_cli(root.path(), &args, &[])
    };
    let config = r#"{"required":{"a":"number"}}"#;
    let (code, out, err) = run(&["--value", "{}", "--plugin-config", config]);
    assert_eq!(code, 0, "{err}");
    let verdict: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(verdict["action"], "reject");
    assert_eq!(verdict["code"], "missing_field");
    let (code, out, _) = run(&["--value", r#"{"a":2}"#, "--plugin-config", config]);
    assert_eq!(code, 0);
    assert!(out.contains("\"action\":\"accept\""), "{out}");
    // Values are held to the server's I-JSON rules, naming the flag.
    let (code, _, err) = run(&["--value", r#"{"a":1,"a":2}"#]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--value") && err.contains("more than once"),
        "{err}"
    );
    let revision = example_plugin("revision");
    let (code, out, _) = run_cli(
        root.path(),
        &[
            "plugin",
            "run",
            revision.to_str().unwrap(),
            "--key",
            "n",
            "--value",
            "{}",
            "--old",
            r#"{"revision":4}"#,
        ],
        &[],
    );
    assert_eq!(code, 0);
    let verdict: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(verdict["value"]["revision"], 5, "{out}");
}

#[test]
fn the_server_refuses_to_start_with_failing_vectors() {
    let (root, data) = temp_data_dir();
    let module = module_with_vectors(root.path(), "require_fields", FAILING);
    std::fs::write(
        root.path().join("c.toml"),
        plugin_toml("schema", &module, ""),
    )
    .unwrap();
    let (code, _, err) = run_cli(
        root.path(),
        &["--config", "c.toml"],
        &[
            ("EXDAAS_STORAGE__DATA_DIR", data.to_str().unwrap()),
            ("EXDAAS_SERVER__LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_ne!(
        code, 0,
        "the server started with a plugin whose vectors fail"
    );
    assert!(
        err.contains("\"schema\"") && err.contains("test vectors"),
        "{err}"
    );
    assert!(
        err.contains("#2 \\\"wrong\\\"") || err.contains("#2 \"wrong\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_refuses_failing_vectors_and_keeps_the_running_chain() {
    let (root, data) = temp_data_dir();
    let good = r#"[{"key": "u", "value": {"a": 1}, "expect": {"action": "accept"}}]"#;
    let module = module_with_vectors(root.path(), "require_fields", good);
    let config = plugin_toml(
        "schema",
        &module,
        "config = { required = { a = \"number\" } }",
    );
    let server = Server::start_with(&data, Options::default().config(&config));
    let c = server.client();
    let plugins = c.get("/v1/plugins").await.json();
    assert_eq!(plugins["plugins"][0]["vectors_passed"], 1);

    std::fs::write(root.path().join("require_fields.vectors.json"), FAILING).unwrap();
    let r = c
        .send("POST", "/v1/admin/plugins/reload", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 422);
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("1 of 2 test vectors failed"), "{message}");
    // The chain that was running still runs.
    assert_eq!(c.put_json("/v1/kv/x", "{}").await.status, 422);
    assert_eq!(c.put_json("/v1/kv/y", r#"{"a":1}"#).await.status, 201);
}
