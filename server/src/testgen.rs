//! Generators for property tests: arbitrary I-JSON documents written the
//! ways clients write them, and arbitrary keys.

use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// Strings with the characters that trip up writers and readers: quotes,
/// backslashes, control characters, non-ASCII, astral-plane characters.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{0,8}",
        "[\"\\\\/\u{0}-\u{1f}a\u{e9}\u{2028}\u{1f600}]{0,12}",
        any::<String>().prop_map(|s| s.chars().take(16).collect()),
    ]
}

/// Numbers a double can hold, including integers past 2^53.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

/// Any I-JSON value, nested at most about `depth` deep.
pub fn value(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A value as a client might send it: compact, pretty-printed, with CRLF
/// line ends, or with white space around it.
pub fn document() -> impl Strategy<Value = Vec<u8>> {
    (value(6), 0..4u8).prop_map(|(v, style)| {
        let compact = v.to_string();
        let text = match style {
            0 => compact,
            1 => serde_json::to_string_pretty(&v).unwrap_or(compact),
            2 => {
                serde_json::to_string_pretty(&v)
                    .unwrap_or(compact)
                    .replace('\n', "\r\n")
                    + "\r\n"
            }
            _ => format!(" \t{compact}\n"),
        };
        text.into_bytes()
    })
}

/// Keys the server accepts: no control characters, 1 to 64 bytes.
pub fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9/]{1,12}",
        "[\"\\\\ a\u{e9}\u{1f600}/%?#]{1,10}",
        "[0-9]{1,4}",
    ]
    .prop_filter("valid key", |k| {
        !k.is_empty() && k.len() <= 64 && !k.chars().any(char::is_control)
    })
}
