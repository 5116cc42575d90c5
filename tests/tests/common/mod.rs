//! Test harness: start the real `exdaas` binary on a free port with its own
//! data directory, and speak HTTP to it.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The server binary: `EXDAAS_BIN`, else the one beside this test executable.
/// `scripts/test.sh` builds it first; a missing or stale binary (older than
/// the server's sources) stops the tests with a message rather than testing
/// old code. (Building it from here would wait forever on the build lock that
/// `cargo test` holds.)
pub fn binary() -> PathBuf {
    if let Ok(bin) = std::env::var("EXDAAS_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("exdaas");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} not found: build it in the profile these tests run in (`cargo build --release -p exdaas-server` for `cargo test --release`, as scripts/test.sh does)",
                bin.display()
            )
        });
    let newest = newest_source(&repo_root().join("server"));
    assert!(
        newest <= built,
        "{} is older than the server sources: build it in the profile these tests run in (`cargo build --release -p exdaas-server` for `cargo test --release`, as scripts/test.sh does)",
        bin.display()
    );
    bin
}

fn newest_source(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let modified = if path.is_dir() {
            newest_source(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH)
        };
        newest = newest.max(modified);
    }
    newest
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A running server.
pub struct Server {
    child: Child,
    /// `127.0.0.1:port` it listens on.
    pub addr: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Everything it logged so far.
    pub log: Arc<Mutex<String>>,
}

/// How to start a server.
#[derive(Clone, Default)]
pub struct Options {
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Contents of a config file passed with --config.
    pub config: Option<String>,
    /// An open-files limit (soft and hard) to start the server under.
    pub nofile: Option<u64>,
}

impl Options {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }
    pub fn config(mut self, text: &str) -> Self {
        self.config = Some(text.to_owned());
        self
    }
    pub fn nofile(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }
}

impl Server {
    /// Starts a server on `data_dir` with default options.
    pub fn start(data_dir: &Path) -> Server {
        Self::start_with(data_dir, Options::default())
    }

    /// Starts a server and waits until it answers `/health`.
    pub fn start_with(data_dir: &Path, opts: Options) -> Server {
        // prlimit sets the limit and then becomes the server (same pid).
        let mut cmd = match opts.nofile {
            Some(n) => {
                let mut cmd = Command::new("prlimit");
                cmd.arg(format!("--nofile={n}:{n}")).arg("--").arg(binary());
                cmd
            }
            None => Command::new(binary()),
        };
        cmd.current_dir(data_dir.parent().unwrap_or(data_dir))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("EXDAAS_SERVER__LISTEN", "127.0.0.1:0")
            .env("EXDAAS_STORAGE__DATA_DIR", data_dir)
            .env("EXDAAS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(text) = &opts.config {
            let path = data_dir.with_extension("toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(&path);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Log first, so a caller woken by the address sees this line too.
                {
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                if line.contains("exdaas started") {
                    let addr = match (
                        line.split("listen=").nth(1),
                        line.split("\"listen\":\"").nth(1),
                    ) {
                        (Some(rest), _) => rest.split_whitespace().next().unwrap_or(""),
                        (None, Some(rest)) => rest.split('"').next().unwrap_or(""),
                        _ => "",
                    };
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start:\n{}", log.lock().unwrap());
            }
        };
        Server {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            log,
        }
    }

    /// Base URL for display.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a signal with the system `kill`.
    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server logs a line containing `needle` within 10 s
    /// (its log arrives through a pipe, a little after its answers).
    pub fn logged(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.log.lock().unwrap().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client for this server.
    pub fn client(&self) -> Client {
        Client {
            addr: self.addr.clone(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion with arguments and environment; returns
/// (exit code, stdout, stderr).
pub fn run_cli(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(binary())
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The `error.code` of an error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// A minimal HTTP/1.1 client over one keep-alive connection per call site.
#[derive(Clone)]
pub struct Client {
    pub addr: String,
}

/// One open connection, reused for several requests.
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    addr: String,
}

impl Client {
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(&self.addr).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            addr: self.addr.clone(),
        })
    }

    /// One request on a fresh connection.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<Resp> {
        self.connect()
            .await?
            .send(method, path, headers, body)
            .await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[], b"").await.unwrap()
    }

    pub async fn put_json(&self, path: &str, body: &str) -> Resp {
        self.send(
            "PUT",
            path,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .await
        .unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &str) -> Resp {
        self.send(
            "POST",
            path,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .await
        .unwrap()
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send("DELETE", path, &[], b"").await.unwrap()
    }
}

impl Conn {
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<Resp> {
        self.sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.addr);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body)))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

/// A fresh temporary directory; the data dir is a child of it so config
/// files and logs can sit beside it.
pub fn temp_data_dir() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    (root, data)
}

/// An example plugin built by `scripts/build-plugins.sh`.
pub fn example_plugin(name: &str) -> PathBuf {
    let path = repo_root()
        .join("examples/dist")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A test plugin from `tests/plugins` (WAT source, compiled by the server).
pub fn test_plugin(file: &str) -> PathBuf {
    repo_root().join("tests/plugins").join(file)
}

/// A `[[plugins]]` table.
pub fn plugin_toml(name: &str, path: &Path, extra: &str) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\npath = \"{}\"\n{extra}\n",
        path.display()
    )
}

/// A `[[plugins]]` table requiring a string `name` in every value under
/// `users/` (the `require_fields` example).
pub fn users_schema() -> String {
    plugin_toml(
        "users",
        &example_plugin("require_fields"),
        "prefixes = [\"users/\"]\nconfig = { required = { name = \"string\" } }",
    )
}

/// Uploads `module` bytes as the managed plugin `name` (a server without
/// tokens: loopback clients administer).
pub async fn upload_module(c: &Client, name: &str, module: &[u8]) -> Resp {
    let path = format!("/v1/admin/plugins/{name}");
    c.send(
        "PUT",
        &path,
        &[("content-type", "application/wasm")],
        module,
    )
    .await
    .unwrap()
}

/// `exdaas backup --out FILE --server ADDR` with extra environment.
pub fn backup_from_server(
    dir: &Path,
    file: &Path,
    addr: &str,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    run_cli(
        dir,
        &["backup", "--out", file.to_str().unwrap(), "--server", addr],
        env,
    )
}

/// `exdaas restore --in FILE --data-dir DIR`.
pub fn restore(dir: &Path, image: &Path, data: &Path) -> (i32, String, String) {
    run_cli(
        dir,
        &[
            "restore",
            "--in",
            image.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    )
}

/// `exdaas reshard --shards N --data-dir DIR`.
pub fn reshard(dir: &Path, data: &Path, shards: &str) -> (i32, String, String) {
    run_cli(
        dir,
        &[
            "reshard",
            "--shards",
            shards,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    )
}

/// A small deterministic generator (xorshift) for seeded random tests, so a
/// failing run can be repeated with the seed it prints.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `EXDAAS_TEST_SEED`, else one from the clock (never 0, which xorshift
/// cannot leave).
pub fn seed() -> u64 {
    std::env::var("EXDAAS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// LEB128 of `n`, as WebAssembly encodes sizes and counts.
fn leb(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A module of `functions` functions, each nesting blocks `depth` deep:
/// within every shape bound, and seconds of compiling.
pub fn slow_module(functions: usize, depth: usize) -> Vec<u8> {
    let section = |id: u8, body: Vec<u8>, out: &mut Vec<u8>| {
        out.push(id);
        leb(body.len(), out);
        out.extend(body);
    };
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    section(1, vec![1, 0x60, 0, 0], &mut m); // one type: () -> ()
    let mut funcs = Vec::new();
    leb(functions, &mut funcs);
    funcs.extend(std::iter::repeat_n(0u8, functions));
    section(3, funcs, &mut m);
    section(5, vec![1, 0, 1], &mut m); // one memory of one page
    let mut body = vec![0u8]; // no locals
    for _ in 0..depth {
        body.extend([0x02, 0x40]); // block with no result
    }
    body.extend(std::iter::repeat_n(0x0bu8, depth + 1));
    let mut code = Vec::new();
    leb(functions, &mut code);
    for _ in 0..functions {
        leb(body.len(), &mut code);
        code.extend(&body);
    }
    section(10, code, &mut m);
    m
}

/// The value of the sample `name_and_labels` (exactly as exposed, e.g.
/// `exdaas_plugin_modules_total{source="compiled"}`) in `/metrics`.
pub async fn metric(c: &Client, name_and_labels: &str) -> f64 {
    let text = String::from_utf8_lossy(&c.get("/metrics").await.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name_and_labels} in\n{text}"))
}

/// The SHA-256 of `bytes` in lower-case hex (a `token_sha256`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
