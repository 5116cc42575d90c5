//! The ExDaas HTTP contract (`/api`), kept so clients of the Elixir original
//! work unchanged; the README's "ExDaas compatibility" section summarises it.
//!
//! Record id N is the native key `"N"`: the same keyspace and the same
//! persistent counter as `POST /v1/kv`, and every write runs the plugin
//! chain through the shared write path. Unlike the original, a malformed id
//! is a 400 JSON error, and ids are never handed out twice.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::access::need_key;
use super::{nested_params, request};
use crate::app::App;
use crate::auth::scope::Level;
use crate::auth::Caller;
use crate::error::{json_response, raw_json_response, ApiError};
use crate::storage::{Expect, WriteOutcome};

type HttpResponse = Response<Full<Bytes>>;

/// A JSON `POST /api` body; other members are ignored, as the original did.
#[derive(Deserialize)]
struct JsonBody<'a> {
    #[serde(default)]
    id: Option<Value>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

fn not_an_object() -> ApiError {
    ApiError::bad_request("invalid_data", "data must be a JSON object")
}

/// Reads a record id: a positive integer, as a JSON number or a numeric
/// string. `None` for absent, null or empty (meaning "assign one").
fn parse_id(value: Option<&Value>) -> Result<Option<u64>, ApiError> {
    let bad = |shown: String| {
        ApiError::bad_request(
            "invalid_id",
            format!("id must be a positive integer (or null to assign one), got {shown}"),
        )
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => match s.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(bad(format!("{s:?}"))),
        },
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(bad(n.to_string())),
        },
        Some(other) => Err(bad(other.to_string())),
    }
}

/// The query string as a nested-parameter tree.
fn query_params(req: &Request<Incoming>) -> Result<Value, ApiError> {
    nested_params::parse(req.uri().query().unwrap_or(""))
        .map_err(|e| ApiError::bad_request("invalid_query", e.0))
}

/// The `id` query parameter, required.
fn required_id(params: &Value) -> Result<u64, ApiError> {
    parse_id(params.get("id"))?
        .ok_or_else(|| ApiError::bad_request("invalid_id", "the id query parameter is required"))
}

/// `POST /api`: create (no id) or create/replace (with id); replies with the
/// record as stored.
pub async fn create_or_update(
    app: &App,
    req: Request<Incoming>,
    caller: &Caller,
) -> Result<HttpResponse, ApiError> {
    let form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !form {
        request::require_json(req.headers())?;
    }
    let (parts, body) = req.into_parts();
    let bytes =
        request::read_body(&parts.headers, body, &app.settings.server, &app.body_budget).await?;
    let (id, json) = if form {
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::bad_request("invalid_body", "form body is not UTF-8"))?;
        let body =
            nested_params::parse(text).map_err(|e| ApiError::bad_request("invalid_body", e.0))?;
        let id = parse_id(body.get("id"))?;
        let data = match body.get("data") {
            Some(d @ Value::Object(_)) => d,
            Some(_) => return Err(not_an_object()),
            None => return Err(ApiError::bad_request("invalid_data", "data is required")),
        };
        (id, Bytes::from(data.to_string()))
    } else {
        // `data` is kept as the client's JSON text: no tree is built for it,
        // and a repeated identical request is recognised byte for byte.
        // Named as the I-JSON rule it breaks, as on the other write routes.
        if let Err(e) = std::str::from_utf8(&bytes) {
            return Err(crate::ijson::Violation::InvalidUtf8 {
                offset: e.valid_up_to(),
            }
            .into());
        }
        // serde would also read a struct from an array; the contract is an object.
        if bytes.trim_ascii_start().first().is_some_and(|b| *b != b'{') {
            return Err(ApiError::bad_request(
                "invalid_body",
                "body must be an object with id and data",
            ));
        }
        let body: JsonBody = serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::bad_request(
                "invalid_body",
                format!("body must be an object with id and data: {e}"),
            ),
            _ => ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}")),
        })?;
        let id = parse_id(body.id.as_ref())?;
        let data = body
            .data
            .ok_or_else(|| ApiError::bad_request("invalid_data", "data is required"))?;
        if !data.get().starts_with('{') {
            return Err(not_an_object());
        }
        (id, Bytes::copy_from_slice(data.get().as_bytes()))
    };
    request::check_json_value(&json, app.settings.limits.value_limits())?;
    match id {
        Some(id) => need_key(caller, &id.to_string(), Level::Write)?,
        None if !caller.may_create() => {
            return Err(ApiError::Forbidden(format!(
                "token {} may not create records without an id: that needs write access to every key starting with a digit",
                crate::ijson::quote(caller.name())
            )))
        }
        None => {}
    }
    let (id, stored) = match id {
        Some(id) => {
            let (outcome, stored) = app
                .put_returning(&id.to_string(), json, Expect::Any)
                .await?;
            match outcome {
                WriteOutcome::Created { .. }
                | WriteOutcome::Replaced { .. }
                | WriteOutcome::Unchanged { .. } => {}
                other => return Err(ApiError::unexpected(other)),
            }
            (id, stored)
        }
        None => {
            let (id, _version, stored) = app
                .create_returning(json, crate::storage::Expiry::Never)
                .await?;
            (id, stored)
        }
    };
    // The stored bytes are JSON already: splice them in rather than
    // parsing and re-serialising them.
    let mut body = Vec::with_capacity(stored.len() + 32);
    body.extend_from_slice(format!("{{\"id\":{id},\"data\":").as_bytes());
    body.extend_from_slice(&stored);
    body.push(b'}');
    Ok(raw_json_response(StatusCode::OK, Bytes::from(body)))
}

/// The record's data, or `Null` when absent.
async fn record(app: &App, id: u64) -> Result<Value, ApiError> {
    Ok(match app.storage.get(&id.to_string()).await? {
        Some(v) => serde_json::from_slice(&v.json).unwrap_or(Value::Null),
        None => Value::Null,
    })
}

/// `GET /api?id=N`: the record, with `data: null` when unknown.
pub async fn read(
    app: &App,
    req: &Request<Incoming>,
    caller: &Caller,
) -> Result<HttpResponse, ApiError> {
    let id = required_id(&query_params(req)?)?;
    need_key(caller, &id.to_string(), Level::Read)?;
    let data = record(app, id).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "id": id, "data": data }),
    ))
}

/// Elixir truthiness: everything but `nil` and `false`.
fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
}

/// `GET /api/cmd?id=N&cmd[query]=...`.
pub async fn command(
    app: &App,
    req: &Request<Incoming>,
    caller: &Caller,
) -> Result<HttpResponse, ApiError> {
    let params = query_params(req)?;
    let id = required_id(&params)?;
    need_key(caller, &id.to_string(), Level::Read)?;
    let cmd = params.get("cmd").cloned().unwrap_or(Value::Null);
    let query = match cmd.get("query") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(Value::String(_)) | None => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "cmd[query] is required (ONLY or FILTER_BOOL)",
            ))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "cmd[query] must be a single name (ONLY or FILTER_BOOL), not a list or map",
            ))
        }
    };
    let keys = cmd.get("keys").cloned().unwrap_or(Value::Null);
    match query.as_str() {
        "ONLY" => {
            let Some(names) = keys.as_array() else {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    "ONLY needs cmd[keys][]=name parameters",
                ));
            };
            let data = record(app, id).await?;
            let values: Vec<Value> = names
                .iter()
                .map(|k| {
                    k.as_str()
                        .and_then(|k| data.get(k))
                        .cloned()
                        .unwrap_or(Value::Null)
                })
                .collect();
            Ok(json_response(StatusCode::OK, &json!({ "values": values })))
        }
        "FILTER_BOOL" => {
            let (Some(key), Some(by)) = (
                keys.get("key").and_then(Value::as_str),
                keys.get("by").and_then(Value::as_str),
            ) else {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    "FILTER_BOOL needs cmd[keys][key]=list and cmd[keys][by]=field",
                ));
            };
            let data = record(app, id).await?;
            let kept: Vec<Value> = data
                .get(key)
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter(|item| item.get(by).is_some_and(truthy))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            Ok(json_response(StatusCode::OK, &Value::Array(kept)))
        }
        // The original's answer for unknown commands, kept as it was.
        other => Ok(json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({ "message": format!("{} not supported", crate::ijson::quote(other)) }),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(parse_id(None).unwrap(), None);
        assert_eq!(parse_id(Some(&json!(null))).unwrap(), None);
        assert_eq!(parse_id(Some(&json!(""))).unwrap(), None);
        assert_eq!(parse_id(Some(&json!(7))).unwrap(), Some(7));
        assert_eq!(parse_id(Some(&json!("12"))).unwrap(), Some(12));
        for bad in [
            json!("abc"),
            json!(0),
            json!(-1),
            json!(1.5),
            json!("1e3"),
            json!([1]),
            json!(true),
        ] {
            assert!(parse_id(Some(&bad)).is_err(), "{bad}");
        }
    }
}
