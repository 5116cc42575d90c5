//! Plugin introspection and administration: `GET /v1/plugins`,
//! `POST /v1/plugins/dry-run/{key}`, `POST /v1/admin/plugins/reload`,
//! shadow records and promotion.

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

/// `GET /v1/plugins`: the chain, in order; module paths for
/// administrators only.
pub fn list(app: &App, admin: bool) -> HttpResponse {
    json_response(StatusCode::OK, &app.chain().describe(admin))
}

/// The 404 for a name no running plugin has.
fn not_loaded(name: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no plugin named {:?} is loaded",
        crate::ijson::quote(name)
    ))
}

/// The running plugin called `name`.
fn named<'c>(
    chain: &'c crate::plugin::PluginChain,
    name: &str,
) -> Result<&'c crate::plugin::LoadedPlugin, ApiError> {
    chain.plugin(name).ok_or_else(|| not_loaded(name))
}

/// `GET /v1/plugins/{name}/shadow`: what a shadow plugin would have done.
/// For a plugin with a canary, the canary's record: its version, and how
/// often its verdict agreed with the enforcing version's.
pub fn shadow(app: &App, name: &str) -> Result<HttpResponse, ApiError> {
    let chain = app.chain();
    let canary = chain
        .plugins()
        .iter()
        .find(|p| p.spec.canary_of.as_deref() == Some(name));
    let plugin = match canary {
        Some(canary) => canary,
        None => named(&chain, name)?,
    };
    let stats = plugin.stats.to_json();
    let version = match plugin.spec.source {
        crate::plugin::PluginSource::Managed { version } => Some(version),
        crate::plugin::PluginSource::Config => None,
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "plugin": plugin.name(),
            "version": version,
            "canary_of": plugin.spec.canary_of,
            "agreed": plugin.spec.canary_of.as_ref().map(|_| &stats["canary_agreed"]),
            "differed": plugin.spec.canary_of.as_ref().map(|_| &stats["canary_differed"]),
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
/// enforce, between writes. For a managed plugin the change is recorded;
/// for a configured one a reload reapplies the configured mode.
pub async fn promote(app: &App, name: &str) -> Result<HttpResponse, ApiError> {
    let Some((changed, lasting)) = app.plugins.promote(name).await? else {
        return Err(not_loaded(name));
    };
    if changed {
        tracing::info!(
            plugin = name,
            lasting,
            "plugin promoted from shadow to enforce"
        );
    }
    let mut answer = json!({
        "plugin": name,
        "mode": "enforce",
        "changed": changed,
        "until_reload": !lasting,
    });
    if !lasting {
        answer["note"] = Value::from(
            "set mode = \"enforce\" in the plugin's table to keep it across reloads and restarts",
        );
    }
    Ok(json_response(StatusCode::OK, &answer))
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
    let json =
        request::read_body(&parts.headers, body, &app.settings.server, &app.body_budget).await?;
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
