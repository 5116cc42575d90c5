//! Hostile and careless client input, each case as it was reported: the
//! server answers a 4xx JSON error that names the broken rule, stores
//! nothing it should not, and keeps running.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{temp_data_dir, Options, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes on a fresh connection and returns (status, body), or
/// `None` if the server closed without an answer.
async fn raw(addr: &str, request: &[u8]) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "no answer within 20 s");
    let text = String::from_utf8_lossy(&out);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => out[at + 4..].to_vec(),
        None => Vec::new(),
    };
    Some((status, body))
}

fn error_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    v["error"]["code"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn deeply_nested_parameters_are_refused_not_fatal() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    assert_eq!(
        c.post_json("/api", r#"{"id":1,"data":{"a":1}}"#)
            .await
            .status,
        200
    );
    let deep = "[a]".repeat(5_000);
    let cases = [
        format!("GET /api/cmd?id=1&cmd[query]=ONLY&cmd[keys]{deep}=x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        format!("GET /api?id=1&x{deep}=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ];
    for request in &cases {
        let (status, body) = raw(&server.addr, request.as_bytes()).await.unwrap();
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
        assert_eq!(error_code(&body), "invalid_query");
        assert!(body.len() < 2048, "error body of {} bytes", body.len());
    }
    let form = format!("id=1&data{deep}=1");
    let r = c
        .send(
            "POST",
            "/api",
            &[("content-type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "invalid_body");
    // Still alive, data intact.
    assert_eq!(c.get("/api?id=1").await.json()["data"]["a"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_i_json_is_stored_on_every_write_route() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let deep = format!("{}1{}", "[".repeat(65), "]".repeat(65));
    let cases: [(&[u8], &str); 7] = [
        (b"{\"a\":\"\xff\"}", "invalid_utf8"),
        (br#"{"a":"\ud800"}"#, "lone_surrogate"),
        (br#"{"a":1e400}"#, "number_out_of_range"),
        (deep.as_bytes(), "too_deep"),
        (
            br#"{"email":"a@x","age":3,"age":"notanumber"}"#,
            "duplicate_member",
        ),
        (br#"{"a":{"b":1,"\u0062":2}}"#, "duplicate_member"),
        (b"{\"a\":1} x", "invalid_json"),
    ];
    let json = [("content-type", "application/json")];
    for (value, code) in cases {
        let shown = String::from_utf8_lossy(value);
        let r = c.send("PUT", "/v1/kv/k", &json, value).await.unwrap();
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, code),
            "PUT {shown}"
        );
        let r = c.send("POST", "/v1/kv", &json, value).await.unwrap();
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, code),
            "POST {shown}"
        );
        if value.starts_with(b"{") && code != "invalid_json" {
            let mut body = b"{\"id\":5,\"data\":".to_vec();
            body.extend_from_slice(value);
            body.push(b'}');
            let r = c.send("POST", "/api", &json, &body).await.unwrap();
            assert_eq!(
                (r.status, r.error_code().as_str()),
                (400, code),
                "/api {shown}"
            );
        }
    }
    assert_eq!(c.get("/v1/kv/k").await.status, 404);
    assert_eq!(
        c.get("/v1/kv?limit=10").await.json()["items"],
        serde_json::json!([])
    );
    assert!(c.get("/api?id=5").await.json()["data"].is_null());
    // The deepest allowed nesting is stored and read back by the ExDaas reader.
    let allowed = format!(
        "{}{}",
        "{\"a\":".repeat(64),
        "1".to_owned() + &"}".repeat(64)
    );
    assert_eq!(c.put_json("/v1/kv/5", &allowed).await.status, 201);
    assert!(!c.get("/api?id=5").await.json()["data"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_without_a_query_name_are_client_errors() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    for path in [
        "/api/cmd?id=1",
        "/api/cmd?id=1&cmd[query][]=ONLY",
        "/api/cmd?id=1&cmd[query][x]=ONLY",
        "/api/cmd?id=1&cmd[query]=",
    ] {
        let r = c.get(path).await;
        assert_eq!(r.status, 400, "{path}: {:?}", r.body);
        assert_eq!(r.error_code(), "invalid_query");
    }
    // The documented 500 stays for an unknown name.
    assert_eq!(c.get("/api/cmd?id=1&cmd[query]=NOPE").await.status, 500);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_body_releases_its_connection() {
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(
        &data,
        Options::default()
            .env("EXDAAS_SERVER__HEADER_READ_TIMEOUT_MS", "2000")
            .env("EXDAAS_SERVER__BODY_READ_TIMEOUT_MS", "1000")
            .env("EXDAAS_SERVER__MAX_CONNECTIONS", "4"),
    );
    let started = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(&server.addr).await.unwrap();
        s.write_all(
            b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":",
        )
        .await
        .unwrap();
        stalled.push(s);
    }
    for mut s in stalled {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "a stalled body kept its connection");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("body_timeout"), "{text}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // The slots are free again.
    assert_eq!(server.client().get("/health").await.status, 200);
    assert_eq!(server.client().get("/v1/kv/k").await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_disconnected() {
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(
        &data,
        Options::default()
            .env("EXDAAS_SERVER__WRITE_TIMEOUT_MS", "1000")
            .env("EXDAAS_SERVER__MAX_CONNECTIONS", "2"),
    );
    let c = server.client();
    let value = format!("\"{}\"", "x".repeat(1_000_000));
    for i in 0..24 {
        assert!(
            c.put_json(&format!("/v1/kv/big{i:02}"), &value)
                .await
                .status
                < 300
        );
    }
    // Asks for ~24 MB and reads none of it.
    let mut s = TcpStream::connect(&server.addr).await.unwrap();
    s.write_all(b"GET /v1/kv?values=true&limit=100 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Not reading for three write timeouts is the behaviour under test.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The server has given up on the connection, and still serves others.
    assert_eq!(c.get("/health").await.status, 200);
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => {
                panic!("the connection is still open after the write timeout ({total} bytes read)")
            }
        }
    }
    assert!(
        total < 24_000_000,
        "the whole response ({total} bytes) was sent"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_clients_of_a_server_without_tokens_are_told_how_to_configure_it() {
    // This machine's clients are loopback clients, so only the refusal text
    // and the opt-out setting can be checked end to end here; the address
    // rule itself is unit-tested in the server's auth module.
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(
        &data,
        Options::default().env("EXDAAS_AUTH__ALLOW_OPEN_REMOTE", "false"),
    );
    assert_eq!(server.client().put_json("/v1/kv/a", "1").await.status, 201);
    assert!(server
        .log
        .lock()
        .unwrap()
        .contains("only clients on this machine are served"));
}
