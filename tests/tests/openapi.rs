//! The served OpenAPI document against the live server, both ways: every
//! operation in the document is answered (not 404 "no route", not 405),
//! every other method on its paths gets 405 naming exactly the document's
//! methods; then schemathesis generates requests from the document and
//! checks the answers conform to it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{seed, temp_data_dir, Options, Server};

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// A concrete path for a template (`{key}` filled in).
fn concrete(template: &str) -> String {
    template.replace("{key}", "route-probe")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_served_document_and_the_router_agree_both_ways() {
    let (_tmp, data) = temp_data_dir();
    let server = Server::start(&data);
    let client = server.client();
    let resp = client.get("/v1/openapi.json").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let doc = resp.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 12, "{paths:?}");
    let methods = |item: &serde_json::Value| -> BTreeSet<String> {
        item.as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "parameters")
            .map(|m| m.to_uppercase())
            .collect()
    };
    for (template, item) in paths {
        let mut documented = methods(item);
        // A fixed path under /v1/kv/ is also a key: the key's methods
        // serve it too (`/v1/kv/get`).
        if template.starts_with("/v1/kv/") && !template.contains('{') {
            documented.extend(methods(&paths["/v1/kv/{key}"]));
        }
        let mut path = concrete(template);
        if template == "/v1/watch" {
            // A stream never ends; a parameter it does not know makes it
            // answer 400 at once, which still shows the route is served.
            path.push_str("?probe=1");
        }
        for method in METHODS {
            let (headers, body): (&[(&str, &str)], &[u8]) = match method {
                "POST" | "PUT" => (&[("content-type", "application/json")], b"{}"),
                _ => (&[], b""),
            };
            let resp = client.send(method, &path, headers, body).await.unwrap();
            if documented.contains(method) {
                assert_ne!(resp.status, 405, "{method} {path} is documented");
                let unrouted = resp.status == 404
                    && method != "HEAD"
                    && resp.json()["error"]["message"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("no route");
                assert!(!unrouted, "{method} {path} is documented but not routed");
            } else {
                assert_eq!(resp.status, 405, "{method} {path} is not documented");
                let allowed: BTreeSet<String> = resp
                    .header("allow")
                    .unwrap()
                    .split(", ")
                    .map(str::to_owned)
                    .collect();
                assert_eq!(allowed, documented, "Allow of {path}");
            }
        }
    }
    // And a path outside the document is not served at all.
    let resp = client.get("/v1/undocumented").await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.error_code(), "not_found");
}

fn schemathesis_seed() -> u64 {
    if std::env::var("EXDAAS_TEST_SEED").is_ok() {
        seed() % 1_000_000
    } else {
        3
    }
}

/// Runs schemathesis against a fresh server. Its checks: no 5xx where the
/// document promises none, status codes, content types, headers and bodies
/// as documented, valid requests accepted and invalid ones refused.
#[test]
fn schemathesis_finds_no_departure_from_the_document() {
    let tool = std::env::var("EXDAAS_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let (tmp, data) = temp_data_dir();
    // Keys are limited in bytes, which a JSON schema cannot state (it counts
    // characters); a roomy limit keeps generated keys inside it.
    let server = Server::start_with(
        &data,
        Options::default()
            .env("EXDAAS_LIMITS__MAX_KEY_BYTES", "8192")
            // A long poll may wait `feed.max_wait_ms`: shorter than the
            // request timeout below.
            .env("EXDAAS_FEED__MAX_WAIT_MS", "1000"),
    );
    let spec = server.url("/v1/openapi.json");
    let base = server.url("");
    let report = tmp.path().join("schemathesis");
    let config = common::repo_root().join("tests/schemathesis.toml");
    let run = || {
        Command::new(&tool)
            .current_dir(tmp.path())
            .arg("--config-file")
            .arg(&config)
            .args(["run", &spec, "--url", &base])
            // A backup streams the whole store; it is checked by its own tests.
            .args(["--exclude-path", "/v1/admin/backup"])
            // A stream that never ends; tests/tests/feed.rs reads it.
            .args(["--exclude-path", "/v1/watch"])
            .args(["--max-examples", "25", "--max-time", "60", "--workers", "2"])
            .args(["--phases", "examples,coverage,fuzzing"])
            // A fixed seed unless EXDAAS_TEST_SEED asks for another, so a run
            // in CI generates the cases a run here did.
            .args(["--seed", &schemathesis_seed().to_string()])
            .args(["--request-timeout", "10"])
            .args(["--generation-database", "none"])
            .arg("--report-dir")
            .arg(&report)
            .env("NO_COLOR", "1")
            // Bodies for media types it has no generator for (plugin modules).
            .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
            .env("PYTHONPATH", common::repo_root().join("tests"))
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {tool} ({e}); scripts/test.sh installs it (pip install schemathesis)"
                )
            })
    };
    let mut out = run();
    // An error inside the tool itself (CPython 3.11's ast module sometimes
    // fails while the generator describes a strategy) says nothing about
    // the server: run again, twice at most. A departure from the document
    // is never run again.
    for _ in 0..2 {
        if out.status.success() || !tool_error_only(&String::from_utf8_lossy(&out.stdout)) {
            break;
        }
        eprintln!("schemathesis stopped on an error of its own; running it again");
        out = run();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{stdout}\n{stderr}"
    );
    drop(server);
}

/// Whether a failed schemathesis run failed only on errors of the tool
/// itself: its closing summary line (`=== 1 error, 2 warnings in 60s ===`)
/// counts errors and no failed check. (The errors' tracebacks may quote
/// any text, so only that line is read.)
fn tool_error_only(stdout: &str) -> bool {
    let summary = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with("===") && l.ends_with("===") && l.contains(" in "));
    summary.is_some_and(|l| l.contains("error") && !l.contains("failed"))
}

#[test]
fn only_the_tools_own_errors_are_run_again() {
    let own = "ERRORS\n... raise failed ...\n==== 1 error, 2 warnings in 60.01s ====\n";
    assert!(tool_error_only(own));
    let departure = "==== 1 failed, 1 error in 60.01s ====\n";
    assert!(!tool_error_only(departure));
    assert!(!tool_error_only("no summary"));
}
