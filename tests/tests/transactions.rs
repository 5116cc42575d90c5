//! Transactions (`POST /v1/txn`) as a client sees them: branches chosen by
//! compares, every operation kind, every error path with nothing written,
//! plugins judging every write, and atomicity under concurrent transfers,
//! across `kill -9` and across power loss.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use common::{plugin_toml, seed, temp_data_dir, Client, Options, Resp, Rng, Server};
use exdaas_tests::powerfs::PowerFs;

async fn txn(c: &Client, body: &Value) -> Resp {
    c.post_json("/v1/txn", &body.to_string()).await
}

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn compares_choose_the_branch_and_every_operation_answers() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    c.put_json("/v1/kv/old", r#"{"keep":false}"#).await;
    let body = json!({
        "compare": [{"key": "flag", "exists": false}],
        "success": [
            {"op": "put", "key": "flag", "value": {"on": true}},
            {"op": "put", "key": "doc", "value": {"a": 1, "list": []}},
            {"op": "patch", "key": "doc", "merge": {"b": 2}},
            {"op": "patch", "key": "doc", "json_patch": [{"op": "add", "path": "/list/-", "value": 3}]},
            {"op": "incr", "key": "counter", "path": "/n", "by": 5},
            {"op": "delete", "key": "old", "return_old": true},
            {"op": "delete", "key": "never"}
        ],
        "failure": [{"op": "put", "key": "flag", "value": {"on": "again"}}]
    });
    let r = txn(&c, &body).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let answer = r.json();
    assert_eq!(answer["succeeded"], true);
    let revision = answer["revision"].as_u64().unwrap();
    assert_eq!(r.header("x-exdaas-revision").unwrap(), revision.to_string());
    let results = answer["results"].as_array().unwrap();
    let outcomes: Vec<&str> = results
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["created", "created", "replaced", "replaced", "created", "deleted", "missing"]
    );
    assert_eq!(results[4]["value"], 5);
    assert_eq!(results[5]["old"], json!({"keep": false}));
    // Every write of the transaction has a revision of its own, the last one
    // is the transaction's, and each key's version is its last write's.
    let mut versions: Vec<u64> = results
        .iter()
        .filter_map(|r| r["version"].as_u64())
        .collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.last(), Some(&revision));
    assert_eq!(versions.len(), 6, "{answer}");
    assert_eq!(
        c.get("/v1/kv/doc").await.json(),
        json!({"a": 1, "b": 2, "list": [3]})
    );
    let doc_version = results[3]["version"].as_u64().unwrap();
    assert_eq!(
        c.get("/v1/kv/doc").await.header("etag").unwrap(),
        format!("\"{doc_version}\"")
    );
    assert_eq!(c.get("/v1/kv/old").await.status, 404);

    // Now the flag exists: the failure branch runs.
    let r = txn(&c, &body).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["succeeded"], false);
    assert_eq!(c.get("/v1/kv/flag").await.json(), json!({"on": "again"}));
    assert_eq!(c.get("/v1/kv/counter").await.json(), json!({"n": 5}));

    // Version and value compares.
    let flag = c.get("/v1/kv/flag").await;
    let version: u64 = flag
        .header("etag")
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap();
    let body = json!({
        "compare": [
            {"key": "flag", "version": version},
            {"key": "counter", "pointer": "/n", "equals": 5}
        ],
        "success": [{"op": "incr", "key": "counter", "path": "/n"}]
    });
    let r = txn(&c, &body).await;
    assert_eq!(
        (
            r.json()["succeeded"].clone(),
            r.json()["results"][0]["value"].clone()
        ),
        (json!(true), json!(6))
    );
    let r = txn(&c, &body).await;
    assert_eq!(r.json()["succeeded"], false);
    assert_eq!(r.json()["results"], json!([]));
    assert_eq!(r.json()["revision"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_operation_writes_nothing_and_is_named() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    c.put_json("/v1/kv/stock", r#"{"n":1,"name":"x"}"#).await;
    let cases = [
        (
            json!({"op": "patch", "key": "stock", "json_patch": [{"op": "test", "path": "/n", "value": 1}]}),
            409,
            "test_failed",
        ),
        (
            json!({"op": "incr", "key": "stock", "path": "/name"}),
            409,
            "not_an_integer",
        ),
        (
            json!({"op": "patch", "key": "absent", "merge": {"a": 1}}),
            404,
            "not_found",
        ),
        (
            json!({"op": "patch", "key": "stock", "json_patch": [{"op": "remove", "path": "/none"}]}),
            422,
            "invalid_patch_path",
        ),
    ];
    for (bad, status, code) in cases {
        let body = json!({"success": [
            {"op": "put", "key": "first", "value": 1},
            {"op": "incr", "key": "stock", "path": "/n"},
            bad
        ]});
        let r = txn(&c, &body).await;
        assert_eq!(r.status, status, "{}", text(&r));
        let error = &r.json()["error"];
        assert_eq!(
            (
                error["code"].as_str(),
                error["branch"].as_str(),
                error["operation"].as_u64()
            ),
            (Some(code), Some("success"), Some(2)),
            "{error}"
        );
        assert_eq!(c.get("/v1/kv/first").await.status, 404);
        assert_eq!(
            c.get("/v1/kv/stock").await.json(),
            json!({"n": 1, "name": "x"})
        );
    }
    // Malformed transactions are named before anything runs.
    let bad_bodies = [
        (
            json!({"success": [{"op": "put", "key": "a"}]}),
            "invalid_txn",
        ),
        (
            json!({"success": [{"op": "swap", "key": "a"}]}),
            "invalid_txn",
        ),
        (
            json!({"compare": [{"key": "a", "version": 1, "exists": true}]}),
            "invalid_txn",
        ),
        (
            json!({"compare": [{"key": "a", "pointer": "/x"}]}),
            "invalid_txn",
        ),
        (
            json!({"success": [{"op": "patch", "key": "a"}]}),
            "invalid_txn",
        ),
        (
            json!({"success": [{"op": "incr", "key": "a", "path": "n"}]}),
            "invalid_txn",
        ),
        (
            json!({"success": [{"op": "put", "key": "", "value": 1}]}),
            "invalid_key",
        ),
        (json!({"extra": 1}), "invalid_txn"),
    ];
    for (body, code) in bad_bodies {
        let r = txn(&c, &body).await;
        assert_eq!(
            (
                r.status,
                r.json()["error"]["code"].as_str().map(str::to_owned)
            ),
            (400, Some(code.to_owned())),
            "{body}: {}",
            text(&r)
        );
    }
    let many: Vec<Value> = (0..129)
        .map(|i| json!({"op": "delete", "key": format!("k{i}")}))
        .collect();
    let r = txn(&c, &json!({ "success": many })).await;
    assert_eq!(r.json()["error"]["code"], "txn_too_large", "{}", text(&r));
    let r = c
        .send("POST", "/v1/txn", &[("content-type", "text/plain")], b"{}")
        .await
        .unwrap();
    assert_eq!(r.status, 415);
}

/// Every write of a transaction goes through the plugins; one rejection
/// fails the whole transaction.
#[tokio::test(flavor = "multi_thread")]
async fn plugins_judge_every_write_of_a_transaction() {
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(&data, Options::default().config(&common::users_schema()));
    let c = server.client();
    let body = json!({"success": [
        {"op": "put", "key": "users/1", "value": {"name": "ada"}},
        {"op": "put", "key": "other", "value": 1},
        {"op": "patch", "key": "users/1", "merge": {"name": null}}
    ]});
    let r = txn(&c, &body).await;
    assert_eq!(r.status, 422, "{}", text(&r));
    let error = &r.json()["error"];
    assert_eq!(
        (error["code"].as_str(), error["operation"].as_u64()),
        (Some("rejected"), Some(2)),
        "{error}"
    );
    assert_eq!(c.get("/v1/kv/users/1").await.status, 404);
    assert_eq!(c.get("/v1/kv/other").await.status, 404);
    let body = json!({"success": [
        {"op": "put", "key": "users/1", "value": {"name": "ada"}},
        {"op": "incr", "key": "users/1", "path": "/logins"},
        {"op": "put", "key": "other", "value": 1}
    ]});
    let r = txn(&c, &body).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["results"][1]["value"], 1);
    assert_eq!(
        c.get("/v1/kv/users/1").await.json(),
        json!({"name": "ada", "logins": 1})
    );
}

const ACCOUNTS: usize = 8;
const START: i64 = 1000;

/// Puts every account at `START`.
async fn open_accounts(c: &Client, prefix: &str) {
    let ops: Vec<Value> = (0..ACCOUNTS)
        .map(|i| json!({"op": "put", "key": format!("{prefix}acct/{i}"), "value": {"n": START}}))
        .collect();
    let r = txn(c, &json!({ "success": ops })).await;
    assert_eq!(r.status, 200, "{}", text(&r));
}

/// Moves random amounts between random accounts, and counts its own
/// acknowledged transfers in `done/<worker>` inside the same transactions.
async fn transfer(
    c: Client,
    prefix: String,
    worker: usize,
    seed: u64,
    acked: Arc<AtomicU64>,
    stop_after: u64,
) {
    let mut rng = Rng(seed ^ ((worker as u64 + 1) * 0x9e37_79b9));
    for _ in 0..stop_after {
        let from = rng.below(ACCOUNTS as u64);
        let to = (from + 1 + rng.below(ACCOUNTS as u64 - 1)) % ACCOUNTS as u64;
        let amount = rng.below(50) as i64 + 1;
        let body = json!({"success": [
            {"op": "incr", "key": format!("{prefix}acct/{from}"), "path": "/n", "by": -amount},
            {"op": "incr", "key": format!("{prefix}acct/{to}"), "path": "/n", "by": amount},
            // An expiring counter: the crash tests cover expiring records too.
            {"op": "incr", "key": format!("{prefix}done/{worker}"), "ttl": "1d", "keep_ttl": true}
        ]});
        match c
            .send(
                "POST",
                "/v1/txn",
                &[("content-type", "application/json")],
                body.to_string().as_bytes(),
            )
            .await
        {
            Ok(r) if r.status == 200 => {
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) if r.status == 409 => {}
            // The server went away (a kill): stop.
            _ => return,
        }
    }
}

/// Starts one `transfer` per counter of `acked`.
fn spawn_transfers(
    server: &Server,
    prefix: &str,
    seed: u64,
    acked: &[Arc<AtomicU64>],
    each: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    acked
        .iter()
        .enumerate()
        .map(|(w, a)| {
            let (c, prefix) = (server.client(), prefix.to_owned());
            tokio::spawn(transfer(c, prefix, w, seed, a.clone(), each))
        })
        .collect()
}

/// The accounts sum to what they started with, at one revision, and each
/// worker's acknowledged transfers are all there (with at most `crashes`
/// more: one committed and cut off before its answer per crash).
async fn check_books(c: &Client, prefix: &str, acked: &[Arc<AtomicU64>], crashes: u64) {
    let mut keys: Vec<String> = (0..ACCOUNTS).map(|i| format!("{prefix}acct/{i}")).collect();
    keys.extend((0..acked.len()).map(|w| format!("{prefix}done/{w}")));
    let r = c
        .post_json("/v1/kv/get", &json!({ "keys": keys }).to_string())
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let answer = r.json();
    let items = answer["items"].as_array().unwrap();
    let value_of = |key: &str| {
        items
            .iter()
            .find(|i| i["key"] == key)
            .map(|i| i["value"].clone())
    };
    let sum: i64 = (0..ACCOUNTS)
        .map(|i| {
            value_of(&format!("{prefix}acct/{i}")).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .sum();
    assert_eq!(
        sum,
        START * ACCOUNTS as i64,
        "money was made or lost: {answer}"
    );
    for (w, acked) in acked.iter().enumerate() {
        let done = value_of(&format!("{prefix}done/{w}")).map_or(0, |v| v.as_u64().unwrap());
        let acked = acked.load(Ordering::SeqCst);
        assert!(
            (acked..=acked + crashes).contains(&done),
            "worker {w}: {acked} acknowledged, {done} found"
        );
    }
}

/// Concurrent transfers between counters on every shard keep the sum, with
/// and without a plugin judging the accounts.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_transfers_keep_the_sum() {
    let (_root, data) = temp_data_dir();
    let config = plugin_toml(
        "judged",
        &common::test_plugin("accept.wat"),
        "prefixes = [\"judged/\"]",
    );
    let server = Server::start_with(&data, Options::default().config(&config));
    let seed = seed();
    for prefix in ["", "judged/"] {
        let c = server.client();
        open_accounts(&c, prefix).await;
        let acked: Vec<Arc<AtomicU64>> = (0..6).map(|_| Arc::default()).collect();
        let workers = spawn_transfers(&server, prefix, seed, &acked, 60);
        // Meanwhile, every read of all accounts at one revision balances:
        // a transfer is all there or not at all.
        let mut reads = 0;
        while !workers.iter().all(|w| w.is_finished()) {
            assert_eq!(balance(&c, prefix).await, START * ACCOUNTS as i64);
            reads += 1;
        }
        for w in workers {
            w.await.unwrap();
        }
        check_books(&c, prefix, &acked, 0).await;
        let total: u64 = acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();
        assert!(total > 300, "{prefix}: only {total} transfers went through");
        assert!(reads > 0);
        let decided = common::metric(&c, "exdaas_txns_total").await;
        let batches = common::metric(&c, "exdaas_txn_batches_total").await;
        assert!(
            decided >= total as f64 && batches >= 1.0 && batches <= decided,
            "{decided} {batches}"
        );
    }
}

/// The accounts' sum, read at one revision.
async fn balance(c: &Client, prefix: &str) -> i64 {
    let keys: Vec<String> = (0..ACCOUNTS).map(|i| format!("{prefix}acct/{i}")).collect();
    let r = c
        .post_json("/v1/kv/get", &json!({ "keys": keys }).to_string())
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let answer = r.json();
    answer["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"]["n"].as_i64().unwrap())
        .sum()
}

/// Single-key increments of the accounts, concurrent with transfers
/// between them, lose nothing on either side: the sum ends as the start
/// plus every acknowledged deposit.
#[tokio::test(flavor = "multi_thread")]
async fn transfers_and_single_key_writes_serialize() {
    let (_root, data) = temp_data_dir();
    let server = Server::start(&data);
    let c = server.client();
    open_accounts(&c, "").await;
    let acked: Vec<Arc<AtomicU64>> = (0..4).map(|_| Arc::default()).collect();
    let workers = spawn_transfers(&server, "", seed(), &acked, 60);
    let deposits: Vec<_> = (0..4)
        .map(|d| {
            let c = server.client();
            tokio::spawn(async move {
                let mut made = 0i64;
                for i in 0..60 {
                    let path = format!("/v1/kv/acct/{}?op=incr&path=/n&by=1", (d + i) % ACCOUNTS);
                    let r = c.send("POST", &path, &[], b"").await.unwrap();
                    assert_eq!(r.status, 200, "{}", text(&r));
                    made += 1;
                }
                made
            })
        })
        .collect();
    let mut deposited = 0;
    for d in deposits {
        deposited += d.await.unwrap();
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(balance(&c, "").await, START * ACCOUNTS as i64 + deposited);
}

/// Rounds of transfers, each cut off by `kill -9` at a random moment (and,
/// on a power-loss filesystem, by dropping what was never synced): after
/// each restart the books balance and every acknowledged transfer is there.
async fn transfers_survive_crashes(data: &std::path::Path, fs: Option<&PowerFs>) {
    let seed = seed();
    eprintln!("seed {seed} (set EXDAAS_TEST_SEED to repeat)");
    let mut rng = Rng(seed);
    let acked: Vec<Arc<AtomicU64>> = (0..6).map(|_| Arc::default()).collect();
    let mut lost = 0;
    for round in 0..3u64 {
        let server = Server::start_with(
            data,
            Options::default().env("EXDAAS_CACHE__WARM_ON_START", "false"),
        );
        if round == 0 {
            open_accounts(&server.client(), "").await;
        } else {
            check_books(&server.client(), "", &acked, round).await;
        }
        let workers = spawn_transfers(&server, "", seed + round, &acked, u64::MAX);
        tokio::time::sleep(Duration::from_millis(200 + rng.below(600))).await;
        server.kill9();
        for w in workers {
            w.await.unwrap();
        }
        if let Some(fs) = fs {
            lost += fs.power_loss();
        }
    }
    let server = Server::start(data);
    check_books(&server.client(), "", &acked, 3).await;
    let done = server.client().get("/v1/kv/done/0").await;
    assert!(
        done.header("exdaas-expires-at").is_some(),
        "the counters' expiry is gone"
    );
    let total: u64 = acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    assert!(total > 0, "no transfer went through");
    if fs.is_some() {
        assert!(lost > 0, "no power loss dropped anything");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transfers_survive_kill_9() {
    let (_root, data) = temp_data_dir();
    transfers_survive_crashes(&data, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transfers_survive_power_loss() {
    let (_root, fs, mnt) = PowerFs::mount_temp()
        .unwrap_or_else(|e| panic!("cannot mount the test filesystem (is fuse3 installed?): {e}"));
    transfers_survive_crashes(&mnt.join("data"), Some(&fs)).await;
}
