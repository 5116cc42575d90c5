//! Transform: stamps objects with `created_at` (kept from the stored value
//! once set) and `updated_at` (the host's time of this write), as ISO 8601
//! UTC strings. Values that are not objects pass unchanged.
//!
//! Config (optional): `{ "created_field": "created_at", "updated_field":
//! "updated_at" }`.

use exdaas_guest::json::Value;
use exdaas_guest::{Outcome, Write};

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch.
pub fn iso8601(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        year,
        month,
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        millis
    )
}

/// Stamps one write.
pub fn timestamps(write: &Write) -> Outcome {
    let config = write.config_value().unwrap_or_else(|_| std::rc::Rc::new(Value::Null));
    let field = |name: &str, default: &'static str| -> String {
        config.get(name).and_then(Value::as_str).unwrap_or(default).to_string()
    };
    let created_field = field("created_field", "created_at");
    let updated_field = field("updated_field", "updated_at");
    let mut value = match write.value_json() {
        Ok(v) if v.as_object().is_some() => v,
        _ => return Outcome::Accept,
    };
    let now = Value::from(iso8601(write.now_ms));
    let created = write
        .old_json()
        .ok()
        .and_then(|old| old)
        .and_then(|old| old.get(&created_field).cloned())
        .filter(|v| !v.is_null())
        .unwrap_or_else(|| now.clone());
    value.set(&created_field, created);
    value.set(&updated_field, now);
    Outcome::replace(&value)
}

exdaas_guest::export_plugin!(timestamps);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(iso8601(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn keeps_created_and_sets_updated() {
        let w = Write::put("k", r#"{"a":1}"#).at(0);
        assert_eq!(
            timestamps(&w),
            Outcome::Replace(r#"{"a":1,"created_at":"1970-01-01T00:00:00.000Z","updated_at":"1970-01-01T00:00:00.000Z"}"#.into())
        );
        let w = Write::put("k", r#"{"a":2,"created_at":"forged"}"#)
            .with_old(r#"{"a":1,"created_at":"2000-01-01T00:00:00.000Z"}"#)
            .at(1000);
        assert_eq!(
            timestamps(&w),
            Outcome::Replace(r#"{"a":2,"created_at":"2000-01-01T00:00:00.000Z","updated_at":"1970-01-01T00:00:01.000Z"}"#.into())
        );
        assert_eq!(timestamps(&Write::put("k", "[1]")), Outcome::Accept);
    }
}
