//! Backups under load restore to one point-in-time cut, also into a
//! different shard count; damaged backups are refused with a line number and
//! restore nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{backup_from_server, run_cli, temp_data_dir, Options, Server};

/// Parses a backup into key -> (version, value).
fn read_backup(path: &std::path::Path) -> BTreeMap<String, (u64, serde_json::Value)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["format"], "exdaas-backup");
    let mut out = BTreeMap::new();
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v.get("end").is_some() {
            assert_eq!(v["records"].as_u64().unwrap() as usize, out.len());
            continue;
        }
        out.insert(
            v["key"].as_str().unwrap().to_owned(),
            (v["version"].as_u64().unwrap(), v["value"].clone()),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_under_load_restores_consistently_into_other_shard_counts() {
    let (root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    for i in 0..200 {
        c.put_json(&format!("/v1/kv/base/{i}"), &format!("{{\"i\":{i}}}"))
            .await;
    }
    let id = c.post_json("/v1/kv", "\"counted\"").await.json()["key"]
        .as_str()
        .unwrap()
        .to_owned();

    // Writers keep going while the backup is taken: each writes its keys in order.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (c, stop) = (c.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut conn = c.connect().await.unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = conn
                    .send(
                        "PUT",
                        &format!("/v1/kv/load/{w}/{n:06}"),
                        &[("content-type", "application/json")],
                        n.to_string().as_bytes(),
                    )
                    .await
                    .unwrap();
                assert_eq!(r.status, 201);
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let file = root.path().join("online.ndjson");
    let (code, out, err) = backup_from_server(root.path(), &file, &server.addr, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("records"), "{out}");
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        assert!(w.await.unwrap() > 0);
    }
    let backup = read_backup(&file);
    for i in 0..200 {
        assert_eq!(backup[&format!("base/{i}")].1["i"], i);
    }
    // The backup is one cut of the global order: each writer acknowledged
    // its keys one after another, so across every shard its keys in the
    // backup are exactly a prefix of what it wrote, none missing.
    for w in 0..8 {
        let mut present: Vec<u64> = backup
            .keys()
            .filter(|k| k.starts_with(&format!("load/{w}/")))
            .map(|k| k.rsplit('/').next().unwrap().parse().unwrap())
            .collect();
        present.sort_unstable();
        let expected: Vec<u64> = (0..present.len() as u64).collect();
        assert_eq!(present, expected, "writer {w}: the backup is not one cut");
    }
    let trailer_seq = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .last()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .unwrap();
    assert!(backup.values().all(|(v, _)| *v <= trailer_seq));

    // Restore into 8 shards and compare everything, versions included.
    let restored_dir = root.path().join("restored");
    let (code, out, err) = run_cli(
        root.path(),
        &[
            "restore",
            "--in",
            file.to_str().unwrap(),
            "--data-dir",
            restored_dir.to_str().unwrap(),
        ],
        &[("SHARD_LIMIT", "8")],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("8 shards"), "{out}");
    assert!(server.stop().success());
    let restored = Server::start_with(&restored_dir, Options::default().env("SHARD_LIMIT", "8"));
    let rc = restored.client();
    let mut conn = rc.connect().await.unwrap();
    for (key, (version, value)) in &backup {
        let r = conn
            .send("GET", &format!("/v1/kv/{key}"), &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{key}");
        assert_eq!(&r.json(), value, "{key}");
        assert_eq!(r.header("etag").unwrap(), format!("\"{version}\""), "{key}");
    }
    // New writes get newer versions; new ids never reuse old ones.
    let v = rc.put_json("/v1/kv/base/0", "0").await.json()["version"]
        .as_u64()
        .unwrap();
    assert!(v > backup["base/0"].0);
    let next: u64 = rc.post_json("/v1/kv", "1").await.json()["key"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(next > id.parse::<u64>().unwrap());

    // An offline backup of the restored directory holds the same data.
    assert!(restored.stop().success());
    let offline = root.path().join("offline.ndjson");
    let (code, _, err) = run_cli(
        root.path(),
        &[
            "backup",
            "--out",
            offline.to_str().unwrap(),
            "--data-dir",
            restored_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let again = read_backup(&offline);
    assert_eq!(again.len(), backup.len() + 1);
}

#[test]
fn damaged_backups_are_refused_and_restore_nothing() {
    let (root, data) = temp_data_dir();
    let good = root.path().join("good.ndjson");
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let server = Server::start(&data);
        rt.block_on(async {
            let c = server.client();
            for i in 0..50 {
                c.put_json(&format!("/v1/kv/k{i}"), "{\"x\":1}").await;
            }
        });
        assert!(server.stop().success());
    }
    let (code, _, err) = run_cli(
        root.path(),
        &[
            "backup",
            "--out",
            good.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&good).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 52);

    let truncated = lines[..30].join("\n") + "\n";
    let half_line = text[..text.len() / 2].to_owned();
    let mut bad_json = lines.clone();
    bad_json[10] = "{\"key\":\"k\",\"version\":1,\"value\":{oops}";
    let mut duplicate = lines.clone();
    duplicate[11] = lines[10];
    let mut wrong_count = lines.clone();
    wrong_count[51] = "{\"end\":true,\"records\":49}";
    let cases = [
        ("truncated", truncated, "line 31"),
        ("half", half_line, "line"),
        ("bad_json", bad_json.join("\n") + "\n", "line 11"),
        ("duplicate", duplicate.join("\n") + "\n", "line 12"),
        ("wrong_count", wrong_count.join("\n") + "\n", "line 52"),
        ("empty", String::new(), "line 1"),
        ("not_backup", "hello\n".to_owned(), "line 1"),
    ];
    for (name, content, expected) in cases {
        let file = root.path().join(format!("{name}.ndjson"));
        std::fs::write(&file, content).unwrap();
        let target = root.path().join(format!("restore-{name}"));
        let (code, _, err) = run_cli(
            root.path(),
            &[
                "restore",
                "--in",
                file.to_str().unwrap(),
                "--data-dir",
                target.to_str().unwrap(),
            ],
            &[],
        );
        assert_ne!(code, 0, "{name} was accepted");
        assert!(
            err.contains(expected) && err.contains(&format!("{name}.ndjson")),
            "{name}: {err}"
        );
        assert!(!target.exists(), "{name}: something was restored");
    }
    // A non-empty target is refused too.
    let (code, _, err) = run_cli(
        root.path(),
        &[
            "restore",
            "--in",
            good.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("not empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reported_values_survive_backup_and_restore_and_failures_leave_no_file() {
    let (root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let values: [(&str, &str); 4] = [
        ("pretty", "{\n  \"name\": \"ada\"\n}\n"),
        ("crlf", "{\"a\":1}\r\n"),
        ("q%22uote", "1"),
        ("back%5Cslash", " [] "),
    ];
    for (key, value) in values {
        assert!(c.put_json(&format!("/v1/kv/{key}"), value).await.status < 300);
    }
    let image = root.path().join("b.ndjson");
    let (code, _, err) = backup_from_server(root.path(), &image, &server.addr, &[]);
    assert_eq!(code, 0, "{err}");
    drop(server);

    let restored = root.path().join("restored");
    let (code, _, err) = run_cli(
        root.path(),
        &[
            "restore",
            "--in",
            image.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ],
        &[("SHARD_LIMIT", "3")],
    );
    assert_eq!(code, 0, "{err}");
    let server = Server::start_with(
        &restored,
        Options::default().env("EXDAAS_STORAGE__SHARDS", "3"),
    );
    let c = server.client();
    for (key, value) in values {
        assert_eq!(
            c.get(&format!("/v1/kv/{key}")).await.body,
            value.as_bytes(),
            "{key}"
        );
    }

    // A backup that cannot be taken leaves nothing behind.
    let failed = root.path().join("failed.ndjson");
    let (code, _, _) = backup_from_server(root.path(), &failed, "127.0.0.1:1", &[]);
    assert_ne!(code, 0);
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("failed"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A command fails with one line that says what to do: a backup of a
/// directory a running server holds names the server and the command to
/// run instead; a backup the server refuses passes its reason on.
#[tokio::test(flavor = "multi_thread")]
async fn cli_failures_say_why_once_and_what_to_do() {
    let (root, data) = temp_data_dir();
    let tokens = r#"
[auth]
tokens = [{ name = "writer", token = "writer-token-0123456789", role = "write" }]
"#;
    let server = Server::start_with(&data, Options::default().config(tokens));
    let out = root.path().join("b.ndjson");
    let (code, _, err) = run_cli(
        root.path(),
        &[
            "backup",
            "--out",
            out.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("in use by another exdaas process"), "{err}");
    assert!(err.contains("--server HOST:PORT"), "{err}");
    assert_eq!(err.lines().count(), 1, "said more than once: {err}");
    let addr = server.url("").trim_start_matches("http://").to_owned();
    let (code, _, err) = backup_from_server(
        root.path(),
        &out,
        &addr,
        &[("EXDAAS_TOKEN", "writer-token-0123456789")],
    );
    assert_ne!(code, 0);
    assert!(err.contains("refused the backup (403)"), "{err}");
    assert!(
        err.contains("admin"),
        "the server's reason is missing: {err}"
    );
    assert_eq!(err.lines().count(), 1, "said more than once: {err}");
    assert!(!out.exists() && !out.with_extension("partial").exists());
}
