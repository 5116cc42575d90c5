//! The HTTP server: accepting connections, routing, graceful shutdown.
//!
//! - `request`: checked parsing of keys, bodies, queries and headers;
//! - `kv`: the native `/v1/kv` API;
//! - `plugins`: plugin listing, dry runs and reload;
//! - `compat`: the ExDaas `/api` contract;
//! - `nested_params`: Plug-style nested parameters for `compat`;
//! - `backup`: the streaming backup endpoint.

mod backup;
mod compat;
mod kv;
mod nested_params;
mod plugins;
pub mod request;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;

use crate::app::App;
use crate::error::{json_response, ApiError};

type HttpResponse = Response<Full<Bytes>>;

/// The body type handed to hyper: most answers are one buffer (`Full`),
/// the backup is a stream.
pub type Body = BoxBody<Bytes, Infallible>;

/// Routes one request. Routing is a plain match on the path; each area
/// checks its own methods so a 405 can name the allowed ones.
async fn route(app: Arc<App>, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
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
        _ => Err(ApiError::NotFound(format!("no route for {path}"))),
    }
}

/// Answers one request; errors become their JSON response here.
async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/v1/admin/backup" {
        if req.method() == Method::GET {
            return Ok(backup::stream(&app).await);
        }
        let refused = ApiError::MethodNotAllowed { allow: "GET" }.into_response();
        return Ok(refused.map(BodyExt::boxed));
    }
    let head = req.method() == Method::HEAD;
    let mut response = match route(app, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if head {
        // HEAD answers like GET, with the length of the body it leaves out.
        let body_len = hyper::body::Body::size_hint(response.body())
            .exact()
            .unwrap_or(0);
        response.headers_mut().insert(
            hyper::header::CONTENT_LENGTH,
            hyper::header::HeaderValue::from(body_len),
        );
        *response.body_mut() = Full::new(Bytes::new());
    }
    Ok(response.map(BodyExt::boxed))
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
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
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
                let service = service_fn(move |req| handle(app.clone(), req));
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
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
