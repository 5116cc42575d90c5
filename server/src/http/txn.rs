//! `POST /v1/txn`: a transaction (see `crate::txn`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::kv::with_revision;
use super::request::{self, BodyLimit};
use crate::app::App;
use crate::error::{json_response, ApiError};

type HttpResponse = Response<Full<Bytes>>;

/// `POST /v1/txn`: `200` with `{"succeeded", "revision", "results"}` once
/// the branch that ran is durable; an operation that cannot apply fails
/// the whole transaction with its error, `branch` and `operation` index.
pub async fn transact(
    app: &App,
    req: Request<Incoming>,
    caller: &crate::auth::Caller,
) -> Result<HttpResponse, ApiError> {
    request::require_json(req.headers())?;
    let limits = &app.settings.limits;
    let (parts, body) = req.into_parts();
    let limit = BodyLimit {
        bytes: limits.max_txn_bytes,
        setting: "limits.max_txn_bytes",
    };
    let timeout = app.settings.server.body_read_timeout_ms;
    let bytes =
        request::read_body_within(&parts.headers, body, limit, timeout, &app.body_budget).await?;
    let txn = crate::txn::parse(&bytes, limits)?;
    // Every key it may touch, whichever branch runs.
    for (key, need) in txn.keys() {
        super::access::need_key(caller, key, need)?;
    }
    let answer = app.transact(txn).await?;
    let response = json_response(StatusCode::OK, &answer.body());
    Ok(match answer.revision {
        Some(revision) => with_revision(response, revision),
        None => response,
    })
}
