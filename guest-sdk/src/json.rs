//! A small, dependency-free JSON reader and writer for plugins.
//!
//! Plugins receive values as JSON text and answer with JSON text. This module
//! parses that text into a [`Value`] tree and writes trees back. Numbers keep
//! their original text, so a transform that does not touch a number never
//! changes how it is written (no float rounding of large integers).

use std::fmt;

/// Deepest nesting accepted, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 128;

/// A JSON value. Objects keep their members in document order.
///
/// ```
/// use exdaas_guest::json::Value;
/// let v = Value::parse(r#"{"name":"ada","age":36}"#).unwrap();
/// assert_eq!(v.get("name").and_then(Value::as_str), Some("ada"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number, as written in the source text.
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object, members in order.
    Object(Vec<(String, Value)>),
}

/// Why text could not be parsed.
///
/// ```
/// use exdaas_guest::json::Value;
/// let err = Value::parse("{\"a\":").unwrap_err();
/// assert!(err.to_string().contains("offset"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// Byte offset where parsing stopped.
    pub offset: usize,
    /// What was expected there.
    pub message: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid JSON at offset {}: {}",
            self.offset, self.message
        )
    }
}

impl std::error::Error for ParseError {}

impl Value {
    /// Parses one complete JSON document.
    ///
    /// ```
    /// use exdaas_guest::json::Value;
    /// assert_eq!(Value::parse("[1, true, null]").unwrap().as_array().map(|a| a.len()), Some(3));
    /// assert!(Value::parse("[1,]").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Value, ParseError> {
        let mut p = Parser {
            text,
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value(0)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(p.err("trailing characters after the document"));
        }
        Ok(v)
    }

    /// The member `key` of an object (`None` for other values).
    ///
    /// ```
    /// use exdaas_guest::json::Value;
    /// let v = Value::parse(r#"{"a":{"b":2}}"#).unwrap();
    /// assert_eq!(v.get("a").and_then(|a| a.get("b")).and_then(Value::as_i64), Some(2));
    /// ```
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Mutable access to the member `key` of an object.
    ///
    /// ```
    /// use exdaas_guest::json::Value;
    /// let mut v = Value::parse(r#"{"a":1}"#).unwrap();
    /// *v.get_mut("a").unwrap() = Value::from(2i64);
    /// assert_eq!(v.to_json(), r#"{"a":2}"#);
    /// ```
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        match self {
            Value::Object(members) => members.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets member `key` of an object (replacing it in place or appending).
    /// Returns false, changing nothing, when `self` is not an object.
    ///
    /// ```
    /// use exdaas_guest::json::Value;
    /// let mut v = Value::parse(r#"{"a":1}"#).unwrap();
    /// assert!(v.set("b", Value::from("x")));
    /// assert_eq!(v.to_json(), r#"{"a":1,"b":"x"}"#);
    /// ```
    pub fn set(&mut self, key: &str, value: Value) -> bool {
        match self {
            Value::Object(members) => {
                match members.iter_mut().find(|(k, _)| k == key) {
                    Some(slot) => slot.1 = value,
                    None => members.push((key.to_string(), value)),
                }
                true
            }
            _ => false,
        }
    }

    /// Removes member `key` of an object, returning it.
    ///
    /// ```
    /// use exdaas_guest::json::Value;
    /// let mut v = Value::parse(r#"{"a":1,"b":2}"#).unwrap();
    /// assert_eq!(v.remove("a"), Some(Value::from(1i64)));
    /// assert_eq!(v.to_json(), r#"{"b":2}"#);
    /// ```
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        match self {
            Value::Object(members) => {
                let at = members.iter().position(|(k, _)| k == key)?;
                Some(members.remove(at).1)
            }
            _ => None,
        }
    }

    /// The string, if this is one.
    ///
    /// ```
    /// use exdaas_guest::json::Value;
    /// assert_eq!(Value::from("hi").as_str(), Some("hi"));
    /// ```
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number as f64, if this is a number.
    ///
    /// ```
    /// use exdaas_guest::json::Value;
    /// assert_eq!(Value::parse("2.5e1").unwrap().as_f64(), Some(25.0));
    /// ```
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => n.parse().ok(),
            _ => None,
        }
    }

    /// The number as i64, if it is an integer in range.
    ///
    /// ```
    /// use exdaas_guest::json::Value;
    /// assert_eq!(Value::parse("-7").unwrap().as_i64(), Some(-7));
    /// assert_eq!(Value::parse("7.5").unwrap().as_i64(), None);
    /// ```
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.parse().ok(),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    ///
    /// ```
    /// use exdaas_guest::json::Value;
    /// assert_eq!(Value::Bool(true).as_bool(), Some(true));
    /// ```
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    ///
    /// ```
    /// use exdaas_guest::json::Value;
    /// assert_eq!(Value::parse("[1,2]").unwrap().as_array().map(|a| a.len()), Some(2));
    /// ```
    pub fn as_array(&self) -> Option<&Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The members, if this is an object.
    ///
    /// ```
    /// use exdaas_guest::json::Value;
    /// let v = Value::parse(r#"{"a":1}"#).unwrap();
    /// assert_eq!(v.as_object().map(|m| m[0].0.as_str()), Some("a"));
    /// ```
    pub fn as_object(&self) -> Option<&Vec<(String, Value)>> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    /// Whether this is `null`.
    ///
    /// ```
    /// use exdaas_guest::json::Value;
    /// assert!(Value::Null.is_null());
    /// ```
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The JSON type name: `null`, `boolean`, `number`, `string`, `array`
    /// or `object`, the names validators use in their configuration.
    ///
    /// ```
    /// use exdaas_guest::json::Value;
    /// assert_eq!(Value::parse("[]").unwrap().type_name(), "array");
    /// ```
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// Writes the value as compact JSON.
    ///
    /// ```
    /// use exdaas_guest::json::Value;
    /// let v = Value::parse(" { \"a\" : [ 1 , \"\\u00e9\\n\" ] } ").unwrap();
    /// assert_eq!(v.to_json(), "{\"a\":[1,\"é\\n\"]}");
    /// ```
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(true) => out.push_str("true"),
            Value::Bool(false) => out.push_str("false"),
            Value::Number(n) => out.push_str(n),
            Value::String(s) => write_string(s, out),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Value::Object(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(k, out);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// Writes `s` as a quoted, escaped JSON string.
///
/// ```
/// let mut out = String::new();
/// exdaas_guest::json::write_string("a\"b", &mut out);
/// assert_eq!(out, r#""a\"b""#);
/// ```
pub fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Number(n.to_string())
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

/// The member names of the object being parsed: compared one by one while
/// the object is small, looked up in a set once it is not.
#[derive(Default)]
struct MemberNames {
    set: Option<std::collections::BTreeSet<String>>,
}

impl MemberNames {
    /// Adds `name`; false if the object already has it. `members` are the
    /// members parsed so far.
    fn insert(&mut self, name: &str, members: &[(String, Value)]) -> bool {
        if let Some(set) = self.set.as_mut() {
            return set.insert(name.to_string());
        }
        if members.iter().any(|(k, _)| k == name) {
            return false;
        }
        if members.len() >= 16 {
            let mut set: std::collections::BTreeSet<String> =
                members.iter().map(|(k, _)| k.clone()).collect();
            set.insert(name.to_string());
            self.set = Some(set);
        }
        true
    }
}

struct Parser<'a> {
    text: &'a str,
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, message: &'static str) -> ParseError {
        ParseError {
            offset: self.i,
            message,
        }
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn literal(&mut self, word: &'static str, v: Value) -> Result<Value, ParseError> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("expected a value"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        self.ws();
        match self.peek() {
            None => Err(self.err("unexpected end of input")),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return Err(self.err("expected , or ]")),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut members: Vec<(String, Value)> = Vec::new();
                let mut names = MemberNames::default();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Value::Object(members));
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(self.err("expected a member name"));
                    }
                    let name_at = self.i;
                    let key = self.string()?;
                    if !names.insert(&key, &members) {
                        // A reader that took the first of two equal names
                        // while the server's clients take the last could be
                        // talked past; the server refuses such documents,
                        // and so does this parser.
                        self.i = name_at;
                        return Err(self.err("duplicate member name"));
                    }
                    self.ws();
                    if self.peek() != Some(b':') {
                        return Err(self.err("expected :"));
                    }
                    self.i += 1;
                    let v = self.value(depth + 1)?;
                    members.push((key, v));
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Value::Object(members));
                        }
                        _ => return Err(self.err("expected , or }")),
                    }
                }
            }
            Some(b'-') | Some(b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("expected a value")),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        if self.peek() == Some(b'0') {
            self.i += 1;
        } else if self.digits() == 0 {
            return Err(self.err("expected digits"));
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("expected digits after ."));
            }
        }
        if matches!(self.peek(), Some(b'e') | Some(b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+') | Some(b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("expected exponent digits"));
            }
        }
        let text = &self.text[start..self.i];
        // I-JSON: a number must fit a double (the server refuses 1e400).
        // An integer of at most 16 characters always does, and most
        // numbers are such integers: they skip the float parse.
        let short_integer =
            text.len() <= 16 && !text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'));
        if !short_integer && !matches!(text.parse::<f64>(), Ok(f) if f.is_finite()) {
            self.i = start;
            return Err(self.err("number out of range"));
        }
        Ok(Value::Number(text.to_string()))
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let end = self.i + 4;
        let digits = self
            .s
            .get(self.i..end)
            .ok_or_else(|| self.err("short \\u escape"))?;
        // from_str_radix alone would also take a sign ("\\u+041").
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(self.err("bad \\u escape"));
        }
        let text = std::str::from_utf8(digits).map_err(|_| self.err("bad \\u escape"))?;
        let n = u32::from_str_radix(text, 16).map_err(|_| self.err("bad \\u escape"))?;
        self.i = end;
        Ok(n)
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.i += 1; // opening quote
        let mut out = String::new();
        loop {
            let start = self.i;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.i += 1;
            }
            // The text is a `str` and the run stops at an ASCII byte, so
            // the slice is on character boundaries: no new UTF-8 check.
            out.push_str(&self.text[start..self.i]);
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = self.peek().ok_or_else(|| self.err("unterminated escape"))?;
                    self.i += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.s[self.i..].starts_with(b"\\u") {
                                    return Err(self.err("lone surrogate"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("bad surrogate pair"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            out.push(
                                char::from_u32(code)
                                    .ok_or_else(|| self.err("invalid code point"))?,
                            );
                        }
                        _ => return Err(self.err("unknown escape")),
                    }
                }
                Some(_) => return Err(self.err("control character in string")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for text in [
            "null",
            "true",
            "-0.5e-3",
            "12345678901234567890",
            r#""a\"b\\c\u0001""#,
            r#"{"a":[1,{"b":null}],"c":"é😀"}"#,
            "[]",
            "{}",
        ] {
            let v = Value::parse(text).unwrap();
            assert_eq!(Value::parse(&v.to_json()).unwrap(), v, "{}", text);
        }
        assert_eq!(
            Value::parse(r#""\ud83d\ude00""#).unwrap(),
            Value::from("😀")
        );
    }

    #[test]
    fn rejects_invalid() {
        for text in [
            "",
            "nul",
            "[1,]",
            "{\"a\"}",
            "01",
            "1.",
            "\"\\x\"",
            "\"a",
            "{} x",
            "\"\\ud800\"",
            "[\"\u{1}\"]",
        ] {
            assert!(Value::parse(text).is_err(), "{:?}", text);
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(Value::parse(&deep).is_err());
    }

    #[test]
    fn duplicate_member_names_are_refused() {
        for text in [
            r#"{"email":"a@x","age":3,"age":"notanumber"}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{"x":{"b":1,"b":2}}"#,
        ] {
            let err = Value::parse(text).unwrap_err();
            assert_eq!(err.message, "duplicate member name", "{}", text);
        }
        let mut many = String::from("{");
        for i in 0..40 {
            many.push_str(&format!("\"k{}\":{},", i, i));
        }
        assert!(Value::parse(&format!("{}\"k39\":0}}", many)).is_err());
        assert!(Value::parse(&format!("{}\"k40\":0}}", many)).is_ok());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::Bool),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(serde_json::Value::from),
                any::<String>().prop_map(serde_json::Value::String),
            ];
            leaf.prop_recursive(5, 48, 5, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
                    prop::collection::btree_map(any::<String>(), inner, 0..5)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// The SDK reads what serde_json writes, to the same document.
            #[test]
            fn reads_what_serde_json_writes(v in value()) {
                let text = serde_json::to_string_pretty(&v).unwrap();
                let ours = Value::parse(&text).unwrap();
                // Both texts through one reader: numbers keep their text in
                // the SDK, so they must read back identically.
                let back: serde_json::Value = serde_json::from_str(&ours.to_json()).unwrap();
                let direct: serde_json::Value = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(back, direct);
            }

            /// Anything the SDK accepts, serde_json accepts too; no input panics.
            #[test]
            fn accepts_nothing_a_strict_reader_refuses(
                text in "[\\[\\]{}:,\"\\\\u0-9a-fnrtl. -]{0,64}"
            ) {
                if Value::parse(&text).is_ok() {
                    prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok(), "{}", text);
                }
            }
        }
    }
}
