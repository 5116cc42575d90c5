//! `/metrics` is valid Prometheus text whose counters move with traffic;
//! `/ready` answers; every response carries an `x-request-id`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{example_plugin, plugin_toml, temp_data_dir, Options, Server};

/// Checks one exposition line; returns (metric name with labels, value).
fn parse_sample(line: &str) -> (String, f64) {
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("no value: {line}"));
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
    };
    let name_end = series.find('{').unwrap_or(series.len());
    let name = &series[..name_end];
    assert!(!name.is_empty(), "{line}");
    assert!(
        name.chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_alphabetic()
                || c == '_'
                || c == ':'
                || (i > 0 && c.is_ascii_digit())),
        "bad metric name in {line}"
    );
    if name_end < series.len() {
        let labels = series[name_end..]
            .strip_prefix('{')
            .and_then(|l| l.strip_suffix('}'))
            .unwrap_or_else(|| panic!("{line}"));
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad label in {line}"));
            assert!(
                k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            assert!(
                !v.trim_end_matches('"').contains('"') || v.contains("\\\""),
                "{line}"
            );
        }
    }
    (series.to_owned(), value)
}

fn samples(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if line == "# EOF" {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "bad comment: {line}"
            );
            if let Some(t) = comment.strip_prefix("TYPE ") {
                let kind = t.split_whitespace().nth(1).unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "info"].contains(&kind),
                    "{line}"
                );
            }
            continue;
        }
        out.push(parse_sample(line));
    }
    out
}

fn value(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| *v)
        .unwrap_or(0.0)
}

/// A server running the require-fields example as plugin "schema" (field
/// `a` must be a number).
fn server_with_a_plugin() -> (tempfile::TempDir, Server) {
    let (root, data) = temp_data_dir();
    let config = plugin_toml(
        "schema",
        &example_plugin("require_fields"),
        "config = { required = { a = \"number\" } }",
    );
    let server = Server::start_with(&data, Options::default().config(&config));
    (root, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_move() {
    let (_root, server) = server_with_a_plugin();
    let c = server.client();
    let before = samples(
        &c.get("/metrics")
            .await
            .body
            .iter()
            .map(|&b| b as char)
            .collect::<String>(),
    );
    c.put_json("/v1/kv/x", r#"{"a":1}"#).await;
    c.put_json("/v1/kv/y", r#"{"b":1}"#).await;
    c.get("/v1/kv/x").await;
    c.get("/v1/kv/x").await;
    c.get("/v1/kv/nope").await;
    let prometheus = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let r = c
        .send("GET", "/metrics", &[("accept", prometheus)], b"")
        .await
        .unwrap();
    assert_eq!(
        r.header("content-type").unwrap(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = std::str::from_utf8(&r.body).unwrap();
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    // Every sample belongs to a declared family.
    let families = declared_families(text);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(family_of(&families, name).is_some(), "undeclared: {line}");
    }
    let after = samples(text);
    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        delta("exdaas_requests_total{route=\"kv_put\",status=\"201\"}"),
        1.0
    );
    assert_eq!(
        delta("exdaas_requests_total{route=\"kv_put\",status=\"422\"}"),
        1.0
    );
    assert_eq!(
        delta("exdaas_requests_total{route=\"kv_get\",status=\"200\"}"),
        2.0
    );
    assert_eq!(
        delta("exdaas_requests_total{route=\"kv_get\",status=\"404\"}"),
        1.0
    );
    assert_eq!(
        delta("exdaas_request_duration_seconds_count{route=\"kv_get\"}"),
        3.0
    );
    assert_eq!(
        delta("exdaas_plugin_calls_total{plugin=\"schema\",outcome=\"rejected\"}"),
        1.0
    );
    assert_eq!(
        delta("exdaas_plugin_calls_total{plugin=\"schema\",outcome=\"accepted\"}"),
        1.0
    );
    let commits: f64 = (0..4)
        .map(|s| delta(&format!("exdaas_shard_commits_total{{shard=\"{s}\"}}")))
        .sum();
    assert_eq!(commits, 1.0);
    let hits: f64 = (0..4)
        .map(|s| delta(&format!("exdaas_cache_hits_total{{shard=\"{s}\"}}")))
        .sum();
    assert!(hits >= 1.0);
    assert!(value(&after, "exdaas_uptime_seconds") > 0.0);
    assert!(after
        .iter()
        .any(|(s, _)| s.starts_with("exdaas_build_info{version=")));
    assert!(after
        .iter()
        .any(|(s, _)| s
            .starts_with("exdaas_plugin_failures_total{plugin=\"schema\",kind=\"timeout\"}")));
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_and_request_ids() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let r = c.get("/ready").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["ready"], true);
    let a = c
        .get("/health")
        .await
        .header("x-request-id")
        .unwrap()
        .to_owned();
    let b = c
        .get("/nowhere")
        .await
        .header("x-request-id")
        .unwrap()
        .to_owned();
    assert_ne!(a, b);
    let r = c
        .send("GET", "/health", &[("x-request-id", "trace-abc-123")], b"")
        .await
        .unwrap();
    assert_eq!(r.header("x-request-id").unwrap(), "trace-abc-123");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_and_request_lines() {
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(
        &data,
        Options::default()
            .env("EXDAAS_LOG_FORMAT", "json")
            .env("EXDAAS_LOG", "debug"),
    );
    let c = server.client();
    c.send("GET", "/health", &[("x-request-id", "req-42")], b"")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let log = server.log.lock().unwrap().clone();
    let mut saw_request = false;
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["fields"]["request_id"]
            .as_str()
            .is_some_and(|id| id.contains("req-42"))
        {
            saw_request = true;
        }
    }
    assert!(saw_request, "{log}");
}

/// The metric families `/metrics` declares (`# TYPE` lines).
fn declared_families(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The declared family a sample name belongs to (OpenMetrics suffixes).
fn family_of<'a>(
    families: &'a std::collections::BTreeSet<String>,
    name: &str,
) -> Option<&'a String> {
    families.get(name).or_else(|| {
        ["_total", "_bucket", "_sum", "_count", "_info", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s).and_then(|f| families.get(f)))
    })
}

/// Every panel of the shipped Grafana dashboard is well formed and every
/// query names only metrics this server exports.
#[tokio::test(flavor = "multi_thread")]
async fn the_grafana_dashboard_queries_existing_metrics() {
    let path = common::repo_root().join("config/grafana/exdaas.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    // Families with no series yet are left out of the exposition, so give
    // every panel something to show: a plugin, a write, reads.
    let (_tmp, server) = server_with_a_plugin();
    let c = server.client();
    c.put_json("/v1/kv/x", r#"{"a":1}"#).await;
    c.get("/v1/kv/x").await;
    let text = String::from_utf8(c.get("/metrics").await.body.to_vec()).unwrap();
    let families = declared_families(&text);
    let exists = |name: &str| family_of(&families, name).is_some();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut ids = std::collections::BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        assert!(panel["gridPos"]["w"].as_u64().unwrap() > 0, "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("exdaas_"))
                .collect();
            assert!(!names.is_empty(), "{title}: {expr} names no metric");
            for name in names {
                assert!(exists(name), "{title}: {name} is not exported");
            }
        }
    }
}

/// Without an Accept naming OpenMetrics, `/metrics` answers the classic
/// text format, and Prometheus's own checker accepts it.
#[tokio::test(flavor = "multi_thread")]
async fn the_classic_format_by_default_passes_promtool() {
    let (_root, server) = server_with_a_plugin();
    let c = server.client();
    c.put_json("/v1/kv/x", r#"{"a":1}"#).await;
    c.get("/v1/kv/x").await;
    for accept in [None, Some("text/plain;version=0.0.4"), Some("*/*")] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        let r = c.send("GET", "/metrics", &headers, b"").await.unwrap();
        assert_eq!(
            r.header("content-type").unwrap(),
            "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        let text = r.body_text();
        assert!(!text.contains("# EOF") && !text.contains(" info\n"));
        // Every sample's family is declared under the sample's own name
        // (histograms by their base name).
        let declared: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                declared.contains(&name) || declared.contains(&base),
                "{line}"
            );
        }
        assert!(text.contains("exdaas_requests_total{"));
    }
    let text = c.get("/metrics").await.body_text();
    let tool = std::env::var("EXDAAS_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = std::process::Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e} (scripts/test.sh unpacks promtool)"));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A parse error or a lint finding (naming advice) fails it.
    assert!(out.status.success(), "promtool check metrics: {said}");
}
