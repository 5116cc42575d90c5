//! A minimal HTTP/1.1 client for the command line: `exdaas backup` against
//! a running server, `exdaas health` (the container health check, since
//! slim images have no curl) and `exdaas kv`.

use std::io::Write;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Sends `GET path` to `addr` (host:port) and hands each body chunk to
/// `sink`; returns the status code.
pub async fn get(
    addr: &str,
    path: &str,
    token: Option<&str>,
    sink: &mut dyn Write,
) -> anyhow::Result<u16> {
    let resp = request(addr, Method::GET, path, token, &[], Bytes::new()).await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            sink.write_all(data)?;
        }
    }
    Ok(status)
}

/// Sends one request on a new connection; the answer's body is still to read.
async fn request(
    addr: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, String)],
    body: Bytes,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        req = req.header(*name, value.as_str());
    }
    Ok(sender.send_request(req.body(Full::new(body))?).await?)
}

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The `ETag` header, if any.
    pub etag: Option<String>,
    /// The body.
    pub body: Bytes,
}

/// Sends one request with `body` and extra `headers`, and reads the whole
/// answer (for small API answers; backups stream through [`get`]).
pub async fn send(
    addr: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, String)],
    body: Bytes,
) -> anyhow::Result<Answer> {
    let resp = request(addr, method, path, token, headers, body).await?;
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get(hyper::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Answer { status, etag, body })
}

/// The `host:port` to reach a server listening on `listen` from this
/// machine (an unspecified address means loopback).
pub fn local_target(listen: std::net::SocketAddr) -> String {
    let ip = if listen.ip().is_unspecified() {
        match listen {
            std::net::SocketAddr::V4(_) => std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::SocketAddr::V6(_) => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        }
    } else {
        listen.ip()
    };
    std::net::SocketAddr::new(ip, listen.port()).to_string()
}
