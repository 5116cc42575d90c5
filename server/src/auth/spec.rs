//! Tokens as operators write them (`[[auth.tokens]]` and `auth.tokens_file`),
//! and their checks: a bad entry is refused with its place and field, so a
//! reload that meets one keeps the tokens already in force.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::scope::{duplicate_prefix, PrefixRule};
use super::Role;

/// The most rules one token may carry: each request checks them in order
/// (longest prefix first), so the bound keeps that walk short.
pub const MAX_RULES: usize = 1024;
/// The most plugin-name patterns one token may carry.
pub const MAX_PLUGIN_PATTERNS: usize = 64;
/// The largest tokens file read.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// The shortest secret accepted.
pub const MIN_SECRET_CHARS: usize = 16;

/// One configured token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// A label for logs, metrics and the audit trail (the secret itself is
    /// never logged).
    pub name: String,
    /// The secret; at least 16 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The secret's SHA-256 in hex, instead of the secret: the file that
    /// holds it then gives nothing away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// A client certificate whose subject common name, or one of whose
    /// DNS or URI subject alternative names, equals this, authenticates
    /// as this token (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// A role over every key: read, write or admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Instead of a role, what it may do under which key prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PrefixRule>,
    /// Names (`*` matches any run) of plugins it may upload, roll back,
    /// promote and delete; their prefixes must lie in what it may write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<String>,
    /// When it stops working: RFC 3339, as a TOML date-time or a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<toml::Value>,
    /// Requests per second it may make on average (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<u32>,
    /// Requests it may make at once above the rate (default: the rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Requests it may have in flight at once (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

/// A token's secret as kept: its SHA-256.
pub type Digest = [u8; 32];

/// What a checked spec contributes.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The secret's digest, if it has one.
    pub digest: Option<Digest>,
    /// The expiry, in ms since the epoch.
    pub expires_ms: Option<u64>,
}

impl TokenSpec {
    /// Checks the entry; the error names the field.
    pub fn check(&self) -> Result<Checked, String> {
        // A name is a metric label and a log field: kept plain.
        let plain = |c: char| c.is_ascii_alphanumeric() || "._-@:/".contains(c);
        if self.name.is_empty() || self.name.len() > 128 || !self.name.chars().all(plain) {
            return Err("name: must be 1 to 128 of A-Z a-z 0-9 . _ - @ : /".into());
        }
        let digest = match (&self.token, &self.token_sha256) {
            (Some(_), Some(_)) => {
                return Err("give token or token_sha256, not both".into());
            }
            (Some(secret), None) => {
                check_secret(secret)?;
                Some(super::digest(secret.as_bytes()))
            }
            (None, Some(hex)) => Some(parse_hex_digest(hex)?),
            (None, None) if self.client_cert.is_some() => None,
            (None, None) => {
                return Err("needs token, token_sha256 or client_cert".into());
            }
        };
        if self.client_cert.as_deref() == Some("") {
            return Err("client_cert: must not be empty".into());
        }
        self.check_grants()?;
        super::fair_use::check(self)?;
        let expires_ms = self.expires.as_ref().map(expiry_ms).transpose()?;
        Ok(Checked { digest, expires_ms })
    }

    fn check_grants(&self) -> Result<(), String> {
        match (self.role, self.rules.is_empty(), self.plugins.is_empty()) {
            (None, true, _) => {
                return Err("needs a role (read, write, admin) or rules".into());
            }
            (Some(_), false, _) => {
                return Err("rules: a token has a role over every key or rules, not both".into())
            }
            (Some(Role::Admin), _, false) => {
                return Err("plugins: an admin token manages every plugin already".into())
            }
            _ => {}
        }
        if self.rules.len() > MAX_RULES {
            return Err(format!("rules: at most {MAX_RULES}"));
        }
        if let Some(prefix) = duplicate_prefix(&self.rules) {
            return Err(format!("rules: prefix {prefix:?} appears twice"));
        }
        if self.plugins.len() > MAX_PLUGIN_PATTERNS
            || self.plugins.iter().any(|p| p.is_empty() || p.len() > 128)
        {
            return Err(format!(
                "plugins: at most {MAX_PLUGIN_PATTERNS} non-empty names of at most 128 bytes"
            ));
        }
        Ok(())
    }
}

fn check_secret(secret: &str) -> Result<(), String> {
    if secret.chars().count() < MIN_SECRET_CHARS
        || secret.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "token must be at least {MIN_SECRET_CHARS} characters without spaces"
        ));
    }
    Ok(())
}

fn parse_hex_digest(hex: &str) -> Result<Digest, String> {
    let bad = || "token_sha256: must be 64 hexadecimal digits".to_string();
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A digest as lower-case hex.
pub fn hex(digest: &Digest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn expiry_ms(value: &toml::Value) -> Result<u64, String> {
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(d) => d.to_string(),
        _ => return Err("expires: must be an RFC 3339 date-time".into()),
    };
    let at = humantime::parse_rfc3339_weak(&text)
        .map_err(|e| format!("expires: {text:?} is not an RFC 3339 date-time ({e})"))?;
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| "expires: must be after 1970".to_string())
}

/// The contents of `auth.tokens_file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenSpec>,
}

/// The tokens of a tokens file. The error names the file.
pub fn read_file(path: &Path) -> Result<Vec<TokenSpec>, String> {
    let place = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{place}: {e}"))?;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_FILE_BYTES + 1),
        &mut text,
    )
    .map_err(|e| format!("{place}: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("{place}: larger than {MAX_FILE_BYTES} bytes"));
    }
    let file: TokensFile = toml::from_str(&text).map_err(|e| format!("{place}: {e}"))?;
    Ok(file.tokens)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::auth::scope::Level;

    fn spec() -> TokenSpec {
        TokenSpec {
            name: "t".into(),
            token: Some("a-long-enough-secret".into()),
            role: Some(Role::Read),
            ..TokenSpec::default()
        }
    }

    #[test]
    fn entries_are_checked_field_by_field() {
        assert!(spec().check().is_ok());
        let refused = |s: TokenSpec, says: &str| {
            let e = s.check().unwrap_err();
            assert!(e.contains(says), "{e} should mention {says}");
        };
        refused(
            TokenSpec {
                token: Some("short".into()),
                ..spec()
            },
            "16 characters",
        );
        refused(
            TokenSpec {
                token: None,
                ..spec()
            },
            "needs token",
        );
        refused(
            TokenSpec {
                token_sha256: Some("ab".into()),
                ..spec()
            },
            "not both",
        );
        refused(
            TokenSpec {
                token: None,
                token_sha256: Some("xy".repeat(32)),
                ..spec()
            },
            "token_sha256",
        );
        refused(
            TokenSpec {
                role: None,
                ..spec()
            },
            "role",
        );
        let rule = PrefixRule {
            prefix: "a/".into(),
            access: Level::Read,
        };
        refused(
            TokenSpec {
                rules: vec![rule.clone()],
                ..spec()
            },
            "not both",
        );
        refused(
            TokenSpec {
                role: None,
                rules: vec![rule.clone(), rule],
                ..spec()
            },
            "twice",
        );
        refused(
            TokenSpec {
                role: Some(Role::Admin),
                plugins: vec!["x".into()],
                ..spec()
            },
            "admin",
        );
        refused(
            TokenSpec {
                expires: Some(toml::Value::String("tomorrow".into())),
                ..spec()
            },
            "expires",
        );
    }

    #[test]
    fn digests_and_expiry_instants() {
        let digest = crate::auth::digest(b"a-long-enough-secret");
        let by_digest = TokenSpec {
            token: None,
            token_sha256: Some(hex(&digest).to_uppercase()),
            ..spec()
        };
        assert_eq!(by_digest.check().unwrap().digest, Some(digest));
        let file: TokensFile = toml::from_str(
            "[[tokens]]\nname = \"t\"\ntoken = \"a-long-enough-secret\"\nrole = \"read\"\nexpires = 2027-01-01T00:00:00Z\n",
        )
        .unwrap();
        let checked = file.tokens[0].check().unwrap();
        assert_eq!(checked.expires_ms, Some(1_798_761_600_000));
        let quoted = TokenSpec {
            expires: Some(toml::Value::String("2027-01-01T00:00:00Z".into())),
            ..spec()
        };
        assert_eq!(quoted.check().unwrap().expires_ms, Some(1_798_761_600_000));
    }
}
