//! Managed plugins over HTTP: `PUT`, `GET` and `DELETE
//! /v1/admin/plugins/{name}` and `POST /v1/admin/plugins/{name}/rollback`.
//! The work is `crate::plugin_host`'s; this module reads the requests.
//!
//! An upload is either the bare module (`Content-Type: application/wasm`),
//! which keeps the settings, vectors and placement of the active version,
//! or a JSON form:
//!
//! ```json
//! { "module_base64": "AGFzbQEAAAA...", "prefixes": ["users/"],
//!   "config": {...}, "mode": "shadow", "vectors": [...], "after": "schema" }
//! ```
//! whose other members are those of a `[[plugins]]` table (except `name`,
//! which is the URL's, and `path`), plus at most one of `position`,
//! `before` and `after`.

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::request::{self, BodyLimit};
use crate::app::App;
use crate::error::{json_response, ApiError};
use crate::ijson::ValueLimits;
use crate::plugin::managed::Placement;
use crate::plugin::PluginSpec;
use crate::plugin_host::{Installed, Upload, UploadForm};

type HttpResponse = Response<Full<Bytes>>;

/// Room in a JSON upload beyond the base64 module: settings and vectors.
const FORM_OVERHEAD_BYTES: usize = 2 * 1024 * 1024;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_upload", message)
}

/// Parses a JSON upload form (already read within its limit).
pub fn parse_form(body: &[u8], limits: ValueLimits) -> Result<(Bytes, UploadForm), ApiError> {
    let form_limits = ValueLimits {
        max_bytes: body.len().max(1),
        max_depth: limits.max_depth,
    };
    crate::ijson::check(body, form_limits).map_err(ApiError::from)?;
    let mut form: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the upload form must be a JSON object: {e}")))?;
    for own in ["name", "path"] {
        if form.contains_key(own) {
            return Err(invalid(format!(
                "{own:?} is not an upload field: the name is the URL's and the server stores the module"
            )));
        }
    }
    let module = match form.remove("module_base64") {
        Some(Value::String(text)) => base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| invalid(format!("module_base64 is not base64: {e}")))?,
        Some(_) => return Err(invalid("module_base64 must be a string")),
        None => {
            return Err(invalid(
                "module_base64 is required (or upload the module alone as application/wasm)",
            ))
        }
    };
    // JSON has one kind of number: 65536.0 is the integer 65536 (as JSON
    // Schema says), wherever a setting or a vector's clock is an integer.
    for (name, value) in form.iter_mut() {
        match name.as_str() {
            "config" => {}
            "vectors" => {
                for vector in value.as_array_mut().into_iter().flatten() {
                    if let Some(now) = vector.get_mut("now_ms") {
                        as_integer(now);
                    }
                }
            }
            _ => as_integer(value),
        }
    }
    let vectors = match form.remove("vectors") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(list @ Value::Array(_)) => Some(Some(list.to_string().into_bytes())),
        Some(_) => return Err(invalid("vectors must be a list of test vectors")),
    };
    let placement = placement(&mut form)?;
    // Checked here against the defaults, so a bad setting is named before
    // anything is stored; the upload lays them over the active version's.
    let mut checked = form.clone();
    checked.retain(|_, v| !v.is_null());
    checked.insert("name".into(), Value::from("upload"));
    checked.insert("path".into(), Value::from(""));
    serde_json::from_value::<PluginSpec>(Value::Object(checked))
        .map_err(|e| invalid(format!("plugin settings: {e}")))?;
    Ok((
        Bytes::from(module),
        UploadForm {
            settings: form,
            vectors,
            placement,
        },
    ))
}

/// A number with no fractional part as an integer; anything else as it is.
fn as_integer(value: &mut Value) {
    let Some(f) = value.as_f64().filter(|_| value.is_f64()) else {
        return;
    };
    if f.fract() != 0.0 {
        return;
    }
    if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
        *value = Value::from(f as u64);
    } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
        *value = Value::from(f as i64);
    }
}

/// Takes `position`, `before` or `after` (at most one) out of the form.
fn placement(form: &mut Map<String, Value>) -> Result<Option<Placement>, ApiError> {
    let given: Vec<(&str, Value)> = ["position", "before", "after"]
        .into_iter()
        .filter_map(|k| form.remove(k).map(|v| (k, v)))
        .collect();
    let (key, value) = match given.as_slice() {
        [] => return Ok(None),
        [one] => one,
        _ => return Err(invalid("give at most one of position, before and after")),
    };
    let name = || {
        value
            .as_str()
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| invalid(format!("{key} must be a plugin name")))
    };
    Ok(Some(match *key {
        "position" => match value {
            Value::String(end) if end == "end" => Placement::End,
            _ => Placement::Position(
                value
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| invalid("position must be a whole number from 0, or \"end\""))?,
            ),
        },
        "before" => Placement::Before(name()?),
        _ => Placement::After(name()?),
    }))
}

/// `PUT /v1/admin/plugins/{name}`.
pub async fn upload(
    app: &App,
    req: Request<Incoming>,
    name: &str,
    caller: crate::auth::Caller,
) -> Result<HttpResponse, ApiError> {
    let max_module = app.settings.plugin_uploads.max_module_bytes;
    let media = request::media_type(req.headers()).unwrap_or_default();
    let limit = match media.as_str() {
        "application/wasm" => max_module,
        "application/json" => max_module.div_ceil(3) * 4 + FORM_OVERHEAD_BYTES,
        _ => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type {media:?}: upload the module as application/wasm, or a JSON form as application/json"
            )))
        }
    };
    let request_id = req
        .extensions()
        .get::<super::RequestId>()
        .and_then(|id| id.0.to_str().ok())
        .map(str::to_owned);
    let (parts, body) = req.into_parts();
    let limit = BodyLimit {
        bytes: limit,
        setting: "plugin_uploads.max_module_bytes",
    };
    let body = request::read_body_within(
        &parts.headers,
        body,
        limit,
        app.settings.server.body_read_timeout_ms,
        &app.body_budget,
    )
    .await?;
    let (module, form) = if media == "application/wasm" {
        (body, None)
    } else {
        let (module, form) = parse_form(&body, app.settings.limits.value_limits())?;
        (module, Some(form))
    };
    let upload = Upload {
        module,
        form,
        uploader: caller,
        request_id,
    };
    let done = app.plugins.upload(name, upload).await?;
    let status = if done.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &installed_json(name, &done)))
}

fn installed_json(name: &str, done: &Installed) -> Value {
    let plugin = if done.canary {
        crate::plugin::managed::canary_name(name, done.version)
    } else {
        name.to_owned()
    };
    json!({
        "plugin": plugin,
        "version": done.version,
        "sha256": done.sha256,
        "position": done.position,
        "vectors_passed": done.vectors_passed,
        "active": !done.canary,
        "canary": done.canary,
    })
}

/// `GET /v1/admin/plugins/{name}`.
pub async fn describe(app: &App, name: &str) -> Result<HttpResponse, ApiError> {
    Ok(json_response(
        StatusCode::OK,
        &app.plugins.describe(name).await?,
    ))
}

/// `POST /v1/admin/plugins/{name}/rollback`, with an optional
/// `{"version": N}` body (default: the version before the active one).
pub async fn rollback(
    app: &App,
    req: Request<Incoming>,
    name: &str,
    caller: &crate::auth::Caller,
) -> Result<HttpResponse, ApiError> {
    let (parts, body) = req.into_parts();
    let body =
        request::read_body(&parts.headers, body, &app.settings.server, &app.body_budget).await?;
    let version = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        request::require_json(&parts.headers)?;
        request::check_json_value(&body, app.settings.limits.value_limits())?;
        rollback_version(&body)?
    };
    let done = app.plugins.rollback(name, version, caller).await?;
    Ok(json_response(StatusCode::OK, &installed_json(name, &done)))
}

/// The version a rollback body asks for (`{"version": N}`; `null` or no
/// member: the one before the active one).
fn rollback_version(body: &[u8]) -> Result<Option<u64>, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rollback {
        version: Option<serde_json::Number>,
    }
    let expected = "expected {\"version\": N} with N a version number";
    let asked: Rollback = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("rollback body: {e}; {expected}")))?;
    let Some(n) = asked.version else {
        return Ok(None);
    };
    // JSON has one number type: 3.0 is the integer 3.
    let whole = n.as_u64().or_else(|| {
        let f = n.as_f64()?;
        (f.fract() == 0.0 && (0.0..9.0e15).contains(&f)).then_some(f as u64)
    });
    whole
        .map(Some)
        .ok_or_else(|| invalid(format!("rollback body: version {n}; {expected}")))
}

/// `DELETE /v1/admin/plugins/{name}`.
pub async fn delete(app: &App, name: &str) -> Result<HttpResponse, ApiError> {
    app.plugins.delete(name).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "plugin": name, "deleted": true }),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    const LIMITS: ValueLimits = ValueLimits {
        max_bytes: 1 << 20,
        max_depth: 16,
    };

    #[test]
    fn a_full_form() {
        let body = br#"{"module_base64":"AGFzbQ==","prefixes":["u/"],"mode":"shadow",
            "config":{"a":1},"vectors":[{"key":"k","value":1,"expect":{"action":"accept"}}],
            "after":"schema"}"#;
        let (module, form) = parse_form(body, LIMITS).unwrap();
        assert_eq!(module.as_ref(), b"\0asm");
        assert_eq!(form.settings["prefixes"], serde_json::json!(["u/"]));
        assert_eq!(form.settings["mode"], "shadow");
        assert_eq!(form.placement, Some(Placement::After("schema".into())));
        assert!(form.vectors.flatten().unwrap().starts_with(b"[{"));
    }

    #[test]
    fn bad_forms_say_what_is_wrong() {
        let cases: [(&[u8], &str); 8] = [
            (b"[]", "JSON object"),
            (br#"{}"#, "module_base64 is required"),
            (br#"{"module_base64":"!!"}"#, "not base64"),
            (
                br#"{"module_base64":"","name":"x"}"#,
                "\"name\" is not an upload field",
            ),
            (
                br#"{"module_base64":"","timeout":1}"#,
                "unknown field `timeout`",
            ),
            (
                br#"{"module_base64":"","before":"a","after":"b"}"#,
                "at most one",
            ),
            (br#"{"module_base64":"","position":-1}"#, "whole number"),
            (
                br#"{"module_base64":"","vectors":{}}"#,
                "list of test vectors",
            ),
        ];
        for (body, needle) in cases {
            let err = parse_form(body, LIMITS).err().unwrap().to_string();
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse_form(deep.as_bytes(), LIMITS).is_err());
    }

    #[test]
    fn whole_floats_are_integers_outside_config() {
        let body = br#"{"module_base64":"AA==","timeout_ms":250.0,"position":1.0,"config":{"n":2.0},"vectors":[{"key":"k","value":1,"now_ms":5.0,"expect":{"action":"accept"}}]}"#;
        let (_, form) = parse_form(
            body,
            ValueLimits {
                max_bytes: 4096,
                max_depth: 16,
            },
        )
        .unwrap();
        assert_eq!(form.settings["timeout_ms"], serde_json::json!(250));
        assert!(form.settings["config"]["n"].is_f64());
        assert_eq!(form.placement, Some(Placement::Position(1)));
        let vectors = String::from_utf8(form.vectors.unwrap().unwrap()).unwrap();
        assert!(vectors.contains("\"now_ms\":5,"), "{vectors}");
        let mut half = serde_json::json!(2.5);
        as_integer(&mut half);
        assert!(half.is_f64());
    }

    #[test]
    fn rollback_bodies() {
        assert_eq!(rollback_version(b"{}").unwrap(), None);
        assert_eq!(rollback_version(br#"{"version":null}"#).unwrap(), None);
        assert_eq!(rollback_version(br#"{"version":3}"#).unwrap(), Some(3));
        assert_eq!(rollback_version(br#"{"version":3.0}"#).unwrap(), Some(3));
        for bad in [
            &br#"{"version":3.5}"#[..],
            br#"{"version":-1}"#,
            br#"{"v":1}"#,
            b"[]",
        ] {
            assert!(rollback_version(bad).is_err());
        }
    }

    proptest! {
        #[test]
        fn any_body_is_answered_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_form(&body, LIMITS);
        }

        #[test]
        fn any_form_like_object_is_answered(
            keys in proptest::collection::vec("[a-z_]{1,16}", 0..6),
            values in proptest::collection::vec(prop_oneof![
                Just(json!(1)), Just(json!("x")), Just(json!([])), Just(json!({})), Just(json!(null)), Just(json!(-5)),
            ], 0..6),
        ) {
            let mut form = Map::new();
            form.insert("module_base64".into(), Value::from(""));
            for (k, v) in keys.into_iter().zip(values) {
                form.insert(k, v);
            }
            let _ = parse_form(Value::Object(form).to_string().as_bytes(), LIMITS);
        }
    }
}
