//! Every `/v1` endpoint and status code, including each kind of bad input.
#![allow(clippy::unwrap_used)]

mod common;

use common::{temp_data_dir, Server};

#[tokio::test(flavor = "multi_thread")]
async fn put_get_replace_delete_cycle() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();

    let r = c
        .put_json("/v1/kv/users/1", r#"{"name":"ada","age":36}"#)
        .await;
    assert_eq!(r.status, 201);
    let v1 = r.json()["version"].as_u64().unwrap();
    assert_eq!(r.json()["key"], "users/1");
    assert_eq!(r.header("etag").unwrap(), format!("\"{v1}\""));

    let r = c.get("/v1/kv/users/1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"name":"ada","age":36}));
    assert_eq!(r.header("etag").unwrap(), format!("\"{v1}\""));
    assert_eq!(r.header("content-type").unwrap(), "application/json");

    // Percent-encoded slash is the same key.
    assert_eq!(c.get("/v1/kv/users%2F1").await.status, 200);

    // Replace: 200 and a new version.
    let r = c
        .put_json("/v1/kv/users/1", r#"{"name":"ada","age":37}"#)
        .await;
    assert_eq!(r.status, 200);
    let v2 = r.json()["version"].as_u64().unwrap();
    assert!(v2 > v1);

    // Same bytes again: acknowledged, version unchanged.
    let r = c
        .put_json("/v1/kv/users/1", r#"{"name":"ada","age":37}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"].as_u64().unwrap(), v2);

    // HEAD: same headers, no body.
    let r = c.send("HEAD", "/v1/kv/users/1", &[], b"").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag").unwrap(), format!("\"{v2}\""));
    assert_eq!(r.header("content-length").unwrap(), "23");

    // Conditional GET.
    let etag = format!("\"{v2}\"");
    let r = c
        .send("GET", "/v1/kv/users/1", &[("if-none-match", &etag)], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = c
        .send("GET", "/v1/kv/users/1", &[("if-none-match", "\"1\"")], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    let r = c.delete("/v1/kv/users/1").await;
    assert_eq!(r.status, 204);
    let r = c.get("/v1/kv/users/1").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "not_found");
    let r = c.delete("/v1/kv/users/1").await;
    assert_eq!(r.status, 404);

    // Re-create: a version never used before for this key.
    let r = c.put_json("/v1/kv/users/1", r#"{"name":"ada"}"#).await;
    assert_eq!(r.status, 201);
    assert!(r.json()["version"].as_u64().unwrap() > v2);
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_writes() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let ct = ("content-type", "application/json");

    let r = c
        .send("PUT", "/v1/kv/k", &[ct, ("if-none-match", "*")], b"1")
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    let v = r.json()["version"].as_u64().unwrap();
    let r = c
        .send("PUT", "/v1/kv/k", &[ct, ("if-none-match", "*")], b"2")
        .await
        .unwrap();
    assert_eq!(r.status, 412);
    assert_eq!(r.error_code(), "precondition_failed");

    let stale = format!("\"{}\"", v + 100);
    let r = c
        .send("PUT", "/v1/kv/k", &[ct, ("if-match", &stale)], b"3")
        .await
        .unwrap();
    assert_eq!(r.status, 412);
    let good = format!("\"{v}\"");
    let r = c
        .send("PUT", "/v1/kv/k", &[ct, ("if-match", &good)], b"4")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let v2 = r.json()["version"].as_u64().unwrap();
    // The old tag no longer matches.
    let r = c
        .send("PUT", "/v1/kv/k", &[ct, ("if-match", &good)], b"5")
        .await
        .unwrap();
    assert_eq!(r.status, 412);
    assert_eq!(c.get("/v1/kv/k").await.body, "4");

    // If-Match on an absent key, and If-Match: *.
    let r = c
        .send("PUT", "/v1/kv/absent", &[ct, ("if-match", "*")], b"1")
        .await
        .unwrap();
    assert_eq!(r.status, 412);
    let r = c
        .send("PUT", "/v1/kv/k", &[ct, ("if-match", "*")], b"6")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let v3 = r.json()["version"].as_u64().unwrap();
    assert!(v3 > v2);

    // Conditional delete.
    let r = c
        .send("DELETE", "/v1/kv/k", &[("if-match", &good)], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 412);
    let tag = format!("\"{v3}\"");
    let r = c
        .send("DELETE", "/v1/kv/k", &[("if-match", &tag)], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 204);

    // Malformed conditions are 400; well-formed ones that cannot match are
    // just false (RFC 9110): "x" is no version of ours.
    for (name, value) in [("if-match", "3"), ("if-none-match", "W/3")] {
        let r = c
            .send("PUT", "/v1/kv/k", &[ct, (name, value)], b"1")
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{name}: {value}");
        assert_eq!(r.error_code(), "invalid_header");
    }
    let put = |headers: Vec<(&'static str, String)>| {
        let c = c.clone();
        async move {
            let mut all: Vec<(&str, &str)> = vec![ct];
            all.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            c.send("PUT", "/v1/kv/rfc", &all, b"1").await.unwrap()
        }
    };
    let created = put(vec![]).await;
    let current = created.header("etag").unwrap().to_owned();
    let version = current.trim_matches('"').to_owned();
    assert_eq!(put(vec![("if-match", "\"abc\"".into())]).await.status, 412);
    assert_eq!(
        put(vec![("if-none-match", current.clone())]).await.status,
        412
    );
    assert_eq!(
        put(vec![("if-none-match", format!("W/\"{version}\""))])
            .await
            .status,
        412
    );
    assert_eq!(
        put(vec![("if-none-match", "\"999999\"".into())])
            .await
            .status,
        200
    );
    // GET: weak comparison for If-None-Match, lists, and If-Match.
    let after = c.get("/v1/kv/rfc").await.header("etag").unwrap().to_owned();
    let v = after.trim_matches('"').to_owned();
    for inm in [format!("W/\"{v}\""), format!("\"9\", W/\"{v}\"")] {
        let r = c
            .send("GET", "/v1/kv/rfc", &[("if-none-match", &inm)], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 304, "{inm}");
    }
    let r = c
        .send("GET", "/v1/kv/rfc", &[("if-match", "\"1\"")], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 412);
    let r = c
        .send("GET", "/v1/kv/rfc", &[("if-match", &after)], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // Both headers: If-Match first, then If-None-Match.
    let both = vec![
        ("if-match", after.clone()),
        ("if-none-match", "\"1\"".to_owned()),
    ];
    assert_eq!(put(both).await.status, 200);
    // DELETE honours If-None-Match too.
    let r = c
        .send("DELETE", "/v1/kv/rfc", &[("if-none-match", "*")], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 412);
    // HEAD of the backup answers like GET, without the backup.
    let r = c.send("HEAD", "/v1/admin/backup", &[], b"").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_clear_errors() {
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(
        &data,
        common::Options::default()
            .env("EXDAAS_LIMITS__MAX_KEY_BYTES", "16")
            .env("EXDAAS_LIMITS__MAX_VALUE_BYTES", "64")
            .env("EXDAAS_SERVER__MAX_BODY_BYTES", "128"),
    );
    let c = server.client();
    let ct = ("content-type", "application/json");

    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Vec<u8>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "PUT",
            "/v1/kv/k",
            vec![ct],
            b"{\"a\":".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "PUT",
            "/v1/kv/k",
            vec![ct],
            b"".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "PUT",
            "/v1/kv/k",
            vec![ct],
            b"{} {}".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "PUT",
            "/v1/kv/k",
            vec![("content-type", "text/plain")],
            b"1".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "PUT",
            "/v1/kv/k",
            vec![],
            b"1".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "PUT",
            "/v1/kv/k",
            vec![ct],
            format!("\"{}\"", "x".repeat(80)).into_bytes(),
            413,
            "value_too_large",
        ),
        (
            "PUT",
            "/v1/kv/k",
            vec![ct],
            format!("\"{}\"", "x".repeat(200)).into_bytes(),
            413,
            "body_too_large",
        ),
        (
            "PUT",
            "/v1/kv/this-key-is-far-too-long",
            vec![ct],
            b"1".to_vec(),
            400,
            "invalid_key",
        ),
        (
            "PUT",
            "/v1/kv/a%0Ab",
            vec![ct],
            b"1".to_vec(),
            400,
            "invalid_key",
        ),
        (
            "PUT",
            "/v1/kv/%FF",
            vec![ct],
            b"1".to_vec(),
            400,
            "invalid_key",
        ),
        ("GET", "/v1/kv/", vec![], vec![], 200, ""),
        (
            "GET",
            "/v1/kv?limit=0",
            vec![],
            vec![],
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/kv?limit=5000",
            vec![],
            vec![],
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/kv?values=perhaps",
            vec![],
            vec![],
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/kv?colour=blue",
            vec![],
            vec![],
            400,
            "invalid_query",
        ),
        (
            "POST",
            "/v1/kv",
            vec![ct],
            b"nope".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/kv",
            vec![("content-type", "application/x-www-form-urlencoded")],
            b"a=1".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "PATCH",
            "/v1/kv/k",
            vec![ct],
            b"1".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "OPTIONS",
            "/v1/kv/k",
            vec![],
            vec![],
            405,
            "method_not_allowed",
        ),
        (
            "DELETE",
            "/v1/kv",
            vec![],
            vec![],
            405,
            "method_not_allowed",
        ),
        ("POST", "/health", vec![], vec![], 405, "method_not_allowed"),
        ("GET", "/nothing/here", vec![], vec![], 404, "not_found"),
        ("GET", "/v1/kvx", vec![], vec![], 404, "not_found"),
    ];
    for (method, path, headers, body, status, code) in cases {
        let r = c.send(method, path, &headers, &body).await.unwrap();
        assert_eq!(
            r.status,
            status,
            "{method} {path}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        if !code.is_empty() {
            assert_eq!(r.error_code(), code, "{method} {path}");
            assert!(!r.json()["error"]["message"].as_str().unwrap().is_empty());
        }
    }
    let r = c.send("OPTIONS", "/v1/kv/k", &[], b"").await.unwrap();
    assert_eq!(
        r.header("allow").unwrap(),
        "GET, HEAD, PUT, PATCH, POST, DELETE"
    );

    // Nothing above was stored.
    let r = c.get("/v1/kv").await;
    assert_eq!(r.json()["items"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn server_assigned_keys() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    // A client-written key in the id space is never overwritten.
    c.put_json("/v1/kv/2", r#""mine""#).await;
    let mut keys = Vec::new();
    for _ in 0..3 {
        let r = c.post_json("/v1/kv", r#"{"color":"blue"}"#).await;
        assert_eq!(r.status, 201);
        let key = r.json()["key"].as_str().unwrap().to_owned();
        assert_eq!(r.header("location").unwrap(), format!("/v1/kv/{key}"));
        assert!(r.json()["version"].as_u64().is_some());
        keys.push(key);
    }
    // The counter also moves past ids that clients took themselves.
    assert_eq!(keys, ["3", "4", "5"]);
    assert_eq!(c.get("/v1/kv/2").await.body, "\"mine\"");
    assert_eq!(c.get("/v1/kv/3").await.json()["color"], "blue");
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_merges_shards_in_order_with_pages() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let mut expected = Vec::new();
    for i in 0..25 {
        let key = format!("item/{i:03}");
        c.put_json(&format!("/v1/kv/{key}"), &format!("{{\"n\":{i}}}"))
            .await;
        expected.push(key);
    }
    c.put_json("/v1/kv/other", "1").await;

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/v1/kv?prefix=item%2F&limit=10&values=true".to_owned();
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", a.replace('/', "%2F")));
        }
        let page = c.get(&path).await.json();
        for item in page["items"].as_array().unwrap() {
            let key = item["key"].as_str().unwrap().to_owned();
            let n: usize = key[5..].parse().unwrap();
            assert_eq!(item["value"]["n"], n);
            assert!(item["version"].as_u64().is_some());
            seen.push(key);
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, expected);

    let all = c.get("/v1/kv").await.json();
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 26);
    assert!(items[0].get("value").is_none());
    assert_eq!(all["next"], serde_json::Value::Null);
    assert_eq!(items[25]["key"], "other");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_status() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let r = server.client().get("/health").await;
    assert_eq!(r.status, 200);
    let status = r.json()["status"].as_str().unwrap().to_owned();
    assert!(status == "ok" || status == "warming", "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_of_large_values_are_paged_by_size() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let big = format!("\"{}\"", "v".repeat(1_000_000));
    let mut expected: Vec<String> = (0..12).map(|i| format!("big/{i:02}")).collect();
    for key in &expected {
        assert_eq!(c.put_json(&format!("/v1/kv/{key}"), &big).await.status, 201);
    }
    expected.sort();
    // Keys only: one page, whatever the values weigh.
    let r = c.get("/v1/kv?prefix=big/&limit=1000").await.json();
    assert_eq!(r["items"].as_array().unwrap().len(), 12);
    assert!(r["next"].is_null());
    // With values: several pages of bounded size, every key exactly once, in order.
    let mut seen = Vec::new();
    let mut path = "/v1/kv?prefix=big/&limit=1000&values=true".to_owned();
    for _ in 0..12 {
        let r = c.get(&path).await;
        assert!(
            r.body.len() < 12_000_000,
            "a page of {} bytes",
            r.body.len()
        );
        let page = r.json();
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["value"].as_str().unwrap().len(), 1_000_000);
            seen.push(item["key"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/kv?prefix=big/&limit=1000&values=true&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, expected);
}
