//! Turning raw request parts into checked values: keys, bodies and query
//! parameters (conditional headers: `conditional`). Every failure is a 4xx `ApiError`
//! that says what was wrong.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};

use std::time::Duration;

use super::body_budget::{BodyBudget, Share};
use crate::config::ServerSettings;
use crate::error::ApiError;
use crate::ijson::ValueLimits;

/// Decodes and checks a key taken from the path: percent-decoded, valid
/// UTF-8, 1..=`max_bytes` bytes, no control characters.
pub fn parse_key(raw: &str, max_bytes: usize) -> Result<String, ApiError> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_key",
                "key is not valid UTF-8 after percent-decoding",
            )
        })?;
    check_key(&decoded, max_bytes)?;
    Ok(decoded.into_owned())
}

/// Checks a decoded key against the key rules.
pub fn check_key(key: &str, max_bytes: usize) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_key",
            "key must not be empty",
        ));
    }
    if key.len() > max_bytes {
        return Err(ApiError::bad_request(
            "invalid_key",
            format!(
                "key is {} bytes; the limit (limits.max_key_bytes) is {max_bytes}",
                key.len()
            ),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_key",
            "key must not contain control characters",
        ));
    }
    Ok(())
}

/// Requires a JSON content type (`application/json`, or any `+json` type).
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(media) = media_type(headers) else {
        return Err(ApiError::UnsupportedMediaType(
            "missing Content-Type; send application/json".into(),
        ));
    };
    if media == "application/json" || media.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {media:?} is not supported; send application/json"
        )))
    }
}

/// A path's `{name}` segment, percent-decoded.
pub fn parse_name(raw: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|name| name.into_owned())
        .map_err(|_| ApiError::bad_request("invalid_name", "plugin name is not UTF-8"))
}

/// The request's media type (lower case, parameters dropped), if it has one.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?;
    let media = value.to_str().unwrap_or("").split(';').next().unwrap_or("");
    Some(media.trim().to_ascii_lowercase())
}

/// Reads the whole body, refusing (413) anything over `server.max_body_bytes`
/// without buffering it: a declared Content-Length over the limit is refused
/// before reading, and a chunked body is cut off as soon as it passes the
/// limit. A body that has not arrived within `server.body_read_timeout_ms`
/// is refused with 408 (and the connection closed, as its rest is unread).
pub async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    server: &ServerSettings,
    budget: &BodyBudget,
) -> Result<Bytes, ApiError> {
    let limit = BodyLimit {
        bytes: server.max_body_bytes,
        setting: "server.max_body_bytes",
    };
    read_body_within(headers, body, limit, server.body_read_timeout_ms, budget).await
}

/// The most a body may hold, and the setting that says so (for the 413).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    /// Bytes.
    pub bytes: usize,
    /// The setting behind it.
    pub setting: &'static str,
}

/// [`read_body`] under a limit of the caller's choosing (plugin uploads
/// have their own).
pub async fn read_body_within(
    headers: &HeaderMap,
    body: Incoming,
    limit: BodyLimit,
    timeout_ms: u64,
    budget: &BodyBudget,
) -> Result<Bytes, ApiError> {
    let (limit, setting) = (limit.bytes, limit.setting);
    let too_large = || ApiError::TooLarge {
        code: "body_too_large",
        message: format!("request body exceeds {limit} bytes ({setting})"),
    };
    refuse_unknown_codings(headers)?;
    let declared = match headers.get(CONTENT_LENGTH) {
        Some(length) => Some(
            length
                .to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("invalid_header", "Content-Length is not a number")
                })?,
        ),
        None => None,
    };
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let timeout = Duration::from_millis(timeout_ms);
    let collecting = collect(body, limit, declared, budget);
    let Ok(collected) = tokio::time::timeout(timeout, collecting).await else {
        return Err(ApiError::RequestTimeout(format!(
            "the request body did not arrive within {timeout_ms} ms (server.body_read_timeout_ms)"
        )));
    };
    match collected {
        Ok(bytes) => Ok(bytes),
        Err(BodyError::TooLarge) => Err(too_large()),
        Err(BodyError::Budget) => Err(ApiError::Busy(
            "the server holds as many request body bytes as it may now \
             (server.max_body_bytes_in_flight); retry shortly"
                .into(),
        )),
        Err(BodyError::Read(e)) => Err(ApiError::bad_request(
            "invalid_body",
            format!("could not read the request body: {e}"),
        )),
    }
}

/// Why a body could not be collected.
enum BodyError {
    TooLarge,
    Budget,
    Read(hyper::Error),
}

/// Collects a body into one buffer of exactly its size: its declared
/// length is allocated at once, a chunked body's buffer grows as it
/// arrives, and nothing passes `limit`. Each chunk is copied as it comes,
/// so a body sent a byte per chunk costs its size, not a chunk's
/// bookkeeping and a slice of the connection's read buffer per byte; and
/// a value kept in the cache or the memtable holds no connection buffer
/// alive (a 64 MiB cache of 100-byte values once measured 820 MiB
/// resident that way).
///
/// The buffer's bytes are first taken from `budget`: the declared length
/// before anything is read, a chunked body's in growing steps.
async fn collect(
    mut body: Incoming,
    limit: usize,
    declared: Option<u64>,
    budget: &BodyBudget,
) -> Result<Bytes, BodyError> {
    let declared = declared.map_or(0, |n| n as usize).min(limit);
    let mut share = Share::default();
    if declared > 0 {
        budget
            .grow(&mut share, declared, declared)
            .await
            .map_err(|_| BodyError::Budget)?;
    }
    let mut buf = Vec::with_capacity(declared);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.len() > limit - buf.len() {
            return Err(BodyError::TooLarge);
        }
        let needed = buf.len() + data.len();
        if needed > share.bytes() {
            budget
                .grow(&mut share, needed, limit)
                .await
                .map_err(|_| BodyError::Budget)?;
        }
        buf.extend_from_slice(&data);
    }
    buf.shrink_to_fit();
    Ok(Bytes::from(buf))
}

/// Refuses a body sent with a transfer coding the server does not decode:
/// hyper takes `chunked` off, and anything else (`gzip, chunked`) would
/// otherwise be stored still encoded (RFC 9112, section 6.1: 501).
fn refuse_unknown_codings(headers: &HeaderMap) -> Result<(), ApiError> {
    for value in headers.get_all(TRANSFER_ENCODING) {
        let text = value.to_str().unwrap_or("?");
        let unknown = text
            .split(',')
            .map(str::trim)
            .find(|coding| !coding.eq_ignore_ascii_case("chunked"));
        if let Some(coding) = unknown {
            return Err(ApiError::NotImplemented(format!(
                "transfer coding {:?} is not supported; send the body plain or chunked",
                crate::logsafe::escape(coding, 64)
            )));
        }
    }
    Ok(())
}

/// Checks that `bytes` is a value the store accepts (see `crate::ijson`).
pub fn check_json_value(bytes: &[u8], limits: ValueLimits) -> Result<(), ApiError> {
    crate::ijson::check(bytes, limits).map_err(ApiError::from)
}

/// The entity tag of a version.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn keys_are_decoded_and_checked() {
        assert_eq!(parse_key("users%2F1", 512).unwrap(), "users/1");
        assert_eq!(parse_key("a/b%20c", 512).unwrap(), "a/b c");
        assert_eq!(parse_key("%C3%A9", 512).unwrap(), "é");
        assert!(parse_key("", 512).is_err());
        assert!(parse_key("%FF", 512).is_err());
        assert!(parse_key("a%0Ab", 512).is_err());
        assert!(parse_key(&"x".repeat(513), 512).is_err());
        assert!(parse_key(&"x".repeat(512), 512).is_ok());
    }

    #[test]
    fn json_values_are_checked() {
        let limits = |max_bytes| ValueLimits {
            max_bytes,
            max_depth: 64,
        };
        assert!(check_json_value(br#"{"a":1}"#, limits(100)).is_ok());
        assert!(check_json_value(b"17", limits(100)).is_ok());
        assert!(check_json_value(b"", limits(100)).is_err());
        assert!(check_json_value(b"{\"a\":", limits(100)).is_err());
        assert!(check_json_value(b"{} {}", limits(100)).is_err());
        assert!(matches!(
            check_json_value(b"[1,2,3]", limits(3)),
            Err(ApiError::TooLarge { .. })
        ));
        assert!(matches!(
            check_json_value(b"{\"a\":1,\"a\":2}", limits(100)),
            Err(ApiError::BadRequest {
                code: "duplicate_member",
                ..
            })
        ));
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(require_json(&h).is_err());
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(require_json(&h).is_ok());
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/merge-patch+json"),
        );
        assert!(require_json(&h).is_ok());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(require_json(&h).is_err());
    }
}
