#![allow(clippy::unwrap_used)]
use super::*;
use scope::PrefixRule;

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const NOW: u64 = 1_790_000_000_000;

fn remote() -> Peer {
    Peer::plain("192.0.2.7".parse().unwrap())
}

fn token(name: &str, secret: &str, role: Role) -> TokenSpec {
    TokenSpec {
        name: name.into(),
        token: Some(secret.into()),
        role: Some(role),
        ..TokenSpec::default()
    }
}

fn set(tokens: Vec<TokenSpec>) -> TokenSet {
    TokenSet::load(&AuthSettings {
        tokens,
        ..AuthSettings::default()
    })
    .unwrap()
}

fn who(set: &TokenSet, header: &[u8]) -> Result<String, Denied> {
    set.authenticate(Some(header), &Peer::plain(LOCAL), NOW)
        .map(|c| c.name().to_owned())
}

#[test]
fn without_tokens_only_loopback_is_served() {
    let open = set(vec![]);
    for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
        let peer = Peer::plain(ip.parse().unwrap());
        assert!(matches!(
            open.authenticate(None, &peer, NOW),
            Ok(Caller::Open)
        ));
    }
    assert_eq!(
        open.authenticate(None, &remote(), NOW).unwrap_err(),
        Denied::LoopbackOnly
    );
    let mapped = Peer::plain("::ffff:192.0.2.7".parse().unwrap());
    assert_eq!(
        open.authenticate(None, &mapped, NOW).unwrap_err(),
        Denied::LoopbackOnly
    );
    // A client certificate a configured CA verified counts as trusted.
    let with_cert = Peer {
        cert_names: Arc::from(vec!["svc".to_owned()]),
        ..remote()
    };
    assert!(open.authenticate(None, &with_cert, NOW).is_ok());
    let opted_out = TokenSet::load(&AuthSettings {
        allow_open_remote: true,
        ..AuthSettings::default()
    })
    .unwrap();
    assert!(opted_out.authenticate(None, &remote(), NOW).is_ok());
}

#[test]
fn roles_and_the_bearer_scheme() {
    let set = set(vec![
        token("r", "read-token-123456", Role::Read),
        token("a", "admin-token-123456", Role::Admin),
    ]);
    assert_eq!(
        set.authenticate(None, &Peer::plain(LOCAL), NOW)
            .unwrap_err(),
        Denied::Unauthenticated
    );
    assert_eq!(who(&set, b"Bearer nope"), Err(Denied::Unauthenticated));
    assert_eq!(
        who(&set, b"read-token-123456"),
        Err(Denied::Unauthenticated)
    );
    assert_eq!(who(&set, b"Bearer read-token-123456").unwrap(), "r");
    // The scheme is case-insensitive; the token is not.
    for header in [
        &b"bearer admin-token-123456"[..],
        b"BEARER  admin-token-123456",
    ] {
        assert_eq!(who(&set, header).unwrap(), "a");
    }
    for header in [
        &b"Bearer ADMIN-TOKEN-123456"[..],
        b"Bearer",
        b"Bearer ",
        b"Bearerx admin-token-123456",
    ] {
        assert_eq!(who(&set, header), Err(Denied::Unauthenticated));
    }
    let reader = set
        .authenticate(Some(b"Bearer read-token-123456"), &remote(), NOW)
        .unwrap();
    assert!(reader.has_role(Role::Read) && !reader.has_role(Role::Write));
    assert!(reader.may("any", Level::Read) && !reader.may("any", Level::Write));
    assert!(!reader.may_manage_plugin("x") && !reader.may_create());
}

#[test]
fn scoped_tokens_reach_only_their_prefixes() {
    let scoped = TokenSpec {
        name: "team-a".into(),
        token: Some("team-a-token-123456".into()),
        rules: vec![
            PrefixRule {
                prefix: "team-a/".into(),
                access: Level::Write,
            },
            PrefixRule {
                prefix: "shared/".into(),
                access: Level::Read,
            },
        ],
        plugins: vec!["team-a-*".into()],
        ..TokenSpec::default()
    };
    let set = set(vec![scoped]);
    let caller = set
        .authenticate(Some(b"Bearer team-a-token-123456"), &remote(), NOW)
        .unwrap();
    assert!(caller.may("team-a/1", Level::Write));
    assert!(caller.may("shared/1", Level::Read) && !caller.may("shared/1", Level::Write));
    assert!(!caller.may("team-b/1", Level::Read));
    assert!(!caller.has_role(Role::Read));
    assert_eq!(caller.coverage("", Level::Read), Coverage::Part);
    assert_eq!(caller.coverage("team-a/", Level::Write), Coverage::All);
    assert!(caller.may_manage_plugin("team-a-schema") && !caller.may_manage_plugin("team-b"));
    assert!(!caller.may_create());
}

#[test]
fn expired_tokens_and_certificates() {
    let mut expiring = token("old", "expiring-token-123456", Role::Read);
    expiring.expires = Some(toml::Value::String("2027-01-01T00:00:00Z".into()));
    let service = TokenSpec {
        name: "svc".into(),
        client_cert: Some("orders.internal".into()),
        role: Some(Role::Write),
        ..TokenSpec::default()
    };
    let set = set(vec![expiring, service]);
    let header = Some(&b"Bearer expiring-token-123456"[..]);
    assert!(set.authenticate(header, &remote(), NOW).is_ok());
    assert_eq!(
        set.authenticate(header, &remote(), 1_798_761_600_000)
            .unwrap_err(),
        Denied::Expired { name: "old".into() }
    );
    let cert = |name: &str| Peer {
        cert_names: Arc::from(vec!["other".to_owned(), name.to_owned()]),
        ..remote()
    };
    let by_cert = set
        .authenticate(None, &cert("orders.internal"), NOW)
        .unwrap();
    assert_eq!(by_cert.name(), "svc");
    assert_eq!(
        set.authenticate(None, &cert("nobody"), NOW).unwrap_err(),
        Denied::Unauthenticated
    );
}

#[test]
fn a_reload_with_a_bad_file_keeps_the_tokens_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    std::fs::write(
        &file,
        "[[tokens]]\nname = \"a\"\ntoken = \"first-secret-123456\"\nrole = \"read\"\n",
    )
    .unwrap();
    let tokens = Tokens::load(&AuthSettings {
        tokens_file: Some(file.clone()),
        ..AuthSettings::default()
    })
    .unwrap();
    assert_eq!(tokens.current().len(), 1);
    std::fs::write(
        &file,
        "[[tokens]]\nname = \"a\"\ntoken = \"short\"\nrole = \"read\"\n",
    )
    .unwrap();
    let e = tokens.reload().unwrap_err();
    assert!(
        e.place.contains("tokens.toml") && e.message.contains("16"),
        "{e}"
    );
    assert!(who(&tokens.current(), b"Bearer first-secret-123456").is_ok());
    std::fs::write(
        &file,
        "[[tokens]]\nname = \"b\"\ntoken = \"second-secret-123456\"\nrole = \"read\"\n",
    )
    .unwrap();
    tokens.reload().unwrap();
    assert_eq!(
        who(&tokens.current(), b"Bearer first-secret-123456"),
        Err(Denied::Unauthenticated)
    );
    assert_eq!(
        who(&tokens.current(), b"Bearer second-secret-123456").unwrap(),
        "b"
    );
}

#[test]
fn a_reload_keeps_fair_use_state_while_the_limits_stay() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let entry = |name: &str, in_flight: u32| {
        format!("[[tokens]]\nname = \"{name}\"\ntoken = \"team-secret-123456\"\nrole = \"read\"\nmax_in_flight = {in_flight}\n")
    };
    std::fs::write(&file, entry("team", 1)).unwrap();
    let tokens = Tokens::load(&AuthSettings {
        tokens_file: Some(file.clone()),
        ..AuthSettings::default()
    })
    .unwrap();
    let caller = |tokens: &Tokens| {
        tokens
            .current()
            .authenticate(Some(b"Bearer team-secret-123456"), &Peer::plain(LOCAL), NOW)
            .unwrap()
    };
    let _held = caller(&tokens).admit().unwrap();
    tokens.reload().unwrap();
    assert_eq!(
        caller(&tokens).admit().unwrap_err(),
        fair_use::Refusal::InFlight { max: 1 },
        "a reload is no way past the requests in flight"
    );
    std::fs::write(&file, entry("team", 2)).unwrap();
    tokens.reload().unwrap();
    let _also = caller(&tokens).admit().expect("new limits, new state");
    // One of the two new slots is taken; a renamed entry is a new token.
    std::fs::write(&file, entry("renamed", 2)).unwrap();
    tokens.reload().unwrap();
    let (_a, _b) = (
        caller(&tokens).admit().unwrap(),
        caller(&tokens).admit().unwrap(),
    );
}

#[test]
fn fresh_secrets_are_long_and_distinct() {
    let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
    assert_eq!(a.len(), 43);
    assert_ne!(a, b);
    assert!(spec::TokenSpec {
        token: Some(a),
        ..token("n", "x", Role::Read)
    }
    .check()
    .is_ok());
}
