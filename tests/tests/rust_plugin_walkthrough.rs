//! `guest-sdk/README.md`'s path for a Rust plugin author, followed as
//! written: its `Cargo.toml`, `src/lib.rs` and vectors blocks make a new
//! crate, which is built for wasm with the toolchain the README names,
//! tested with `exdaas plugin test`, uploaded in shadow mode, watched and
//! promoted. A README whose steps stop working fails here.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use common::{repo_root, run_cli, temp_data_dir, Server};
use serde_json::json;

/// The fenced block right after `<!-- walkthrough: NAME -->`.
fn block(readme: &str, name: &str) -> String {
    let marker = format!("<!-- walkthrough: {name} -->");
    let after = &readme[readme
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker}"))..];
    let start = after.find("```").unwrap();
    let body = &after[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_owned()
}

/// `cargo ARGS` in `dir` with the toolchain the README's step 1 gives (as
/// scripts/build-plugins.sh picks it).
fn cargo(dir: &Path, args: &[&str]) {
    let target = "wasm32-unknown-unknown";
    let rustup = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == target)
        })
        .unwrap_or(false);
    let mut cargo = if rustup {
        Command::new("cargo")
    } else {
        let mut debian = Command::new("/usr/bin/cargo");
        debian.env("RUSTC", "/usr/bin/rustc");
        debian.env("RUSTDOC", "/usr/bin/rustdoc");
        debian
    };
    let out = cargo
        .current_dir(dir)
        .env_remove("RUSTFLAGS")
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .args(args)
        .arg("--offline")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo {args:?} fails on the README's crate:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_walkthrough_builds_tests_uploads_and_promotes() {
    let readme = std::fs::read_to_string(repo_root().join("guest-sdk/README.md")).unwrap();
    let (root, data) = temp_data_dir();
    let krate = root.path().join("email-check");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    let sdk = repo_root().join("guest-sdk");
    let manifest =
        block(&readme, "Cargo.toml").replace("/path/to/exdaas/guest-sdk", sdk.to_str().unwrap());
    std::fs::write(krate.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(krate.join("src/lib.rs"), block(&readme, "src/lib.rs")).unwrap();
    cargo(&krate, &["test"]);
    cargo(
        &krate,
        &["build", "--release", "--target", "wasm32-unknown-unknown"],
    );
    let module = krate.join("target/wasm32-unknown-unknown/release/email_check.wasm");
    assert!(
        module.exists(),
        "the README says the module lands at {}",
        module.display()
    );
    let vectors = block(&readme, "vectors");
    std::fs::write(module.with_file_name("email_check.vectors.json"), &vectors).unwrap();
    let (code, out, err) = run_cli(
        root.path(),
        &["plugin", "test", module.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "exdaas plugin test: {out}{err}");

    let server = Server::start(&data);
    let c = server.client();
    let wasm = std::fs::read(&module).unwrap();
    let form = json!({
        "module_base64": base64::engine::general_purpose::STANDARD.encode(&wasm),
        "prefixes": ["users/"],
        "mode": "shadow",
        "vectors": serde_json::from_str::<serde_json::Value>(&vectors).unwrap(),
    });
    let r = c
        .put_json("/v1/admin/plugins/email-check", &form.to_string())
        .await;
    assert!(r.status == 200 || r.status == 201, "{:?}", r.json());
    // In shadow mode a bad write goes through and is recorded.
    assert_eq!(
        c.put_json("/v1/kv/users/1", r#"{"email":"ada"}"#)
            .await
            .status,
        201
    );
    let shadow = c.get("/v1/plugins/email-check/shadow").await.json();
    assert_eq!(shadow["would_reject"], 1, "{shadow}");
    let r = c
        .post_json("/v1/admin/plugins/email-check/promote", "")
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let r = c.put_json("/v1/kv/users/2", r#"{"email":"ada"}"#).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["error"]["reason"], "bad_email");
    let r = c
        .put_json("/v1/kv/users/2", r#"{"email":"ada@example.com"}"#)
        .await;
    assert_eq!(r.status, 201);
}
