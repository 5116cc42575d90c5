//! Request bodies as a hostile client sends them: codings the server does
//! not decode are refused, and a body trickled a byte per chunk costs the
//! server about its own size in memory, not dozens of times that.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{rss_kib, temp_data_dir, Server};

/// Sends `request` on a new connection and returns the status line and
/// body of the answer.
async fn exchange(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn transfer_codings_the_server_does_not_decode_are_refused() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let body = "2\r\n{}\r\n0\r\n\r\n";
    for coding in ["gzip, chunked", "deflate,chunked", "chunked, chunked, br"] {
        let request = format!(
            "PUT /v1/kv/coded HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: {coding}\r\nConnection: close\r\n\r\n{body}"
        );
        let (status, answer) = exchange(&server.addr, request.as_bytes()).await;
        if status == 400 {
            // hyper refuses some codings itself; either way nothing is stored.
            continue;
        }
        assert_eq!(status, 501, "{coding}: {answer}");
        assert!(answer.contains("unsupported_transfer_coding"), "{answer}");
    }
    assert_eq!(server.client().get("/v1/kv/coded").await.status, 404);
    // Plain chunked bodies are still welcome.
    let request = format!(
        "PUT /v1/kv/plain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}"
    );
    assert_eq!(exchange(&server.addr, request.as_bytes()).await.0, 201);
}

/// Four bodies of 1 MiB, each sent one byte per chunk and held open before
/// its last chunk, cost the server a few MiB, not the 30-40x their size a
/// chunk-per-allocation buffer costs.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_trickled_a_byte_per_chunk_costs_about_its_size() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let before = rss_kib(server.pid());
    const BODY: usize = 1 << 20;
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(&server.addr).await.unwrap();
        let head = "PUT /v1/kv/trickle HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                    Transfer-Encoding: chunked\r\n\r\n";
        s.write_all(head.as_bytes()).await.unwrap();
        // A JSON string of BODY bytes, every byte its own chunk.
        let mut chunks = Vec::with_capacity(BODY * 6);
        for i in 0..BODY {
            let byte = if i == 0 || i == BODY - 1 { b'"' } else { b'x' };
            chunks.extend_from_slice(b"1\r\n");
            chunks.push(byte);
            chunks.extend_from_slice(b"\r\n");
        }
        s.write_all(&chunks).await.unwrap();
        open.push(s);
    }
    // The server has read everything sent once its memory stops growing
    // (polled, not slept on): the bodies are all in, short of their end.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = rss_kib(server.pid());
        if now == last || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    let grown_kib = rss_kib(server.pid()).saturating_sub(before);
    assert!(
        grown_kib < 4 * 1024 * 4,
        "4 x 1 MiB bodies in 1-byte chunks grew the server by {grown_kib} KiB"
    );
    // Each body completes normally.
    for mut s in open {
        s.write_all(b"0\r\n\r\n").await.unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        let status = String::from_utf8_lossy(&head[9..12]).into_owned();
        assert!(status == "201" || status == "200", "{status}");
    }
}
