//! Writes computed from a key's current value: `PATCH /v1/kv/{key}` (merge
//! patch or JSON patch) and `POST /v1/kv/{key}?op=incr` (a counter).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::kv::{precondition_failed, with_etag, with_revision, write_expect};
use super::request;
use crate::app::App;
use crate::error::{json_response, raw_json_response, ApiError};
use std::time::Duration;

use super::ttl::TtlAsked;
use crate::storage::{Expect, Expiry, WriteOutcome};
use crate::update::{Update, MAX_SAFE_INTEGER};

type HttpResponse = Response<Full<Bytes>>;

/// The media types `PATCH` takes, and which update each asks for.
const MERGE_PATCH: &str = "application/merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";

/// `PATCH /v1/kv/{key}`: the stored value after the patch, `200` (or
/// `201` when `If-None-Match: *` created the key).
pub async fn patch(app: &App, req: Request<Incoming>, key: &str) -> Result<HttpResponse, ApiError> {
    let expect = write_expect(&req)?;
    let expiry = super::kv::write_expiry(app, &req, Expiry::Keep)?;
    let media = request::media_type(req.headers()).unwrap_or_default();
    if media != MERGE_PATCH && media != JSON_PATCH {
        return Err(ApiError::UnsupportedMediaType(format!(
            "PATCH takes Content-Type {MERGE_PATCH} (RFC 7396) or {JSON_PATCH} (RFC 6902), not {media:?}"
        )));
    }
    let (parts, body) = req.into_parts();
    let bytes =
        request::read_body(&parts.headers, body, &app.settings.server, &app.body_budget).await?;
    request::check_json_value(&bytes, app.settings.limits.value_limits())?;
    let update = if media == MERGE_PATCH {
        let patch: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
        Update::MergePatch(patch)
    } else {
        Update::JsonPatch(parse_json_patch(&bytes)?)
    };
    // Only `If-None-Match: *` lets a patch make a key.
    let create = expect == Expect::Absent;
    let (outcome, stored) = app.update(key, update, create, expect, expiry).await?;
    let (status, version) = written(outcome)?;
    let response = with_etag(raw_json_response(status, stored), version);
    Ok(with_revision(response, version))
}

/// An RFC 6902 patch from a request body (see `update::json_patch_from`).
fn parse_json_patch(bytes: &[u8]) -> Result<json_patch::Patch, ApiError> {
    let bad = |message: String| {
        ApiError::bad_request(
            "invalid_patch",
            format!("not a JSON patch (an array of operations, RFC 6902): {message}"),
        )
    };
    let value: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    crate::update::json_patch_from(value).map_err(bad)
}

/// The status and version of a computed write's outcome.
fn written(outcome: WriteOutcome) -> Result<(StatusCode, u64), ApiError> {
    match outcome {
        WriteOutcome::Created { version } => Ok((StatusCode::CREATED, version)),
        WriteOutcome::Replaced { version } | WriteOutcome::Unchanged { version } => {
            Ok((StatusCode::OK, version))
        }
        WriteOutcome::Conflict { current } => Err(precondition_failed(current)),
        other => Err(ApiError::unexpected(other)),
    }
}

/// What `?op=incr&path=/n&by=5` asks for.
#[derive(Debug, PartialEq)]
struct Increment {
    pointer: String,
    by: i64,
    ttl: TtlAsked,
}

fn parse_increment(query: Option<&str>, max_ttl: Duration) -> Result<Increment, ApiError> {
    let bad = |message: String| ApiError::bad_request("invalid_query", message);
    let (mut op, mut pointer, mut by) = (None, String::new(), 1i64);
    let mut ttl = TtlAsked::default();
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if ttl.take_query(&name, &value, max_ttl)? {
            continue;
        }
        match name.as_ref() {
            "op" => op = Some(value.into_owned()),
            "path" => pointer = value.into_owned(),
            "by" => {
                by = value
                    .parse()
                    .ok()
                    .filter(|n: &i64| n.abs() <= MAX_SAFE_INTEGER)
                    .ok_or_else(|| {
                        bad(format!(
                            "by must be an integer within +/-{MAX_SAFE_INTEGER}, got {value:?}"
                        ))
                    })?;
            }
            other => {
                return Err(bad(format!(
                    "unknown query parameter {other:?}; use op, path, by, ttl, keep_ttl"
                )))
            }
        }
    }
    match op.as_deref() {
        Some("incr") => {}
        Some(other) => return Err(bad(format!("unknown op {other:?}; the one op is incr"))),
        None => {
            return Err(bad(
                "POST on a key needs ?op=incr (&path=/json/pointer&by=N); PUT stores a value"
                    .into(),
            ))
        }
    }
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(bad(format!(
            "path must be a JSON pointer (empty, or starting with \"/\"), got {pointer:?}"
        )));
    }
    Ok(Increment { pointer, by, ttl })
}

/// `POST /v1/kv/{key}?op=incr&path=/n&by=5`: adds `by` (default 1) to the
/// integer at `path` (default: the whole value), creating the key or field
/// as 0 when absent. Answers the new number with the key's version.
pub async fn increment(
    app: &App,
    req: &Request<Incoming>,
    key: &str,
) -> Result<HttpResponse, ApiError> {
    let max_ttl = app.settings.limits.max_ttl();
    let Increment {
        pointer,
        by,
        mut ttl,
    } = parse_increment(req.uri().query(), max_ttl)?;
    ttl.take_header(req.headers(), max_ttl)?;
    let expiry = ttl.expiry(Expiry::Keep)?;
    let expect = write_expect(req)?;
    let update = Update::Increment {
        pointer: pointer.clone(),
        by,
    };
    let (outcome, stored) = app.update(key, update, true, expect, expiry).await?;
    let (status, version) = written(outcome)?;
    let value = serde_json::from_slice::<Value>(&stored)
        .ok()
        .and_then(|v| v.pointer(&pointer).cloned())
        .unwrap_or(Value::Null);
    let body = json!({"key": key, "version": version, "path": pointer, "value": value});
    let response = with_etag(json_response(status, &body), version);
    Ok(with_revision(response, version))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn increment_queries() {
        let year = Duration::from_secs(365 * 86_400);
        let parsed = parse_increment(Some("op=incr&path=%2Fa%2Fb&by=-3&ttl=1m"), year).unwrap();
        assert_eq!((parsed.pointer.as_str(), parsed.by), ("/a/b", -3));
        assert_eq!(parsed.ttl.ttl, Some(Duration::from_secs(60)));
        assert_eq!(parse_increment(Some("op=incr"), year).unwrap().by, 1);
        for bad in [
            "",
            "op=decr",
            "op=incr&by=1.5",
            "op=incr&by=9007199254740992",
            "op=incr&path=n",
            "op=incr&x=1",
            "op=incr&ttl=0",
        ] {
            assert!(parse_increment(Some(bad), year).is_err(), "{bad}");
        }
    }
}
