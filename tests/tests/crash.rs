//! kill -9 under concurrent write load: every write that was acknowledged
//! with a 2xx is present afterwards with its value and version, and nothing
//! is torn.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{temp_data_dir, Server};

/// What clients were told: key -> (version, value) of the last acknowledged write.
type Acked = Arc<Mutex<HashMap<String, (u64, String)>>>;

const WRITERS: usize = 16;
const ROUNDS: usize = 4;

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9() {
    let (_root, data) = temp_data_dir();
    let acked: Acked = Arc::new(Mutex::new(HashMap::new()));
    for round in 0..ROUNDS {
        let server = Server::start(&data);
        verify(&server, &acked).await;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let client = server.client();
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                let Ok(mut conn) = client.connect().await else {
                    return;
                };
                for n in 0.. {
                    // Each writer owns some keys (so it knows the last acked
                    // value) and rewrites them; values are large enough that
                    // a torn write would show.
                    let key = format!("w{w}-k{}", n % 40);
                    let value = format!(
                        "{{\"round\":{round},\"writer\":{w},\"n\":{n},\"pad\":\"{}\"}}",
                        "x".repeat(200 + (n % 7) * 300)
                    );
                    let r = conn
                        .send(
                            "PUT",
                            &format!("/v1/kv/{key}"),
                            &[("content-type", "application/json")],
                            value.as_bytes(),
                        )
                        .await;
                    match r {
                        Ok(r) if r.status == 200 || r.status == 201 => {
                            let version = r.json()["version"].as_u64().unwrap();
                            acked.lock().unwrap().insert(key, (version, value));
                        }
                        Ok(r) => panic!("unexpected status {}", r.status),
                        Err(_) => return, // the server died mid-request: not acknowledged
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(700 + 150 * round as u64)).await;
        server.kill9();
        for t in tasks {
            t.await.unwrap();
        }
    }
    let server = Server::start(&data);
    verify(&server, &acked).await;
    assert!(
        acked.lock().unwrap().len() >= WRITERS * 10,
        "too few writes acknowledged to prove anything"
    );
}

/// Every acknowledged write is there with the acknowledged version and value.
async fn verify(server: &Server, acked: &Acked) {
    let expected: Vec<(String, (u64, String))> =
        acked.lock().unwrap().clone().into_iter().collect();
    let mut conn = server.client().connect().await.unwrap();
    for (key, (version, value)) in expected {
        let r = conn
            .send("GET", &format!("/v1/kv/{key}"), &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{key} lost");
        let stored = String::from_utf8(r.body.to_vec()).unwrap();
        // A write that was in flight at the kill may have landed after the
        // last acknowledged one: then the stored version is newer, and the
        // value must still be a complete document from that same writer.
        let stored_version: u64 = r.header("etag").unwrap().trim_matches('"').parse().unwrap();
        if stored_version == version {
            assert_eq!(stored, value, "{key} differs from what was acknowledged");
        } else {
            assert!(
                stored_version > version,
                "{key} went back from {version} to {stored_version}"
            );
            let doc: serde_json::Value = serde_json::from_str(&stored).expect("torn value");
            assert!(doc["pad"].as_str().unwrap().len() >= 200);
        }
    }
}
