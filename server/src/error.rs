//! Every way a request can fail, and the one place where a failure becomes
//! an HTTP status and a JSON body.
//!
//! Error bodies always have the shape
//! `{"error":{"code":"...","message":"..."}}`; plugin rejections and
//! failures add `plugin` (and `reason` / `kind`) next to `code`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::ijson::Violation;
use crate::plugin::managed::ManagedError;
use crate::plugin::FailureKind;
use crate::storage::feed::FeedError;
use crate::storage::{StoreError, WriteOutcome};
use crate::update::UpdateError;

/// A request that cannot be answered with success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; `code` is a stable machine-readable name.
    #[error("{message}")]
    BadRequest {
        /// e.g. `invalid_key`, `invalid_json`, `invalid_query`, `invalid_header`.
        code: &'static str,
        /// What was wrong, for a human.
        message: String,
    },
    /// Nothing is stored under the key, or no such route.
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not with this method.
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed {
        /// Value of the `Allow` header.
        allow: String,
    },
    /// `If-Match` / `If-None-Match` did not hold.
    #[error("{0}")]
    PreconditionFailed(String),
    /// A body or value over its configured limit.
    #[error("{message}")]
    TooLarge {
        /// `body_too_large` or `value_too_large`.
        code: &'static str,
        /// Which limit, and its size.
        message: String,
    },
    /// The request body did not arrive in time (408).
    #[error("{0}")]
    RequestTimeout(String),
    /// The body is not declared as JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The write kept racing with other writes to the same key.
    #[error("{0}")]
    Conflict(String),
    /// A plugin rejected the write (422).
    #[error("{message}")]
    Rejected {
        /// The plugin's name.
        plugin: String,
        /// The plugin's reason code.
        reason: String,
        /// The plugin's message.
        message: String,
        /// JSON path the plugin pointed at.
        path: Option<String>,
    },
    /// A plugin failed and its policy is to refuse the write (500).
    #[error("plugin {plugin:?} failed ({}): {detail}", kind.as_str())]
    PluginFailed {
        /// The plugin's name.
        plugin: String,
        /// How it failed.
        kind: FailureKind,
        /// Details.
        detail: String,
    },
    /// Reloading plugins failed; the previous chain stays active (422).
    #[error("plugins not reloaded, the previous chain stays active: {0}")]
    ReloadFailed(String),
    /// No or an unknown bearer token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The token's role does not cover the request (403).
    #[error("{0}")]
    Forbidden(String),
    /// The request uses a feature the server does not implement (501).
    #[error("{0}")]
    NotImplemented(String),
    /// The server is at a bound for now; retry shortly (503, Retry-After).
    #[error("{0}")]
    Busy(String),
    /// A read asked for a revision this node has not applied in time.
    #[error("this node has applied revision {revision}, not yet {asked}; retry, or read from the primary")]
    Behind {
        /// The revision asked for.
        asked: u64,
        /// The node's.
        revision: u64,
    },
    /// A promotion was refused (409).
    #[error("{0}")]
    PromoteRefused(String),
    /// A token is past its request rate or concurrency (429, Retry-After).
    #[error("{message}")]
    TooManyRequests {
        /// What limit, of which token.
        message: String,
        /// Seconds until a retry can succeed.
        retry_after_s: u64,
    },
    /// Every change feed reader slot is taken (503, Retry-After).
    #[error("{0}")]
    FeedFull(String),
    /// Reading the change feed failed; `Compacted` is the client's 410.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// A fault of the server itself, not of the request (500).
    #[error("{0}")]
    Internal(String),
    /// Storage failed or is unavailable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A change to the managed plugins was refused or failed.
    #[error(transparent)]
    Managed(#[from] ManagedError),
    /// An update (patch, increment) cannot apply to the current value.
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// One operation of a transaction failed; nothing was written.
    #[error("{branch}[{index}] ({op}): {error}")]
    TxnOperation {
        /// `success` or `failure`.
        branch: &'static str,
        /// The operation's index in its branch.
        index: usize,
        /// Its kind.
        op: &'static str,
        /// Why.
        error: Box<ApiError>,
    },
}

impl From<Violation> for ApiError {
    fn from(v: Violation) -> Self {
        match v {
            Violation::TooLarge { .. } => Self::TooLarge {
                code: v.code(),
                message: v.to_string(),
            },
            _ => Self::BadRequest {
                code: v.code(),
                message: v.to_string(),
            },
        }
    }
}

impl ApiError {
    /// Shorthand for a 400 with a code and message.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A write outcome the caller's request cannot produce: a broken
    /// invariant, reported as a server error instead of a panic.
    pub fn unexpected(outcome: WriteOutcome) -> Self {
        Self::Store(StoreError::Corrupt(format!(
            "unexpected write outcome {outcome:?}"
        )))
    }

    /// The status and stable code of this error.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::TxnOperation { error, .. } => error.status_and_code(),
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::PreconditionFailed(_) => (StatusCode::PRECONDITION_FAILED, "precondition_failed"),
            Self::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, "unsupported_transfer_coding"),
            Self::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "body_budget"),
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Self::FeedFull(_) => (StatusCode::SERVICE_UNAVAILABLE, "too_many_subscribers"),
            Self::Behind { .. } => (StatusCode::SERVICE_UNAVAILABLE, "behind"),
            Self::PromoteRefused(_) => (StatusCode::CONFLICT, "promote_refused"),
            Self::Feed(FeedError::Compacted { .. }) => (StatusCode::GONE, "compacted"),
            Self::Feed(FeedError::Store(e)) => Self::Store(e.clone()).status_and_code(),
            Self::TooLarge { code, .. } => (StatusCode::PAYLOAD_TOO_LARGE, code),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::Conflict(_) => (StatusCode::CONFLICT, "write_conflict"),
            Self::Rejected { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
            Self::PluginFailed { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "plugin_failed"),
            Self::ReloadFailed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "reload_failed"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
            Self::Managed(e) => match e {
                ManagedError::Disabled => (StatusCode::FORBIDDEN, "uploads_disabled"),
                ManagedError::InvalidName(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
                ManagedError::InvalidUpload(_) => (StatusCode::BAD_REQUEST, "invalid_upload"),
                ManagedError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                ManagedError::NoSuchVersion { .. } => (StatusCode::NOT_FOUND, "no_such_version"),
                ManagedError::OutOfScope(_) => (StatusCode::FORBIDDEN, "forbidden"),
                ManagedError::NoSuchAnchor(_) => (StatusCode::CONFLICT, "no_such_anchor"),
                ManagedError::Configured(_) => (StatusCode::CONFLICT, "plugin_configured"),
                ManagedError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "module_too_large"),
                ManagedError::Limit(_) => (StatusCode::CONFLICT, "plugin_limit"),
                ManagedError::Refused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "plugin_refused"),
                ManagedError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
                ManagedError::NoSpace(_) => {
                    (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
                }
            },
            Self::Update(e) => match e {
                UpdateError::Missing => (StatusCode::NOT_FOUND, "not_found"),
                UpdateError::Result(Violation::TooLarge { .. }) => {
                    (StatusCode::PAYLOAD_TOO_LARGE, e.code())
                }
                UpdateError::Stored(_) => (StatusCode::INTERNAL_SERVER_ERROR, e.code()),
                e if e.is_conflict() => (StatusCode::CONFLICT, e.code()),
                e => (StatusCode::UNPROCESSABLE_ENTITY, e.code()),
            },
            Self::Store(e) => match e {
                StoreError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
                StoreError::Poisoned(_) => (StatusCode::SERVICE_UNAVAILABLE, "shard_unavailable"),
                StoreError::LogFailed(_) => (StatusCode::SERVICE_UNAVAILABLE, "log_failed"),
                StoreError::Unavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable")
                }
                StoreError::NoSpace(_) => {
                    (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
                }
                StoreError::KeyTooLong(_) => (StatusCode::BAD_REQUEST, "invalid_key"),
                StoreError::ReadOnly(_) => (StatusCode::MISDIRECTED_REQUEST, "read_only_replica"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
            },
        }
    }

    /// The HTTP answer for this error.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let (status, code) = self.status_and_code();
        let message = capped(&self.to_string());
        if status.is_server_error() {
            tracing::error!(code, error = %message, "request failed");
        }
        let mut body = Map::new();
        body.insert("code".into(), Value::from(code));
        body.insert("message".into(), Value::from(message));
        let mut inner = &self;
        if let Self::TxnOperation {
            branch,
            index,
            error,
            ..
        } = &self
        {
            body.insert("branch".into(), Value::from(*branch));
            body.insert("operation".into(), Value::from(*index));
            inner = error;
        }
        match inner {
            Self::Rejected {
                plugin,
                reason,
                path,
                ..
            } => {
                body.insert("plugin".into(), Value::from(plugin.as_str()));
                body.insert("reason".into(), Value::from(capped(reason)));
                if let Some(path) = path {
                    body.insert("path".into(), Value::from(capped(path)));
                }
            }
            Self::PluginFailed { plugin, kind, .. } => {
                body.insert("plugin".into(), Value::from(plugin.as_str()));
                body.insert("kind".into(), Value::from(kind.as_str()));
            }
            Self::Feed(FeedError::Compacted { oldest, .. }) => {
                body.insert("oldest".into(), Value::from(*oldest));
            }
            Self::Behind { revision, .. } => {
                body.insert("revision".into(), Value::from(*revision));
            }
            Self::Store(StoreError::ReadOnly(primary)) => {
                body.insert("primary".into(), Value::from(primary.as_str()));
            }
            Self::Update(e) => {
                if let Some(pointer) = e.pointer() {
                    body.insert("pointer".into(), Value::from(capped(pointer)));
                }
                if let UpdateError::TestFailed { index, .. } | UpdateError::BadPath { index, .. } =
                    e
                {
                    // Inside a transaction, `operation` is the transaction's.
                    let name = if body.contains_key("operation") {
                        "patch_operation"
                    } else {
                        "operation"
                    };
                    body.insert(name.into(), Value::from(*index));
                }
            }
            _ => {}
        }
        let retry_after = match &self {
            Self::TooManyRequests { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        };
        let mut response = json_response(status, &json!({ "error": body }));
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Self::MethodNotAllowed { allow } = self {
            if let Ok(allow) = HeaderValue::from_str(allow.as_str()) {
                response.headers_mut().insert(ALLOW, allow);
            }
        }
        if code == "body_budget" || code == "too_many_subscribers" {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"exdaas\""),
            );
        }
        response
    }
}

/// Longest text of any one field of an error body.
const MAX_ERROR_TEXT: usize = 1024;

/// Error text that may quote a client or a plugin, escaped and cut short.
pub fn capped(text: &str) -> String {
    crate::logsafe::escape(text, MAX_ERROR_TEXT)
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    raw_json_response(status, Bytes::from(value.to_string()))
}

/// A response whose body is already-serialised JSON.
pub fn raw_json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Checks a whole HTTP answer written out by hand (sent before or instead
/// of hyper): its declared length is its body's, and the body is an error
/// with `code`.
#[cfg(test)]
pub fn assert_canned_answer(raw: &[u8], code: &str) {
    let text = std::str::from_utf8(raw).unwrap_or_default();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
    let declared = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.parse::<usize>().ok());
    assert_eq!(declared, Some(body.len()));
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    assert_eq!(json["error"]["code"], code);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn statuses_are_decided_here() {
        let cases = [
            (ApiError::bad_request("invalid_key", "x"), 400),
            (ApiError::NotFound("x".into()), 404),
            (
                ApiError::MethodNotAllowed {
                    allow: "GET".into(),
                },
                405,
            ),
            (ApiError::PreconditionFailed("x".into()), 412),
            (ApiError::UnsupportedMediaType("x".into()), 415),
            (ApiError::Store(StoreError::Poisoned(1)), 503),
            (ApiError::Store(StoreError::Io("disk".into())), 500),
            (
                ApiError::Store(StoreError::NoSpace("/data/log".into())),
                507,
            ),
            (
                ApiError::Managed(ManagedError::NoSpace("/data/plugins".into())),
                507,
            ),
        ];
        for (err, status) in cases {
            assert_eq!(err.into_response().status().as_u16(), status);
        }
        let r = ApiError::MethodNotAllowed {
            allow: "GET, PUT".into(),
        }
        .into_response();
        assert_eq!(r.headers()[ALLOW], "GET, PUT");
    }

    #[test]
    fn bodies_are_capped() {
        let huge = ApiError::Rejected {
            plugin: "p".into(),
            reason: "r".repeat(100_000),
            message: "m".repeat(1 << 20),
            path: Some("x".repeat(100_000)),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let body = http_body_util::BodyExt::collect(huge.into_response().into_body());
        let bytes = rt.block_on(body).unwrap().to_bytes();
        assert!(bytes.len() < 4 * MAX_ERROR_TEXT, "{}", bytes.len());
    }
}
