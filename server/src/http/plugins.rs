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
