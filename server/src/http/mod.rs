//! The HTTP server: accepting connections, routing, graceful shutdown.
//!
//! - `request`: checked parsing of keys, bodies and queries;
//! - `conditional`: If-Match / If-None-Match, as RFC 9110 orders them;
//! - `kv`: the native `/v1/kv` API;
//! - `plugins`: plugin listing, dry runs and reload;
//! - `compat`: the ExDaas `/api` contract;
//! - `nested_params`: Plug-style nested parameters for `compat`;
//! - `backup`: the streaming backup endpoint;
//! - `stall_guard`: the write timeout on connections.

mod backup;
mod compat;
mod conditional;
mod kv;
mod nested_params;
mod plugins;
pub mod request;
mod stall_guard;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
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
use crate::auth::{Access, Role};
use crate::error::{json_response, ApiError};
use crate::metrics::Route;

type HttpResponse = Response<Full<Bytes>>;

/// The body type handed to hyper: most answers are one buffer (`Full`),
/// the backup is a stream.
pub type Body = BoxBody<Bytes, Infallible>;

/// Routes one request. Routing is a plain match on the path; each area
/// checks its own methods so a 405 can name the allowed ones.
async fn route_request(app: Arc<App>, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/v1/kv") {
        if rest.is_empty() || rest.starts_with('/') {
            return kv::route(&app, req, rest).await;
        }
    }
    if path == "/api" || path == "/api/cmd" {
        return compat::route(&app, req, &path).await;
    }
    if path.starts_with("/v1/plugins") || path == "/v1/admin/plugins/reload" {
        return plugins::route(&app, req, &path).await;
    }
    match path.as_str() {
        "/health" => match *req.method() {
            Method::GET | Method::HEAD => {
                let status = if app.storage.is_warming() {
                    "warming"
                } else {
                    "ok"
                };
                Ok(json_response(StatusCode::OK, &json!({ "status": status })))
            }
            _ => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
        },
        // Ready for traffic once the stores are open, which is before the
        // listener exists, and while every shard takes writes; warming is
        // reported but does not block traffic.
        "/ready" => match *req.method() {
            Method::GET | Method::HEAD => {
                let warming = app.storage.is_warming();
                let unavailable: Vec<_> = app
                    .storage
                    .unavailable_shards()
                    .into_iter()
                    .map(|(shard, reason)| json!({ "shard": shard, "reason": reason }))
                    .collect();
                let status = if unavailable.is_empty() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                Ok(json_response(
                    status,
                    &json!({ "ready": unavailable.is_empty(), "warming": warming, "unavailable_shards": unavailable }),
                ))
            }
            _ => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
        },
        "/metrics" => match *req.method() {
            Method::GET | Method::HEAD => {
                let text = app.metrics.render(&app.storage, &app.chain());
                let mut r = Response::new(Full::new(Bytes::from(text)));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok(r)
            }
            _ => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
        },
        _ => Err(ApiError::NotFound(format!("no route for {path}"))),
    }
}

/// The role a request needs; `None` for the open health probes.
fn required_role(method: &Method, path: &str) -> Option<Role> {
    match path {
        "/health" | "/ready" => None,
        p if p.starts_with("/v1/admin/") => Some(Role::Admin),
        _ if method == Method::GET || method == Method::HEAD => Some(Role::Read),
        _ => Some(Role::Write),
    }
}

/// Checks the request's token against the role it needs.
fn authorize(app: &App, req: &Request<Incoming>, peer: IpAddr) -> Result<(), ApiError> {
    let Some(needed) = required_role(req.method(), req.uri().path()) else {
        return Ok(());
    };
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match app.tokens.check(header, peer) {
        Access::Open => Ok(()),
        Access::LoopbackOnly => Err(ApiError::Forbidden(
            "this server has no auth.tokens configured, so it only serves clients on its own \
             machine; configure auth.tokens (or auth.tokens_file) and send Authorization: Bearer \
             <token>, or set auth.allow_open_remote = true to serve everyone without authentication"
                .into(),
        )),
        Access::Granted(role) if role >= needed => Ok(()),
        Access::Granted(role) => Err(ApiError::Forbidden(format!(
            "this token has the {} role; {} needs {}",
            role.as_str(),
            req.uri().path(),
            needed.as_str()
        ))),
        Access::Unauthenticated => Err(ApiError::Unauthorized(
            "missing or unknown bearer token (send Authorization: Bearer <token>)".into(),
        )),
    }
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

/// Answers one request: access control, routing, metrics, request id. Errors
/// become their JSON response here.
async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: IpAddr,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let id = request_id(&req);
    let method = req.method().clone();
    let route = Route::of(&method, req.uri().path());
    let path = tracing::enabled!(tracing::Level::DEBUG).then(|| req.uri().path().to_owned());
    let mut response = match authorize(&app, &req, peer) {
        Err(e) => e.into_response().map(BodyExt::boxed),
        Ok(()) if req.uri().path() == "/v1/admin/backup" => match method {
            Method::GET => backup::stream(&app).await,
            // What GET would answer, without taking a backup.
            Method::HEAD => backup::head(),
            _ => ApiError::MethodNotAllowed { allow: "GET, HEAD" }
                .into_response()
                .map(BodyExt::boxed),
        },
        Ok(()) => {
            let mut response = match route_request(app.clone(), req).await {
                Ok(r) => r,
                Err(e) => e.into_response(),
            };
            if method == Method::HEAD {
                // HEAD answers like GET, with the length of the body it leaves out.
                let body_len = hyper::body::Body::size_hint(response.body())
                    .exact()
                    .unwrap_or(0);
                response
                    .headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(body_len));
                *response.body_mut() = Full::new(Bytes::new());
            }
            response.map(BodyExt::boxed)
        }
    };
    let status = response.status().as_u16();
    app.metrics.record(route, status, started.elapsed());
    if let Some(path) = path {
        tracing::debug!(request_id = ?id, %method, path, status, micros = started.elapsed().as_micros() as u64, "request");
    }
    response.headers_mut().insert(X_REQUEST_ID, id);
    Ok(response)
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes, then stops
/// accepting and waits (at most `drain_timeout`) for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(Duration::from_millis(
            app.settings.server.header_read_timeout_ms,
        ));
    let write_timeout = Duration::from_millis(app.settings.server.write_timeout_ms);
    let slots = Arc::new(tokio::sync::Semaphore::new(
        app.settings.server.max_connections,
    ));
    tokio::pin!(shutdown);
    loop {
        // At the connection cap, stop accepting: new clients wait in the
        // kernel's queue instead of getting served with no resources.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
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
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let peer = peer.ip();
                let service = service_fn(move |req| handle(app.clone(), req, peer));
                let stream = stall_guard::StallGuard::new(stream, write_timeout);
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
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
