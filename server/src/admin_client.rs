//! A minimal HTTP/1.1 client for the command line: `exdaas backup` against
//! a running server, `exdaas health` (the container health check, since
//! slim images have no curl) and `exdaas kv`; plain or over TLS, with a
//! client certificate for mutual TLS.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// The TLS options of a command-line client.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// CA certificates (PEM) that signed the server's certificate; needed
    /// for https:// servers.
    #[arg(
        long = "cacert",
        id = "tls_cacert",
        value_name = "FILE",
        env = "EXDAAS_CACERT",
        global = true
    )]
    pub cacert: Option<PathBuf>,
    /// A client certificate chain (PEM), for servers that require one.
    #[arg(
        long = "cert",
        id = "tls_cert",
        value_name = "FILE",
        env = "EXDAAS_CERT",
        global = true,
        requires = "tls_key"
    )]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long = "key",
        id = "tls_key",
        value_name = "FILE",
        env = "EXDAAS_KEY",
        global = true,
        requires = "tls_cert"
    )]
    pub key: Option<PathBuf>,
}

/// A server to talk to: its address, and how to speak TLS to it.
#[derive(Clone)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.addr)
    }
}

impl Target {
    /// Plain HTTP to `addr` (`host:port`).
    pub fn plain(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            tls: None,
        }
    }

    /// `server` as given (`host:port`, `http://host:port` or
    /// `https://host:port`); `tls_default` says whether a bare `host:port`
    /// speaks TLS.
    pub fn parse(server: &str, tls_default: bool, args: &TlsArgs) -> anyhow::Result<Self> {
        let (tls, addr) = match (
            server.strip_prefix("https://"),
            server.strip_prefix("http://"),
        ) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => (tls_default, server),
        };
        let addr = addr.trim_end_matches('/');
        if !tls {
            return Ok(Self::plain(addr));
        }
        let host = match addr.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => addr,
        };
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| anyhow::anyhow!("{host:?} cannot name a TLS server: {e}"))?;
        Ok(Self {
            addr: addr.to_owned(),
            tls: Some((connector(args)?, name)),
        })
    }
}

/// A TLS client trusting `--cacert`, presenting `--cert` if given.
fn connector(args: &TlsArgs) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let Some(cacert) = &args.cacert else {
        anyhow::bail!(
            "an https server needs --cacert FILE (or EXDAAS_CACERT): the CA certificate that signed the server's certificate"
        );
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::tls::certificates("--cacert", cacert)? {
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("--cacert {}: {e}", cacert.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => builder.with_client_auth_cert(
            crate::tls::certificates("--cert", cert)?,
            crate::tls::private_key("--key", key)?,
        )?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Sends `GET path` to `addr` (host:port) and hands each body chunk to
/// `sink`; returns the status code.
pub async fn get(
    addr: &Target,
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
    target: &Target,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, String)],
    body: Bytes,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let addr = &target.addr;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {target}: {e}"))?;
    let mut sender = match &target.tls {
        None => open(stream).await?,
        Some((connector, name)) => {
            let stream = connector
                .connect(name.clone(), stream)
                .await
                .map_err(|e| anyhow::anyhow!("TLS with {target}: {e}"))?;
            open(stream).await?
        }
    };
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.as_str());
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        req = req.header(*name, value.as_str());
    }
    Ok(sender.send_request(req.body(Full::new(body))?).await?)
}

/// An HTTP/1.1 connection over `io`, driven in the background.
async fn open<I>(io: I) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
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

/// An answer whose body went past the cap its caller set.
#[derive(Debug, thiserror::Error)]
#[error("the answer's body is over {0} bytes")]
pub struct AnswerTooLarge(pub usize);

/// Sends one request with `body` and extra `headers`, and reads the whole
/// answer (for API answers; backups stream through [`get`]), at most
/// `max_body` bytes of its body: past that the call fails with
/// [`AnswerTooLarge`], so a client holds no more than what it asked for
/// can be.
pub async fn send(
    addr: &Target,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, String)],
    body: Bytes,
    max_body: usize,
) -> anyhow::Result<Answer> {
    let resp = request(addr, method, path, token, headers, body).await?;
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get(hyper::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = http_body_util::Limited::new(resp.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
            Ok(_) => anyhow::Error::new(AnswerTooLarge(max_body)),
            Err(other) => anyhow::anyhow!(other),
        })?
        .to_bytes();
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
