//! `POST /v1/kv/get`: many keys read at one revision.

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;

use super::kv::with_revision;
use super::request;
use crate::app::App;
use crate::error::{raw_json_response, ApiError};

type HttpResponse = Response<Full<Bytes>>;

/// Most keys one request may name.
pub const MAX_KEYS: usize = 1000;
/// Most value bytes one answer carries: a thousand large values would
/// otherwise make a response of gigabytes.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Asked {
    keys: Vec<String>,
}

/// `POST /v1/kv/get` with `{"keys": [...]}`: `{"revision": R, "items":
/// [{"key", "version", "value"}...], "missing": [...]}`, items in the order
/// asked, each as of revision R (also in `X-Exdaas-Revision`). With `?op=`
/// in the query this is an operation on the key named `get` instead.
pub async fn get_many(
    app: &App,
    req: Request<Incoming>,
    caller: &crate::auth::Caller,
) -> Result<HttpResponse, ApiError> {
    if req.uri().query().is_some_and(|q| !q.is_empty()) {
        return super::kv_update::increment(app, &req, "get").await;
    }
    request::require_json(req.headers())?;
    let (parts, body) = req.into_parts();
    let bytes =
        request::read_body(&parts.headers, body, &app.settings.server, &app.body_budget).await?;
    request::check_json_value(&bytes, app.settings.limits.value_limits())?;
    let asked: Asked = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("expected {{\"keys\": [\"key\", ...]}}: {e}"),
        )
    })?;
    if asked.keys.len() > MAX_KEYS {
        return Err(ApiError::bad_request(
            "too_many_keys",
            format!("{} keys asked; at most {MAX_KEYS}", asked.keys.len()),
        ));
    }
    for key in &asked.keys {
        request::check_key(key, app.settings.limits.max_key_bytes)?;
        super::access::need_key(caller, key, crate::auth::scope::Level::Read)?;
    }
    let (revision, values) = app.storage.get_many(asked.keys.clone()).await?;
    let mut out = BytesMut::with_capacity(64 + asked.keys.len() * 48);
    out.put_slice(format!("{{\"revision\":{revision},\"items\":[").as_bytes());
    let mut missing = Vec::new();
    let mut value_bytes = 0usize;
    let mut first = true;
    for (key, value) in asked.keys.iter().zip(&values) {
        let Some(value) = value else {
            missing.push(key);
            continue;
        };
        value_bytes += value.json.len();
        if value_bytes > MAX_ANSWER_BYTES {
            return Err(ApiError::TooLarge {
                code: "answer_too_large",
                message: format!(
                    "the values asked for pass {MAX_ANSWER_BYTES} bytes; ask for fewer keys at once"
                ),
            });
        }
        if !first {
            out.put_u8(b',');
        }
        first = false;
        out.put_slice(b"{\"key\":");
        out.put_slice(&serde_json::to_vec(key).unwrap_or_default());
        out.put_slice(format!(",\"version\":{},\"value\":", value.version).as_bytes());
        out.put_slice(&value.json);
        out.put_u8(b'}');
    }
    out.put_slice(b"],\"missing\":");
    out.put_slice(&serde_json::to_vec(&missing).unwrap_or_default());
    out.put_u8(b'}');
    Ok(with_revision(
        raw_json_response(StatusCode::OK, out.freeze()),
        revision,
    ))
}
