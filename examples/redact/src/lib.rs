//! Transform: masks e-mail addresses inside the configured string fields,
//! keeping the first character of the local part and the domain
//! (`ada.lovelace@example.com` becomes `a***@example.com`).
//!
//! Config: `{ "fields": ["email", "contact.email", "notes"] }`; a dotted
//! name reaches into nested objects. Values without such fields pass
//! unchanged.

use exdaas_guest::json::Value;
use exdaas_guest::{Outcome, Write};

fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-".contains(c)
}

fn is_domain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-'
}

/// Masks every e-mail address in `text`.
pub fn mask_emails(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '@' {
            // Local part: walk back over what was already copied.
            let mut start = i;
            while start > 0 && is_local_char(chars[start - 1]) {
                start -= 1;
            }
            let mut end = i + 1;
            while end < chars.len() && is_domain_char(chars[end]) {
                end += 1;
            }
            let domain: String = chars[i + 1..end].iter().collect();
            let domain = domain.trim_end_matches('.');
            if start < i && domain.contains('.') {
                let local_len = i - start;
                let keep = out.chars().count() - local_len;
                let mut masked: String = out.chars().take(keep).collect();
                masked.push(chars[start]);
                masked.push_str("***@");
                masked.push_str(domain);
                out = masked;
                i = i + 1 + domain.chars().count();
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Applies the mask to the field at a dotted path; true if it changed.
fn redact_path(value: &mut Value, path: &str) -> bool {
    let mut parts = path.splitn(2, '.');
    let head = parts.next().unwrap_or("");
    let rest = parts.next();
    let child = match value.get_mut(head) {
        Some(c) => c,
        None => return false,
    };
    match rest {
        Some(rest) => redact_path(child, rest),
        None => {
            if let Value::String(s) = child {
                let masked = mask_emails(s);
                if masked != *s {
                    *s = masked;
                    return true;
                }
            }
            false
        }
    }
}

/// Redacts one write.
pub fn redact(write: &Write) -> Outcome {
    let config = match write.config_value() {
        Ok(c) => c,
        Err(_) => return Outcome::reject("bad_config", "plugin config is not JSON"),
    };
    let fields = match config.get("fields").and_then(Value::as_array) {
        Some(f) => f.clone(),
        None => return Outcome::reject("bad_config", "config.fields must be a list of field names"),
    };
    let mut value = match write.value_json() {
        Ok(v) => v,
        Err(_) => return Outcome::Accept,
    };
    let mut changed = false;
    for field in fields.iter().filter_map(Value::as_str) {
        changed |= redact_path(&mut value, field);
    }
    if changed {
        Outcome::replace(&value)
    } else {
        Outcome::Accept
    }
}

exdaas_guest::export_plugin!(redact);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_addresses_in_text() {
        assert_eq!(mask_emails("ada.lovelace@example.com"), "a***@example.com");
        assert_eq!(mask_emails("mail bob@x.org or eve@y.co."), "mail b***@x.org or e***@y.co.");
        assert_eq!(mask_emails("no @ here, a@b"), "no @ here, a@b");
        assert_eq!(mask_emails("é u@z.de"), "é u***@z.de");
    }

    #[test]
    fn redacts_configured_fields_only() {
        let cfg = r#"{"fields":["email","contact.email"]}"#;
        let w = Write::put("k", r#"{"email":"ada@ex.com","contact":{"email":"x@y.org"},"other":"bob@z.com"}"#).with_config(cfg);
        assert_eq!(
            redact(&w),
            Outcome::Replace(r#"{"email":"a***@ex.com","contact":{"email":"x***@y.org"},"other":"bob@z.com"}"#.into())
        );
        assert_eq!(redact(&Write::put("k", r#"{"email":"none"}"#).with_config(cfg)), Outcome::Accept);
    }
}
