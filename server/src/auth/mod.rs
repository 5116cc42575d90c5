//! Access control. Every request except the health probes is made by a
//! [`Caller`]: a bearer token, a client certificate mapped to a token
//! entry (mutual TLS), or, with no tokens configured, everyone on this
//! machine (like Redis's protected mode: a server bound to a public address
//! by mistake must not hand every key, backups and plugin reloads to
//! whoever finds it; `auth.allow_open_remote = true` opts out).
//!
//! A token has a role over every key (`admin` implies `write`, which
//! implies `read`), or rules over key prefixes (`scope`), and may manage
//! plugins by name. The set of tokens is replaced whole on a reload: a
//! request sees the old set or the new one, never a mix.
//!
//! - `scope`: prefix rules, coverage of a prefix, plugin-name patterns;
//! - `spec`: tokens as configured, and their checks;
//! - `fair_use`: per-token request rates and requests in flight.

pub mod fair_use;
pub mod scope;
pub mod spec;

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::AuthSettings;
use scope::{name_matches, Coverage, Level, Scope};
pub use spec::TokenSpec;

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

/// Whether `peer` is this machine (IPv4-mapped IPv6 loopback included).
fn is_loopback(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The SHA-256 of a secret.
pub fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Constant-time equality of two digests.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// One token in force.
#[derive(Debug)]
pub struct Grant {
    /// Its configured name.
    pub name: String,
    role: Option<Role>,
    scope: Scope,
    plugins: Vec<String>,
    expires_ms: Option<u64>,
    digest: Option<[u8; 32]>,
    client_cert: Option<String>,
    /// Its rate and in-flight limits, with their state.
    pub limits: Arc<fair_use::Limits>,
}

/// Who makes a request, once authenticated.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No tokens configured (and the client may be served): everything.
    Open,
    /// A token entry.
    Token(Arc<Grant>),
}

impl Caller {
    /// A name for logs, metrics and the audit trail.
    pub fn name(&self) -> &str {
        match self {
            Caller::Open => "open",
            Caller::Token(g) => &g.name,
        }
    }

    /// Whether the caller holds `role` over every key.
    pub fn has_role(&self, role: Role) -> bool {
        match self {
            Caller::Open => true,
            Caller::Token(g) => g.role.is_some_and(|r| r >= role),
        }
    }

    /// What the caller may do with `key`.
    pub fn level(&self, key: &str) -> Level {
        match self {
            Caller::Open => Level::Write,
            Caller::Token(g) => match g.role {
                Some(Role::Read) => Level::Read,
                Some(Role::Write | Role::Admin) => Level::Write,
                None => g.scope.level(key),
            },
        }
    }

    /// Whether the caller may `need` (read or write) `key`.
    pub fn may(&self, key: &str, need: Level) -> bool {
        self.level(key) >= need
    }

    /// How much of the keys under `prefix` the caller may `need`.
    pub fn coverage(&self, prefix: &str, need: Level) -> Coverage {
        match self {
            Caller::Token(g) if g.role.is_none() => g.scope.coverage(prefix, need),
            _ if self.level(prefix) >= need => Coverage::All,
            _ => Coverage::Nothing,
        }
    }

    /// The prefixes a listing of `prefix` needs to scan for the keys the
    /// caller may read (see [`Scope::granted_under`]).
    pub fn readable_under(&self, prefix: &str) -> Vec<String> {
        match self {
            Caller::Token(g) if g.role.is_none() => g.scope.granted_under(prefix, Level::Read),
            _ if self.may(prefix, Level::Read) => vec![prefix.to_owned()],
            _ => Vec::new(),
        }
    }

    /// Whether the caller may change (upload, roll back, promote, delete)
    /// the plugin `name`: admins any, others the names their patterns match.
    pub fn may_manage_plugin(&self, name: &str) -> bool {
        match self {
            Caller::Open => true,
            Caller::Token(g) => {
                g.role == Some(Role::Admin) || g.plugins.iter().any(|p| name_matches(p, name))
            }
        }
    }

    /// Admits one request under the caller's fair-use limits.
    pub fn admit(&self) -> Result<fair_use::Admission, fair_use::Refusal> {
        match self {
            Caller::Open => Ok(None),
            Caller::Token(g) => g.limits.admit(),
        }
    }

    /// Whether the caller may store under server-assigned keys, which are
    /// decimal numbers: it must write every key starting with a digit.
    pub fn may_create(&self) -> bool {
        (b'0'..=b'9').all(|d| {
            let digit = [d];
            let prefix = std::str::from_utf8(&digit).unwrap_or("0");
            self.coverage(prefix, Level::Write) == Coverage::All
        })
    }
}

/// Why a request has no caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No tokens configured, and the client is not on this machine.
    LoopbackOnly,
    /// No or an unknown token (or certificate).
    Unauthenticated,
    /// A token that was valid until its `expires`.
    Expired {
        /// The token's name.
        name: String,
    },
}

/// What the connection knows of its client.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub ip: IpAddr,
    /// The names of its verified client certificate (common name, DNS and
    /// URI alternative names); empty without mutual TLS.
    pub cert_names: Arc<[String]>,
}

impl Peer {
    /// A plain-TCP client at `ip`.
    pub fn plain(ip: IpAddr) -> Self {
        Self {
            ip,
            cert_names: Arc::from(Vec::new()),
        }
    }
}

/// One set of tokens, as built from the configuration and tokens file.
#[derive(Debug, Default)]
pub struct TokenSet {
    grants: Vec<Arc<Grant>>,
    /// Without tokens, also serve clients that are not on loopback.
    open_remote: bool,
}

/// A token entry that cannot be used, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The setting or file and entry, e.g. `auth.tokens[2] (ci)`.
    pub place: String,
    /// What is wrong, naming the field.
    pub message: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

/// Every configured token entry with its place: the configuration's own,
/// then the tokens file's.
fn collect(settings: &AuthSettings) -> Result<Vec<(String, TokenSpec)>, SpecError> {
    let mut all: Vec<(String, TokenSpec)> = settings
        .tokens
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("auth.tokens[{i}] ({})", s.name), s.clone()))
        .collect();
    if let Some(path) = &settings.tokens_file {
        let file = spec::read_file(path).map_err(|message| SpecError {
            place: "auth.tokens_file".into(),
            message,
        })?;
        let shown = path.display();
        all.extend(
            file.into_iter()
                .enumerate()
                .map(|(i, s)| (format!("{shown}: tokens[{i}] ({})", s.name), s)),
        );
    }
    Ok(all)
}

impl TokenSet {
    /// Builds the set from the settings (reading the tokens file).
    pub fn load(settings: &AuthSettings) -> Result<Self, SpecError> {
        Self::load_after(settings, None)
    }

    /// [`TokenSet::load`], a token keeping its fair-use state from
    /// `previous` when its name and limits are unchanged.
    fn load_after(settings: &AuthSettings, previous: Option<&TokenSet>) -> Result<Self, SpecError> {
        let mut grants: Vec<Arc<Grant>> = Vec::new();
        for (place, spec) in collect(settings)? {
            let checked = spec.check().map_err(|message| SpecError {
                place: place.clone(),
                message,
            })?;
            if grants.iter().any(|g| g.name == spec.name) {
                return Err(SpecError {
                    place,
                    message: "name: another token has this name".into(),
                });
            }
            let before = previous
                .and_then(|set| set.grants.iter().find(|g| g.name == spec.name))
                .map(|g| &g.limits);
            let limits = fair_use::Limits::carried_over(&spec, before);
            grants.push(Arc::new(Grant {
                name: spec.name,
                role: spec.role,
                scope: Scope::new(&spec.rules),
                plugins: spec.plugins,
                expires_ms: checked.expires_ms,
                digest: checked.digest,
                limits,
                client_cert: spec.client_cert,
            }));
        }
        Ok(Self {
            grants,
            open_remote: settings.allow_open_remote,
        })
    }

    /// Whether access control is on.
    pub fn enabled(&self) -> bool {
        !self.grants.is_empty()
    }

    /// How many tokens are in force.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// Who sent a request with this `Authorization` header value from
    /// `peer`, at `now_ms`.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer: &Peer,
        now_ms: u64,
    ) -> Result<Caller, Denied> {
        if !self.enabled() {
            let trusted = self.open_remote || is_loopback(peer.ip) || !peer.cert_names.is_empty();
            return if trusted {
                Ok(Caller::Open)
            } else {
                Err(Denied::LoopbackOnly)
            };
        }
        let grant = match authorization.and_then(bearer_credentials) {
            Some(presented) => self.by_secret(&digest(presented)),
            None => self.by_certificate(&peer.cert_names),
        };
        let grant = grant.ok_or(Denied::Unauthenticated)?;
        if grant.expires_ms.is_some_and(|at| now_ms >= at) {
            return Err(Denied::Expired {
                name: grant.name.clone(),
            });
        }
        Ok(Caller::Token(grant))
    }

    /// The token whose secret has this digest. Every token is compared, so
    /// timing does not tell which matched or where a guess first differs.
    fn by_secret(&self, presented: &[u8; 32]) -> Option<Arc<Grant>> {
        let mut found = None;
        for grant in &self.grants {
            if grant.digest.as_ref().is_some_and(|d| same(d, presented)) {
                found = Some(Arc::clone(grant));
            }
        }
        found
    }

    fn by_certificate(&self, names: &[String]) -> Option<Arc<Grant>> {
        self.grants
            .iter()
            .find(|g| {
                g.client_cert
                    .as_ref()
                    .is_some_and(|want| names.iter().any(|n| n == want))
            })
            .cloned()
    }
}

/// The tokens in force, replaced whole by [`Tokens::reload`].
#[derive(Debug)]
pub struct Tokens {
    settings: AuthSettings,
    current: RwLock<Arc<TokenSet>>,
}

impl Tokens {
    /// Loads the configured tokens (and the tokens file).
    pub fn load(settings: &AuthSettings) -> Result<Self, SpecError> {
        Ok(Self {
            current: RwLock::new(Arc::new(TokenSet::load(settings)?)),
            settings: settings.clone(),
        })
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<TokenSet> {
        match self.current.read() {
            Ok(set) => Arc::clone(&set),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reads the tokens again (the tokens file may have changed) and puts
    /// the new set in force; a bad entry keeps the old set.
    pub fn reload(&self) -> Result<Arc<TokenSet>, SpecError> {
        let fresh = Arc::new(TokenSet::load_after(&self.settings, Some(&self.current()))?);
        let mut current = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Arc::clone(&fresh);
        Ok(fresh)
    }

    /// The tokens file, if one is configured.
    pub fn file(&self) -> Option<&Path> {
        self.settings.tokens_file.as_deref()
    }
}

/// A fresh secret: 32 random bytes as URL-safe base64 (43 characters).
pub fn new_secret() -> Result<String, String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no random source: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests;
