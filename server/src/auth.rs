//! Bearer-token access control. Every request except the health probes
//! needs `Authorization: Bearer <token>` whose role covers it. Roles nest:
//! `admin` implies `write`, which implies `read`.
//!
//! With no tokens configured the server is open, but only to loopback
//! clients (like Redis's protected mode): a server bound to a public
//! address by mistake must not hand every key, backups and plugin reloads
//! to whoever finds it. `auth.allow_open_remote = true` opts out.

use std::net::IpAddr;

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
    /// No tokens configured, and the client is not on this machine.
    LoopbackOnly,
    /// A valid token with this role.
    Granted(Role),
    /// No or an unknown token.
    Unauthenticated,
}

/// The configured tokens, kept as digests so comparison time does not
/// depend on where a guess first differs, nor on its length.
#[derive(Debug, Default)]
pub struct TokenSet {
    tokens: Vec<([u8; 32], Role, String)>,
    /// Without tokens, also serve clients that are not on loopback.
    open_remote: bool,
}

/// Whether `peer` is this machine (IPv4-mapped IPv6 loopback included).
fn is_loopback(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
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
    pub fn new(specs: &[TokenSpec], open_remote: bool) -> Self {
        Self {
            tokens: specs
                .iter()
                .map(|s| (digest(s.token.as_bytes()), s.role, s.name.clone()))
                .collect(),
            open_remote,
        }
    }

    /// Whether access control is on.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Checks an `Authorization` header value sent from `peer`.
    pub fn check(&self, authorization: Option<&[u8]>, peer: IpAddr) -> Access {
        if !self.enabled() {
            return if self.open_remote || is_loopback(peer) {
                Access::Open
            } else {
                Access::LoopbackOnly
            };
        }
        let Some(presented) = authorization.and_then(bearer_credentials) else {
            return Access::Unauthenticated;
        };
        let presented = digest(presented);
        // Compare against every token, so timing does not reveal which matched.
        let mut granted: Option<Role> = None;
        for (known, role, _) in &self.tokens {
            if same(known, &presented) {
                granted = Some(granted.map_or(*role, |g| g.max(*role)));
            }
        }
        granted.map_or(Access::Unauthenticated, Access::Granted)
    }
}

/// The credentials of a `Bearer` authorization: the scheme name is
/// case-insensitive (RFC 9110, section 11.1), followed by one or more
/// spaces; the token itself is compared exactly.
fn bearer_credentials(header: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let (scheme, rest) = header.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || rest.first() != Some(&b' ') {
        return None;
    }
    let credentials = rest.trim_ascii_start();
    (!credentials.is_empty()).then_some(credentials)
}

impl TokenSet {
    /// The name of the configured token in an `Authorization` header, for
    /// records of who did what (uploads); `open` without access control.
    pub fn name_of(&self, authorization: Option<&[u8]>) -> String {
        if !self.enabled() {
            return "open".into();
        }
        let presented = authorization.and_then(bearer_credentials).map(digest);
        let mut found = "unknown";
        for (known, _, name) in &self.tokens {
            if presented.is_some_and(|p| same(known, &p)) {
                found = name;
            }
        }
        found.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn without_tokens_only_loopback_is_served() {
        let remote: IpAddr = "192.0.2.7".parse().unwrap_or(LOCAL);
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap_or(remote);
        let open = TokenSet::new(&[], false);
        assert_eq!(open.check(None, LOCAL), Access::Open);
        assert_eq!(
            open.check(None, "::1".parse().unwrap_or(remote)),
            Access::Open
        );
        assert_eq!(open.check(None, mapped), Access::Open);
        assert_eq!(open.check(None, remote), Access::LoopbackOnly);
        assert_eq!(
            open.check(None, "::ffff:192.0.2.7".parse().unwrap_or(LOCAL)),
            Access::LoopbackOnly
        );
        let opted_out = TokenSet::new(&[], true);
        assert_eq!(opted_out.check(None, remote), Access::Open);
    }

    #[test]
    fn roles_and_tokens() {
        let open = TokenSet::new(&[], false);
        assert_eq!(open.check(None, LOCAL), Access::Open);
        let set = TokenSet::new(
            &[
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
            ],
            false,
        );
        assert_eq!(set.check(None, LOCAL), Access::Unauthenticated);
        assert_eq!(
            set.check(Some(b"Bearer nope"), LOCAL),
            Access::Unauthenticated
        );
        assert_eq!(
            set.check(Some(b"read-token-123456"), LOCAL),
            Access::Unauthenticated
        );
        assert_eq!(
            set.check(Some(b"Bearer read-token-123456"), LOCAL),
            Access::Granted(Role::Read)
        );
        assert_eq!(
            set.check(Some(b"Bearer admin-token-123456"), LOCAL),
            Access::Granted(Role::Admin)
        );
        assert!(Role::Admin > Role::Write && Role::Write > Role::Read);
        assert_eq!(set.name_of(Some(b"Bearer admin-token-123456")), "a");
        // The scheme is case-insensitive; the token is not.
        for header in [
            &b"bearer admin-token-123456"[..],
            b"BEARER  admin-token-123456",
        ] {
            assert!(matches!(
                set.check(Some(header), LOCAL),
                Access::Granted(Role::Admin)
            ));
        }
        for header in [
            &b"Bearer ADMIN-TOKEN-123456"[..],
            b"Bearer",
            b"Bearer ",
            b"Bearerx admin-token-123456",
        ] {
            assert!(matches!(
                set.check(Some(header), LOCAL),
                Access::Unauthenticated
            ));
        }
        assert_eq!(set.name_of(Some(b"Bearer nope")), "unknown");
        assert_eq!(open.name_of(None), "open");
    }
}
