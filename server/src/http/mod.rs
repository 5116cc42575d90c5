//! The HTTP server: accepting connections, routing, graceful shutdown.
//!
//! - `request`: checked parsing of keys, bodies and queries;
//! - `conditional`: If-Match / If-None-Match, as RFC 9110 orders them;
//! - `kv`: the native `/v1/kv` API;
//! - `plugins`: plugin listing, dry runs, reload, shadow records, promotion;
//! - `managed_plugins`: uploads, versions, rollback and removal of plugins;
//! - `compat`: the ExDaas `/api` contract;
//! - `nested_params`: Plug-style nested parameters for `compat`;
//! - `routes`: the route table the router dispatches through;
//! - `openapi`: the served OpenAPI document;
//! - `backup`: the streaming backup endpoint;
//! - `stall_guard`: the write timeout on connections;
//! - `access`: who a request is and what it may do.

mod access;
mod audit;
mod backup;
pub mod body_budget;
mod compat;
mod conditional;
pub(crate) mod feed;
mod kv;
mod kv_many;
mod kv_update;
mod managed_plugins;
mod nested_params;
mod openapi;
mod plugins;
mod replica;
pub mod request;
pub mod routes;
mod stall_guard;
pub mod ttl;
mod txn;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;

use crate::app::App;
use crate::auth::{Caller, Peer};
use crate::error::{json_response, raw_json_response, ApiError};
use crate::metrics::Route;
use routes::{Op, Resolved};

type HttpResponse = Response<Full<Bytes>>;

/// The body type handed to hyper: most answers are one buffer (`Full`),
/// the backup is a stream.
pub type Body = BoxBody<Bytes, BodyError>;

/// A whole body as a [`Body`]: it cannot fail.
fn boxed(body: Full<Bytes>) -> Body {
    body.map_err(|e| match e {}).boxed()
}

/// Why a response body stopped before its end: hyper then closes the
/// connection without ending the body (no last chunk), so every client
/// sees the response as failed rather than complete (a backup that broke
/// off, for one).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Answers one resolved operation. `param` is where the path's `{key}` or
/// `{name}` part lies, for the operations that have one.
async fn dispatch(
    app: &Arc<App>,
    req: Request<Incoming>,
    caller: Caller,
    op: Op,
    param: std::ops::Range<usize>,
) -> Result<Response<Body>, ApiError> {
    // Decoded and checked here, before the request moves into its handler.
    let raw = req.uri().path().get(param).unwrap_or("");
    let param = match op {
        Op::KvGet | Op::KvPut | Op::KvDelete | Op::KvPatch | Op::KvIncr | Op::PluginDryRun => {
            request::parse_key(raw, app.settings.limits.max_key_bytes)?
        }
        Op::PluginShadow
        | Op::PluginPromote
        | Op::PluginUpload
        | Op::PluginDescribe
        | Op::PluginDelete
        | Op::PluginRollback => request::parse_name(raw)?,
        _ => String::new(),
    };
    access::permit(&caller, op, &param, req.uri().query())?;
    if matches!(
        op,
        Op::KvGet | Op::KvList | Op::KvGetMany | Op::ApiRead | Op::Changes | Op::Watch
    ) {
        replica::wait_for_revision(app, req.headers()).await?;
    }
    let response = match op {
        Op::Backup => return Ok(backup::stream(app).await),
        Op::Promote => replica::promote(app, &req)?,
        Op::BackupHead => return Ok(backup::head()),
        Op::KvList => kv::list(app, &req, &caller).await?,
        Op::KvCreate => kv::create(app, req).await?,
        Op::KvGet => kv::get(app, &req, &param).await?,
        Op::KvPut => kv::put(app, req, &param).await?,
        Op::KvDelete => kv::delete(app, &req, &param).await?,
        Op::KvPatch => kv_update::patch(app, req, &param).await?,
        Op::KvIncr => kv_update::increment(app, &req, &param).await?,
        Op::KvGetMany => kv_many::get_many(app, req, &caller).await?,
        Op::Txn => txn::transact(app, req, &caller).await?,
        Op::Watch => return feed::watch(app, &req, caller),
        Op::Changes => feed::changes(app, &req, caller).await?,
        Op::ApiRead => compat::read(app, &req, &caller).await?,
        Op::ApiWrite => compat::create_or_update(app, req, &caller).await?,
        Op::ApiCmd => compat::command(app, &req, &caller).await?,
        Op::PluginList => plugins::list(app, caller.has_role(crate::auth::Role::Admin)),
        Op::PluginDryRun => plugins::dry_run(app, req, param).await?,
        Op::PluginReload => plugins::reload(app).await?,
        Op::PluginShadow => plugins::shadow(app, &param)?,
        Op::PluginPromote => plugins::promote(app, &param).await?,
        Op::PluginUpload => managed_plugins::upload(app, req, &param, caller).await?,
        Op::PluginDescribe => managed_plugins::describe(app, &param).await?,
        Op::PluginDelete => managed_plugins::delete(app, &param).await?,
        Op::PluginRollback => managed_plugins::rollback(app, req, &param, &caller).await?,
        Op::AuthReload => reload_tokens(app)?,
        Op::Audit => audit::page(app, &req).await?,
        Op::Health => health(app),
        Op::Ready => ready(app),
        Op::Metrics => metrics(app, &req),
        Op::OpenApi => raw_json_response(StatusCode::OK, openapi::document()?),
    };
    Ok(response.map(boxed))
}

fn health(app: &App) -> HttpResponse {
    let status = if app.storage.is_warming() {
        "warming"
    } else {
        "ok"
    };
    json_response(StatusCode::OK, &json!({ "status": status }))
}

/// Ready for traffic once the stores are open, which is before the
/// listener exists, and while every shard takes writes; warming is
/// reported but does not block traffic. A failed commit log is named at
/// once, with every shard, since none takes writes after it.
fn ready(app: &App) -> HttpResponse {
    let warming = app.storage.is_warming();
    let log = match app.storage.log_failure() {
        None => json!({ "ok": true }),
        Some(why) => json!({ "ok": false, "error": crate::error::capped(why) }),
    };
    let unavailable: Vec<_> = app
        .storage
        .unavailable_shards()
        .into_iter()
        .map(|(shard, reason)| json!({ "shard": shard, "reason": crate::error::capped(&reason) }))
        .collect();
    let status = if unavailable.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        &json!({
            "ready": unavailable.is_empty(),
            "warming": warming,
            "log": log,
            "unavailable_shards": unavailable,
            "replication": app.replica.as_ref().map(|r| r.describe()),
        }),
    )
}

/// `POST /v1/admin/auth/reload`: the tokens file read again; a bad entry
/// is refused with its place and the tokens in force stay.
fn reload_tokens(app: &App) -> Result<HttpResponse, ApiError> {
    let tokens = app.reload_tokens("api").map_err(|e| {
        ApiError::bad_request("invalid_tokens", format!("{e}; the tokens in force stay"))
    })?;
    Ok(json_response(StatusCode::OK, &json!({ "tokens": tokens })))
}

/// `GET /metrics`: OpenMetrics when the client asks for it, the classic
/// text format otherwise (see `metrics_text`).
fn metrics(app: &App, req: &Request<Incoming>) -> HttpResponse {
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let openmetrics = crate::metrics_text::wants_openmetrics(accept);
    let text = app.metrics.render(
        &app.storage,
        &app.chain(),
        app.plugins.compile_stats(),
        app.body_budget.in_flight(),
        app.replica.as_deref(),
        app.audit.as_ref().map(|a| &*a.metrics),
    );
    let (text, media) = if openmetrics {
        (text, crate::metrics_text::OPENMETRICS)
    } else {
        (
            crate::metrics_text::classic(&text),
            crate::metrics_text::CLASSIC,
        )
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static(media));
    r
}

/// The most a connection's read buffer grows to. hyper's default (about
/// 400 KiB) is reached by any client that sends fast, and is held beside
/// the body being collected: 100 connections sending 1 MiB bodies took
/// 1.5x their bodies' size. A request head must fit in it, so it leaves
/// room for the longest key, percent-encoded.
fn read_buffer_bytes(max_key_bytes: usize) -> usize {
    (64 * 1024).max(max_key_bytes.saturating_mul(3).saturating_add(16 * 1024))
}

/// HEAD answers like GET, with the length of the body it leaves out.
fn strip_body_for_head(response: Response<Body>) -> Response<Body> {
    let body_len = hyper::body::Body::size_hint(response.body())
        .exact()
        .unwrap_or(0);
    let (mut parts, _) = response.into_parts();
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(body_len));
    Response::from_parts(
        parts,
        Full::new(Bytes::new()).map_err(|e| match e {}).boxed(),
    )
}

/// The request's id: the client's `x-request-id` when sensible, else a new one.
fn request_id(req: &Request<Incoming>) -> HeaderValue {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if let Some(given) = req.headers().get(X_REQUEST_ID) {
        let ok = given.len() <= 128 && given.as_bytes().iter().all(|b| b.is_ascii_graphic());
        if ok && !given.is_empty() {
            return given.clone();
        }
    }
    // A per-process sequence number: unique within one server's logs, and
    // cheap enough for every request (no formatting allocation).
    HeaderValue::from(NEXT.fetch_add(1, Ordering::Relaxed))
}

const X_REQUEST_ID: &str = "x-request-id";

/// The request's id, for handlers that record it (plugin versions).
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// Answers one request: access control, routing, metrics, request id. Errors
/// become their JSON response here.
async fn handle(
    app: Arc<App>,
    mut req: Request<Incoming>,
    peer: Peer,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let id = request_id(&req);
    let mut witness = audit::Witness::of(&app, &req, peer.ip);
    let method = req.method().clone();
    let resolved = routes::resolve(&method, req.uri().path());
    // Only an upload records its request id (in the version record); the
    // extension map costs an allocation, so no other request gets one.
    if matches!(resolved, Resolved::Op(Op::PluginUpload, _)) {
        req.extensions_mut().insert(RequestId(id.clone()));
    }
    let route = Route::of(&resolved);
    let path = tracing::enabled!(tracing::Level::DEBUG).then(|| req.uri().path().to_owned());
    // The health probes answer everyone; everything else, even a path
    // that does not exist, needs a caller first.
    let caller = match resolved {
        Resolved::Op(Op::Health | Op::Ready, _) => Ok(Caller::Open),
        _ => access::authenticate(&app, &req, &peer),
    };
    if let (Some(witness), Ok(caller)) = (&mut witness, &caller) {
        witness.authenticated(caller);
    }
    let answer = match (caller, &resolved) {
        (Err(e), _) => Err(e),
        (Ok(_), Resolved::NotFound) => Err(ApiError::NotFound(format!(
            "no route for {}",
            crate::ijson::quote(req.uri().path())
        ))),
        (Ok(_), Resolved::MethodNotAllowed(r)) => {
            Err(ApiError::MethodNotAllowed { allow: r.allow() })
        }
        (Ok(caller), Resolved::Op(op, param)) => {
            admitted(&app, req, caller, *op, param.clone(), &method).await
        }
    };
    if let Err(ApiError::Busy(_)) = &answer {
        app.metrics.refused("body_budget");
    }
    let mut response = match answer {
        Ok(r) => r,
        Err(e) if method == Method::HEAD => strip_body_for_head(e.into_response().map(boxed)),
        Err(e) => e.into_response().map(boxed),
    };
    let status = response.status().as_u16();
    app.metrics.record(route, status, started.elapsed());
    if let Some(witness) = witness {
        witness.answered(&app, &resolved, status, id.to_str().unwrap_or(""));
    }
    if let Some(path) = path {
        tracing::debug!(request_id = ?id, %method, path, status, micros = started.elapsed().as_micros() as u64, "request");
    }
    response.headers_mut().insert(X_REQUEST_ID, id);
    Ok(response)
}

/// Answers a routed request within its caller's fair-use limits; the
/// admission is held until the answer is ready.
async fn admitted(
    app: &Arc<App>,
    req: Request<Incoming>,
    caller: Caller,
    op: Op,
    param: std::ops::Range<usize>,
    method: &Method,
) -> Result<Response<Body>, ApiError> {
    let _admission = caller.admit().map_err(|refusal| {
        app.metrics.token_limited(caller.name(), refusal.label());
        let (message, retry_after_s) = match refusal {
            crate::auth::fair_use::Refusal::Rate { retry_after_s } => (
                format!(
                    "token {} is past its rate_per_second",
                    crate::ijson::quote(caller.name())
                ),
                retry_after_s,
            ),
            crate::auth::fair_use::Refusal::InFlight { max } => (
                format!(
                    "token {} has {max} requests in flight, its max_in_flight",
                    crate::ijson::quote(caller.name())
                ),
                1,
            ),
        };
        ApiError::TooManyRequests {
            message,
            retry_after_s,
        }
    })?;
    match dispatch(app, req, caller, op, param).await {
        Ok(r) if method == Method::HEAD && op != Op::BackupHead => Ok(strip_body_for_head(r)),
        other => other,
    }
}

/// What a connection past the cap is told before it is closed.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 95\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"the server serves no more connections now\"}}";

/// Answers a connection past the cap with a 503 if its socket takes the
/// bytes at once (it never waits for a slow client), then closes it.
fn refuse_connection(stream: &tokio::net::TcpStream) {
    let _ = stream.try_write(TOO_MANY_CONNECTIONS);
}

/// What serving one accepted connection needs.
struct Connection {
    app: Arc<App>,
    builder: http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    tls: Option<tokio_rustls::TlsAcceptor>,
    write_timeout: Duration,
}

impl Connection {
    /// Serves requests on `stream` until the client or a shutdown ends it;
    /// with TLS, after the handshake.
    async fn serve(self, stream: tokio::net::TcpStream, ip: std::net::IpAddr) {
        let Some(acceptor) = self.tls.clone() else {
            let stream = stall_guard::StallGuard::new(stream, self.write_timeout);
            return self.run(stream, Peer::plain(ip)).await;
        };
        let timeout = Duration::from_millis(self.app.settings.server.header_read_timeout_ms);
        match tokio::time::timeout(timeout, self.handshake(acceptor, stream, ip)).await {
            Ok(Some((stream, peer))) => self.run(stream, peer).await,
            Ok(None) => {}
            Err(_) => self.app.metrics.refused("tls_handshake_timeout"),
        }
    }

    /// The TLS handshake, and the names of the client's certificate. A
    /// client that speaks plain HTTP is told to use TLS instead of being
    /// left to guess from a closed connection.
    async fn handshake(
        &self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: tokio::net::TcpStream,
        ip: std::net::IpAddr,
    ) -> Option<(
        tokio_rustls::server::TlsStream<stall_guard::StallGuard<tokio::net::TcpStream>>,
        Peer,
    )> {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await.ok()? == 0 {
            return None;
        }
        if !crate::tls::looks_like_tls(first[0]) {
            let _ = stream.try_write(crate::tls::PLAIN_HTTP_ANSWER);
            self.app.metrics.refused("tls_required");
            return None;
        }
        let stream = stall_guard::StallGuard::new(stream, self.write_timeout);
        let tls = match acceptor.accept(stream).await {
            Ok(tls) => tls,
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                self.app.metrics.refused("tls_handshake");
                return None;
            }
        };
        let names = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(crate::tls::certificate_names)
            .unwrap_or_default();
        let peer = Peer {
            ip,
            cert_names: Arc::from(names),
        };
        Some((tls, peer))
    }

    async fn run<I>(self, io: I, peer: Peer)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app;
        let service = service_fn(move |req| handle(app.clone(), req, peer.clone()));
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes, then stops
/// accepting and waits (at most `drain_timeout`) for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(read_buffer_bytes(app.settings.limits.max_key_bytes))
        .header_read_timeout(Duration::from_millis(
            app.settings.server.header_read_timeout_ms,
        ));
    let write_timeout = Duration::from_millis(app.settings.server.write_timeout_ms);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    app.metrics.connections.set_cap(max_connections);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Past the cap, refuse at once: a connection held waiting
                // would hold a descriptor the storage may need.
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    refuse_connection(&stream);
                    app.metrics.refused("connection_cap");
                    continue;
                };
                app.metrics.connections.opened();
                let _ = stream.set_nodelay(true);
                let conn = Connection {
                    app: app.clone(),
                    builder: builder.clone(),
                    watcher: graceful.watcher(),
                    tls: app.tls.as_ref().map(|t| t.acceptor()),
                    write_timeout,
                };
                tokio::spawn(async move {
                    let app = conn.app.clone();
                    conn.serve(stream, peer.ip()).await;
                    app.metrics.connections.closed();
                    drop(permit);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("stopped accepting; finishing in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(drain_timeout) => {
            tracing::warn!(timeout_ms = drain_timeout.as_millis() as u64, "shutdown timeout reached; closing remaining connections");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_refusal_past_the_cap_is_a_well_formed_json_answer() {
        crate::error::assert_canned_answer(TOO_MANY_CONNECTIONS, "too_many_connections");
    }
}
