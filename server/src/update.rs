//! Writes computed from a key's current value: JSON merge patches (RFC
//! 7396), JSON patches (RFC 6902, `test` included) and increments of a
//! number at a JSON pointer.
//!
//! An update is a pure function of the current value. Where no plugin
//! matches the key, the shard writer runs it against the key's latest
//! state (so nothing comes between the read and the write, and increments
//! of one hot key share a commit); where plugins match, the plugin
//! pipeline runs it and the chain judges the result. Either way the result
//! is held to the same I-JSON rules and limits as a value a client sends.

use bytes::Bytes;
use serde_json::Value;

use crate::ijson::{ValueLimits, Violation};

/// The largest integer an increment may produce: beyond 2^53 a double,
/// which is what I-JSON promises readers, no longer holds every integer.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// One update of a key's value.
#[derive(Debug, Clone)]
pub enum Update {
    /// RFC 7396: members of the patch replace the value's, `null` removes.
    MergePatch(Value),
    /// RFC 6902: operations applied in order, all or none.
    JsonPatch(json_patch::Patch),
    /// Add `by` to the integer at `pointer`, creating the key and the field
    /// (with any objects on the way) when absent.
    Increment {
        /// JSON pointer (RFC 6901) to the number; `""` is the whole value.
        pointer: String,
        /// What to add (may be negative).
        by: i64,
    },
}

/// Why an update cannot apply to the current value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpdateError {
    /// The key does not exist and the update does not create it.
    #[error(
        "nothing is stored under this key (send If-None-Match: * to create it with this patch)"
    )]
    Missing,
    /// A JSON patch `test` operation failed.
    #[error("operation {index} (test at {pointer:?}): the value there is not the one given")]
    TestFailed {
        /// Index of the operation in the patch.
        index: usize,
        /// Its path.
        pointer: String,
    },
    /// A JSON patch operation names a location the value does not have.
    #[error("operation {index} at {pointer:?}: {problem}")]
    BadPath {
        /// Index of the operation in the patch.
        index: usize,
        /// Its path.
        pointer: String,
        /// What is wrong with it.
        problem: String,
    },
    /// An increment's target is not an integer.
    #[error("{pointer:?} holds {found}, not an integer, so it cannot be incremented")]
    NotAnInteger {
        /// The target.
        pointer: String,
        /// What it holds, in a word.
        found: &'static str,
    },
    /// An increment's path runs through something that is not an object.
    #[error("{pointer:?} cannot be reached: {problem}")]
    Unreachable {
        /// The target.
        pointer: String,
        /// Where the path stops.
        problem: String,
    },
    /// An increment would leave the integers a double holds exactly.
    #[error("{pointer:?} would become {result}, past +/-{MAX_SAFE_INTEGER} (2^53 - 1, the integers I-JSON readers hold exactly)")]
    Overflow {
        /// The target.
        pointer: String,
        /// The exact result.
        result: i128,
    },
    /// The result breaks a value rule (size, depth, I-JSON).
    #[error("the updated value breaks a rule: {0}")]
    Result(Violation),
    /// The stored value is not JSON (never written by this server).
    #[error("the stored value cannot be read as JSON: {0}")]
    Stored(String),
}

impl UpdateError {
    /// Whether the failure is about the stored value's state (409) rather
    /// than the request (422): a failed `test`, a target of the wrong kind.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Self::TestFailed { .. } | Self::NotAnInteger { .. } | Self::Overflow { .. }
        )
    }

    /// The JSON pointer the failure is about, if any.
    pub fn pointer(&self) -> Option<&str> {
        match self {
            Self::TestFailed { pointer, .. }
            | Self::BadPath { pointer, .. }
            | Self::NotAnInteger { pointer, .. }
            | Self::Unreachable { pointer, .. }
            | Self::Overflow { pointer, .. } => Some(pointer),
            _ => None,
        }
    }

    /// Stable machine-readable name, for error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "not_found",
            Self::TestFailed { .. } => "test_failed",
            Self::BadPath { .. } => "invalid_patch_path",
            Self::NotAnInteger { .. } => "not_an_integer",
            Self::Unreachable { .. } => "invalid_path",
            Self::Overflow { .. } => "overflow",
            Self::Result(v) => v.code(),
            Self::Stored(_) => "stored_value_unreadable",
        }
    }
}

impl Update {
    /// Whether this update makes a key that does not exist.
    pub fn creates(&self) -> bool {
        matches!(self, Self::Increment { .. })
    }

    /// The new value from `current` (`None`: absent). `create` lets a patch
    /// start from an absent key (merge patch from `{}`, JSON patch from
    /// `null`), as `If-None-Match: *` asks.
    pub fn apply(
        &self,
        current: Option<&[u8]>,
        create: bool,
        limits: ValueLimits,
    ) -> Result<Bytes, UpdateError> {
        let mut doc = match current {
            Some(bytes) => {
                serde_json::from_slice(bytes).map_err(|e| UpdateError::Stored(e.to_string()))?
            }
            None if create || self.creates() => Value::Null,
            None => return Err(UpdateError::Missing),
        };
        match self {
            Self::MergePatch(patch) => json_patch::merge(&mut doc, patch),
            Self::JsonPatch(patch) => apply_json_patch(&mut doc, patch, limits)?,
            Self::Increment { pointer, by } => increment(&mut doc, pointer, *by)?,
        }
        let bytes = serde_json::to_vec(&doc).map_err(|e| UpdateError::Stored(e.to_string()))?;
        crate::ijson::check(&bytes, limits).map_err(UpdateError::Result)?;
        Ok(Bytes::from(bytes))
    }
}

/// An RFC 6902 patch, held to its members: an operation naming a member
/// its kind does not take (`from` on `add`), or one of the wrong type, is
/// refused rather than ignored, as a typo would otherwise be.
pub fn json_patch_from(value: Value) -> Result<json_patch::Patch, String> {
    let Value::Array(ops) = &value else {
        return Err("a JSON patch is an array of operations".into());
    };
    for (i, op) in ops.iter().enumerate() {
        let Value::Object(op) = op else {
            return Err(format!("operation {i} is not an object"));
        };
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let takes: &[&str] = match kind {
            "add" | "replace" | "test" => &["op", "path", "value"],
            "remove" => &["op", "path"],
            "move" | "copy" => &["op", "path", "from"],
            _ => return Err(format!("operation {i}: unknown op {kind:?}")),
        };
        if let Some(extra) = op.keys().find(|k| !takes.contains(&k.as_str())) {
            return Err(format!("operation {i} ({kind}) takes no member {extra:?}"));
        }
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Applies `patch` operation by operation, bounding what `copy` can add:
/// each copy may double the value, so thirty of them would otherwise build
/// a gigabyte before the result's size is checked.
fn apply_json_patch(
    doc: &mut Value,
    patch: &json_patch::Patch,
    limits: ValueLimits,
) -> Result<(), UpdateError> {
    let mut size = serialized_len(doc, usize::MAX);
    for (index, op) in patch.0.iter().enumerate() {
        if let json_patch::PatchOperation::Copy(copy) = op {
            let copied = copy
                .from
                .resolve(doc)
                .map_or(0, |v| serialized_len(v, limits.max_bytes.saturating_add(1)));
            size = size.saturating_add(copied);
            if size > limits.max_bytes {
                return Err(UpdateError::Result(Violation::TooLarge {
                    size,
                    limit: limits.max_bytes,
                }));
            }
        }
        json_patch::patch_unsafe(doc, std::slice::from_ref(op)).map_err(|e| {
            let pointer = e.path.to_string();
            match e.kind {
                json_patch::PatchErrorKind::TestFailed => {
                    UpdateError::TestFailed { index, pointer }
                }
                kind => UpdateError::BadPath {
                    index,
                    pointer,
                    problem: kind.to_string(),
                },
            }
        })?;
    }
    Ok(())
}

/// The length of `value` as JSON, counted up to `cap` (then `cap`).
fn serialized_len(value: &Value, cap: usize) -> usize {
    struct Counter {
        n: usize,
        cap: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.n = self.n.saturating_add(buf.len());
            if self.n >= self.cap {
                return Err(std::io::Error::other("past the cap"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { n: 0, cap };
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.n,
        Err(_) => cap,
    }
}

/// Adds `by` to the integer at `pointer` in `doc`, creating what is absent.
fn increment(doc: &mut Value, pointer: &str, by: i64) -> Result<(), UpdateError> {
    let unreachable = |problem: String| UpdateError::Unreachable {
        pointer: pointer.to_owned(),
        problem,
    };
    let tokens = parse_pointer(pointer).map_err(unreachable)?;
    let mut target = doc;
    for token in &tokens {
        if target.is_null() {
            *target = Value::Object(serde_json::Map::new());
        }
        target = match target {
            Value::Object(members) => members.entry(token.clone()).or_insert(Value::Null),
            Value::Array(items) => {
                let index = token.parse::<usize>().ok().filter(|i| *i < items.len());
                let Some(index) = index else {
                    return Err(unreachable(format!(
                        "the array has no element {token:?} (an increment creates object members only)"
                    )));
                };
                &mut items[index]
            }
            other => {
                return Err(unreachable(format!(
                    "{token:?} is looked up in {}, not an object",
                    kind(other)
                )))
            }
        };
    }
    let current: i64 = match target {
        Value::Null => 0,
        Value::Number(n) => match n.as_i64() {
            Some(i) => i,
            None => {
                return Err(UpdateError::NotAnInteger {
                    pointer: pointer.to_owned(),
                    found: "a number with a fraction or outside 64 bits",
                })
            }
        },
        other => {
            return Err(UpdateError::NotAnInteger {
                pointer: pointer.to_owned(),
                found: kind(other),
            })
        }
    };
    let result = i128::from(current) + i128::from(by);
    if result.abs() > i128::from(MAX_SAFE_INTEGER) {
        return Err(UpdateError::Overflow {
            pointer: pointer.to_owned(),
            result,
        });
    }
    // In range by the check above.
    *target = Value::from(result as i64);
    Ok(())
}

/// The reference tokens of an RFC 6901 pointer (`""`: none).
fn parse_pointer(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err("a JSON pointer is empty or starts with \"/\"".into());
    };
    rest.split('/').map(unescape).collect()
}

/// A reference token with `~1` and `~0` turned back into `/` and `~`.
fn unescape(token: &str) -> Result<String, String> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            _ => return Err(format!("{token:?} has a \"~\" that is neither ~0 nor ~1")),
        }
    }
    Ok(out)
}

/// What a JSON value is, in a word, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn limits() -> ValueLimits {
        crate::config::LimitSettings::default().value_limits()
    }

    fn apply(update: &Update, current: Option<&str>, create: bool) -> Result<Value, UpdateError> {
        let bytes = update.apply(current.map(str::as_bytes), create, limits())?;
        Ok(serde_json::from_slice(&bytes).unwrap())
    }

    fn json_patch(ops: Value) -> Update {
        Update::JsonPatch(serde_json::from_value(ops).unwrap())
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let patch = Update::MergePatch(json!({"a": "z", "c": {"f": null}}));
        let out = apply(&patch, Some(r#"{"a":"b","c":{"d":"e","f":"g"}}"#), false).unwrap();
        assert_eq!(out, json!({"a": "z", "c": {"d": "e"}}));
        assert_eq!(apply(&patch, None, false), Err(UpdateError::Missing));
        assert_eq!(
            apply(&patch, None, true).unwrap(),
            json!({"a": "z", "c": {}})
        );
    }

    #[test]
    fn json_patch_applies_all_or_reports_the_failing_operation() {
        let ops = json_patch(json!([
            {"op": "test", "path": "/n", "value": 1},
            {"op": "replace", "path": "/n", "value": 2},
            {"op": "add", "path": "/list/-", "value": "x"}
        ]));
        let out = apply(&ops, Some(r#"{"n":1,"list":[]}"#), false).unwrap();
        assert_eq!(out, json!({"n": 2, "list": ["x"]}));
        let err = apply(&ops, Some(r#"{"n":5,"list":[]}"#), false).unwrap_err();
        assert_eq!(
            err,
            UpdateError::TestFailed {
                index: 0,
                pointer: "/n".into()
            }
        );
        assert!(err.is_conflict());
        let err = apply(&ops, Some(r#"{"n":1}"#), false).unwrap_err();
        assert!(
            matches!(err, UpdateError::BadPath { index: 2, .. }),
            "{err:?}"
        );
        assert!(!err.is_conflict());
        assert_eq!(err.pointer(), Some("/list/-"));
    }

    #[test]
    fn copies_cannot_grow_a_value_past_the_limit() {
        let mut ops = vec![json!({"op": "add", "path": "/a", "value": "x".repeat(1000)})];
        for i in 0..40 {
            ops.push(json!({"op": "copy", "from": "", "path": format!("/c{i}")}));
        }
        let err = apply(&json_patch(Value::Array(ops)), Some("{}"), false).unwrap_err();
        assert_eq!(err.code(), "value_too_large", "{err}");
    }

    #[test]
    fn increments_create_what_is_missing_and_refuse_what_is_not_a_number() {
        let incr = |pointer: &str, by| Update::Increment {
            pointer: pointer.into(),
            by,
        };
        assert_eq!(apply(&incr("/n", 5), None, false).unwrap(), json!({"n": 5}));
        assert_eq!(
            apply(&incr("/a/b", -2), Some(r#"{"a":{"b":10},"x":1}"#), false).unwrap(),
            json!({"a": {"b": 8}, "x": 1})
        );
        assert_eq!(apply(&incr("", 1), Some("41"), false).unwrap(), json!(42));
        assert_eq!(
            apply(&incr("/a~1b", 1), Some("{}"), false).unwrap(),
            json!({"a/b": 1})
        );
        assert_eq!(
            apply(&incr("/l/1", 1), Some(r#"{"l":[1,2]}"#), false).unwrap(),
            json!({"l": [1, 3]})
        );
        let err = apply(&incr("/n", 1), Some(r#"{"n":"7"}"#), false).unwrap_err();
        assert_eq!(err.code(), "not_an_integer");
        assert!(err.is_conflict());
        let err = apply(&incr("/n", 1), Some(r#"{"n":1.5}"#), false).unwrap_err();
        assert_eq!(err.code(), "not_an_integer");
        let err = apply(&incr("/n/m", 1), Some(r#"{"n":3}"#), false).unwrap_err();
        assert_eq!(err.code(), "invalid_path");
        let err = apply(&incr("/n", 1), Some(r#"{"n":9007199254740991}"#), false).unwrap_err();
        assert_eq!(err.code(), "overflow");
        assert!(apply(&incr("n", 1), Some("{}"), false).is_err());
    }

    proptest::proptest! {
        /// Any patch applied to any small document ends in a value or an
        /// error, never a panic, and a value always meets the limits.
        #[test]
        fn patches_never_panic(
            doc in proptest::sample::select(vec!["null", "{}", "[]", "{\"a\":[1,{\"b\":2}]}", "3"]),
            op in proptest::sample::select(vec!["add", "remove", "replace", "move", "copy", "test"]),
            path in proptest::sample::select(vec!["", "/", "/a", "/a/0", "/a/-", "/a/1/b", "/~0", "/~1x"]),
        ) {
            let patch = json!([{"op": op, "path": path, "from": "/a", "value": {"x": 1}}]);
            let patch = json_patch_from(patch).ok();
            for update in patch.map(Update::JsonPatch).into_iter().chain([
                Update::MergePatch(json!({"a": null, "c": [1]})),
                Update::Increment { pointer: path.to_owned(), by: 1 },
            ]) {
                if let Ok(bytes) = update.apply(Some(doc.as_bytes()), true, limits()) {
                    proptest::prop_assert!(crate::ijson::check(&bytes, limits()).is_ok());
                }
            }
        }

        /// Increments add up exactly, in any order, from any start in range.
        #[test]
        fn increments_add_up(start in -1_000_000i64..1_000_000, steps in proptest::collection::vec(-1000i64..1000, 0..20)) {
            let mut value = json!({"n": start}).to_string();
            for by in &steps {
                let update = Update::Increment { pointer: "/n".into(), by: *by };
                value = String::from_utf8(update.apply(Some(value.as_bytes()), false, limits()).unwrap().to_vec()).unwrap();
            }
            let expected = start + steps.iter().sum::<i64>();
            proptest::prop_assert_eq!(value, json!({"n": expected}).to_string());
        }
    }
}
