//! Connections and descriptors: a flood of idle connections never takes
//! the descriptors the storage needs. The server raises its open-files
//! limit, caps connections below it, and refuses those past the cap at
//! once (counted in /metrics) while writes go on.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use common::{temp_data_dir, Options, Server};

/// The value of `exdaas_refused_total{cause="connection_cap"}`.
fn refused(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("exdaas_refused_total{cause=\"connection_cap\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_flood_never_stops_writes() {
    let (_root, data) = temp_data_dir();
    // 256 descriptors in all; the default cap of 10,000 connections would
    // take every one of them.
    let server = Server::start_with(&data, Options::default().nofile(256));
    assert!(server.logged("open-files limit"));
    let c = server.client();
    let mut writer = c.connect().await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Ok(s) = TcpStream::connect(&server.addr).await {
            idle.push(s);
        }
    }
    // Writes go on across log segment rolls (30 KB values, several MiB).
    let value = format!("\"{}\"", "x".repeat(30_000));
    for i in 0..150 {
        let r = writer
            .send(
                "PUT",
                &format!("/v1/kv/k{i}"),
                &[("content-type", "application/json")],
                value.as_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(
            r.status,
            201,
            "write {i}: {:?}\n{}",
            r.body,
            server.log.lock().unwrap()
        );
    }
    drop(idle);
    // Once the flood is gone, new clients are served, and the refusals
    // were counted.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        if let Ok(mut conn) = c.connect().await {
            if let Ok(r) = conn.send("GET", "/metrics", &[], b"").await {
                if r.status == 200 {
                    break String::from_utf8_lossy(&r.body).into_owned();
                }
            }
        }
        assert!(Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused(&metrics) > 0, "{metrics}");
    assert!(metrics.contains("exdaas_connections_cap 144"), "{metrics}");
    assert_eq!(c.get("/ready").await.status, 200);
}
