//! A seeded random client over raw sockets: odd methods, paths, headers,
//! framing, bodies and nested parameters. Whatever it sends, the server
//! answers no 5xx but the documented one, every error body is JSON, the
//! process stays up, and its memory stays bounded. Bounded in requests and
//! time; a failure prints the seed and the request (`EXDAAS_TEST_SEED`
//! repeats a run).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{rss_kib, seed, temp_data_dir, Options, Rng, Server};

/// Choices for a request, on top of the shared generator.
trait Pick {
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str;
    fn index(&mut self, n: usize) -> usize;
    fn bytes(&mut self, n: usize) -> Vec<u8>;
}

impl Pick for Rng {
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.index(items.len())]
    }
    fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Requests per task, tasks at once, and the whole run's time limit.
const REQUESTS: usize = 600;
const TASKS: u64 = 4;
const TIME_LIMIT: Duration = Duration::from_secs(120);
/// Resident memory the server may reach during the run.
const MAX_RSS_KIB: u64 = 512 * 1024;

fn method(rng: &mut Rng) -> String {
    rng.pick(&[
        "GET", "GET", "PUT", "PUT", "POST", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE",
        "FOO", "get", "CONNECT",
    ])
    .to_owned()
}

fn key(rng: &mut Rng) -> String {
    match rng.index(6) {
        0 => format!("{}", rng.index(50)),
        1 => "%ff%fe".into(),
        2 => "a%00b".into(),
        3 => "x".repeat(rng.index(700) + 1),
        4 => "%E2%82%AC/%22q%5C".into(),
        _ => format!("k{}", rng.index(20)),
    }
}

fn nested(rng: &mut Rng) -> String {
    let name = rng.pick(&["id", "cmd", "data", "x", "cmd[query]", "cmd[keys]", ""]);
    let depth = [0, 1, 2, 40, 8000][rng.index(5)];
    let brackets = rng
        .pick(&["[a]", "[]", "[", "]", "[[", "[%5D]"])
        .repeat(depth);
    let value = rng.pick(&["1", "ONLY", "FILTER_BOOL", "", "%ff", "-1", "1e3"]);
    format!("{name}{brackets}={value}")
}

fn path(rng: &mut Rng) -> String {
    let query: Vec<String> = (0..rng.index(4)).map(|_| nested(rng)).collect();
    let query = query.join("&");
    match rng.index(12) {
        0..=2 => format!("/v1/kv/{}", key(rng)),
        3 => format!(
            "/v1/kv?{}",
            rng.pick(&[
                "limit=5",
                "limit=0",
                "values=true",
                "prefix=%ff",
                "after=",
                "x=1"
            ])
        ),
        4 | 5 => format!("/api?{query}"),
        6 | 7 => format!("/api/cmd?{query}"),
        8 => rng
            .pick(&[
                "/health",
                "/ready",
                "/metrics",
                "/v1/plugins",
                "/",
                "*",
                "/v1/kv/",
            ])
            .into(),
        9 => format!("/v1/plugins/dry-run/{}", key(rng)),
        10 => String::from_utf8_lossy(&rng.bytes(8)).replace(['\r', '\n', ' '], "_"),
        _ => format!("/{}", "a/".repeat(rng.index(3000))),
    }
}

fn body(rng: &mut Rng) -> Vec<u8> {
    match rng.index(12) {
        0 => Vec::new(),
        1 => br#"{"a":1}"#.to_vec(),
        2 => br#"{"id":null,"data":{"a":[1,2,{"b":null}]}}"#.to_vec(),
        3 => br#"{"a":1,"a":2}"#.to_vec(),
        4 => format!(
            "{}{}",
            "[".repeat(rng.index(5000)),
            "]".repeat(rng.index(5000))
        )
        .into_bytes(),
        5 => b"{\"a\":\"\xff\xfe\"}".to_vec(),
        6 => br#"{"a":"\ud800","b":1e999}"#.to_vec(),
        7 => nested(rng).into_bytes(),
        8 => {
            let n = rng.index(300);
            rng.bytes(n)
        }
        9 => br#"{"id":"7","data":"not an object"}"#.to_vec(),
        10 => format!("\"{}\"", "z".repeat(rng.index(100_000))).into_bytes(),
        _ => br#"{"id":3,"data":{"email":"a@x"}}"#.to_vec(),
    }
}

/// One raw request: method, target, headers and a framing that may lie.
fn request(rng: &mut Rng) -> Vec<u8> {
    let body = body(rng);
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n",
        method(rng),
        path(rng)
    );
    let content_type = rng.pick(&[
        "application/json",
        "application/json; charset=utf-8",
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/merge-patch+json",
        "",
    ]);
    if !content_type.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    for _ in 0..rng.index(3) {
        head.push_str(rng.pick(&[
            "If-Match: \"1\"\r\n",
            "If-Match: *\r\n",
            "If-None-Match: W/\"2\", \"x\"\r\n",
            "If-None-Match: *\r\n",
            "If-Match: garbage\r\n",
            "X-Request-Id: \u{1}\r\n",
            "Authorization: Bearer nope\r\n",
            "Expect: 100-continue\r\n",
        ]));
    }
    let mut out = Vec::new();
    match rng.index(6) {
        0 => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            out.extend_from_slice(&body);
            out.extend_from_slice(
                rng.pick(&["\r\n0\r\n\r\n", "\r\nzz\r\n", "\r\n"])
                    .as_bytes(),
            );
            return out;
        }
        1 => head.push_str(&format!(
            "Content-Length: {}\r\n\r\n",
            rng.pick(&["-1", "abc", "99999999999999999999", "1, 2"])
        )),
        2 => head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len() / 2)),
        _ => head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len())),
    }
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&body);
    out
}

/// The answer's status and body, or `None` if the server closed the
/// connection without one (acceptable for unparseable requests).
async fn exchange(addr: &str, bytes: &[u8]) -> Option<(u16, Vec<u8>, String)> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "no answer within 30 s");
    let split = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out[split + 4..].to_vec(), head))
}

/// Checks one answer; returns a description of what is wrong, if anything.
fn judge(req: &[u8], status: u16, body: &[u8], head: &str) -> Option<String> {
    let target = String::from_utf8_lossy(req.split(|b| *b == b'\n').next().unwrap_or(b""));
    // The documented 500: an unknown ExDaas command name.
    let unknown_command = status == 500
        && target.contains("/api/cmd")
        && body.windows(13).any(|w| w == b"not supported");
    if status >= 500 && !unknown_command {
        return Some(format!("status {status}"));
    }
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if status >= 400
        && !body.is_empty()
        && !chunked
        && serde_json::from_slice::<serde_json::Value>(body).is_err()
    {
        return Some(format!(
            "error body is not JSON: {:?}",
            String::from_utf8_lossy(body)
        ));
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn random_hostile_requests_never_break_the_server() {
    let seed = seed();
    eprintln!("hostile client seed {seed} (set EXDAAS_TEST_SEED to repeat)");
    let (_root, data) = temp_data_dir();
    let server = Server::start_with(
        &data,
        Options::default()
            .env("EXDAAS_SERVER__HEADER_READ_TIMEOUT_MS", "2000")
            .env("EXDAAS_SERVER__BODY_READ_TIMEOUT_MS", "2000"),
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let addr = server.addr.clone();
            tokio::spawn(async move {
                let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                for i in 0..REQUESTS {
                    if started.elapsed() > TIME_LIMIT {
                        return i;
                    }
                    let req = request(&mut rng);
                    if let Some((status, body, head)) = exchange(&addr, &req).await {
                        if let Some(problem) = judge(&req, status, &body, &head) {
                            let shown = String::from_utf8_lossy(&req[..req.len().min(600)]).into_owned();
                            panic!("seed {seed}, task {t}, request {i}: {problem}\nrequest: {shown:?}\nanswer: {head}");
                        }
                    }
                }
                REQUESTS
            })
        })
        .collect();
    let mut peak = 0;
    let mut sent = 0;
    for task in tasks {
        while !task.is_finished() {
            peak = peak.max(rss_kib(server.pid()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent += task.await.unwrap();
    }
    eprintln!(
        "{sent} requests in {:?}, peak RSS {peak} KiB",
        started.elapsed()
    );
    assert!(sent >= 200, "only {sent} requests fit the time limit");
    assert!(peak < MAX_RSS_KIB, "peak RSS {peak} KiB");
    let c = server.client();
    assert_eq!(c.get("/health").await.status, 200);
    assert_eq!(c.put_json("/v1/kv/after", "1").await.status, 201);
}
