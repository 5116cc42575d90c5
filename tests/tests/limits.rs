//! Resource limits against abusive clients: a slowloris client is cut off
//! while others are served; an endless chunked body gets 413 without the
//! server buffering it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{rss_kib, temp_data_dir, Options, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_is_cut_off_while_others_are_served() {
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(
        &data,
        Options::default().env("EXDAAS_SERVER__HEADER_READ_TIMEOUT_MS", "1000"),
    );
    let mut slow = TcpStream::connect(&server.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let c = server.client();
    let mut cut_off = false;
    let mut buf = [0u8; 512];
    while started.elapsed() < Duration::from_secs(8) {
        // Others are served normally meanwhile.
        assert_eq!(c.get("/health").await.status, 200);
        // One more header byte every 200 ms keeps a naive server waiting forever.
        if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
            cut_off = true;
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            Ok(Ok(_)) => {
                // An error answer (408) before closing also counts.
                cut_off = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(
        cut_off,
        "slow client still connected after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_chunked_body_gets_413_without_memory_growth() {
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(
        &data,
        Options::default().env("EXDAAS_SERVER__MAX_BODY_BYTES", "1048576"),
    );
    let c = server.client();
    c.get("/health").await;
    let before = rss_kib(server.pid());

    let mut s = TcpStream::connect(&server.addr).await.unwrap();
    s.write_all(b"PUT /v1/kv/huge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b' '; 64 * 1024];
        let header = format!("{:x}\r\n", chunk.len());
        let mut sent = 0u64;
        // Up to 256 MiB: far past the limit; stops when the server hangs up.
        while sent < 256 * 1024 * 1024 {
            if wr.write_all(header.as_bytes()).await.is_err()
                || wr.write_all(&chunk).await.is_err()
                || wr.write_all(b"\r\n").await.is_err()
            {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !response.windows(4).any(|w| w == b"\r\n\r\n") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => response.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    drop(rd);
    let sent = writer.await.unwrap();
    assert!(
        sent < 256 * 1024 * 1024,
        "server kept reading the whole body"
    );
    let after = rss_kib(server.pid());
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert_eq!(c.get("/v1/kv/huge").await.status, 404);
    // A lying Content-Length is refused before reading.
    let r = c
        .send(
            "PUT",
            "/v1/kv/liar",
            &[
                ("content-type", "application/json"),
                ("content-length", "999999999"),
            ],
            b"",
        )
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status, 413);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed() {
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(
        &data,
        Options::default().env("EXDAAS_SERVER__HEADER_READ_TIMEOUT_MS", "500"),
    );
    let mut s = TcpStream::connect(&server.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let idle = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection not closed"
    );
    assert!(
        idle.elapsed() >= Duration::from_millis(400),
        "{:?}",
        idle.elapsed()
    );
}

/// The cache's byte bound bounds memory: cached values must not keep the
/// connection read buffers they arrived in alive (each one kilobytes, for a
/// value of a hundred bytes), or a cache of N bytes pins many times N.
#[tokio::test(flavor = "multi_thread")]
async fn cached_values_do_not_pin_request_buffers() {
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(
        &data,
        Options::default().env("EXDAAS_CACHE__CAPACITY_BYTES", "67108864"),
    );
    let client = server.client();
    let value = r#"{"name":"benchmark user","email":"user@example.com","age":42,"tags":["a","b"],"active":true,"x":1}"#;
    // Warm up allocators and threads before the baseline.
    for i in 0..500 {
        assert_eq!(
            client
                .put_json(&format!("/v1/kv/warm{i}"), value)
                .await
                .status,
            201
        );
    }
    let before = rss_kib(server.pid());
    const WRITERS: usize = 8;
    const EACH: usize = 1500;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let client = server.client();
        tasks.push(tokio::spawn(async move {
            let mut conn = client.connect().await.unwrap();
            for i in 0..EACH {
                let path = format!("/v1/kv/w{w}/{i}");
                let headers = [("content-type", "application/json")];
                let r = conn
                    .send("PUT", &path, &headers, value.as_bytes())
                    .await
                    .unwrap();
                assert_eq!(r.status, 201);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let grown_kib = rss_kib(server.pid()).saturating_sub(before);
    // 12,000 values of ~100 bytes: a few MiB with keys, cache and memtable
    // entries; pinned read buffers made it tens of MiB.
    let per_write = grown_kib * 1024 / (WRITERS * EACH) as u64;
    assert!(
        per_write < 1500,
        "resident memory grew {grown_kib} KiB for {} cached writes ({per_write} bytes each)",
        WRITERS * EACH
    );
}
