//! Test vectors: writes paired with the verdict a plugin must give them.
//! A plugin that carries vectors (`MODULE.vectors.json` beside the module,
//! or `vectors = "FILE"` in its table) is refused at load and reload unless
//! every vector passes, so a module swapped for a broken build never
//! reaches the write path; `exdaas plugin test` runs the same check
//! without a server.
//!
//! ```json
//! [{ "name": "a missing field", "key": "users/1",
//!    "value": {"email": "a@b.c"}, "old": null, "config": {...}, "now_ms": 0,
//!    "expect": {"action": "reject", "code": "missing_field"} }]
//! ```
//! `op` is `"put"` (default) or `"delete"`; `config` defaults to the
//! plugin's configured one; `expect` is `{"action":"accept"}`,
//! `{"action":"reject"[,"code":...]}` or `{"action":"replace","value":...}`
//! (compared as JSON values, so member order and spacing do not matter).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::instance::{CallInput, CallVerdict, LoadedPlugin};
use crate::ijson::ValueLimits;

/// Largest vectors file read, and most vectors in one.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most vectors one file may hold.
pub const MAX_VECTORS: usize = 1000;

/// Whether a vector writes or deletes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorOp {
    /// A put of `value`.
    #[default]
    Put,
    /// A delete (plugins see no new value).
    Delete,
}

/// The verdict a vector expects.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub enum Expected {
    /// The value is kept as it is.
    Accept,
    /// The write is refused, with this reason code when given.
    Reject {
        /// The plugin's reason code, if the vector pins it.
        #[serde(default)]
        code: Option<String>,
    },
    /// The plugin stores this value instead.
    Replace {
        /// The expected replacement.
        value: Value,
    },
}

/// One test vector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    /// A label for reports; vectors are also numbered from 1.
    #[serde(default)]
    pub name: Option<String>,
    /// The key written.
    pub key: String,
    /// Put or delete.
    #[serde(default)]
    pub op: VectorOp,
    /// The new value (required for puts).
    #[serde(default)]
    pub value: Option<Box<RawValue>>,
    /// The stored value the plugin sees, if any.
    #[serde(default)]
    pub old: Option<Box<RawValue>>,
    /// The plugin's config for this call (default: the configured one).
    #[serde(default)]
    pub config: Option<Value>,
    /// The host time the plugin sees (default 0, so vectors are repeatable).
    #[serde(default)]
    pub now_ms: i64,
    /// What the plugin must answer.
    pub expect: Expected,
}

/// Why a vectors file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VectorsError {
    /// The file cannot be read.
    #[error("{}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: String,
    },
    /// The file is not a valid vectors list.
    #[error("{}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the vector where it can.
        problem: String,
    },
}

/// Where a module's vectors live when its table does not say:
/// `rules.wasm` → `rules.vectors.json`.
pub fn beside(module: &Path) -> PathBuf {
    module.with_extension("vectors.json")
}

/// Reads and checks a vectors file: bounded in size, I-JSON within
/// `limits` before it is parsed, every put with a value.
pub fn load(path: &Path, limits: ValueLimits) -> Result<Vec<Vector>, VectorsError> {
    let read_err = |error: String| VectorsError::Read {
        path: path.to_owned(),
        error,
    };
    let invalid = |problem: String| VectorsError::Invalid {
        path: path.to_owned(),
        problem,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| read_err(e.to_string()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(invalid(format!(
            "{size} bytes; a vectors file may have at most {MAX_FILE_BYTES}"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| read_err(e.to_string()))?;
    parse(&bytes, limits).map_err(invalid)
}

/// Parses vectors from JSON text (see [`load`]).
pub fn parse(bytes: &[u8], limits: ValueLimits) -> Result<Vec<Vector>, String> {
    let limits = ValueLimits {
        max_bytes: limits.max_bytes.max(MAX_FILE_BYTES as usize),
        ..limits
    };
    crate::ijson::check(bytes, limits).map_err(|v| v.to_string())?;
    let vectors: Vec<Vector> =
        serde_json::from_slice(bytes).map_err(|e| format!("not a list of test vectors: {e}"))?;
    if vectors.len() > MAX_VECTORS {
        return Err(format!(
            "{} vectors; a file may hold at most {MAX_VECTORS}",
            vectors.len()
        ));
    }
    for (i, v) in vectors.iter().enumerate() {
        if v.op == VectorOp::Put && v.value.is_none() {
            return Err(format!("vector {} is a put without a value", label(i, v)));
        }
        if v.op == VectorOp::Delete && matches!(v.expect, Expected::Replace { .. }) {
            return Err(format!(
                "vector {} expects a replacement of a delete, which no plugin may give",
                label(i, v)
            ));
        }
    }
    Ok(vectors)
}

/// `#3 "a missing field"`, for reports.
pub fn label(index: usize, vector: &Vector) -> String {
    match &vector.name {
        Some(name) => format!("#{} \"{}\"", index + 1, crate::logsafe::escape(name, 200)),
        None => format!("#{}", index + 1),
    }
}

/// What a call came back with, as a report shows it.
fn describe(result: &Result<CallVerdict, super::PluginFailure>) -> String {
    match result {
        Ok(CallVerdict::Accept) => "accept".into(),
        Ok(CallVerdict::Reject { code, message, .. }) => {
            format!(
                "reject {} ({})",
                crate::logsafe::escape(code, 100),
                crate::logsafe::escape(message, 200)
            )
        }
        Ok(CallVerdict::Replace(json)) => {
            format!("replace with {}", crate::logsafe::escape_bytes(json, 200))
        }
        Err(failure) => format!(
            "failure: {}",
            crate::logsafe::escape(&failure.to_string(), 300)
        ),
    }
}

/// Whether `result` is what `expect` asks for.
fn passes(expect: &Expected, result: &Result<CallVerdict, super::PluginFailure>) -> bool {
    match (expect, result) {
        (Expected::Accept, Ok(CallVerdict::Accept)) => true,
        (Expected::Reject { code: None }, Ok(CallVerdict::Reject { .. })) => true,
        (Expected::Reject { code: Some(want) }, Ok(CallVerdict::Reject { code, .. })) => {
            want == code
        }
        (Expected::Replace { value }, Ok(CallVerdict::Replace(json))) => {
            serde_json::from_slice::<Value>(json).is_ok_and(|got| got == *value)
        }
        _ => false,
    }
}

fn expected_text(expect: &Expected) -> String {
    match expect {
        Expected::Accept => "accept".into(),
        Expected::Reject { code: None } => "reject".into(),
        Expected::Reject { code: Some(c) } => format!("reject {}", crate::logsafe::escape(c, 100)),
        Expected::Replace { value } => format!(
            "replace with {}",
            crate::logsafe::escape(&value.to_string(), 200)
        ),
    }
}

/// One vector's result.
#[derive(Debug, Clone)]
pub struct VectorResult {
    /// `#n "name"`.
    pub label: String,
    /// `None` when it passed; else what was expected and what came back.
    pub failure: Option<String>,
}

/// Runs every vector against `plugin`, each on its own call.
pub fn run(plugin: &LoadedPlugin, vectors: &[Vector]) -> Vec<VectorResult> {
    vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let config = v.config.as_ref().map(|c| c.to_string().into_bytes());
            let input = CallInput {
                delete: v.op == VectorOp::Delete,
                key: &v.key,
                value: v.value.as_ref().map(|r| r.get().as_bytes()),
                old: v.old.as_ref().map(|r| r.get().as_bytes()),
                now_ms: v.now_ms,
            };
            let result = plugin.call_with_config(&input, config.as_deref());
            let failure = (!passes(&v.expect, &result)).then(|| {
                format!(
                    "expected {}, got {}",
                    expected_text(&v.expect),
                    describe(&result)
                )
            });
            VectorResult {
                label: label(i, v),
                failure,
            }
        })
        .collect()
}

/// The failures of `results` as one line each, or `None` when all passed.
pub fn failure_report(results: &[VectorResult]) -> Option<String> {
    let failed: Vec<&VectorResult> = results.iter().filter(|r| r.failure.is_some()).collect();
    if failed.is_empty() {
        return None;
    }
    let mut text = format!("{} of {} test vectors failed:", failed.len(), results.len());
    for r in failed {
        let _ = write!(
            text,
            " {}: {};",
            r.label,
            r.failure.as_deref().unwrap_or("")
        );
    }
    text.pop();
    Some(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn limits() -> ValueLimits {
        ValueLimits {
            max_bytes: 1024,
            max_depth: 64,
        }
    }

    #[test]
    fn parses_the_documented_shape() {
        let text = br#"[
            {"name":"ok","key":"k","value":{"a":1},"expect":{"action":"accept"}},
            {"key":"k","op":"delete","old":1,"expect":{"action":"reject","code":"no"}},
            {"key":"k","value":2,"config":{"x":1},"now_ms":5,
             "expect":{"action":"replace","value":{"b":[1]}}}
        ]"#;
        let v = parse(text, limits()).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(label(0, &v[0]), "#1 \"ok\"");
        assert_eq!(v[1].op, VectorOp::Delete);
        assert_eq!(v[2].now_ms, 5);
    }

    #[test]
    fn refuses_malformed_files_naming_the_problem() {
        for (text, needle) in [
            (&br#"{"key":"k"}"#[..], "not a list"),
            (
                br#"[{"key":"k","expect":{"action":"accept"}}]"#,
                "put without a value",
            ),
            (
                br#"[{"key":"k","value":1,"expect":{"action":"maybe"}}]"#,
                "not a list",
            ),
            (
                br#"[{"key":"k","value":1,"expect":{"action":"accept"},"bogus":1}]"#,
                "bogus",
            ),
            (
                br#"[{"key":"k","op":"delete","expect":{"action":"replace","value":1}}]"#,
                "replacement of a delete",
            ),
            (
                br#"[{"key":"k","value":{"a":1,"a":2},"expect":{"action":"accept"}}]"#,
                "more than once",
            ),
        ] {
            let err = parse(text, limits()).unwrap_err();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(parse(deep.as_bytes(), limits()).is_err());
    }

    #[test]
    fn replacements_compare_as_json() {
        let expect = Expected::Replace {
            value: serde_json::json!({"a": 1, "b": 2}),
        };
        let got = Ok(CallVerdict::Replace(bytes::Bytes::from_static(
            b"{ \"b\":2,\"a\":1 }",
        )));
        assert!(passes(&expect, &got));
        let other = Ok(CallVerdict::Replace(bytes::Bytes::from_static(
            b"{\"a\":1}",
        )));
        assert!(!passes(&expect, &other));
        assert!(!passes(&Expected::Accept, &other));
    }

    #[test]
    fn beside_the_module() {
        assert_eq!(
            beside(Path::new("dist/rules.wasm")),
            PathBuf::from("dist/rules.vectors.json")
        );
    }

    mod properties {
        use proptest::prelude::*;

        proptest! {
            /// Any bytes parse to vectors or to an error, never a panic.
            #[test]
            fn any_bytes_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = super::parse(&bytes, super::limits());
            }

            /// Any JSON-ish text made of the format's own pieces, likewise.
            #[test]
            fn format_like_text_parses_or_is_refused(
                text in r#"\[(\{("key"|"value"|"op"|"expect"|"action"|"old"):("k"|1|null|\{\}|"put"|"delete"|"accept"|"replace")(,)?\}(,)?){0,4}\]"#
            ) {
                let _ = super::parse(text.as_bytes(), super::limits());
            }
        }
    }
}
