//! Plugin introspection and administration: `GET /v1/plugins`,
//! `POST /v1/plugins/dry-run/{key}`, `POST /v1/admin/plugins/reload`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::request;
use crate::app::App;
use crate::error::{json_response, ApiError};
use crate::plugin::ChainStop;

type HttpResponse = Response<Full<Bytes>>;

/// `GET /v1/plugins`: the chain, in order.
pub fn list(app: &App) -> HttpResponse {
    json_response(StatusCode::OK, &app.chain().describe())
}

/// The running plugin a path's `{name}` names, percent-decoded.
fn named<'c>(
    chain: &'c crate::plugin::PluginChain,
    raw: &str,
) -> Result<&'c crate::plugin::LoadedPlugin, ApiError> {
    let name = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("invalid_name", "plugin name is not UTF-8"))?;
    chain.plugin(&name).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no plugin named {:?} is loaded",
            crate::ijson::quote(&name)
        ))
    })
}

/// `GET /v1/plugins/{name}/shadow`: what a shadow plugin would have done.
pub fn shadow(app: &App, raw_name: &str) -> Result<HttpResponse, ApiError> {
    let chain = app.chain();
    let plugin = named(&chain, raw_name)?;
    let stats = plugin.stats.to_json();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "plugin": plugin.name(),
            "mode": if plugin.is_shadow() { "shadow" } else { "enforce" },
            "calls": stats["calls"],
            "would_accept": stats["accepted"],
            "would_reject": stats["rejected"],
            "would_replace": stats["replaced"],
            "failures": stats["failures"],
            "call_micros": stats["call_micros"],
            "samples": plugin.shadow_log.to_json(),
        }),
    ))
}

/// `POST /v1/admin/plugins/{name}/promote`: a shadow plugin starts to
/// enforce, between writes. A reload reapplies the configured mode.
pub fn promote(app: &App, raw_name: &str) -> Result<HttpResponse, ApiError> {
    let chain = app.chain();
    let plugin = named(&chain, raw_name)?;
    let changed = plugin.promote();
    if changed {
        tracing::info!(
            plugin = plugin.name(),
            "plugin promoted from shadow to enforce"
        );
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "plugin": plugin.name(),
            "mode": "enforce",
            "changed": changed,
            "until_reload": true,
            "note": "set mode = \"enforce\" in the plugin's table to keep it across reloads and restarts",
        }),
    ))
}

/// `POST /v1/admin/plugins/reload`.
pub async fn reload(app: &App) -> Result<HttpResponse, ApiError> {
    match app.reload_plugins().await {
        Ok(count) => Ok(json_response(
            StatusCode::OK,
            &json!({ "reloaded": true, "plugins": count }),
        )),
        Err(e) => {
            tracing::error!(error = %e, "plugin reload failed; previous chain stays active");
            Err(ApiError::ReloadFailed(e.to_string()))
        }
    }
}

/// `POST /v1/plugins/dry-run/{key}`.
pub async fn dry_run(
    app: &App,
    req: Request<Incoming>,
    key: String,
) -> Result<HttpResponse, ApiError> {
    request::require_json(req.headers())?;
    let (parts, body) = req.into_parts();
    let json = request::read_body(&parts.headers, body, &app.settings.server).await?;
    request::check_json_value(&json, app.settings.limits.value_limits())?;
    let (version, run) = app.dry_run(&key, json).await?;
    let steps: Vec<Value> = run.steps.iter().map(|s| s.to_json()).collect();
    let mut answer = json!({
        "key": key,
        "current_version": version,
        "steps": steps,
    });
    match run.result {
        Ok(value) => {
            answer["result"] = Value::from("accept");
            let value = value.unwrap_or_default();
            answer["value"] = serde_json::from_slice(&value).unwrap_or(Value::Null);
        }
        Err(ChainStop::Rejected {
            plugin,
            code,
            message,
            path,
        }) => {
            answer["result"] = Value::from("reject");
            answer["rejection"] =
                json!({ "plugin": plugin, "reason": code, "message": message, "path": path });
        }
        Err(ChainStop::Failed {
            plugin,
            kind,
            detail,
        }) => {
            answer["result"] = Value::from("fail");
            answer["failure"] =
                json!({ "plugin": plugin, "kind": kind.as_str(), "message": detail });
        }
    }
    Ok(json_response(StatusCode::OK, &answer))
}
