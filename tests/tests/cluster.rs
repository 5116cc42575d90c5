//! The shipped multi-node layout (`config/cluster/`) end to end: nginx
//! routes keys over three primaries by consistent hash (hash tags keep
//! related keys on one node), each primary with a read replica; a primary
//! killed with `-9` leaves its keys readable through its replica, and
//! after the replica's promotion writes resume with nothing acknowledged
//! lost. Ids the primaries assign never collide.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{repo_root, temp_data_dir, Client, Options, Server};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx with `config/cluster/nginx.conf`, its fixed ports replaced by
/// the test's; stopped by PID.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path, primaries: &[&Server], replicas: &[&Server]) -> Nginx {
        let shipped =
            std::fs::read_to_string(repo_root().join("config/cluster/nginx.conf")).unwrap();
        let port = free_port();
        let mut conf = shipped.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
        for n in 0..3 {
            let node = format!("127.0.0.1:{}", free_port());
            conf = conf.replace(&format!("127.0.0.1:810{}", n + 1), &node);
            let primary = primaries[n]
                .url("")
                .trim_start_matches("http://")
                .to_owned();
            let replica = replicas[n].url("").trim_start_matches("http://").to_owned();
            conf = conf.replace(&format!("127.0.0.1:400{} ", n + 1), &format!("{primary} "));
            conf = conf.replace(&format!("127.0.0.1:401{} ", n + 1), &format!("{replica} "));
        }
        // Workers run as this user, so they can use the temporary paths.
        conf = format!("user root;\n{conf}");
        std::fs::create_dir_all(dir.join("nginx-tmp")).unwrap();
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx (Debian nginx-light) must be installed");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, port }
    }

    fn client(&self) -> Client {
        Client {
            addr: format!("127.0.0.1:{}", self.port),
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster(node: usize) -> String {
    format!("[cluster]\nnode_id = {node}\nnodes = 3\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_spread_over_primaries_and_survive_a_primary_lost() {
    let (root, _) = temp_data_dir();
    let mut primaries = Vec::new();
    let mut replicas = Vec::new();
    for n in 0..3 {
        let data = root.path().join(format!("node-{n}"));
        primaries.push(Server::start_with(
            &data,
            Options::default().config(&cluster(n)),
        ));
    }
    for (n, primary) in primaries.iter().enumerate() {
        let data = root.path().join(format!("replica-{n}"));
        let config = format!(
            "[replication]\nprimary = \"{}\"\npoll_wait_ms = 500\n{}",
            primary.url(""),
            cluster(n)
        );
        replicas.push(Server::start_with(
            &data,
            Options::default().config(&config),
        ));
    }
    let nginx = Nginx::start(
        root.path(),
        &primaries.iter().collect::<Vec<_>>(),
        &replicas.iter().collect::<Vec<_>>(),
    );
    let c = nginx.client();
    let mut acked = BTreeMap::new();
    for n in 0..90 {
        let key = format!("k/{n}");
        let r = c.put_json(&format!("/v1/kv/{key}"), &n.to_string()).await;
        assert_eq!(r.status, 201, "{key}");
        acked.insert(key, n);
    }
    for key in ["{user42}/profile", "{user42}/cart", "{user42}/orders"] {
        let path = format!("/v1/kv/{}", key.replace('{', "%7B").replace('}', "%7D"));
        assert_eq!(c.put_json(&path, "1").await.status, 201);
    }
    // Every node holds part of the keys; the hash-tagged ones share one.
    let mut holders = Vec::new();
    for p in &primaries {
        let page = p.client().get("/v1/kv?limit=1000").await.json();
        let keys: Vec<String> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["key"].as_str().unwrap().to_owned())
            .collect();
        holders.push(keys);
    }
    assert!(holders.iter().all(|keys| keys.len() >= 10), "{holders:?}");
    let tagged: Vec<usize> = holders
        .iter()
        .map(|keys| keys.iter().filter(|k| k.starts_with("{user42}")).count())
        .collect();
    assert!(tagged.contains(&3), "hash-tagged keys split: {tagged:?}");
    // Server-assigned ids: each node's leave its own remainder.
    for (n, p) in primaries.iter().enumerate() {
        let r = p.client().post_json("/v1/kv", "1").await;
        let id: u64 = r.json()["key"].as_str().unwrap().parse().unwrap();
        assert_eq!(id % 3, n as u64);
    }

    // Lose the primary of the node holding k/0, once its replica has
    // everything (so a promotion loses nothing acknowledged).
    let lost = holders
        .iter()
        .position(|keys| keys.contains(&"k/0".to_owned()))
        .unwrap();
    let head = primaries[lost].client().get("/v1/changes").await.json()["revision"]
        .as_u64()
        .unwrap();
    let replica = replicas[lost].client();
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica.get("/ready").await.json()["replication"]["applied_revision"] != head {
        assert!(Instant::now() < deadline, "replica never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    primaries.remove(lost).kill9();
    for (key, n) in &acked {
        let r = c.get(&format!("/v1/kv/{key}")).await;
        assert_eq!(r.status, 200, "{key} unreadable with a primary lost");
        assert_eq!(r.json(), serde_json::json!(n));
    }
    let r = c.put_json("/v1/kv/k/0", "\"after\"").await;
    assert_eq!(
        r.status, 421,
        "the replica takes no writes before promotion"
    );
    let promoted = replica.post_json("/v1/admin/promote", "").await;
    assert_eq!(promoted.status, 200);
    let r = c.put_json("/v1/kv/k/0", "\"after\"").await;
    assert_eq!(r.status, 200, "writes resume after the promotion");
    assert_eq!(r.json()["version"].as_u64().unwrap(), head + 1);
    for (key, n) in acked.iter().skip(1) {
        assert_eq!(
            c.get(&format!("/v1/kv/{key}")).await.json(),
            serde_json::json!(n)
        );
    }
}
