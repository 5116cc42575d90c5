//! Write exdaas plugins (validators and transforms) in Rust.
//!
//! A plugin is one function from a [`Write`] to an [`Outcome`], exported with
//! [`export_plugin!`]. The macro produces the WebAssembly exports described in
//! `ABI.md`, so the plugin itself contains no unsafe code and no ABI detail,
//! and the same function can be unit-tested natively with `cargo test`.
//!
//! ```
//! use exdaas_guest::{Outcome, Write};
//!
//! fn no_empty_objects(write: &Write) -> Outcome {
//!     match write.value_json() {
//!         Ok(v) if v.as_object().map_or(false, |m| m.is_empty()) => {
//!             Outcome::reject("empty", "empty objects are not stored")
//!         }
//!         _ => Outcome::Accept,
//!     }
//! }
//! // In the plugin crate: exdaas_guest::export_plugin!(no_empty_objects);
//!
//! assert_eq!(no_empty_objects(&Write::put("k", "{}")), Outcome::reject("empty", "empty objects are not stored"));
//! assert_eq!(no_empty_objects(&Write::put("k", "{\"a\":1}")), Outcome::Accept);
//! ```
//!
//! The crate builds with Rust 1.63 and has no dependencies.

#![warn(missing_docs)]

pub mod json;

use json::{ParseError, Value};
use std::cell::RefCell;
use std::rc::Rc;

/// The ABI version this SDK implements; the host refuses other versions.
///
/// ```
/// assert_eq!(exdaas_guest::ABI_VERSION, 1);
/// ```
pub const ABI_VERSION: i32 = 1;

/// `op` of a put.
pub const OP_PUT: i32 = 0;
/// `op` of a delete (only for plugins configured with `run_on_delete`).
pub const OP_DELETE: i32 = 1;
/// Length the host passes for an absent value (a delete's new value, a new
/// key's stored value).
pub const ABSENT: i32 = -1;

/// What kind of write is being made.
///
/// ```
/// use exdaas_guest::{Op, Write};
/// assert_eq!(Write::put("k", "1").op, Op::Put);
/// assert_eq!(Write::delete("k").op, Op::Delete);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A value is stored.
    Put,
    /// The key is removed (only for plugins configured with `run_on_delete`).
    Delete,
}

/// One write, as the plugin sees it. All JSON is passed as text; parse what
/// you need with the `*_json` helpers.
///
/// ```
/// use exdaas_guest::Write;
/// let w = Write::put("users/1", r#"{"a":1}"#).with_old(r#"{"a":0}"#).with_config(r#"{"x":true}"#).at(1_700_000_000_000);
/// assert_eq!(w.key, "users/1");
/// assert_eq!(w.old_json().unwrap().unwrap().get("a").and_then(|v| v.as_i64()), Some(0));
/// assert_eq!(w.now_ms, 1_700_000_000_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write<'a> {
    /// Put or delete.
    pub op: Op,
    /// The key being written.
    pub key: &'a str,
    /// The new value as JSON text (after earlier plugins); `None` for deletes.
    pub value: Option<&'a str>,
    /// The value currently stored, if any.
    pub old: Option<&'a str>,
    /// This plugin's `config` table from the server configuration, as JSON.
    pub config: &'a str,
    /// Host time, milliseconds since the Unix epoch (plugins have no clock).
    pub now_ms: i64,
}

impl<'a> Write<'a> {
    /// A put of `value` under `key` (for tests).
    ///
    /// ```
    /// let w = exdaas_guest::Write::put("k", "true");
    /// assert_eq!(w.value, Some("true"));
    /// assert_eq!(w.config, "{}");
    /// ```
    pub fn put(key: &'a str, value: &'a str) -> Self {
        Write {
            op: Op::Put,
            key,
            value: Some(value),
            old: None,
            config: "{}",
            now_ms: 0,
        }
    }

    /// A delete of `key` (for tests).
    ///
    /// ```
    /// assert_eq!(exdaas_guest::Write::delete("k").value, None);
    /// ```
    pub fn delete(key: &'a str) -> Self {
        Write {
            op: Op::Delete,
            key,
            value: None,
            old: None,
            config: "{}",
            now_ms: 0,
        }
    }

    /// The same write with a stored value.
    ///
    /// ```
    /// assert_eq!(exdaas_guest::Write::put("k", "2").with_old("1").old, Some("1"));
    /// ```
    pub fn with_old(mut self, old: &'a str) -> Self {
        self.old = Some(old);
        self
    }

    /// The same write with a plugin configuration.
    ///
    /// ```
    /// assert_eq!(exdaas_guest::Write::put("k", "2").with_config("{\"a\":1}").config, "{\"a\":1}");
    /// ```
    pub fn with_config(mut self, config: &'a str) -> Self {
        self.config = config;
        self
    }

    /// The same write at host time `now_ms`.
    ///
    /// ```
    /// assert_eq!(exdaas_guest::Write::put("k", "2").at(5).now_ms, 5);
    /// ```
    pub fn at(mut self, now_ms: i64) -> Self {
        self.now_ms = now_ms;
        self
    }

    /// The new value, parsed (`Null` for deletes).
    ///
    /// ```
    /// let w = exdaas_guest::Write::put("k", "[1]");
    /// assert_eq!(w.value_json().unwrap().as_array().map(|a| a.len()), Some(1));
    /// ```
    pub fn value_json(&self) -> Result<Value, ParseError> {
        match self.value {
            Some(text) => Value::parse(text),
            None => Ok(Value::Null),
        }
    }

    /// The stored value, parsed, if there is one.
    ///
    /// ```
    /// assert!(exdaas_guest::Write::put("k", "1").old_json().unwrap().is_none());
    /// ```
    pub fn old_json(&self) -> Result<Option<Value>, ParseError> {
        match self.old {
            Some(text) => Value::parse(text).map(Some),
            None => Ok(None),
        }
    }

    /// The plugin configuration, parsed.
    ///
    /// ```
    /// let w = exdaas_guest::Write::put("k", "1").with_config("{\"max\":3}");
    /// assert_eq!(w.config_json().unwrap().get("max").and_then(|v| v.as_i64()), Some(3));
    /// ```
    pub fn config_json(&self) -> Result<Value, ParseError> {
        Value::parse(self.config)
    }

    /// The plugin configuration, parsed on the first call and kept while
    /// the host passes the same text. The host passes a plugin's settings
    /// with every write, so a validator that reads them this way parses
    /// them once per instance instead of once per write (in the
    /// require-fields example that was a third of its time).
    ///
    /// ```
    /// let w = exdaas_guest::Write::put("k", "1").with_config("{\"max\":3}");
    /// let first = w.config_value().unwrap();
    /// assert_eq!(first.get("max").and_then(|v| v.as_i64()), Some(3));
    /// assert!(std::rc::Rc::ptr_eq(&first, &w.config_value().unwrap()), "parsed once");
    /// let other = exdaas_guest::Write::put("k", "1").with_config("{\"max\":4}");
    /// assert_eq!(other.config_value().unwrap().get("max").and_then(|v| v.as_i64()), Some(4));
    /// assert!(exdaas_guest::Write::put("k", "1").with_config("{").config_value().is_err());
    /// ```
    pub fn config_value(&self) -> Result<Rc<Value>, ParseError> {
        PARSED_CONFIG.with(|slot| {
            let mut slot = slot.borrow_mut();
            if let Some((text, parsed)) = slot.as_ref() {
                if text == self.config {
                    return parsed.clone();
                }
            }
            let parsed = Value::parse(self.config).map(Rc::new);
            *slot = Some((self.config.to_string(), parsed.clone()));
            parsed
        })
    }
}

/// The configuration text last parsed by [`Write::config_value`] and what
/// it parsed to. A guest runs one call at a time, so one slot suffices.
type ParsedConfig = Option<(String, Result<Rc<Value>, ParseError>)>;

thread_local! {
    static PARSED_CONFIG: RefCell<ParsedConfig> = const { RefCell::new(None) };
}

/// A plugin's answer.
///
/// ```
/// use exdaas_guest::Outcome;
/// let o = Outcome::reject_at("missing", "email is required", "$.email");
/// assert!(o.verdict_json().contains("\"path\":\"$.email\""));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Let the write through as it is.
    Accept,
    /// Refuse the write; the client gets 422 with this code and message.
    Reject {
        /// Machine-readable reason.
        code: String,
        /// Human-readable explanation.
        message: String,
        /// Optional JSON path of the offending part.
        path: Option<String>,
    },
    /// Store this JSON text instead of the value (a transform).
    Replace(String),
}

impl Outcome {
    /// A rejection.
    ///
    /// ```
    /// let o = exdaas_guest::Outcome::reject("too_big", "value too big");
    /// assert!(matches!(o, exdaas_guest::Outcome::Reject { path: None, .. }));
    /// ```
    pub fn reject(code: &str, message: &str) -> Outcome {
        Outcome::Reject {
            code: code.to_string(),
            message: message.to_string(),
            path: None,
        }
    }

    /// A rejection pointing at a JSON path.
    ///
    /// ```
    /// let o = exdaas_guest::Outcome::reject_at("type", "age must be a number", "$.age");
    /// assert!(matches!(o, exdaas_guest::Outcome::Reject { path: Some(_), .. }));
    /// ```
    pub fn reject_at(code: &str, message: &str, path: &str) -> Outcome {
        Outcome::Reject {
            code: code.to_string(),
            message: message.to_string(),
            path: Some(path.to_string()),
        }
    }

    /// A replacement value.
    ///
    /// ```
    /// use exdaas_guest::{json::Value, Outcome};
    /// assert_eq!(Outcome::replace(&Value::from(1i64)), Outcome::Replace("1".into()));
    /// ```
    pub fn replace(value: &Value) -> Outcome {
        Outcome::Replace(value.to_json())
    }

    /// The verdict JSON the host reads (see `ABI.md`).
    ///
    /// ```
    /// assert_eq!(exdaas_guest::Outcome::Accept.verdict_json(), r#"{"action":"accept"}"#);
    /// ```
    pub fn verdict_json(&self) -> String {
        let mut out = String::new();
        match self {
            Outcome::Accept => out.push_str(r#"{"action":"accept"}"#),
            Outcome::Reject {
                code,
                message,
                path,
            } => {
                out.push_str(r#"{"action":"reject","code":"#);
                json::write_string(code, &mut out);
                out.push_str(r#","message":"#);
                json::write_string(message, &mut out);
                if let Some(path) = path {
                    out.push_str(r#","path":"#);
                    json::write_string(path, &mut out);
                }
                out.push('}');
            }
            Outcome::Replace(value) => {
                out.push_str(r#"{"action":"replace","value":"#);
                out.push_str(value);
                out.push('}');
            }
        }
        out
    }
}

/// Severity of a log line.
///
/// ```
/// assert_eq!(exdaas_guest::Level::Warn as i32, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something looks wrong.
    Warn = 1,
    /// Worth knowing.
    Info = 2,
    /// For debugging.
    Debug = 3,
}

#[cfg(target_arch = "wasm32")]
mod host {
    #[link(wasm_import_module = "exdaas")]
    extern "C" {
        pub fn log(level: i32, ptr: i32, len: i32);
    }
}

/// Writes a line to the server log, tagged with the plugin's name and the
/// key being written. Natively (in tests) the line goes to stderr.
///
/// ```
/// exdaas_guest::log(exdaas_guest::Level::Info, "checked 3 fields");
/// ```
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    #[allow(unsafe_code)]
    unsafe {
        host::log(level as i32, message.as_ptr() as i32, message.len() as i32)
    }
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[plugin {:?}] {}", level, message);
}

/// Exports `handler: fn(&Write) -> Outcome` as the plugin's entry points.
///
/// ```
/// use exdaas_guest::{Outcome, Write};
/// fn accept_all(_: &Write) -> Outcome { Outcome::Accept }
/// exdaas_guest::export_plugin!(accept_all);
/// assert_eq!(exdaas_abi_version(), 1);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($handler:path) => {
        /// ABI version of this plugin.
        #[no_mangle]
        pub extern "C" fn exdaas_abi_version() -> i32 {
            $crate::ABI_VERSION
        }

        /// Buffer for the host to copy a call's input into.
        #[no_mangle]
        pub extern "C" fn exdaas_alloc(len: i32) -> i32 {
            $crate::__private::alloc(len)
        }

        /// One write; see ABI.md.
        #[no_mangle]
        pub extern "C" fn exdaas_on_write(
            op: i32,
            buf: i32,
            key_len: i32,
            value_len: i32,
            old_len: i32,
            config_len: i32,
            now_ms: i64,
        ) -> i64 {
            $crate::__private::on_write(
                op, key_len, value_len, old_len, config_len, now_ms, buf, $handler,
            )
        }
    };
}

/// Glue used by [`export_plugin!`]; not part of the public API.
#[doc(hidden)]
pub mod __private {
    use super::{Op, Outcome, Write};
    use std::cell::RefCell;

    thread_local! {
        /// The call's input, reused between calls.
        static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        /// The last verdict; must outlive the call so the host can read it.
        static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    /// Sizes the input buffer and returns its address.
    pub fn alloc(len: i32) -> i32 {
        let len = if len < 0 { 0 } else { len as usize };
        INPUT.with(|input| {
            let mut input = input.borrow_mut();
            input.clear();
            input.resize(len, 0);
            input.as_mut_ptr() as usize as i32
        })
    }

    fn split<'a>(input: &'a [u8], at: &mut usize, len: i32) -> Result<Option<&'a str>, ()> {
        if len == super::ABSENT {
            return Ok(None);
        }
        if len < 0 {
            return Err(());
        }
        let end = *at + len as usize;
        let bytes = input.get(*at..end).ok_or(())?;
        *at = end;
        std::str::from_utf8(bytes).map(Some).map_err(|_| ())
    }

    /// Decodes the input buffer, runs the handler, encodes the verdict.
    #[allow(clippy::too_many_arguments)]
    pub fn on_write(
        op: i32,
        key_len: i32,
        value_len: i32,
        old_len: i32,
        config_len: i32,
        now_ms: i64,
        _buf: i32,
        handler: fn(&Write) -> Outcome,
    ) -> i64 {
        let outcome = INPUT.with(|input| {
            let input = input.borrow();
            let mut at = 0;
            let parts = (|| -> Result<_, ()> {
                let key = split(&input, &mut at, key_len)?.ok_or(())?;
                let value = split(&input, &mut at, value_len)?;
                let old = split(&input, &mut at, old_len)?;
                let config = split(&input, &mut at, config_len)?.unwrap_or("{}");
                Ok((key, value, old, config))
            })();
            match parts {
                Ok((key, value, old, config)) => {
                    let write = Write {
                        op: if op == super::OP_DELETE {
                            Op::Delete
                        } else {
                            Op::Put
                        },
                        key,
                        value,
                        old,
                        config,
                        now_ms,
                    };
                    handler(&write)
                }
                Err(()) => Outcome::reject("bad_input", "plugin input did not match the ABI"),
            }
        });
        if outcome == Outcome::Accept {
            return 0;
        }
        OUTPUT.with(|output| {
            let mut output = output.borrow_mut();
            *output = outcome.verdict_json().into_bytes();
            ((output.as_ptr() as usize as i64) << 32) | output.len() as i64
        })
    }
}
