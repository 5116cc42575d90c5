//! SIGTERM under load: the server stops accepting, finishes what it took,
//! drains the writers, exits 0, and no acknowledged write is lost.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{temp_data_dir, Server};

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_under_load_loses_nothing() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (client, acked) = (server.client(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut conn) = client.connect().await else {
                return;
            };
            for n in 0.. {
                let key = format!("g{w}-{n}");
                let r = conn
                    .send(
                        "PUT",
                        &format!("/v1/kv/{key}"),
                        &[("content-type", "application/json")],
                        n.to_string().as_bytes(),
                    )
                    .await;
                match r {
                    Ok(r) if r.status == 201 => {
                        acked
                            .lock()
                            .unwrap()
                            .insert(key, r.json()["version"].as_u64().unwrap());
                    }
                    // Refused while stopping, or connection closed: not acknowledged.
                    Ok(r) => assert_eq!(r.status, 503, "{:?}", r.body),
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    for t in tasks {
        t.await.unwrap();
    }
    let server = Server::start(&data);
    assert!(server.log.lock().unwrap().contains("exdaas started"));
    let c = server.client();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50);
    let mut conn = c.connect().await.unwrap();
    for (key, version) in acked {
        let r = conn
            .send("GET", &format!("/v1/kv/{key}"), &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{key} lost");
        assert_eq!(r.header("etag").unwrap(), format!("\"{version}\""));
    }
}
