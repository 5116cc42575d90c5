//! Bearer-token access control. With no tokens configured the server is
//! open (and says so at start); otherwise every request except the health
//! probes needs `Authorization: Bearer <token>` whose role covers it.
//! Roles nest: `admin` implies `write`, which implies `read`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read keys, listings, plugin descriptions, metrics.
    Read,
    /// Also write: PUT, DELETE, POST, dry runs.
    Write,
    /// Also administer: backup, plugin reload.
    Admin,
}

impl Role {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// One configured token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// A label for logs (the token itself is never logged).
    pub name: String,
    /// The secret; at least 16 characters.
    pub token: String,
    /// What it may do.
    pub role: Role,
}

/// Who a request is, once its token is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No tokens configured: everything is allowed.
    Open,
    /// A valid token with this role.
    Granted(Role),
    /// No or an unknown token.
    Unauthenticated,
}

/// The configured tokens, kept as digests so comparison time does not
/// depend on where a guess first differs, nor on its length.
#[derive(Debug, Default)]
pub struct TokenSet {
    tokens: Vec<([u8; 32], Role)>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Constant-time equality of two digests.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TokenSet {
    /// Builds the set from configuration.
    pub fn new(specs: &[TokenSpec]) -> Self {
        Self {
            tokens: specs
                .iter()
                .map(|s| (digest(s.token.as_bytes()), s.role))
                .collect(),
        }
    }

    /// Whether access control is on.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&[u8]>) -> Access {
        if !self.enabled() {
            return Access::Open;
        }
        let Some(presented) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return Access::Unauthenticated;
        };
        let presented = digest(presented);
        // Compare against every token, so timing does not reveal which matched.
        let mut granted: Option<Role> = None;
        for (known, role) in &self.tokens {
            if same(known, &presented) {
                granted = Some(granted.map_or(*role, |g| g.max(*role)));
            }
        }
        granted.map_or(Access::Unauthenticated, Access::Granted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_tokens() {
        let open = TokenSet::new(&[]);
        assert_eq!(open.check(None), Access::Open);
        let set = TokenSet::new(&[
            TokenSpec {
                name: "r".into(),
                token: "read-token-123456".into(),
                role: Role::Read,
            },
            TokenSpec {
                name: "a".into(),
                token: "admin-token-123456".into(),
                role: Role::Admin,
            },
        ]);
        assert_eq!(set.check(None), Access::Unauthenticated);
        assert_eq!(set.check(Some(b"Bearer nope")), Access::Unauthenticated);
        assert_eq!(
            set.check(Some(b"read-token-123456")),
            Access::Unauthenticated
        );
        assert_eq!(
            set.check(Some(b"Bearer read-token-123456")),
            Access::Granted(Role::Read)
        );
        assert_eq!(
            set.check(Some(b"Bearer admin-token-123456")),
            Access::Granted(Role::Admin)
        );
        assert!(Role::Admin > Role::Write && Role::Write > Role::Read);
    }
}
