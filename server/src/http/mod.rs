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
//! - `stall_guard`: the write timeout on connections.

mod backup;
mod compat;
mod conditional;
mod kv;
mod managed_plugins;
mod nested_params;
mod openapi;
mod plugins;
pub mod request;
pub mod routes;
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
use crate::error::{json_response, raw_json_response, ApiError};
use crate::metrics::Route;
use routes::{Op, Resolved};

type HttpResponse = Response<Full<Bytes>>;

/// The body type handed to hyper: most answers are one buffer (`Full`),
/// the backup is a stream.
pub type Body = BoxBody<Bytes, Infallible>;

/// Answers one resolved operation. `param` is where the path's `{key}` or
/// `{name}` part lies, for the operations that have one.
async fn dispatch(
    app: &Arc<App>,
    req: Request<Incoming>,
    op: Op,
    param: std::ops::Range<usize>,
) -> Result<Response<Body>, ApiError> {
    // Decoded and checked here, before the request moves into its handler.
    let raw = req.uri().path().get(param).unwrap_or("");
    let param = match op {
        Op::KvGet | Op::KvPut | Op::KvDelete | Op::PluginDryRun => {
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
    let response = match op {
        Op::Backup => return Ok(backup::stream(app).await),
        Op::BackupHead => return Ok(backup::head()),
        Op::KvList => kv::list(app, &req).await?,
        Op::KvCreate => kv::create(app, req).await?,
        Op::KvGet => kv::get(app, &req, &param).await?,
        Op::KvPut => kv::put(app, req, &param).await?,
        Op::KvDelete => kv::delete(app, &req, &param).await?,
        Op::ApiRead => compat::read(app, &req).await?,
        Op::ApiWrite => compat::create_or_update(app, req).await?,
        Op::ApiCmd => compat::command(app, &req).await?,
        Op::PluginList => plugins::list(app),
        Op::PluginDryRun => plugins::dry_run(app, req, param).await?,
        Op::PluginReload => plugins::reload(app).await?,
        Op::PluginShadow => plugins::shadow(app, &param)?,
        Op::PluginPromote => plugins::promote(app, &param).await?,
        Op::PluginUpload => managed_plugins::upload(app, req, &param).await?,
        Op::PluginDescribe => managed_plugins::describe(app, &param).await?,
        Op::PluginDelete => managed_plugins::delete(app, &param).await?,
        Op::PluginRollback => managed_plugins::rollback(app, req, &param).await?,
        Op::Health => health(app),
        Op::Ready => ready(app),
        Op::Metrics => metrics(app),
        Op::OpenApi => raw_json_response(StatusCode::OK, openapi::document()?),
    };
    Ok(response.map(BodyExt::boxed))
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
        }),
    )
}

fn metrics(app: &App) -> HttpResponse {
    let text = app.metrics.render(&app.storage, &app.chain());
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    r
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
    let resolved = routes::resolve(&method, req.uri().path());
    let route = Route::of(&resolved);
    let path = tracing::enabled!(tracing::Level::DEBUG).then(|| req.uri().path().to_owned());
    let answer = match (authorize(&app, &req, peer), resolved) {
        (Err(e), _) => Err(e),
        (Ok(()), Resolved::NotFound) => Err(ApiError::NotFound(format!(
            "no route for {}",
            crate::ijson::quote(req.uri().path())
        ))),
        (Ok(()), Resolved::MethodNotAllowed(r)) => {
            Err(ApiError::MethodNotAllowed { allow: r.allow() })
        }
        (Ok(()), Resolved::Op(op, param)) => match dispatch(&app, req, op, param).await {
            Ok(r) if method == Method::HEAD && op != Op::BackupHead => Ok(strip_body_for_head(r)),
            other => other,
        },
    };
    let mut response = match answer {
        Ok(r) => r,
        Err(e) if method == Method::HEAD => {
            strip_body_for_head(e.into_response().map(BodyExt::boxed))
        }
        Err(e) => e.into_response().map(BodyExt::boxed),
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
