//! Start-up refusals and `check-config`: a bad setting stops the server
//! with a message naming the setting and where it came from.
#![allow(clippy::unwrap_used)]

mod common;

use common::{run_cli, temp_data_dir, Server};

#[test]
fn bad_settings_stop_the_server_with_their_origin() {
    let (root, _data) = temp_data_dir();
    let dir = root.path();
    std::fs::write(dir.join("bad.toml"), "[storage]\nshardz = 3\n").unwrap();
    let (code, _, err) = run_cli(dir, &["--config", "bad.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml") && err.contains("shardz"), "{err}");

    let (code, _, err) = run_cli(dir, &["check-config"], &[("EXDAAS_STORAGE__SHARDS", "0")]);
    assert_eq!(code, 2);
    assert!(
        err.contains("storage.shards") && err.contains("EXDAAS_STORAGE__SHARDS"),
        "{err}"
    );

    let (code, _, err) = run_cli(dir, &["check-config"], &[("SHARD_LIMIT", "zero")]);
    assert_eq!(code, 2);
    assert!(err.contains("SHARD_LIMIT"), "{err}");

    let (code, _, err) = run_cli(dir, &["check-config"], &[("EXDAAS_SERVER__BOGUS", "1")]);
    assert_eq!(code, 2);
    assert!(err.contains("EXDAAS_SERVER__BOGUS"), "{err}");

    let (code, _, err) = run_cli(dir, &["--config", "missing.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("missing.toml"), "{err}");

    std::fs::write(
        dir.join("typo.toml"),
        "[server]\nshutdown_timeout_ms = \"soon\"\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(dir, &["check-config", "--config", "typo.toml"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("typo.toml") && err.contains("shutdown_timeout_ms"),
        "{err}"
    );
}

#[test]
fn check_config_prints_effective_settings() {
    let (root, _data) = temp_data_dir();
    let (code, out, err) = run_cli(
        root.path(),
        &["check-config"],
        &[
            ("PORT", "4321"),
            ("DETS_ROOT", "/srv/exdaas"),
            ("SHARD_LIMIT", "6"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:4321\""), "{out}");
    assert!(out.contains("data_dir = \"/srv/exdaas\""), "{out}");
    assert!(out.contains("shards = 6"), "{out}");
}

#[test]
fn a_different_shard_count_is_refused() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    assert!(server.stop().success());
    let (code, _, err) = run_cli(
        data.parent().unwrap(),
        &[],
        &[
            ("EXDAAS_STORAGE__DATA_DIR", data.to_str().unwrap()),
            ("EXDAAS_SERVER__LISTEN", "127.0.0.1:0"),
            ("SHARD_LIMIT", "8"),
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("holds 4 shards") && err.contains("storage.shards is 8"),
        "{err}"
    );
}

#[test]
fn a_busy_port_is_reported() {
    let (_root, data) = temp_data_dir();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let (code, _, err) = run_cli(
        data.parent().unwrap(),
        &[],
        &[
            ("EXDAAS_STORAGE__DATA_DIR", data.to_str().unwrap()),
            ("EXDAAS_SERVER__LISTEN", &addr),
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains(&addr) && err.contains("server.listen"),
        "{err}"
    );
}
