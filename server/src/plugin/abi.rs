//! The host side of the plugin ABI, version 1 (specified for plugin authors
//! in `guest-sdk/ABI.md`; keep the two in step).
//!
//! A plugin is a core WebAssembly module without WASI. It exports
//! `memory`, `exdaas_abi_version() -> i32`, `exdaas_alloc(len: i32) -> i32`
//! and `exdaas_on_write(op, buf, key_len, value_len, old_len, config_len:
//! i32, now_ms: i64) -> i64`, and may import only `exdaas.log(level, ptr,
//! len)`. Per call the host asks `exdaas_alloc` for one buffer, copies
//! `key | value | old | config` into it back to back (an absent value or old
//! value has length -1), and calls `exdaas_on_write`. The result is 0 for
//! "accept", else `(ptr << 32) | len` of a JSON verdict in guest memory:
//! `{"action":"accept"}`, `{"action":"reject","code":..,"message":..,"path":..}`
//! or `{"action":"replace","value":<json>}`.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The ABI version this host implements; `exdaas_abi_version` must return it.
pub const ABI_VERSION: i32 = 1;

/// Module the host functions are imported from.
pub const HOST_MODULE: &str = "exdaas";
/// `log(level: i32, ptr: i32, len: i32)`: a log line from the plugin.
pub const HOST_LOG: &str = "log";

/// Required exports.
pub const EXPORT_MEMORY: &str = "memory";
/// `() -> i32`
pub const EXPORT_ABI_VERSION: &str = "exdaas_abi_version";
/// `(len: i32) -> i32`
pub const EXPORT_ALLOC: &str = "exdaas_alloc";
/// `(op, buf, key_len, value_len, old_len, config_len: i32, now_ms: i64) -> i64`
pub const EXPORT_ON_WRITE: &str = "exdaas_on_write";

/// `op` argument values.
pub const OP_PUT: i32 = 0;
/// A delete (only for plugins with `run_on_delete`).
pub const OP_DELETE: i32 = 1;

/// Length passed for an absent value (a delete's new value, a new key's old value).
pub const ABSENT: i32 = -1;

/// The verdict a plugin returns, decoded from its JSON.
#[derive(Debug)]
pub enum Verdict<'a> {
    /// Let the write through unchanged.
    Accept,
    /// Refuse the write.
    Reject {
        /// Machine-readable reason chosen by the plugin.
        code: String,
        /// Human-readable explanation.
        message: String,
        /// Optional JSON path of the offending part of the value.
        path: Option<String>,
    },
    /// Store this value instead (borrowed from guest memory, not re-parsed).
    Replace {
        /// The new JSON document.
        value: &'a RawValue,
    },
}

/// The verdict JSON as written: one flat object, fields by action.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireVerdict<'a> {
    action: &'a str,
    code: Option<String>,
    message: Option<String>,
    path: Option<String>,
    #[serde(borrow, default, deserialize_with = "crate::ijson::present_raw")]
    value: Option<&'a RawValue>,
}

impl<'a> Verdict<'a> {
    /// Decodes and checks a verdict; the error says what is wrong with it.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        let wire: WireVerdict<'a> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        match wire.action {
            "accept" => Ok(Verdict::Accept),
            "reject" => Ok(Verdict::Reject {
                code: wire.code.ok_or("a reject verdict needs a code")?,
                message: wire.message.unwrap_or_default(),
                path: wire.path,
            }),
            "replace" => Ok(Verdict::Replace {
                value: wire.value.ok_or("a replace verdict needs a value")?,
            }),
            other => Err(format!(
                "unknown action {other:?}; expected accept, reject or replace"
            )),
        }
    }
}

/// Log levels of `exdaas.log`.
pub fn log_level_name(level: i32) -> &'static str {
    match level {
        0 => "error",
        1 => "warn",
        2 => "info",
        3 => "debug",
        _ => "trace",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn verdicts_parse_strictly() {
        assert!(matches!(
            Verdict::parse(br#"{"action":"accept"}"#).unwrap(),
            Verdict::Accept
        ));
        let v = Verdict::parse(br#"{"action":"reject","code":"c","message":"m","path":"$.a"}"#)
            .unwrap();
        assert!(matches!(v, Verdict::Reject { path: Some(_), .. }));
        let v = Verdict::parse(br#"{"action":"replace","value":{"a":[1,2]}}"#).unwrap();
        let Verdict::Replace { value } = v else {
            panic!("not a replace")
        };
        assert_eq!(value.get(), r#"{"a":[1,2]}"#);
        let bad: [&[u8]; 7] = [
            br#"{"action":"maybe"}"#,
            br#"{"action":"reject"}"#,
            br#"{"action":"replace"}"#,
            br#"{"action":"accept","extra":1}"#,
            br#"{"action":"replace","value":{"a":}"#,
            b"[]",
            b"nope",
        ];
        for bad in bad {
            assert!(
                Verdict::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A transform may replace a value with JSON null.
        let v = Verdict::parse(br#"{"action":"replace","value":null}"#).unwrap();
        assert!(matches!(v, Verdict::Replace { value } if value.get() == "null"));
        // Two actions: the first would pass a reader that stops early.
        assert!(Verdict::parse(br#"{"action":"accept","action":"reject","code":"x"}"#).is_err());
    }

    mod properties {
        use super::*;
        use crate::testgen;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
                let _ = Verdict::parse(&bytes);
            }

            #[test]
            fn replacements_carry_the_value_verbatim(value in testgen::value(4)) {
                let text = value.to_string();
                let verdict = format!(r#"{{"action":"replace","value":{text}}}"#);
                match Verdict::parse(verdict.as_bytes()) {
                    Ok(Verdict::Replace { value }) => prop_assert_eq!(value.get(), text.as_str()),
                    other => prop_assert!(false, "{:?}", other),
                }
            }

            #[test]
            fn rejections_keep_their_text(code in testgen::text(), message in testgen::text()) {
                let verdict = serde_json::json!({"action": "reject", "code": code, "message": message});
                match Verdict::parse(verdict.to_string().as_bytes()) {
                    Ok(Verdict::Reject { code: c, message: m, path: None }) => {
                        prop_assert_eq!(c, code);
                        prop_assert_eq!(m, message);
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }
        }
    }
}
