//! Admission of stored values: every value a client or a plugin hands the
//! store must be I-JSON (RFC 7493), so that every mainstream JSON reader sees
//! the same document the plugins judged.
//!
//! The rules, each with its own error code:
//! - one complete JSON text, at most `limits.max_value_bytes` long;
//! - valid UTF-8, and no escape that decodes to a lone surrogate;
//! - unique member names in every object (after unescaping, so `"a"` and
//!   `"\u0061"` are the same name): a validator that reads the first of two
//!   duplicates while a client reads the last would otherwise be bypassed;
//! - numbers that fit an IEEE 754 double (`1e400` does not);
//! - nesting of arrays and objects at most `limits.max_json_depth` deep.
//!
//! The check is one streaming pass over bytes already in memory (serde_json's
//! tokenizer with a visitor that builds nothing). The visitor recurses once
//! per nesting level, but the depth rule stops it at `max_depth` (at most
//! [`MAX_DEPTH_CEILING`]) and serde_json's own recursion limit stops it even
//! earlier on hostile input, so no document can exhaust the stack.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Highest accepted `limits.max_json_depth`: serde_json refuses deeper
/// documents on its own (its recursion limit is 128).
pub const MAX_DEPTH_CEILING: usize = 100;

/// Objects with more members than this track names in a hash set instead of
/// comparing against each earlier name.
const LINEAR_MEMBER_SCAN: usize = 16;

/// Longest excerpt of client text quoted in an error message.
const QUOTE_BYTES: usize = 64;

/// The limits a stored value must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueLimits {
    /// Largest value, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of arrays and objects.
    pub max_depth: usize,
}

/// Which rule a value breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Longer than `max_bytes`.
    #[error("value is {size} bytes; the limit (limits.max_value_bytes) is {limit}")]
    TooLarge {
        /// The value's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not valid UTF-8.
    #[error("value is not valid UTF-8 (first bad byte at offset {offset})")]
    InvalidUtf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// A `\uD8xx`-style escape without its partner.
    #[error("value has a string escape that is a lone surrogate: {0}")]
    LoneSurrogate(String),
    /// An object names a member twice.
    #[error("value has an object with the member name {0:?} more than once")]
    DuplicateMember(String),
    /// A number a double cannot hold.
    #[error("value has a number outside the range of a double: {0}")]
    NumberOutOfRange(String),
    /// Nested deeper than `max_depth`.
    #[error("value nests arrays/objects deeper than {limit} levels (limits.max_json_depth)")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// Not one complete JSON text.
    #[error("value is not valid JSON: {0}")]
    Syntax(String),
}

impl Violation {
    /// Stable machine-readable name of the rule, used in error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "value_too_large",
            Self::InvalidUtf8 { .. } => "invalid_utf8",
            Self::LoneSurrogate(_) => "lone_surrogate",
            Self::DuplicateMember(_) => "duplicate_member",
            Self::NumberOutOfRange(_) => "number_out_of_range",
            Self::TooDeep { .. } => "too_deep",
            Self::Syntax(_) => "invalid_json",
        }
    }
}

/// Checks that `bytes` is one I-JSON document within `limits`.
pub fn check(bytes: &[u8], limits: ValueLimits) -> Result<(), Violation> {
    if bytes.len() > limits.max_bytes {
        return Err(Violation::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| Violation::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    let found = Cell::new(None);
    let seed = Node {
        depth: 0,
        max_depth: limits.max_depth.min(MAX_DEPTH_CEILING),
        found: &found,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = seed.deserialize(&mut de).and_then(|()| de.end());
    match parsed {
        Ok(()) => Ok(()),
        Err(e) => Err(found.take().unwrap_or_else(|| classify(&e, text))),
    }
}

/// Names the rule behind one of serde_json's own errors. serde_json reports
/// surrogates and number range as syntax errors; its messages for them are
/// pinned by this module's tests.
fn classify(e: &serde_json::Error, text: &str) -> Violation {
    let message = e.to_string();
    if message.contains("surrogate") || (message.contains("hex escape") && has_lone_surrogate(text))
    {
        Violation::LoneSurrogate(message)
    } else if message.contains("number out of range") {
        Violation::NumberOutOfRange(message)
    } else if message.contains("recursion limit") {
        Violation::TooDeep {
            limit: MAX_DEPTH_CEILING,
        }
    } else {
        Violation::Syntax(message)
    }
}

/// Whether `text` has a `\\uD800`-`\\uDFFF` escape that is not half of a
/// pair. Only asked after serde_json refused a hex escape, to tell this
/// rule from a truncated escape; escaped backslashes are skipped in pairs.
fn has_lone_surrogate(text: &str) -> bool {
    let bytes = text.as_bytes();
    let unit = |at: usize| -> Option<u32> {
        let digits = bytes.get(at..at + 6)?;
        if &digits[..2] != b"\\u" || !digits[2..].iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        u32::from_str_radix(std::str::from_utf8(&digits[2..]).ok()?, 16).ok()
    };
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        match unit(i) {
            Some(0xD800..=0xDBFF) => match unit(i + 6) {
                Some(0xDC00..=0xDFFF) => i += 12,
                _ => return true,
            },
            Some(0xDC00..=0xDFFF) => return true,
            Some(_) => i += 6,
            None => i += 2,
        }
    }
    false
}

/// A value at some depth; visiting it checks it and everything inside.
#[derive(Clone, Copy)]
struct Node<'a> {
    depth: usize,
    max_depth: usize,
    /// The rule a visitor found broken (serde errors carry only text).
    found: &'a Cell<Option<Violation>>,
}

impl Node<'_> {
    fn fail<E: serde::de::Error>(&self, violation: Violation) -> E {
        let message = violation.to_string();
        self.found.set(Some(violation));
        E::custom(message)
    }

    /// The node one level down, refusing to go past the depth limit.
    fn child<E: serde::de::Error>(&self) -> Result<Self, E> {
        if self.depth >= self.max_depth {
            return Err(self.fail(Violation::TooDeep {
                limit: self.max_depth,
            }));
        }
        Ok(Self {
            depth: self.depth + 1,
            ..*self
        })
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        if v.is_finite() {
            Ok(())
        } else {
            Err(self.fail(Violation::NumberOutOfRange(v.to_string())))
        }
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let child = self.child()?;
        while seq.next_element_seed(child)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let child = self.child()?;
        let mut names = MemberNames::default();
        while let Some(name) = map.next_key_seed(MemberName)? {
            if !names.insert(name.clone()) {
                return Err(self.fail(Violation::DuplicateMember(quote(&name))));
            }
            map.next_value_seed(child)?;
        }
        Ok(())
    }
}

/// The member names seen so far in one object.
#[derive(Default)]
struct MemberNames<'de> {
    few: Vec<Cow<'de, str>>,
    many: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> MemberNames<'de> {
    /// Adds `name`; false if the object already has it.
    fn insert(&mut self, name: Cow<'de, str>) -> bool {
        if let Some(set) = self.many.as_mut() {
            return set.insert(name);
        }
        if self.few.contains(&name) {
            return false;
        }
        self.few.push(name);
        if self.few.len() > LINEAR_MEMBER_SCAN {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }
}

/// Reads a member name, borrowing it from the input unless it has escapes.
struct MemberName;

impl<'de> DeserializeSeed<'de> for MemberName {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for MemberName {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// For `#[serde(deserialize_with)]` on an `Option<&RawValue>` field: a
/// present JSON `null` is `Some("null")`, not `None` as plain `Option` reads it.
pub fn present_raw<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<&'de serde_json::value::RawValue>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

/// Like [`present_raw`], for an owned `Option<Box<RawValue>>` field.
pub fn present_raw_owned<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Box<serde_json::value::RawValue>>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

/// A client string shortened for an error message.
pub fn quote(text: &str) -> String {
    if text.len() <= QUOTE_BYTES {
        return text.to_owned();
    }
    let mut end = QUOTE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LIMITS: ValueLimits = ValueLimits {
        max_bytes: 1 << 20,
        max_depth: 64,
    };

    fn code(bytes: &[u8]) -> &'static str {
        match check(bytes, LIMITS) {
            Ok(()) => "ok",
            Err(v) => v.code(),
        }
    }

    #[test]
    fn accepts_i_json() {
        for ok in [
            &b"{}"[..],
            b"[]",
            b"17",
            b"-0.5e-3",
            b"null",
            b"\"\\ud83d\\ude00\"",
            b"{\"a\":1,\"b\":{\"a\":2}}",
            b"{\n  \"name\": \"ada\"\n}\n",
            b"{\"a\":[1,2,{\"a\":3}]}\r\n",
            b"123456789012345678901234567890",
            "{\"é\":\"ü\"}".as_bytes(),
        ] {
            assert_eq!(code(ok), "ok", "{}", String::from_utf8_lossy(ok));
        }
    }

    #[test]
    fn names_the_broken_rule() {
        assert_eq!(code(b"{\"a\":\"\xff\"}"), "invalid_utf8");
        assert_eq!(code(b"\"\\ud800\""), "lone_surrogate");
        assert_eq!(code(b"\"\\udc00x\""), "lone_surrogate");
        assert_eq!(code(b"\"\\ud800\\u0041\""), "lone_surrogate");
        assert_eq!(code(b"[\"\\\\ud800\", \"\\u12\"]"), "invalid_json");
        assert_eq!(code(b"\"\\ud83d\\ude00 \\\\ud800\""), "ok");
        assert_eq!(code(b"{\"a\":1e400}"), "number_out_of_range");
        assert_eq!(code(b"-1e400"), "number_out_of_range");
        assert_eq!(code(b"{\"a\":1,\"a\":2}"), "duplicate_member");
        assert_eq!(code(b"{\"a\":1,\"\\u0061\":2}"), "duplicate_member");
        assert_eq!(
            code(br#"{"email":"a@x","age":3,"age":"notanumber"}"#),
            "duplicate_member"
        );
        assert_eq!(
            code(b"{\"x\":{\"a\":1,\"b\":2,\"a\":3}}"),
            "duplicate_member"
        );
        assert_eq!(code(b""), "invalid_json");
        assert_eq!(code(b"{} {}"), "invalid_json");
        assert_eq!(code(b"{\"a\":"), "invalid_json");
        assert_eq!(code(b"NaN"), "invalid_json");
    }

    #[test]
    fn many_members_use_the_set() {
        let mut doc = String::from("{");
        for i in 0..100 {
            doc.push_str(&format!("\"k{i}\":{i},"));
        }
        assert_eq!(
            code(format!("{doc}\"k5\":0}}").as_bytes()),
            "duplicate_member"
        );
        assert_eq!(code(format!("{doc}\"k100\":0}}").as_bytes()), "ok");
    }

    #[test]
    fn depth_is_bounded_without_recursing_past_it() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(code(nest(64).as_bytes()), "ok");
        assert_eq!(code(nest(65).as_bytes()), "too_deep");
        let objects = format!("{}1{}", "{\"a\":".repeat(65), "}".repeat(65));
        assert_eq!(code(objects.as_bytes()), "too_deep");
        // Far deeper than any stack would take if the check recursed.
        assert_eq!(code(nest(400_000).as_bytes()), "too_deep");
        let shallow = ValueLimits {
            max_depth: 2,
            ..LIMITS
        };
        assert!(check(b"[[1]]", shallow).is_ok());
        assert_eq!(check(b"[[[1]]]", shallow).unwrap_err().code(), "too_deep");
    }

    #[test]
    fn size_is_checked_first() {
        let small = ValueLimits {
            max_bytes: 3,
            ..LIMITS
        };
        assert_eq!(
            check(b"[1,2]", small).unwrap_err().code(),
            "value_too_large"
        );
    }

    #[test]
    fn quotes_are_short() {
        assert_eq!(quote("abc"), "abc");
        let long = "é".repeat(100);
        assert!(quote(&long).len() <= QUOTE_BYTES + 3);
    }

    mod properties {
        use super::*;
        use crate::testgen;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Whatever clients send that is I-JSON is admitted.
            #[test]
            fn every_i_json_document_is_admitted(doc in testgen::document()) {
                prop_assert_eq!(check(&doc, LIMITS), Ok(()));
            }

            /// Arbitrary bytes never crash the check, and what it admits
            /// every mainstream reader parses.
            #[test]
            fn admitted_bytes_parse_everywhere(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
                if check(&bytes, LIMITS).is_ok() {
                    prop_assert!(serde_json::from_slice::<serde_json::Value>(&bytes).is_ok());
                }
            }

            /// Near-JSON text (JSON punctuation, escapes, digits) with
            /// duplicates, deep nesting and bad escapes mixed in.
            #[test]
            fn near_json_is_judged_without_panics(
                text in "[\\[\\]{}:,\"\\\\u0-9a-fe.+-]{0,80}"
            ) {
                let verdict = check(text.as_bytes(), LIMITS);
                if verdict.is_ok() {
                    prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
                }
            }
        }
    }
}
