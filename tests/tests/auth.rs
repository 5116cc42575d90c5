//! Access control: no token, a wrong token, and each role against each
//! class of endpoint; open probes; an open server when no tokens are set.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    backup_from_server, example_plugin, plugin_toml, run_cli, temp_data_dir, Options, Server,
};

const CONFIG: &str = r#"
[auth]
tokens = [
  { name = "reader", token = "reader-token-0123456789", role = "read" },
  { name = "writer", token = "writer-token-0123456789", role = "write" },
  { name = "ops", token = "admin-token-0123456789", role = "admin" },
]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn every_role_on_every_endpoint_class() {
    let (root, data) = temp_data_dir();
    let server = Server::start_with(&data, Options::default().config(CONFIG));
    assert!(server.log.lock().unwrap().contains("access control on"));
    assert!(
        !server.log.lock().unwrap().contains("admin-token"),
        "tokens must never be logged"
    );
    let c = server.client();
    let ct = ("content-type", "application/json");
    // (method, path, body, class): class 0 open, 1 read, 2 write, 3 admin.
    let endpoints: [(&str, &str, &[u8], u8); 12] = [
        ("GET", "/health", b"", 0),
        ("GET", "/ready", b"", 0),
        ("GET", "/v1/kv/k", b"", 1),
        ("GET", "/v1/kv", b"", 1),
        ("GET", "/api?id=1", b"", 1),
        ("GET", "/metrics", b"", 1),
        ("GET", "/v1/plugins", b"", 1),
        ("PUT", "/v1/kv/k", b"1", 2),
        ("POST", "/v1/kv", b"1", 2),
        ("POST", "/api", br#"{"data":{}}"#, 2),
        ("POST", "/v1/admin/plugins/reload", b"", 3),
        ("GET", "/v1/admin/backup", b"", 3),
    ];
    let tokens: [(Option<&str>, u8); 5] = [
        (None, 0),
        (Some("Bearer wrong-token-0123456789"), 0),
        (Some("Bearer reader-token-0123456789"), 1),
        (Some("Bearer writer-token-0123456789"), 2),
        (Some("Bearer admin-token-0123456789"), 3),
    ];
    std::fs::write(data.with_extension("toml"), CONFIG).unwrap();
    for (method, path, body, class) in endpoints {
        for (auth, level) in tokens {
            let mut headers = vec![ct];
            if let Some(a) = auth {
                headers.push(("authorization", a));
            }
            let r = c.send(method, path, &headers, body).await.unwrap();
            let expected_denial = if class == 0 || level >= class {
                None
            } else if level == 0 {
                Some(401)
            } else {
                Some(403)
            };
            match expected_denial {
                Some(status) => {
                    assert_eq!(r.status, status, "{method} {path} with {auth:?}");
                    assert_eq!(
                        r.error_code(),
                        if status == 401 {
                            "unauthorized"
                        } else {
                            "forbidden"
                        }
                    );
                    if status == 401 {
                        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
                    }
                }
                None => assert!(
                    r.status != 401 && r.status != 403,
                    "{method} {path} with {auth:?}: {}",
                    r.status
                ),
            }
        }
    }
    // The backup command passes its token.
    let file = root.path().join("b.ndjson");
    let (code, _, err) = backup_from_server(root.path(), &file, &server.addr, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = backup_from_server(
        root.path(),
        &file,
        &server.addr,
        &[("EXDAAS_TOKEN", "admin-token-0123456789")],
    );
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_tokens_the_server_is_open_and_says_so() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    assert!(server
        .log
        .lock()
        .unwrap()
        .contains("no auth.tokens configured"));
    let r = server
        .client()
        .send("POST", "/v1/admin/plugins/reload", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn short_tokens_are_refused_at_start() {
    let (root, _data) = temp_data_dir();
    std::fs::write(
        root.path().join("c.toml"),
        "[auth]\ntokens = [{ name = \"x\", token = \"short\", role = \"read\" }]\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(root.path(), &["check-config", "--config", "c.toml"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("auth.tokens[0]") && err.contains("16 characters"),
        "{err}"
    );
}

/// A plugin's module path is a server file path: admin tokens see it in
/// `GET /v1/plugins`, read tokens see the rest.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_paths_are_for_admins_only() {
    let (_root, data) = temp_data_dir();
    let module = example_plugin("require_fields");
    let config = format!(
        "{CONFIG}\n{}",
        plugin_toml(
            "fields",
            &module,
            "config = { required = { a = \"number\" } }"
        )
    );
    let server = Server::start_with(&data, Options::default().config(&config));
    let c = server.client();
    let list = |token: &'static str| {
        let c = c.clone();
        async move {
            let auth = format!("Bearer {token}");
            let r = c
                .send(
                    "GET",
                    "/v1/plugins",
                    &[("authorization", auth.as_str())],
                    b"",
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            r.json()["plugins"][0].clone()
        }
    };
    let seen_by_reader = list("reader-token-0123456789").await;
    assert_eq!(seen_by_reader["name"], "fields");
    assert!(seen_by_reader.get("path").is_none(), "{seen_by_reader}");
    let seen_by_admin = list("admin-token-0123456789").await;
    assert_eq!(seen_by_admin["path"], module.display().to_string());
}
