//! Validator: the value must be an object with the configured fields, each
//! of the configured JSON type.
//!
//! Config: `{ "required": { "email": "string", "age": "number" } }`. Types:
//! `string`, `number`, `integer`, `boolean`, `object`, `array`, `null`, `any`.

use exdaas_guest::json::Value;
use exdaas_guest::{Outcome, Write};

fn type_matches(value: &Value, wanted: &str) -> bool {
    match wanted {
        "any" => true,
        "integer" => value.as_i64().is_some(),
        other => value.type_name() == other,
    }
}

/// Checks one write.
pub fn require_fields(write: &Write) -> Outcome {
    let config = match write.config_value() {
        Ok(c) => c,
        Err(_) => return Outcome::reject("bad_config", "plugin config is not JSON"),
    };
    let required = match config.get("required").and_then(Value::as_object) {
        Some(r) => r,
        None => return Outcome::reject("bad_config", "config.required must be an object of field: type"),
    };
    let value = match write.value_json() {
        Ok(v) => v,
        Err(_) => return Outcome::reject("not_json", "value is not JSON"),
    };
    if value.as_object().is_none() {
        return Outcome::reject_at("not_object", "value must be a JSON object", "$");
    }
    for (field, wanted) in required {
        let wanted = wanted.as_str().unwrap_or("any");
        // Paths and messages are built only for a refusal: accepting
        // allocates nothing beyond the parsed value.
        let path = || format!("$.{}", field);
        match value.get(field) {
            None => return Outcome::reject_at("missing_field", &format!("field {} is required", field), &path()),
            Some(v) if !type_matches(v, wanted) => {
                return Outcome::reject_at(
                    "wrong_type",
                    &format!("field {} must be of type {}, got {}", field, wanted, v.type_name()),
                    &path(),
                )
            }
            Some(_) => {}
        }
    }
    Outcome::Accept
}

exdaas_guest::export_plugin!(require_fields);

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"required":{"email":"string","age":"number"}}"#;

    #[test]
    fn accepts_complete_values() {
        let w = Write::put("users/1", r#"{"email":"a@b.c","age":3,"x":null}"#).with_config(CONFIG);
        assert_eq!(require_fields(&w), Outcome::Accept);
    }

    #[test]
    fn rejects_missing_and_mistyped_fields() {
        let w = Write::put("users/1", r#"{"email":"a@b.c"}"#).with_config(CONFIG);
        assert_eq!(require_fields(&w), Outcome::reject_at("missing_field", "field age is required", "$.age"));
        let w = Write::put("users/1", r#"{"email":"a@b.c","age":"3"}"#).with_config(CONFIG);
        assert!(matches!(require_fields(&w), Outcome::Reject { ref code, .. } if code == "wrong_type"));
        let w = Write::put("users/1", "[1]").with_config(CONFIG);
        assert!(matches!(require_fields(&w), Outcome::Reject { ref code, .. } if code == "not_object"));
        let w = Write::put("users/1", "{}").with_config("{}");
        assert!(matches!(require_fields(&w), Outcome::Reject { ref code, .. } if code == "bad_config"));
    }
}
