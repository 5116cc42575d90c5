//! The deployment files: the container image's configuration is valid and
//! listens where the Dockerfile says, the Dockerfile keeps its promises
//! (non-root, /data volume, port 4000, health check through the binary),
//! the systemd unit points at real commands, and `exdaas health` works.
#![allow(clippy::unwrap_used)]

mod common;

use common::{repo_root, run_cli, temp_data_dir, Server};

#[test]
fn container_config_is_valid() {
    let root = repo_root();
    let (code, out, err) = run_cli(
        &root,
        &["check-config", "--config", "config/container.toml"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen = \"0.0.0.0:4000\""), "{out}");
    assert!(out.contains("data_dir = \"/data\""), "{out}");
}

#[test]
fn dockerfile_keeps_its_promises() {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    for needle in [
        "AS build",
        "FROM debian:bookworm-slim",
        "cargo build --profile dist --locked --bin exdaas",
        "COPY --from=build /src/target/dist/exdaas /usr/local/bin/exdaas",
        "scripts/build-plugins.sh",
        "USER exdaas",
        "VOLUME /data",
        "EXPOSE 4000",
        "HEALTHCHECK",
        "\"health\"",
        "COPY config/container.toml /etc/exdaas/exdaas.toml",
    ] {
        assert!(text.contains(needle), "Dockerfile lacks {needle:?}");
    }
    // The scripts it runs exist and are executable.
    let script = repo_root().join("scripts/build-plugins.sh");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(script).unwrap().permissions());
    assert!(mode & 0o111 != 0);
}

#[test]
fn systemd_unit_uses_real_commands() {
    let text = std::fs::read_to_string(repo_root().join("config/exdaas.service")).unwrap();
    assert!(text.contains("ExecStart=/usr/local/bin/exdaas --config /etc/exdaas/exdaas.toml serve"));
    assert!(text.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(text.contains("KillSignal=SIGTERM"));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_command_reports_a_running_server() {
    let (root, data) = temp_data_dir();
    let server = Server::start(&data);
    let (code, out, err) = run_cli(root.path(), &["health", "--server", &server.addr], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("status"), "{out}");
    let addr = server.addr.clone();
    assert!(server.stop().success());
    let (code, _, err) = run_cli(root.path(), &["health", "--server", &addr], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn readme_configuration_reference_covers_every_setting() {
    let config = std::fs::read_to_string(repo_root().join("config/exdaas.toml")).unwrap();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let mut section = String::new();
    let mut checked = 0;
    for line in config.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, _)) = line.split_once(" = ").filter(|_| !line.starts_with('#')) {
            let dotted = format!("`{section}.{key}`");
            assert!(
                readme.contains(&dotted),
                "README's configuration reference lacks {dotted}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} settings found");
}
