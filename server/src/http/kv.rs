//! The native key-value API, `/v1/kv`.

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ETAG, LOCATION};
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::conditional::{Preconditions, ReadVerdict};
use super::request::{self, etag};
use crate::app::App;
use crate::auth::scope::{Coverage, Level};
use crate::auth::Caller;
use crate::error::{json_response, raw_json_response, ApiError};
use crate::storage::{Expect, Expiry, PageLimits, WriteOutcome};

type HttpResponse = Response<Full<Bytes>>;

/// Default and largest page size of a listing.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Value bytes one page of a listing with values may carry: a page of 1,000
/// large values would otherwise be gigabytes; `next` continues after it.
const MAX_PAGE_VALUE_BYTES: usize = 8 * 1024 * 1024;

pub(super) fn with_etag(mut response: HttpResponse, version: u64) -> HttpResponse {
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        response.headers_mut().insert(ETAG, v);
    }
    response
}

/// `GET` / `HEAD /v1/kv/{key}`.
pub async fn get(app: &App, req: &Request<Incoming>, key: &str) -> Result<HttpResponse, ApiError> {
    let Some(value) = app.storage.get(key).await? else {
        return Err(ApiError::NotFound(format!(
            "no value stored under key {key:?}"
        )));
    };
    match Preconditions::from_headers(req.headers())?.evaluate_read(value.version) {
        ReadVerdict::Proceed => {}
        ReadVerdict::NotModified => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            return Ok(with_etag(r, value.version));
        }
        ReadVerdict::Failed => return Err(precondition_failed(Some(value.version))),
    }
    let mut response = with_etag(
        raw_json_response(StatusCode::OK, value.json.clone()),
        value.version,
    );
    if let Some(at) = value.expires_at.and_then(super::ttl::expires_at_header) {
        response
            .headers_mut()
            .insert(super::ttl::EXPIRES_AT_HEADER, at);
    }
    Ok(response)
}

/// The expiry a write asks for (`?ttl=`, `?keep_ttl=`, `Exdaas-Ttl`).
pub(super) fn write_expiry(
    app: &App,
    req: &Request<Incoming>,
    default: Expiry,
) -> Result<Expiry, ApiError> {
    let max = app.settings.limits.max_ttl();
    super::ttl::from_request(req.uri().query(), req.headers(), max, default)
}

/// The write condition a request's `If-Match` / `If-None-Match` asks for.
pub(super) fn write_expect(req: &Request<Incoming>) -> Result<Expect, ApiError> {
    Ok(Preconditions::from_headers(req.headers())?.to_expect())
}

pub(super) fn precondition_failed(current: Option<u64>) -> ApiError {
    ApiError::PreconditionFailed(match current {
        Some(v) => format!("precondition failed: the current version is {v}"),
        None => "precondition failed: the key does not exist".to_owned(),
    })
}

/// Reads and checks a JSON value body.
async fn json_body(app: &App, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    request::require_json(req.headers())?;
    let (parts, body) = req.into_parts();
    let bytes =
        request::read_body(&parts.headers, body, &app.settings.server, &app.body_budget).await?;
    request::check_json_value(&bytes, app.settings.limits.value_limits())?;
    Ok(bytes)
}

/// The header that gives a write's place in the one global order of
/// writes: the revision that wrote the state the response reports.
const X_REVISION: &str = "x-exdaas-revision";

pub(super) fn with_revision(mut response: HttpResponse, revision: u64) -> HttpResponse {
    response
        .headers_mut()
        .insert(X_REVISION, HeaderValue::from(revision));
    response
}

pub(super) fn key_version(status: StatusCode, key: &str, version: u64) -> HttpResponse {
    let response = with_etag(
        json_response(status, &json!({"key": key, "version": version})),
        version,
    );
    // A key's version is the revision of the write that stored it.
    with_revision(response, version)
}

/// `PUT /v1/kv/{key}`.
pub async fn put(app: &App, req: Request<Incoming>, key: &str) -> Result<HttpResponse, ApiError> {
    let expect = write_expect(&req)?;
    let expiry = write_expiry(app, &req, Expiry::Never)?;
    let json = json_body(app, req).await?;
    match app.put_expiring(key, json, expect, expiry).await? {
        WriteOutcome::Created { version } => Ok(key_version(StatusCode::CREATED, key, version)),
        WriteOutcome::Replaced { version } | WriteOutcome::Unchanged { version } => {
            Ok(key_version(StatusCode::OK, key, version))
        }
        WriteOutcome::Conflict { current } => Err(precondition_failed(current)),
        other => Err(ApiError::unexpected(other)),
    }
}

/// `DELETE /v1/kv/{key}`.
pub async fn delete(
    app: &App,
    req: &Request<Incoming>,
    key: &str,
) -> Result<HttpResponse, ApiError> {
    match app.delete(key, write_expect(req)?).await? {
        WriteOutcome::Deleted { revision, .. } => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            Ok(with_revision(r, revision))
        }
        WriteOutcome::Missing => Err(ApiError::NotFound(format!(
            "no value stored under key {key:?}"
        ))),
        WriteOutcome::Conflict { current } => Err(precondition_failed(current)),
        other => Err(ApiError::unexpected(other)),
    }
}

/// `POST /v1/kv`: store under a new server-assigned key.
pub async fn create(app: &App, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let expiry = write_expiry(app, &req, Expiry::Never)?;
    let json = json_body(app, req).await?;
    let (id, version, _) = app.create_returning(json, expiry).await?;
    let key = id.to_string();
    let mut response = key_version(StatusCode::CREATED, &key, version);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/kv/{key}")) {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

/// Options of a listing, from the query string.
#[derive(Debug, PartialEq)]
struct ListQuery {
    prefix: String,
    after: Option<String>,
    limit: usize,
    values: bool,
}

fn parse_list_query(query: Option<&str>, max_key_bytes: usize) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        prefix: String::new(),
        after: None,
        limit: DEFAULT_LIMIT,
        values: false,
    };
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "prefix" => q.prefix = value.into_owned(),
            // An empty `after` is "from the start", as a client that
            // passes back a first page's empty cursor means it.
            "after" if value.is_empty() => q.after = None,
            "after" => {
                request::check_key(&value, max_key_bytes)?;
                q.after = Some(value.into_owned());
            }
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_query",
                            format!("limit must be 1..={MAX_LIMIT}, got {value:?}"),
                        )
                    })?;
            }
            "values" => {
                q.values = match value.as_ref() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::bad_request(
                            "invalid_query",
                            format!("values must be true or false, got {value:?}"),
                        ))
                    }
                }
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown query parameter {other:?}; use prefix, after, limit, values"),
                ))
            }
        }
    }
    Ok(q)
}

/// One page over only the prefixes under `q.prefix` that `caller` may read
/// (in key order, so `after` and `next` work as for any listing): a token
/// with one small prefix does not walk every key to list its own.
async fn list_granted(
    app: &App,
    caller: &Caller,
    q: &ListQuery,
    limits: PageLimits,
) -> Result<crate::storage::Listing, ApiError> {
    let mut items = Vec::new();
    let after = q.after.as_deref();
    for scanned in caller.readable_under(&q.prefix) {
        // Ranges wholly before the cursor are done; the one it is in goes
        // on after it; later ones start from their beginning.
        let from = match after {
            Some(a) if a.starts_with(&scanned) => Some(a),
            Some(a) if a > scanned.as_str() => continue,
            _ => None,
        };
        let value_bytes: usize = items
            .iter()
            .map(|i: &crate::storage::ListedKey| i.json.as_ref().map_or(0, |j| j.len()))
            .sum();
        let left = PageLimits {
            limit: limits.limit - items.len(),
            max_value_bytes: limits.max_value_bytes.saturating_sub(value_bytes),
            ..limits
        };
        if left.limit == 0 || (limits.values && left.max_value_bytes == 0) {
            return Ok(crate::storage::Listing { items, more: true });
        }
        let page = app.storage.list(&scanned, from, left).await?;
        items.extend(page.items);
        if page.more {
            return Ok(crate::storage::Listing { items, more: true });
        }
    }
    Ok(crate::storage::Listing { items, more: false })
}

/// `GET /v1/kv?prefix=&after=&limit=&values=`. A caller that may read
/// only part of the prefix gets that part, marked `"partial": true`; its
/// pages may hold fewer keys than `limit`, and `next` goes on from the last
/// key looked at.
pub async fn list(
    app: &App,
    req: &Request<Incoming>,
    caller: &Caller,
) -> Result<HttpResponse, ApiError> {
    let q = parse_list_query(req.uri().query(), app.settings.limits.max_key_bytes)?;
    let coverage = caller.coverage(&q.prefix, Level::Read);
    if coverage == Coverage::Nothing {
        return Ok(raw_json_response(
            StatusCode::OK,
            Bytes::from_static(b"{\"items\":[],\"next\":null,\"partial\":true}"),
        ));
    }
    let limits = PageLimits {
        limit: q.limit,
        values: q.values,
        max_value_bytes: MAX_PAGE_VALUE_BYTES,
        now_ms: crate::storage::now_ms(),
    };
    let page = match coverage {
        Coverage::All => {
            app.storage
                .list(&q.prefix, q.after.as_deref(), limits)
                .await?
        }
        _ => list_granted(app, caller, &q, limits).await?,
    };
    // Values are stored as JSON text already; splice them in rather than
    // parsing and re-serialising every one.
    let mut out = BytesMut::with_capacity(64 + page.items.len() * 48);
    out.put_slice(b"{\"items\":[");
    let readable = page
        .items
        .iter()
        .filter(|item| coverage == Coverage::All || caller.may(&item.key, Level::Read));
    for (i, item) in readable.enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(b"{\"key\":");
        out.put_slice(&serde_json::to_vec(&item.key).unwrap_or_default());
        out.put_slice(format!(",\"version\":{}", item.version).as_bytes());
        if let Some(json) = &item.json {
            out.put_slice(b",\"value\":");
            out.put_slice(json);
        }
        out.put_u8(b'}');
    }
    out.put_slice(b"],\"next\":");
    match page.items.last().filter(|_| page.more) {
        Some(item) => out.put_slice(&serde_json::to_vec(&item.key).unwrap_or_default()),
        None => out.put_slice(b"null"),
    }
    if coverage == Coverage::Part {
        out.put_slice(b",\"partial\":true");
    }
    out.put_u8(b'}');
    Ok(raw_json_response(StatusCode::OK, out.freeze()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn list_query_parsing() {
        let q = parse_list_query(
            Some("prefix=users%2F&after=users%2F3&limit=5&values=true"),
            512,
        )
        .unwrap();
        assert_eq!(
            q,
            ListQuery {
                prefix: "users/".into(),
                after: Some("users/3".into()),
                limit: 5,
                values: true
            }
        );
        assert_eq!(parse_list_query(None, 512).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(
            parse_list_query(Some("prefix=&after="), 512).unwrap().after,
            None
        );
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "values=maybe",
            "bogus=1",
        ] {
            assert!(parse_list_query(Some(bad), 512).is_err(), "{bad}");
        }
    }
}
