//! `exdaas token new`: a fresh secret, and the tokens-file entry that
//! holds only its SHA-256, so the file on disk gives nothing away.

use crate::auth::scope::{Level, PrefixRule};
use crate::auth::{Role, TokenSpec};

/// What `exdaas token new` was asked for.
#[derive(Debug, clap::Args)]
pub struct NewToken {
    /// The token's name (in logs, metrics and the audit trail).
    #[arg(long)]
    pub name: String,
    /// A role over every key: read, write or admin.
    #[arg(long, value_parser = parse_role, conflicts_with = "rule")]
    pub role: Option<Role>,
    /// A prefix rule, PREFIX=ACCESS with ACCESS read, write or none;
    /// repeat for more (e.g. --rule team-a/=write --rule shared/=read).
    #[arg(long, value_name = "PREFIX=ACCESS", value_parser = parse_rule)]
    pub rule: Vec<PrefixRule>,
    /// A plugin-name pattern it may manage (`*` matches any run); repeat
    /// for more.
    #[arg(long, value_name = "PATTERN")]
    pub plugins: Vec<String>,
    /// When it stops working (RFC 3339, e.g. 2027-01-01T00:00:00Z).
    #[arg(long, value_name = "INSTANT")]
    pub expires: Option<String>,
}

fn parse_role(text: &str) -> Result<Role, String> {
    match text {
        "read" => Ok(Role::Read),
        "write" => Ok(Role::Write),
        "admin" => Ok(Role::Admin),
        _ => Err(format!("{text:?} is not a role: use read, write or admin")),
    }
}

fn parse_rule(text: &str) -> Result<PrefixRule, String> {
    let (prefix, access) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("{text:?}: write PREFIX=ACCESS, e.g. team-a/=write"))?;
    let access = match access {
        "read" => Level::Read,
        "write" => Level::Write,
        "none" => Level::None,
        _ => {
            return Err(format!(
                "{access:?} is not an access: use read, write or none"
            ))
        }
    };
    Ok(PrefixRule {
        prefix: prefix.to_owned(),
        access,
    })
}

/// The tokens-file text for one entry.
#[derive(serde::Serialize)]
struct Entry<'a> {
    tokens: [&'a TokenSpec; 1],
}

/// The secret and the entry to add, or why the asked token is unusable.
pub fn new_token(asked: NewToken) -> Result<(String, String), String> {
    let secret = crate::auth::new_secret()?;
    let spec = TokenSpec {
        name: asked.name,
        token_sha256: Some(crate::auth::spec::hex(&crate::auth::digest(
            secret.as_bytes(),
        ))),
        role: asked.role,
        rules: asked.rule,
        plugins: asked.plugins,
        expires: asked.expires.map(toml::Value::String),
        ..TokenSpec::default()
    };
    spec.check()?;
    let entry = toml::to_string(&Entry { tokens: [&spec] }).map_err(|e| e.to_string())?;
    Ok((secret, entry))
}

/// Runs `exdaas token new`: the secret on the first line, then the entry.
pub fn run_new(asked: NewToken) -> std::process::ExitCode {
    match new_token(asked) {
        Ok((secret, entry)) => {
            println!("{secret}");
            println!(
                "# The line above is the secret: hand it to the client; it is not kept anywhere."
            );
            println!(
                "# Add this to auth.tokens_file, then send SIGHUP or POST /v1/admin/auth/reload:"
            );
            print!("{entry}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("exdaas: token new: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_entry_authenticates_the_secret_and_nothing_else() {
        let (secret, entry) = new_token(NewToken {
            name: "team-a".into(),
            role: None,
            rule: vec![
                parse_rule("team-a/=write").unwrap(),
                parse_rule("a=b=read").unwrap(),
            ],
            plugins: vec!["team-a-*".into()],
            expires: Some("2030-01-01T00:00:00Z".into()),
        })
        .unwrap();
        assert!(!entry.contains(&secret));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.toml");
        std::fs::write(&file, &entry).unwrap();
        let set = crate::auth::TokenSet::load(&crate::config::AuthSettings {
            tokens_file: Some(file),
            ..Default::default()
        })
        .unwrap();
        let peer = crate::auth::Peer::plain([127, 0, 0, 1].into());
        let header = format!("Bearer {secret}");
        let caller = set.authenticate(Some(header.as_bytes()), &peer, 0).unwrap();
        assert!(caller.may("team-a/x", Level::Write) && caller.may("a=b", Level::Read));
        assert!(set
            .authenticate(Some(b"Bearer other-secret-123456"), &peer, 0)
            .is_err());
        assert!(parse_rule("no-access").is_err() && parse_rule("p=all").is_err());
        let refused = new_token(NewToken {
            name: "x".into(),
            role: None,
            rule: vec![],
            plugins: vec![],
            expires: None,
        });
        assert!(refused.unwrap_err().contains("role"));
    }
}
