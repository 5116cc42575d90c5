//! Expiry as clients ask for it: `?ttl=30s` (or `15m`, `2h`, `7d`, `500ms`,
//! or plain seconds) or the header `Exdaas-Ttl: 30`, and `?keep_ttl=true`;
//! and the instant a read reports in `Exdaas-Expires-At` (RFC 3339, UTC,
//! milliseconds).

use std::time::{Duration, UNIX_EPOCH};

use hyper::header::HeaderValue;
use hyper::HeaderMap;

use crate::error::ApiError;
use crate::storage::{now_ms, Expiry};

/// The request header that carries a TTL.
pub const TTL_HEADER: &str = "exdaas-ttl";
/// The response header that names when a key expires.
pub const EXPIRES_AT_HEADER: &str = "exdaas-expires-at";

/// What a request asks of the key's expiry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TtlAsked {
    /// `ttl`, query or header.
    pub ttl: Option<Duration>,
    /// `keep_ttl=true`.
    pub keep: bool,
}

impl TtlAsked {
    /// Takes `ttl` and `keep_ttl` from a query pair; `false` for any other.
    pub fn take_query(&mut self, name: &str, value: &str, max: Duration) -> Result<bool, ApiError> {
        match name {
            "ttl" => self.ttl = Some(parse(value, max)?),
            "keep_ttl" => {
                self.keep = match value {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ApiError::bad_request(
                            "invalid_query",
                            format!("keep_ttl must be true or false, got {value:?}"),
                        ))
                    }
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Takes `Exdaas-Ttl` from the headers (the query's `ttl` wins if both).
    pub fn take_header(&mut self, headers: &HeaderMap, max: Duration) -> Result<(), ApiError> {
        let Some(value) = headers.get(TTL_HEADER) else {
            return Ok(());
        };
        let text = value
            .to_str()
            .map_err(|_| bad("the Exdaas-Ttl header is not text"))?;
        let ttl = parse(text, max)?;
        self.ttl.get_or_insert(ttl);
        Ok(())
    }

    /// The expiry to write: a TTL sets one; `keep_ttl` keeps the key's
    /// (and with a TTL, sets that one only where the key has none: a window
    /// that starts with its first write); neither gives `default`.
    pub fn expiry(&self, default: Expiry) -> Result<Expiry, ApiError> {
        let at = |ttl: Duration| {
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            now_ms().saturating_add(ms)
        };
        Ok(match (self.ttl, self.keep) {
            (Some(ttl), true) => Expiry::KeepOrAt(at(ttl)),
            (Some(ttl), false) => Expiry::At(at(ttl)),
            (None, true) => Expiry::Keep,
            (None, false) => default,
        })
    }
}

/// The expiry a write asks for with its query (which may hold nothing
/// but `ttl` and `keep_ttl`) and headers; `default` without either.
pub fn from_request(
    query: Option<&str>,
    headers: &HeaderMap,
    max: Duration,
    default: Expiry,
) -> Result<Expiry, ApiError> {
    let mut asked = TtlAsked::default();
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !asked.take_query(&name, &value, max)? {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!(
                    "unknown query parameter {:?}; a write takes ttl and keep_ttl",
                    crate::ijson::quote(&name)
                ),
            ));
        }
    }
    asked.take_header(headers, max)?;
    asked.expiry(default)
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_ttl", message)
}

/// A TTL: plain seconds, or a number with a unit (`ms`, `s`, `m`, `h`,
/// `d`, and the longer names humantime reads), within 1 ms and `max`.
pub fn parse(text: &str, max: Duration) -> Result<Duration, ApiError> {
    let text = text.trim();
    let ttl = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text).map_err(|e| {
            bad(format!(
                "ttl {:?}: {e} (write e.g. 30, 30s, 15m, 2h or 7d)",
                crate::ijson::quote(text)
            ))
        })?,
    };
    if ttl.is_zero() || ttl > max {
        return Err(bad(format!(
            "ttl must be from 1 ms to {} s (limits.max_ttl_seconds), got {:?}",
            max.as_secs(),
            crate::ijson::quote(text)
        )));
    }
    Ok(ttl)
}

/// `Exdaas-Expires-At` for an instant in ms since the Unix epoch.
pub fn expires_at_header(at_ms: u64) -> Option<HeaderValue> {
    let instant = UNIX_EPOCH.checked_add(Duration::from_millis(at_ms))?;
    HeaderValue::from_str(&humantime::format_rfc3339_millis(instant).to_string()).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const YEAR: Duration = Duration::from_secs(365 * 86_400);

    #[test]
    fn ttls_read_as_people_write_them() {
        assert_eq!(parse("30", YEAR).unwrap(), Duration::from_secs(30));
        assert_eq!(parse("30s", YEAR).unwrap(), Duration::from_secs(30));
        assert_eq!(parse("15m", YEAR).unwrap(), Duration::from_secs(900));
        assert_eq!(parse("2h", YEAR).unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("7d", YEAR).unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse("500ms", YEAR).unwrap(), Duration::from_millis(500));
        for bad in ["0", "0s", "-5", "soon", "", "2y", "1.5.3s"] {
            assert!(parse(bad, YEAR).is_err(), "{bad}");
        }
    }

    #[test]
    fn expiry_follows_ttl_keep_and_default() {
        let mut asked = TtlAsked::default();
        assert_eq!(asked.expiry(Expiry::Never).unwrap(), Expiry::Never);
        assert!(asked.take_query("keep_ttl", "true", YEAR).unwrap());
        assert_eq!(asked.expiry(Expiry::Never).unwrap(), Expiry::Keep);
        assert!(asked.take_query("ttl", "10s", YEAR).unwrap());
        assert!(matches!(
            asked.expiry(Expiry::Never).unwrap(),
            Expiry::KeepOrAt(_)
        ));
        asked.keep = false;
        let Expiry::At(at) = asked.expiry(Expiry::Never).unwrap() else {
            panic!("no instant");
        };
        assert!(at.abs_diff(now_ms() + 10_000) < 5_000);
        assert!(!asked.take_query("other", "1", YEAR).unwrap());
        assert_eq!(
            expires_at_header(1_765_000_000_123).unwrap(),
            "2025-12-06T05:46:40.123Z"
        );
    }
}
