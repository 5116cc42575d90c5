//! `exdaas reshard`: a stopped server's directory is rewritten with another
//! shard count; every key keeps its value and version, the id counter
//! continues, and the old count is then refused.
#![allow(clippy::unwrap_used)]

mod common;

use common::{reshard, run_cli, temp_data_dir, Options, Server};

#[tokio::test(flavor = "multi_thread")]
async fn reshard_keeps_every_key_and_version() {
    let (root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let mut versions = Vec::new();
    for i in 0..150 {
        let r = c
            .put_json(&format!("/v1/kv/r/{i}"), &format!("{{\"i\":{i}}}"))
            .await;
        versions.push(r.json()["version"].as_u64().unwrap());
    }
    let id: u64 = c.post_json("/v1/kv", "1").await.json()["key"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // Refused while the server runs (its stores are locked).
    let (code, _, err) = reshard(root.path(), &data, "8");
    assert_ne!(code, 0, "resharded a live directory");
    assert!(!err.is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().contains("reshard")),
        "{leftovers:?}"
    );
    assert!(server.stop().success());

    let (code, out, err) = reshard(root.path(), &data, "8");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("8 shards") && out.contains("before-reshard"),
        "{out}"
    );

    let (code, _, err) = run_cli(
        root.path(),
        &[],
        &[
            ("EXDAAS_STORAGE__DATA_DIR", data.to_str().unwrap()),
            ("EXDAAS_SERVER__LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("holds 8 shards"), "{err}");

    let server = Server::start_with(&data, Options::default().env("SHARD_LIMIT", "8"));
    let c = server.client();
    for (i, version) in versions.iter().enumerate() {
        let r = c.get(&format!("/v1/kv/r/{i}")).await;
        assert_eq!(r.json()["i"], i);
        assert_eq!(r.header("etag").unwrap(), format!("\"{version}\""));
    }
    let next: u64 = c.post_json("/v1/kv", "2").await.json()["key"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(next > id);
    let bad = reshard(root.path(), &data, "0");
    assert_ne!(bad.0, 0);
}
