//! What a read replica adds to the HTTP API: reads that wait for a
//! revision (`X-Exdaas-Min-Revision`, on primaries too) and promotion.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use crate::app::App;
use crate::error::{json_response, ApiError};

/// A read asks for at least this revision.
const MIN_REVISION: &str = "x-exdaas-min-revision";
/// How long the read may wait for it, in milliseconds (at most
/// `replication.max_wait_ms`).
const MAX_WAIT: &str = "x-exdaas-max-wait-ms";

fn header_u64(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_header",
                        format!("{name} must be a non-negative integer"),
                    )
                })
        })
        .transpose()
}

/// Waits until this node has applied the revision the read asks for, up to
/// the read's wait (and `replication.max_wait_ms`); `503 behind` with the
/// node's revision if it has not by then. A read without the header, and
/// any read on a primary (whose acknowledged writes are visible), goes on
/// at once.
pub async fn wait_for_revision(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(asked) = header_u64(headers, MIN_REVISION)? else {
        return Ok(());
    };
    let cap = app.settings.replication.max_wait_ms;
    let wait = header_u64(headers, MAX_WAIT)?.unwrap_or(cap).min(cap);
    let mut applied = match &app.replica {
        Some(replica) if !replica.is_promoted() => replica.watch_applied(),
        _ => app.storage.feed().watch_head(),
    };
    let reached = tokio::time::timeout(
        Duration::from_millis(wait),
        applied.wait_for(|revision| *revision >= asked),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if reached {
        return Ok(());
    }
    let revision = *applied.borrow();
    Err(ApiError::Behind { asked, revision })
}

/// `POST /v1/admin/promote?max_lag=N`: a replica stops following its
/// primary and takes writes, unless it is more than `max_lag` (default 0)
/// revisions behind the newest the primary reported.
pub fn promote(app: &App, req: &Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let mut max_lag = 0;
    for (name, value) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "max_lag" => {
                max_lag = value.parse().map_err(|_| {
                    ApiError::bad_request("invalid_query", "max_lag must be a revision count")
                })?
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "unknown query parameter {}; use max_lag",
                        crate::ijson::quote(other)
                    ),
                ))
            }
        }
    }
    let Some(replica) = &app.replica else {
        return Err(ApiError::PromoteRefused(
            "this server is a primary already".into(),
        ));
    };
    let revision = replica
        .promote(&app.storage, max_lag)
        .map_err(ApiError::PromoteRefused)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "promoted": true, "revision": revision }),
    ))
}
