//! Durability under power loss, not only `kill -9`: the server runs on a
//! FUSE filesystem (`exdaas_tests::powerfs`) that forgets everything not
//! fsynced when told to. Under concurrent PUT, DELETE and POST load (some
//! PUTs with a short TTL, so the sweeper logs expiries among the writes)
//! the server is killed at a random moment and the unsynced data dropped;
//! after a restart every acknowledged write must be there, with its
//! version, no expired value may come back, and no id may be handed out
//! twice.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{seed, Options, Rng, Server};
use exdaas_tests::powerfs::PowerFs;

/// Mounts a fresh power-loss filesystem under a temporary directory.
fn mount() -> (tempfile::TempDir, PowerFs, PathBuf) {
    PowerFs::mount_temp()
        .unwrap_or_else(|e| panic!("cannot mount the test filesystem (is fuse3 installed?): {e}"))
}

#[test]
fn the_filesystem_really_loses_unsynced_writes() {
    let (_root, fs, mnt) = mount();
    let durable = std::fs::File::create(mnt.join("durable")).unwrap();
    std::io::Write::write_all(&mut &durable, b"kept").unwrap();
    durable.sync_all().unwrap();
    std::fs::File::open(&mnt).unwrap().sync_all().unwrap();
    std::fs::write(mnt.join("unsynced"), b"gone").unwrap();
    // Synced contents, but its name was never made durable.
    let nameless = std::fs::File::create(mnt.join("nameless")).unwrap();
    std::io::Write::write_all(&mut &nameless, b"lost").unwrap();
    nameless.sync_all().unwrap();
    drop((durable, nameless));
    std::fs::write(mnt.join("durable"), b"overwritten, not synced").unwrap();

    // The root lost two names, "unsynced" its contents, "durable" its overwrite.
    assert_eq!(fs.power_loss(), 3);
    assert!(!mnt.join("unsynced").exists());
    assert!(!mnt.join("nameless").exists());
    assert_eq!(std::fs::read(mnt.join("durable")).unwrap(), b"kept");
}

/// What the test knows of one key.
#[derive(Clone, Debug, Default)]
struct KeyState {
    /// The last acknowledged state (`None`: absent) and its version.
    acked: Option<String>,
    version: u64,
    /// Whether the acknowledged value was written with a TTL (long past
    /// by the time it is checked).
    expiring: bool,
    /// A write sent but not answered when the power went: it may or may
    /// not have happened.
    in_flight: Option<Option<String>>,
    /// Whether that write has a TTL.
    in_flight_expiring: bool,
}

/// The TTL of the PUTs that expire: the sweeper (every 250 ms) logs their
/// expiries while the load runs.
const TTL: &str = "50ms";

#[derive(Default)]
struct Model {
    keys: HashMap<String, KeyState>,
    /// Ids of acknowledged POSTs with their values.
    posted: HashMap<u64, String>,
}

/// One writer: PUTs and DELETEs on its own keys, and POSTs, until the
/// server goes away.
async fn writer(server: common::Client, w: u64, seed: u64, model: Arc<Mutex<Model>>) {
    let mut rng = Rng(seed ^ (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let Ok(mut conn) = server.connect().await else {
        return;
    };
    for n in 0.. {
        let key = format!("w{w}/k{}", rng.below(12));
        let value = format!("{{\"w\":{w},\"n\":{n}}}");
        let op = rng.below(10);
        let expiring = op == 5;
        let target = match op {
            0..=5 => Some(value.clone()),
            6 | 7 => None,
            _ => {
                let json = [("content-type", "application/json")];
                match conn.send("POST", "/v1/kv", &json, value.as_bytes()).await {
                    Ok(r) if r.status == 201 => {
                        let id = r.json()["key"].as_str().unwrap().parse().unwrap();
                        model.lock().unwrap().posted.insert(id, value);
                        continue;
                    }
                    _ => return,
                }
            }
        };
        {
            let mut model = model.lock().unwrap();
            let state = model.keys.entry(key.clone()).or_default();
            state.in_flight = Some(target.clone());
            state.in_flight_expiring = expiring;
        }
        let path = match expiring {
            true => format!("/v1/kv/{key}?ttl={TTL}"),
            false => format!("/v1/kv/{key}"),
        };
        let answer = match &target {
            Some(v) => {
                let json = [("content-type", "application/json")];
                conn.send("PUT", &path, &json, v.as_bytes()).await
            }
            None => conn.send("DELETE", &path, &[], b"").await,
        };
        let Ok(r) = answer else { return };
        let mut model = model.lock().unwrap();
        let state = model.keys.get_mut(&key).unwrap();
        match r.status {
            200 | 201 => {
                state.version = r.json()["version"].as_u64().unwrap();
                state.acked = target;
                state.expiring = expiring;
            }
            204 | 404 => {
                state.acked = None;
                state.expiring = false;
            }
            _ => return,
        }
        state.in_flight = None;
    }
}

/// Checks the restarted server against what was acknowledged, then makes
/// the model exact again.
async fn verify(server: &Server, model: &Mutex<Model>) {
    let c = server.client();
    let snapshot: Vec<(String, KeyState)> = model
        .lock()
        .unwrap()
        .keys
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, state) in snapshot {
        let r = c.get(&format!("/v1/kv/{key}")).await;
        let mut found = match r.status {
            200 => Some(String::from_utf8(r.body.to_vec()).unwrap()),
            404 => None,
            other => panic!("GET {key}: {other}"),
        };
        // A value written with a TTL has expired by now, whether the
        // sweeper's expiry survived or not.
        let expired = found.is_none() && (state.expiring || state.in_flight_expiring);
        let allowed = found == state.acked || Some(&found) == state.in_flight.as_ref() || expired;
        assert!(
            allowed,
            "key {key}: found {found:?}, acknowledged {state:?}"
        );
        let version: u64 = r
            .header("etag")
            .map_or(0, |t| t.trim_matches('"').parse().unwrap());
        let expiring = found.is_some()
            && ((found == state.acked && state.expiring)
                || (Some(&found) == state.in_flight.as_ref() && state.in_flight_expiring));
        if found.is_some() && found == state.acked && state.in_flight.is_none() {
            assert_eq!(version, state.version, "key {key} lost its version");
        }
        if expiring {
            // Written with a TTL: it goes once its instant is read back
            // (a value whose expiry was lost would stay).
            wait_until_absent(&c, &key).await;
            found = None;
        }
        let mut m = model.lock().unwrap();
        let entry = m.keys.get_mut(&key).unwrap();
        entry.acked = found;
        entry.version = version;
        entry.expiring = false;
        entry.in_flight = None;
    }
    let posted: Vec<(u64, String)> = model
        .lock()
        .unwrap()
        .posted
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    for (id, value) in posted {
        let r = c.get(&format!("/v1/kv/{id}")).await;
        assert_eq!(r.status, 200, "acknowledged POST id {id} is gone");
        assert_eq!(r.body, value.as_bytes(), "POST id {id}");
    }
}

/// Polls `key` until it is absent; fails if it is still there after 10 s.
async fn wait_until_absent(c: &common::Client, key: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.get(&format!("/v1/kv/{key}")).await.status != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "key {key}: a value written with a {TTL} TTL is still there"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_power_loss() {
    let seed = seed();
    eprintln!("power-loss seed {seed} (set EXDAAS_TEST_SEED to repeat)");
    let mut rng = Rng(seed);
    let (_root, fs, mnt) = mount();
    let data = mnt.join("data");
    let model = Arc::new(Mutex::new(Model::default()));
    let mut lost = 0;
    for round in 0..4 {
        let server = Server::start_with(
            &data,
            Options::default().env("EXDAAS_CACHE__WARM_ON_START", "false"),
        );
        verify(&server, &model).await;
        let writers: Vec<_> = (0..6)
            .map(|w| {
                let client = server.client();
                tokio::spawn(writer(client, w + 10 * round, seed, model.clone()))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1200))).await;
        server.kill9();
        for w in writers {
            w.await.unwrap();
        }
        lost += fs.power_loss();
    }
    // The server keeps unsynced state (persy's pages between syncs, files
    // written and not yet synced), so the loss is real, not a no-op.
    assert!(lost > 0, "no power loss dropped anything");
    let server = Server::start(&data);
    verify(&server, &model).await;
    let (acked_keys, max_id) = {
        let m = model.lock().unwrap();
        (m.keys.len(), m.posted.keys().copied().max().unwrap_or(0))
    };
    assert!(acked_keys > 0 && max_id > 0, "the load wrote nothing");
    // Ids handed out after the power losses are new.
    let c = server.client();
    for _ in 0..20 {
        let r = c.post_json("/v1/kv", "1").await;
        let id: u64 = r.json()["key"].as_str().unwrap().parse().unwrap();
        assert!(
            id > max_id,
            "id {id} may have been handed out before (max {max_id})"
        );
    }
    let (file_syncs, dir_syncs) = fs.syncs();
    assert!(file_syncs > 0 && dir_syncs > 0);
    // The sweeper's expiries were logged among the writes that the power
    // losses cut and the restarts replayed.
    let mut from = 1;
    loop {
        let page = c
            .get(&format!("/v1/changes?from={from}&limit=1000&wait=1ms"))
            .await
            .json();
        let events = page["events"].as_array().unwrap();
        if events.iter().any(|e| e["op"] == "expire") {
            break;
        }
        assert!(!events.is_empty(), "no expiry was logged (seed {seed})");
        from = page["next"].as_u64().unwrap();
    }
}

/// A failed log write stops writes on every shard, and `/ready` says so
/// at once for all of them (not only for the shard that tried to write).
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_disk_stops_the_log_and_ready_says_so() {
    let (_root, fs, mnt) = mount();
    let data = mnt.join("data");
    let server = Server::start_with(&data, Options::default().env("EXDAAS_STORAGE__SHARDS", "2"));
    let c = server.client();
    assert_eq!(c.put_json("/v1/kv/before", "1").await.status, 201);
    assert_eq!(c.get("/ready").await.status, 200);

    fs.fail_writes(true);
    let r = c.put_json("/v1/kv/during", "2").await;
    assert_eq!(
        r.status,
        503,
        "{:?}\n{}",
        r.body,
        server.log.lock().unwrap()
    );
    assert_eq!(
        r.error_code(),
        "log_failed",
        "{}",
        server.log.lock().unwrap()
    );
    let ready = c.get("/ready").await;
    assert_eq!(ready.status, 503);
    let ready = ready.json();
    assert_eq!(ready["log"]["ok"], false, "{ready}");
    let shards: Vec<_> = ready["unavailable_shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["shard"].as_u64().unwrap())
        .collect();
    assert_eq!(shards, [0, 1], "{ready}");
    // Reads go on.
    assert_eq!(c.get("/v1/kv/before").await.body, "1");

    fs.fail_writes(false);
    server.kill9();
    let server = Server::start_with(&data, Options::default().env("EXDAAS_STORAGE__SHARDS", "2"));
    let c = server.client();
    assert_eq!(c.get("/v1/kv/before").await.body, "1");
    assert_eq!(c.get("/ready").await.status, 200);
    assert_eq!(c.put_json("/v1/kv/after", "3").await.status, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledged_plugin_upload_survives_power_loss() {
    let (_root, fs, mnt) = mount();
    let data = mnt.join("data");
    let server = Server::start(&data);
    let c = server.client();
    let module = std::fs::read(common::test_plugin("accept.wat")).unwrap();
    let wasm = [("content-type", "application/wasm")];
    for expected in [201, 200] {
        let r = c
            .send("PUT", "/v1/admin/plugins/gate", &wasm, &module)
            .await
            .unwrap();
        assert_eq!(r.status, expected, "{}", String::from_utf8_lossy(&r.body));
    }
    let r = c
        .send("POST", "/v1/admin/plugins/gate/rollback", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    server.kill9();
    fs.power_loss();

    let server = Server::start(&data);
    let record = server.client().get("/v1/admin/plugins/gate").await;
    assert_eq!(
        record.status,
        200,
        "{}",
        String::from_utf8_lossy(&record.body)
    );
    let record = record.json();
    assert_eq!(record["active_version"], 1);
    assert_eq!(record["versions"].as_array().unwrap().len(), 2);
}
