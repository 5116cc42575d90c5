//! Tokens scoped to key prefixes, on every route that reads or writes
//! keys, and tokens that change without a restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{temp_data_dir, test_plugin, Client, Options, Resp, Server};

const ADMIN: &str = "Bearer admin-token-0123456789";
const TEAM_A: &str = "Bearer team-a-token-0123456789";

const CONFIG: &str = r#"
[auth]
tokens = [
  { name = "ops", token = "admin-token-0123456789", role = "admin" },
  { name = "team-a", token = "team-a-token-0123456789", plugins = ["team-a-*"], rules = [
      { prefix = "team-a/", access = "write" },
      { prefix = "team-a/secrets/", access = "none" },
      { prefix = "shared/", access = "read" },
  ] },
]
"#;

async fn call(c: &Client, auth: &str, method: &str, path: &str, body: &str) -> Resp {
    let headers = [
        ("authorization", auth),
        ("content-type", "application/json"),
    ];
    c.send(method, path, &headers, body.as_bytes())
        .await
        .unwrap()
}

fn keys(r: &Resp) -> Vec<String> {
    r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_token_reaches_only_its_keys_on_every_route() {
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(&data, Options::default().config(CONFIG));
    let c = server.client();
    for key in ["team-a/1", "team-a/secrets/s", "team-b/1", "shared/1", "7"] {
        let r = call(&c, ADMIN, "PUT", &format!("/v1/kv/{key}"), "{\"n\":1}").await;
        assert_eq!(r.status, 201, "{key}");
    }
    // Single keys: the most specific rule decides.
    for (method, path, status) in [
        ("GET", "/v1/kv/team-a/1", 200),
        ("PUT", "/v1/kv/team-a/2", 201),
        ("GET", "/v1/kv/shared/1", 200),
        ("PUT", "/v1/kv/shared/1", 403),
        ("GET", "/v1/kv/team-b/1", 403),
        ("DELETE", "/v1/kv/team-b/1", 403),
        ("PATCH", "/v1/kv/team-b/1", 403),
        ("GET", "/v1/kv/team-a/secrets/s", 403),
        ("POST", "/v1/kv/team-b/n?op=incr", 403),
        ("POST", "/v1/kv", 403),
        ("GET", "/api?id=7", 403),
        ("POST", "/api", 403),
        ("GET", "/v1/admin/backup", 403),
        ("POST", "/v1/admin/auth/reload", 403),
        ("GET", "/metrics", 200),
    ] {
        let r = call(&c, TEAM_A, method, path, "{\"data\":{\"n\":2}}").await;
        assert_eq!(
            r.status,
            status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if status == 403 {
            assert!(r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("team-a"));
        }
    }
    // Listings give the readable part and say so; no 403.
    let all = call(&c, TEAM_A, "GET", "/v1/kv", "").await;
    assert_eq!(all.status, 200);
    assert_eq!(keys(&all), ["shared/1", "team-a/1", "team-a/2"]);
    assert_eq!(all.json()["partial"], true);
    let shared = call(&c, TEAM_A, "GET", "/v1/kv?prefix=shared/", "").await;
    assert_eq!(keys(&shared), ["shared/1"]);
    assert!(shared.json().get("partial").is_none());
    let other = call(&c, TEAM_A, "GET", "/v1/kv?prefix=team-b/", "").await;
    assert_eq!(
        (keys(&other).len(), other.json()["partial"].clone()),
        (0, true.into())
    );
    // Pages over a partly covered prefix go on from the last key looked at.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = call(
            &c,
            TEAM_A,
            "GET",
            &format!("/v1/kv?limit=1&after={after}"),
            "",
        )
        .await;
        seen.extend(keys(&page));
        match page.json()["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ["shared/1", "team-a/1", "team-a/2"]);
    // Many keys at once: every key must be allowed.
    let many = |keys: &str| format!("{{\"keys\":{keys}}}");
    let r = call(
        &c,
        TEAM_A,
        "POST",
        "/v1/kv/get",
        &many(r#"["team-a/1","shared/1"]"#),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = call(
        &c,
        TEAM_A,
        "POST",
        "/v1/kv/get",
        &many(r#"["team-a/1","team-b/1"]"#),
    )
    .await;
    assert_eq!(r.status, 403);
    let txn = |other: &str| {
        format!(
            r#"{{"compare":[{{"key":"team-a/1","exists":true}}],"success":[{{"op":"put","key":"team-a/3","value":1}}],"failure":[{{"op":"put","key":"{other}","value":1}}]}}"#
        )
    };
    assert_eq!(
        call(&c, TEAM_A, "POST", "/v1/txn", &txn("team-a/4"))
            .await
            .status,
        200
    );
    // A branch that would not run still counts.
    assert_eq!(
        call(&c, TEAM_A, "POST", "/v1/txn", &txn("team-b/2"))
            .await
            .status,
        403
    );
    assert_eq!(
        call(&c, ADMIN, "GET", "/v1/kv/team-b/2", "").await.status,
        404
    );
    // The change feed carries only readable keys' events.
    let feed = call(&c, TEAM_A, "GET", "/v1/changes?from=1&limit=100", "").await;
    let events: Vec<String> = feed.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["team-a/1", "shared/1", "team-a/2", "team-a/3"]);
    let everything = call(&c, ADMIN, "GET", "/v1/changes?from=1&limit=100", "").await;
    assert_eq!(everything.json()["events"].as_array().unwrap().len(), 7);
    // Plugins: names its patterns match, prefixes inside what it may write.
    let module = std::fs::read(test_plugin("accept.wat")).unwrap();
    let form = |prefixes: &str| {
        format!(
            r#"{{"module_base64":"{}","prefixes":{prefixes}}}"#,
            base64::engine::general_purpose::STANDARD.encode(&module)
        )
    };
    let upload = |name: &str| format!("/v1/admin/plugins/{name}");
    for (name, prefixes, status) in [
        ("team-a-check", r#"["team-b/"]"#, 403),
        // No prefixes: every key.
        ("team-a-check", "[]", 403),
        ("team-b-check", r#"["team-a/"]"#, 403),
        // team-a/ holds team-a/secrets/, which this token may not write.
        ("team-a-check", r#"["team-a/"]"#, 403),
        ("team-a-check", r#"["team-a/data/"]"#, 201),
    ] {
        let r = call(&c, TEAM_A, "PUT", &upload(name), &form(prefixes)).await;
        assert_eq!(r.status, status, "{name} on {prefixes}: {}", r.body_text());
    }
    let described = call(&c, TEAM_A, "GET", &upload("team-a-check"), "").await;
    assert_eq!(described.status, 200);
    assert!(described.body_text().contains("\"uploaded_by\":\"team-a\""));
    assert_eq!(
        call(&c, TEAM_A, "DELETE", &upload("team-a-check"), "")
            .await
            .status,
        200
    );
    server.stop();
}

/// Polls until `check` holds, for at most 20 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_change_without_a_restart_and_a_bad_file_changes_nothing() {
    let (root, data) = temp_data_dir();
    let file = root.path().join("tokens.toml");
    let entry = |name: &str, secret: &str, extra: &str| {
        let digest = common::sha256_hex(secret.as_bytes());
        format!("[[tokens]]\nname = \"{name}\"\ntoken_sha256 = \"{digest}\"\nrole = \"read\"\n{extra}\n")
    };
    std::fs::write(&file, entry("first", "first-secret-0123456789", "")).unwrap();
    let config = format!(
        "[auth]\ntokens_file = \"{}\"\ntokens = [{{ name = \"ops\", token = \"admin-token-0123456789\", role = \"admin\" }}]\n",
        file.display()
    );
    let server = Server::start_with(&data, Options::default().config(&config));
    let c = server.client();
    let status = |auth: &'static str| {
        let c = c.clone();
        async move { call(&c, auth, "GET", "/v1/kv?limit=1", "").await.status }
    };
    let first = "Bearer first-secret-0123456789";
    let second = "Bearer second-secret-0123456789";
    assert_eq!(status(first).await, 200);
    // A bad entry: refused with its place, and the old set stays.
    std::fs::write(
        &file,
        entry("first", "first-secret-0123456789", "role = \"root\""),
    )
    .unwrap();
    let r = call(&c, ADMIN, "POST", "/v1/admin/auth/reload", "").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "invalid_tokens");
    assert!(r.body_text().contains("tokens.toml"), "{}", r.body_text());
    assert_eq!(status(first).await, 200);
    // Over the API.
    std::fs::write(&file, entry("second", "second-secret-0123456789", "")).unwrap();
    let r = call(&c, ADMIN, "POST", "/v1/admin/auth/reload", "").await;
    assert_eq!((r.status, r.json()["tokens"].as_u64()), (200, Some(2)));
    assert_eq!(status(first).await, 401);
    assert_eq!(status(second).await, 200);
    // On SIGHUP, with an expiry already past.
    let expired = entry(
        "second",
        "second-secret-0123456789",
        "expires = 2020-01-01T00:00:00Z",
    );
    std::fs::write(&file, expired).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually("the expiry to be in force", async || {
        status(second).await == 401
    })
    .await;
    let r = call(&c, second, "GET", "/v1/kv", "").await;
    assert!(r.body_text().contains("expired"), "{}", r.body_text());
    server.stop();
}

/// The audit trail's records of `GET /v1/admin/audit?QUERY`, polled until
/// `want` of them are there.
async fn audit_records(c: &Client, query: &str, want: usize) -> serde_json::Value {
    let path = format!("/v1/admin/audit?{query}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = call(c, ADMIN, "GET", &path, "").await;
        assert_eq!(page.status, 200, "{}", page.body_text());
        let json = page.json();
        if json["records"].as_array().unwrap().len() >= want || Instant::now() > deadline {
            return json;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_actions_and_refusals_are_in_the_audit_trail_across_a_crash() {
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(&data, Options::default().config(CONFIG));
    let c = server.client();
    let module = std::fs::read(test_plugin("accept.wat")).unwrap();
    let headers = [
        ("authorization", ADMIN),
        ("content-type", "application/wasm"),
        ("x-request-id", "upload-1"),
    ];
    let r = c
        .send("PUT", "/v1/admin/plugins/checker", &headers, &module)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body_text());
    assert_eq!(
        call(&c, TEAM_A, "GET", "/v1/kv/team-b/x", "").await.status,
        403
    );
    assert_eq!(
        call(&c, "Bearer not-a-token-0123456789", "GET", "/v1/kv/a", "")
            .await
            .status,
        401
    );
    assert_eq!(
        call(&c, TEAM_A, "GET", "/v1/admin/audit", "").await.status,
        403
    );
    // Answered without a refusal and not an admin action: not recorded.
    assert_eq!(
        call(&c, TEAM_A, "GET", "/v1/kv/team-a/x", "").await.status,
        404
    );
    let trail = audit_records(&c, "", 4).await;
    let records = trail["records"].as_array().unwrap();
    let summary: Vec<(String, String, String, String)> = records
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            (s("who"), s("action"), s("target"), s("outcome"))
        })
        .collect();
    let expect = |who: &str, action: &str, target: &str, outcome: &str| {
        (
            who.to_owned(),
            action.to_owned(),
            target.to_owned(),
            outcome.to_owned(),
        )
    };
    assert_eq!(
        summary[..4],
        [
            expect("ops", "plugin_upload", "checker", "ok"),
            expect("team-a", "kv_get", "team-b/x", "denied"),
            expect("unknown", "kv_get", "a", "denied"),
            expect("team-a", "audit_read", "/v1/admin/audit", "denied"),
        ]
    );
    assert_eq!(records[0]["request_id"], "upload-1");
    assert_eq!(records[0]["peer"], "127.0.0.1");
    // The plugin's version record names the same request.
    let described = call(&c, ADMIN, "GET", "/v1/admin/plugins/checker", "").await;
    assert!(described
        .body_text()
        .contains("\"request_id\":\"upload-1\""));
    // Pages, and the trail outlives a kill -9: numbering goes on.
    let first = audit_records(&c, "limit=1", 1).await;
    assert_eq!(first["records"].as_array().unwrap().len(), 1);
    let next = first["next"].as_u64().unwrap();
    let second = audit_records(&c, &format!("after={next}&limit=1"), 1).await;
    assert_eq!(second["records"][0]["seq"].as_u64(), Some(next + 1));
    let last_seq = records.last().unwrap()["seq"].as_u64().unwrap();
    server.kill9();
    let server = Server::start_with(&data, Options::default().config(CONFIG));
    let c = server.client();
    assert_eq!(
        call(&c, TEAM_A, "DELETE", "/v1/kv/team-b/x", "")
            .await
            .status,
        403
    );
    let after = audit_records(&c, &format!("after={last_seq}"), 1).await;
    let new = &after["records"].as_array().unwrap()[0];
    assert!(new["seq"].as_u64().unwrap() > last_seq);
    let before = audit_records(&c, "", 4).await;
    assert_eq!(before["records"][0]["action"], "plugin_upload");
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_past_its_rate_or_in_flight_bound_gets_429_and_others_go_on() {
    let config = r#"
[auth]
tokens = [
  { name = "ops", token = "admin-token-0123456789", role = "admin" },
  { name = "bursty", token = "bursty-token-0123456789", role = "read", rate_per_second = 1, burst = 3 },
  { name = "narrow", token = "narrow-token-0123456789", role = "read", max_in_flight = 1 },
]
"#;
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(&data, Options::default().config(config));
    let c = server.client();
    let bursty = "Bearer bursty-token-0123456789";
    for _ in 0..3 {
        assert_eq!(call(&c, bursty, "GET", "/v1/kv/a", "").await.status, 404);
    }
    let r = call(&c, bursty, "GET", "/v1/kv/a", "").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "too_many_requests");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    // Another token is not held back.
    assert_eq!(call(&c, ADMIN, "GET", "/v1/kv/a", "").await.status, 404);
    // A long poll holds narrow's one slot until it is answered.
    let narrow = "Bearer narrow-token-0123456789";
    let poll = {
        let c = c.clone();
        tokio::spawn(async move { call(&c, narrow, "GET", "/v1/changes?wait=30s", "").await })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = call(&c, narrow, "GET", "/v1/kv/a", "").await;
        if r.status == 429 {
            assert!(r.body_text().contains("max_in_flight"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the long poll never held the slot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(call(&c, ADMIN, "PUT", "/v1/kv/a", "1").await.status, 201);
    assert_eq!(poll.await.unwrap().status, 200);
    assert_eq!(call(&c, narrow, "GET", "/v1/kv/a", "").await.status, 200);
    let metrics = call(&c, ADMIN, "GET", "/metrics", "").await.body_text();
    assert!(
        metrics.contains("exdaas_token_limited_total{token=\"bursty\",limit=\"rate\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("exdaas_token_limited_total{token=\"narrow\",limit=\"in_flight\"}"));
    let trail = audit_records(&c, "", 2).await;
    let limited: Vec<&serde_json::Value> = trail["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == 429)
        .collect();
    assert!(limited.iter().any(|r| r["who"] == "bursty"));
    server.stop();
}
