//! Validator: once a listed field has a (non-null) value, writes may not
//! change or remove it.
//!
//! Config: `{ "fields": ["id", "owner"] }`.

use exdaas_guest::json::Value;
use exdaas_guest::{Outcome, Write};

/// Checks one write against the stored value.
pub fn immutable_fields(write: &Write) -> Outcome {
    let config = match write.config_value() {
        Ok(c) => c,
        Err(_) => return Outcome::reject("bad_config", "plugin config is not JSON"),
    };
    let fields = match config.get("fields").and_then(Value::as_array) {
        Some(f) => f,
        None => return Outcome::reject("bad_config", "config.fields must be a list of field names"),
    };
    let old = match write.old_json() {
        Ok(Some(old)) => old,
        Ok(None) => return Outcome::Accept,
        Err(_) => return Outcome::Accept,
    };
    let new = write.value_json().unwrap_or(Value::Null);
    for field in fields.iter().filter_map(Value::as_str) {
        let before = match old.get(field) {
            Some(v) if !v.is_null() => v,
            _ => continue,
        };
        if new.get(field) != Some(before) {
            return Outcome::reject_at(
                "immutable_field",
                &format!("field {} cannot change once set (it is {})", field, before.to_json()),
                &format!("$.{}", field),
            );
        }
    }
    Outcome::Accept
}

exdaas_guest::export_plugin!(immutable_fields);

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"fields":["owner"]}"#;

    #[test]
    fn first_write_and_unchanged_fields_pass() {
        assert_eq!(immutable_fields(&Write::put("k", r#"{"owner":"ada"}"#).with_config(CONFIG)), Outcome::Accept);
        let w = Write::put("k", r#"{"owner":"ada","n":2}"#).with_old(r#"{"owner":"ada","n":1}"#).with_config(CONFIG);
        assert_eq!(immutable_fields(&w), Outcome::Accept);
        let w = Write::put("k", r#"{"owner":"bob"}"#).with_old(r#"{"owner":null}"#).with_config(CONFIG);
        assert_eq!(immutable_fields(&w), Outcome::Accept);
    }

    #[test]
    fn changing_or_dropping_a_set_field_is_rejected() {
        let w = Write::put("k", r#"{"owner":"bob"}"#).with_old(r#"{"owner":"ada"}"#).with_config(CONFIG);
        assert!(matches!(immutable_fields(&w), Outcome::Reject { ref code, .. } if code == "immutable_field"));
        let w = Write::put("k", r#"{}"#).with_old(r#"{"owner":"ada"}"#).with_config(CONFIG);
        assert!(matches!(immutable_fields(&w), Outcome::Reject { .. }));
    }
}
