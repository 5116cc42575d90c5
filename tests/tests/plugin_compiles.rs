//! Compiling plugins: a compile past its time or memory bound is stopped
//! and refused while the server goes on, and a module is compiled once,
//! not again on every chain change or start.
#![allow(clippy::unwrap_used)]

mod common;

use common::{metric, slow_module, temp_data_dir, test_plugin, upload_module, Options, Server};

const COMPILED: &str = "exdaas_plugin_modules_total{source=\"compiled\"}";
const KEPT: &str = "exdaas_plugin_modules_total{source=\"kept\"}";
const REUSED: &str = "exdaas_plugin_modules_total{source=\"reused\"}";
const REFUSED: &str = "exdaas_plugin_modules_total{source=\"refused\"}";

/// After a refused compile the server still takes writes and uploads.
async fn still_serves(server: &Server) {
    let c = server.client();
    assert_eq!(c.put_json("/v1/kv/after", "{\"a\":1}").await.status, 201);
    let module = std::fs::read(test_plugin("accept.wat")).unwrap();
    let r = upload_module(&c, "fine", &module).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

/// A module within every shape bound whose compile takes longer than
/// `plugin_compile.timeout_ms` is stopped at the bound and refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_compile_past_its_time_bound_is_stopped() {
    let (_root, data) = temp_data_dir();
    let config = "[plugin_compile]\ntimeout_ms = 500\n";
    let server = Server::start_with(&data, Options::default().config(config));
    let c = server.client();
    let r = upload_module(&c, "slow", &slow_module(9_000, 256)).await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 422, "{text}");
    assert!(text.contains("plugin_compile.timeout_ms"), "{text}");
    assert_eq!(metric(&c, REFUSED).await, 1.0);
    // (No upload here: under so short a bound it would prove nothing.)
    assert_eq!(c.put_json("/v1/kv/after", "{\"a\":1}").await.status, 201);
}

/// A compile that needs more memory than `plugin_compile.max_memory_bytes`
/// ends its own process, not the server's.
#[tokio::test(flavor = "multi_thread")]
async fn a_compile_past_its_memory_bound_ends_only_the_compiler() {
    let (_root, data) = temp_data_dir();
    let config = "[plugin_compile]\nmax_memory_bytes = 67108864\n";
    let server = Server::start_with(&data, Options::default().config(config));
    let c = server.client();
    let r = upload_module(&c, "big", &slow_module(9_000, 256)).await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 422, "{text}");
    assert!(text.contains("plugin_compile.max_memory_bytes"), "{text}");
    still_serves(&server).await;
    let peak = metric(&c, "exdaas_plugin_compile_peak_bytes").await;
    assert!(peak > 0.0 && peak < 64.0 * 1024.0 * 1024.0, "{peak}");
}

/// Uploading one plugin compiles that one only; a restart compiles
/// nothing; a kept compiled module that was damaged is compiled again.
#[tokio::test(flavor = "multi_thread")]
async fn each_module_is_compiled_once() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    let accept = std::fs::read(test_plugin("accept.wat")).unwrap();
    // The same plugin with a comment more: another module to compile.
    let other = [accept.clone(), b"\n;; another module\n".to_vec()].concat();
    for (i, (name, module)) in [("accept", accept), ("max_size", other)]
        .into_iter()
        .enumerate()
    {
        let r = upload_module(&c, name, &module).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(metric(&c, COMPILED).await, (i + 1) as f64);
    }
    // The second upload's chain took the first plugin from the running one.
    assert_eq!(metric(&c, REUSED).await, 1.0);
    assert!(metric(&c, "exdaas_plugin_compile_seconds_total").await > 0.0);
    server.stop();

    let server = Server::start(&data);
    let c = server.client();
    assert_eq!(metric(&c, COMPILED).await, 0.0);
    assert_eq!(metric(&c, KEPT).await, 2.0);
    server.stop();

    let compiled = data.join("plugins/compiled");
    let kept: Vec<_> = std::fs::read_dir(&compiled)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    let mut damaged = std::fs::read(&kept[0]).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&kept[0], damaged).unwrap();
    let server = Server::start(&data);
    let c = server.client();
    assert_eq!(metric(&c, COMPILED).await, 1.0);
    assert_eq!(metric(&c, KEPT).await, 1.0);
    let listed = c.get("/v1/plugins").await.json();
    assert_eq!(listed["plugins"].as_array().unwrap().len(), 2, "{listed}");

    // Deleting a plugin drops its compiled module.
    let r = c.delete("/v1/admin/plugins/max_size").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(std::fs::read_dir(&compiled).unwrap().count(), 1);
}
