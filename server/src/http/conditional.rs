//! Conditional requests (RFC 9110, section 13): `If-Match` and
//! `If-None-Match` against a key's version, which is its entity tag
//! (`"12"`).
//!
//! Evaluation order, as section 13.2.2 gives it (the date conditions are
//! not supported, as keys carry no modification time):
//! 1. `If-Match`, with strong comparison: no match (or `*` on an absent
//!    key) is 412;
//! 2. `If-None-Match`, with weak comparison: a match (or `*` on an existing
//!    key) is 304 for GET and HEAD, 412 for every other method;
//! 3. otherwise the method runs.
//!
//! For writes the same conditions become an [`Expect`] that the shard
//! writer checks against the latest committed version, so check and write
//! are one atomic step. A well-formed tag that is not a version of ours
//! (`"abc"`) simply never matches; only a malformed header is a 400.

use hyper::header::{HeaderMap, IF_MATCH, IF_NONE_MATCH};

use crate::error::ApiError;
use crate::storage::Expect;

/// One entity tag from a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tag {
    /// The version it names; `None` for a tag that names none of ours.
    version: Option<u64>,
    /// `W/"..."`.
    weak: bool,
}

/// The value of `If-Match` or `If-None-Match`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TagList {
    /// `*`: any current version.
    Any,
    /// A list of entity tags.
    Tags(Vec<Tag>),
}

impl TagList {
    /// Parses a header value; `None` when it is malformed. The grammar is
    /// RFC 9110's: `*`, or a comma-separated list (empty elements allowed)
    /// of `"opaque"` or `W/"opaque"`, where opaque is visible ASCII other
    /// than `"` (obs-text is not accepted). A comma inside quotes is part of
    /// the tag, so the list is scanned, not split.
    fn parse(text: &str) -> Option<Self> {
        let ows = |b: &u8| *b == b' ' || *b == b'\t';
        let mut rest = text.as_bytes();
        while rest.first().is_some_and(ows) {
            rest = &rest[1..];
        }
        while rest.last().is_some_and(ows) {
            rest = &rest[..rest.len() - 1];
        }
        if rest == b"*" {
            return Some(Self::Any);
        }
        let mut tags = Vec::new();
        loop {
            while rest.first().is_some_and(|b| ows(b) || *b == b',') {
                rest = &rest[1..];
            }
            if rest.is_empty() {
                break;
            }
            let weak = rest.starts_with(b"W/");
            if weak {
                rest = &rest[2..];
            }
            let body = rest.strip_prefix(b"\"")?;
            let close = body.iter().position(|&b| b == b'"')?;
            let opaque = &body[..close];
            if !opaque
                .iter()
                .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b))
            {
                return None;
            }
            rest = &body[close + 1..];
            while rest.first().is_some_and(ows) {
                rest = &rest[1..];
            }
            if !rest.is_empty() && rest[0] != b',' {
                return None;
            }
            let version = std::str::from_utf8(opaque)
                .ok()
                .filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|o| o.parse().ok());
            tags.push(Tag { version, weak });
        }
        // An empty list is valid (RFC 9110's `#` rule): it names no version.
        Some(Self::Tags(tags))
    }

    /// The versions the list names; strong comparison leaves weak tags out.
    fn versions(&self, strong: bool) -> Vec<u64> {
        match self {
            Self::Any => Vec::new(),
            Self::Tags(tags) => tags
                .iter()
                .filter(|t| !(strong && t.weak))
                .filter_map(|t| t.version)
                .collect(),
        }
    }
}

/// What a read should answer, given its conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadVerdict {
    /// Send the value.
    Proceed,
    /// 304: the client's copy is current.
    NotModified,
    /// 412: `If-Match` does not hold.
    Failed,
}

/// A request's preconditions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    if_match: Option<TagList>,
    if_none_match: Option<TagList>,
}

impl Preconditions {
    /// Reads `If-Match` and `If-None-Match`; a malformed one is a 400.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let read = |name: hyper::header::HeaderName| -> Result<Option<TagList>, ApiError> {
            let Some(value) = headers.get(&name) else {
                return Ok(None);
            };
            value
                .to_str()
                .ok()
                .and_then(TagList::parse)
                .map(Some)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_header",
                        format!(
                            "{name} must be * or a list of entity tags like \"12\" or W/\"12\""
                        ),
                    )
                })
        };
        Ok(Self {
            if_match: read(IF_MATCH)?,
            if_none_match: read(IF_NONE_MATCH)?,
        })
    }

    /// The verdict for a GET or HEAD of a key at `version`.
    pub fn evaluate_read(&self, version: u64) -> ReadVerdict {
        if let Some(list) = &self.if_match {
            let holds = match list {
                TagList::Any => true,
                tags => tags.versions(true).contains(&version),
            };
            if !holds {
                return ReadVerdict::Failed;
            }
        }
        if let Some(list) = &self.if_none_match {
            let matches = match list {
                TagList::Any => true,
                tags => tags.versions(false).contains(&version),
            };
            if matches {
                return ReadVerdict::NotModified;
            }
        }
        ReadVerdict::Proceed
    }

    /// The condition a write must meet, checked by the shard writer.
    pub fn to_expect(&self) -> Expect {
        let if_match = self.if_match.as_ref().map(|list| match list {
            TagList::Any => Expect::Present,
            tags => Expect::OneOf(tags.versions(true)),
        });
        let if_none_match = self.if_none_match.as_ref().map(|list| match list {
            TagList::Any => Expect::Absent,
            tags => Expect::NoneOf(tags.versions(false)),
        });
        match (if_match, if_none_match) {
            (None, None) => Expect::Any,
            (Some(one), None) | (None, Some(one)) => one,
            (Some(a), Some(b)) => Expect::All(vec![a, b]),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hyper::header::HeaderValue;

    fn pre(if_match: Option<&str>, if_none_match: Option<&str>) -> Result<Preconditions, ApiError> {
        let mut h = HeaderMap::new();
        if let Some(v) = if_match {
            h.insert(IF_MATCH, HeaderValue::from_str(v).unwrap());
        }
        if let Some(v) = if_none_match {
            h.insert(IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
        }
        Preconditions::from_headers(&h)
    }

    /// (If-Match, If-None-Match, current version, read verdict, write allowed).
    /// `None` as the version: the key is absent (reads of absent keys are
    /// 404 before any condition, so only writes are checked there).
    #[test]
    fn rfc_9110_evaluation_order() {
        use ReadVerdict::*;
        type Case = (
            Option<&'static str>,
            Option<&'static str>,
            Option<u64>,
            Option<ReadVerdict>,
            bool,
        );
        let cases: &[Case] = &[
            (None, None, Some(16), Some(Proceed), true),
            (None, None, None, None, true),
            // If-Match: strong comparison.
            (Some("\"16\""), None, Some(16), Some(Proceed), true),
            (Some("\"15\", \"16\""), None, Some(16), Some(Proceed), true),
            (Some("\"15\""), None, Some(16), Some(Failed), false),
            (Some("W/\"16\""), None, Some(16), Some(Failed), false),
            (Some("\"abc\""), None, Some(16), Some(Failed), false),
            (Some("*"), None, Some(16), Some(Proceed), true),
            (Some("*"), None, None, None, false),
            (Some("\"16\""), None, None, None, false),
            // If-None-Match: weak comparison; 304 for reads, 412 for writes.
            (None, Some("\"16\""), Some(16), Some(NotModified), false),
            (None, Some("W/\"16\""), Some(16), Some(NotModified), false),
            (
                None,
                Some("\"9\", W/\"16\""),
                Some(16),
                Some(NotModified),
                false,
            ),
            (None, Some("\"15\""), Some(16), Some(Proceed), true),
            (None, Some("\"abc\""), Some(16), Some(Proceed), true),
            (None, Some("*"), Some(16), Some(NotModified), false),
            (None, Some("*"), None, None, true),
            (None, Some("\"16\""), None, None, true),
            // If-Match is evaluated first.
            (
                Some("\"15\""),
                Some("\"16\""),
                Some(16),
                Some(Failed),
                false,
            ),
            (
                Some("\"16\""),
                Some("\"16\""),
                Some(16),
                Some(NotModified),
                false,
            ),
            (
                Some("\"16\""),
                Some("\"15\""),
                Some(16),
                Some(Proceed),
                true,
            ),
        ];
        for (if_match, if_none_match, current, read, write) in cases.iter().copied() {
            let p = pre(if_match, if_none_match).unwrap();
            let case =
                format!("If-Match {if_match:?}, If-None-Match {if_none_match:?}, at {current:?}");
            if let (Some(version), Some(read)) = (current, read) {
                assert_eq!(p.evaluate_read(version), read, "{case}");
            }
            assert_eq!(p.to_expect().holds(current), write, "{case}");
        }
    }

    #[test]
    fn only_malformed_headers_are_refused() {
        for bad in [
            "16",
            "\"16",
            "W/16",
            "\"a\"b\"",
            "\"1\" \"2\"",
            "\"a b\"",
            "*, \"1\"",
            "w/\"1\"",
        ] {
            assert!(pre(Some(bad), None).is_err(), "{bad:?}");
            assert!(pre(None, Some(bad)).is_err(), "{bad:?}");
        }
        assert!(pre(Some("\"abc\", W/\"x\""), Some("*")).is_ok());
        // Empty list elements are allowed, and a comma inside a tag is
        // part of it: `"1,2"` names no version, and is not `"1"` and `"2"`.
        assert!(pre(Some(" ,\"1\",, W/\"2\" ,"), None).is_ok());
        // An empty list names no version: If-Match never holds, and
        // If-None-Match always does.
        let empty = pre(Some(" , "), Some("")).unwrap();
        assert_eq!(empty.evaluate_read(1), ReadVerdict::Failed);
        assert!(!empty.to_expect().holds(Some(1)));
        assert!(pre(None, Some("")).unwrap().to_expect().holds(Some(1)));
        let p = pre(Some("\"1,2\""), None).unwrap();
        assert_eq!(p.evaluate_read(1), ReadVerdict::Failed);
        assert_eq!(p.evaluate_read(2), ReadVerdict::Failed);
        assert_eq!(pre(None, None).unwrap().to_expect(), Expect::Any);
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::TagList;

        proptest! {
            /// Any header text parses or is refused, without panicking.
            #[test]
            fn any_text_parses_or_is_refused(text in ".{0,64}") {
                let _ = TagList::parse(&text);
            }

            /// A list written by the grammar parses back to its versions.
            #[test]
            fn written_lists_parse_back(
                tags in proptest::collection::vec((any::<bool>(), 0u64..1_000_000), 1..6),
                sep in "[ \t]{0,2},[ \t,]{0,2}",
            ) {
                let text = tags
                    .iter()
                    .map(|(weak, v)| format!("{}\"{v}\"", if *weak { "W/" } else { "" }))
                    .collect::<Vec<_>>()
                    .join(&sep);
                let parsed = TagList::parse(&text).expect("a grammatical list");
                let weak: Vec<u64> = tags.iter().map(|t| t.1).collect();
                let strong: Vec<u64> = tags.iter().filter(|t| !t.0).map(|t| t.1).collect();
                prop_assert_eq!(parsed.versions(false), weak);
                prop_assert_eq!(parsed.versions(true), strong);
            }
        }
    }
}
