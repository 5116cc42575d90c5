//! Transform: numbers every stored version of an object. The stored value's
//! `revision` plus one (1 for a new key) is written into the new value, so
//! clients can see how many times a document changed, whatever they send.
//!
//! Config (optional): `{ "field": "revision" }`.

use exdaas_guest::json::Value;
use exdaas_guest::{Outcome, Write};

/// Stamps one write with the next revision.
pub fn revision(write: &Write) -> Outcome {
    let config = write.config_value().unwrap_or_else(|_| std::rc::Rc::new(Value::Null));
    let field = config.get("field").and_then(Value::as_str).unwrap_or("revision").to_string();
    let mut value = match write.value_json() {
        Ok(v) if v.as_object().is_some() => v,
        _ => return Outcome::Accept,
    };
    let previous = write
        .old_json()
        .ok()
        .and_then(|old| old)
        .and_then(|old| old.get(&field).and_then(Value::as_i64))
        .unwrap_or(0);
    value.set(&field, Value::from(previous + 1));
    Outcome::replace(&value)
}

exdaas_guest::export_plugin!(revision);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_the_stored_value() {
        assert_eq!(revision(&Write::put("k", r#"{"a":1}"#)), Outcome::Replace(r#"{"a":1,"revision":1}"#.into()));
        let w = Write::put("k", r#"{"a":2,"revision":99}"#).with_old(r#"{"a":1,"revision":4}"#);
        assert_eq!(revision(&w), Outcome::Replace(r#"{"a":2,"revision":5}"#.into()));
        assert_eq!(revision(&Write::put("k", "3")), Outcome::Accept);
    }
}
