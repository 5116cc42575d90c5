//! Native TLS and mutual TLS, with certificates made here, talked to by
//! curl and Python: a wrong CA, an expired client certificate, a client
//! without one, plain HTTP to the TLS port, and a certificate reloaded on
//! SIGHUP under an open connection.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{run_cli, temp_data_dir, Options, Server};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate authority that signs what the tests need.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Writes `NAME.crt` and `NAME.key`, signed by this CA, into `dir`.
    fn issue(&self, dir: &Path, name: &str, server: bool, expired: bool) -> (PathBuf, PathBuf) {
        let sans = if server {
            vec!["localhost".to_owned()]
        } else {
            vec![]
        };
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        if server {
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (crt, pem) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem, key.serialize_pem()).unwrap();
        (crt, pem)
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.crt"));
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }
}

/// `curl` with `args`: (its exit code, the HTTP status it printed, body).
fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        out.status.code().unwrap_or(-1),
        status.to_owned(),
        body.to_owned(),
    )
}

fn port(server: &Server) -> &str {
    server.addr.rsplit_once(':').unwrap().1
}

/// The TLS options curl and exdaas share: the server's CA and a client
/// certificate.
fn identity<'a>(ca: &'a str, crt: &'a Path, key: &'a Path) -> [&'a str; 6] {
    let (crt, key) = (crt.to_str().unwrap(), key.to_str().unwrap());
    ["--cacert", ca, "--cert", crt, "--key", key]
}

const ADMIN: &str = "authorization: Bearer admin-token-0123456789";

#[test]
fn https_with_curl_and_python_plain_http_refused_and_a_reload_under_an_open_connection() {
    let (root, data) = temp_data_dir();
    let dir = root.path();
    let ca = Ca::new("exdaas test CA");
    let ca_file = ca.write(dir, "ca");
    let (cert, key) = ca.issue(dir, "server", true, false);
    let config = format!(
        "[auth]\ntokens = [{{ name = \"ops\", token = \"admin-token-0123456789\", role = \"admin\" }}]\n\
         [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let server = Server::start_with(&data, Options::default().config(&config));
    assert!(server.logged("tls=true"));
    let url = |path: &str| format!("https://localhost:{}{path}", port(&server));
    let ca_arg = ca_file.to_str().unwrap();
    let (code, status, _) = curl(&[
        "--cacert",
        ca_arg,
        "-H",
        ADMIN,
        "-H",
        "content-type: application/json",
        "-X",
        "PUT",
        "-d",
        "{\"a\":1}",
        &url("/v1/kv/k"),
    ]);
    assert_eq!((code, status.as_str()), (0, "201"));
    // A client that trusts another CA refuses the server (curl exit 60).
    let other = Ca::new("another CA").write(dir, "other-ca");
    let (code, _, _) = curl(&["--cacert", other.to_str().unwrap(), &url("/health")]);
    assert_eq!(code, 60);
    // Plain HTTP to the TLS port: a clear 400 at once, no hang.
    let started = Instant::now();
    let plain = format!("http://127.0.0.1:{}/v1/kv/k", port(&server));
    let (_, status, body) = curl(&[&plain]);
    assert_eq!(status, "400", "{body}");
    assert!(body.contains("tls_required") && body.contains("https://"));
    assert!(started.elapsed() < Duration::from_secs(5));
    // Python's ssl module, keeping one connection open across a reload of
    // the certificate: the open connection goes on, new ones get the new
    // certificate.
    let ca2 = Ca::new("exdaas test CA 2");
    let ca2_file = ca2.write(dir, "ca2");
    let script = format!(
        r#"
import http.client, ssl, subprocess, sys, time
ctx = ssl.create_default_context(cafile="{ca}")
c = http.client.HTTPSConnection("localhost", {port}, context=ctx, timeout=10)
c.request("GET", "/v1/kv/k", headers={{"authorization": "Bearer admin-token-0123456789"}})
r = c.getresponse(); assert r.status == 200, r.status; assert r.read() == b'{{"a":1}}'
import shutil
shutil.copy("{new_cert}", "{cert}"); shutil.copy("{new_key}", "{key}")
subprocess.run(["kill", "-HUP", "{pid}"], check=True)
ctx2 = ssl.create_default_context(cafile="{ca2}")
deadline = time.time() + 20
while True:
    try:
        n = http.client.HTTPSConnection("localhost", {port}, context=ctx2, timeout=10)
        n.request("GET", "/health"); n.getresponse().read(); break
    except ssl.SSLError:
        if time.time() > deadline: sys.exit("the new certificate never came")
        time.sleep(0.05)
c.request("GET", "/v1/kv/k", headers={{"authorization": "Bearer admin-token-0123456789"}})
r = c.getresponse(); assert r.status == 200, r.status; r.read()
print("ok")
"#,
        ca = ca_file.display(),
        ca2 = ca2_file.display(),
        port = port(&server),
        cert = cert.display(),
        key = key.display(),
        new_cert = ca2.issue(dir, "server2", true, false).0.display(),
        new_key = dir.join("server2.key").display(),
        pid = server.pid(),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The command-line client: https:// and --cacert.
    let server_url = format!("https://localhost:{}", port(&server));
    let image = dir.join("over-tls.backup");
    let (code, out, err) = run_cli(
        dir,
        &[
            "backup",
            "--out",
            image.to_str().unwrap(),
            "--server",
            &server_url,
            "--cacert",
            ca2_file.to_str().unwrap(),
        ],
        &[("EXDAAS_TOKEN", "admin-token-0123456789")],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 records"), "{out}");
    let (code, _, err) = run_cli(dir, &["health", "--server", &server_url], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("--cacert"), "{err}");
    // A bad file on the next reload keeps the certificate in force.
    std::fs::write(&cert, "garbage").unwrap();
    let log_before = server
        .log
        .lock()
        .unwrap()
        .matches("TLS reload refused")
        .count();
    Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server
        .log
        .lock()
        .unwrap()
        .matches("TLS reload refused")
        .count()
        == log_before
    {
        assert!(
            Instant::now() < deadline,
            "the refused reload was not logged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, status, _) = curl(&["--cacert", ca2_file.to_str().unwrap(), &url("/health")]);
    assert_eq!((code, status.as_str()), (0, "200"));
    server.stop();
}

#[test]
fn mutual_tls_maps_certificates_to_tokens_and_refuses_the_rest() {
    let (root, data) = temp_data_dir();
    let dir = root.path();
    let ca = Ca::new("exdaas server CA");
    let ca_file = ca.write(dir, "ca");
    let (cert, key) = ca.issue(dir, "server", true, false);
    let clients = Ca::new("exdaas clients CA");
    let clients_file = clients.write(dir, "clients-ca");
    let (orders_crt, orders_key) = clients.issue(dir, "orders", false, false);
    let (stranger_crt, stranger_key) = clients.issue(dir, "stranger", false, false);
    let (old_crt, old_key) = clients.issue(dir, "orders-old", false, true);
    let (forged_crt, forged_key) = Ca::new("not the clients CA").issue(dir, "forged", false, false);
    let config = format!(
        "[auth]\ntokens = [\n  {{ name = \"ops\", token = \"admin-token-0123456789\", role = \"admin\" }},\n  \
         {{ name = \"orders-service\", client_cert = \"orders\", rules = [{{ prefix = \"orders/\", access = \"write\" }}] }},\n]\n\
         [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        cert.display(),
        key.display(),
        clients_file.display()
    );
    let server = Server::start_with(&data, Options::default().config(&config));
    assert!(server.logged("mutual_tls=true"));
    let url = |path: &str| format!("https://localhost:{}{path}", port(&server));
    let ca_arg = ca_file.to_str().unwrap();
    let put = |crt: &Path, key: &Path, path: &str, extra: &[&str]| {
        let mut args = identity(ca_arg, crt, key).to_vec();
        args.extend([
            "-H",
            "content-type: application/json",
            "-X",
            "PUT",
            "-d",
            "1",
        ]);
        args.extend_from_slice(extra);
        let target = url(path);
        args.push(&target);
        let (code, status, _) = curl(&args);
        (code, status)
    };
    // The certificate named by a token entry gets that entry's rules.
    assert_eq!(
        put(&orders_crt, &orders_key, "/v1/kv/orders/1", &[]),
        (0, "201".into())
    );
    assert_eq!(
        put(&orders_crt, &orders_key, "/v1/kv/other/1", &[]),
        (0, "403".into())
    );
    // A bearer token on top decides instead.
    assert_eq!(
        put(&orders_crt, &orders_key, "/v1/kv/other/1", &["-H", ADMIN]),
        (0, "201".into())
    );
    // A valid certificate no entry names: 401.
    assert_eq!(
        put(&stranger_crt, &stranger_key, "/v1/kv/orders/2", &[]),
        (0, "401".into())
    );
    // No certificate, an expired one, one from another CA: no HTTP at all.
    let (code, status, _) = curl(&["--cacert", ca_arg, "-H", ADMIN, &url("/v1/kv/orders/1")]);
    assert!(
        code != 0 && status == "000",
        "no certificate: curl {code}, {status}"
    );
    for (crt, key) in [(&old_crt, &old_key), (&forged_crt, &forged_key)] {
        let (code, status) = put(crt, key, "/v1/kv/orders/3", &["-H", ADMIN]);
        assert!(
            code != 0 && status == "000",
            "{}: curl {code}, {status}",
            crt.display()
        );
    }
    // The command-line client with the service's certificate.
    let server_url = format!("https://localhost:{}", port(&server));
    let (code, out, err) = run_cli(
        dir,
        &[
            &["kv", "--server", &server_url][..],
            &identity(ca_arg, &orders_crt, &orders_key),
            &["get", "--raw", "orders/1"],
        ]
        .concat(),
        &[],
    );
    assert_eq!((code, out.trim()), (0, "1"), "{err}");
    // Python, with the service's certificate.
    let script = format!(
        r#"
import http.client, ssl
ctx = ssl.create_default_context(cafile="{ca}")
ctx.load_cert_chain("{crt}", "{key}")
c = http.client.HTTPSConnection("localhost", {port}, context=ctx, timeout=10)
c.request("GET", "/v1/kv/orders/1")
r = c.getresponse(); assert r.status == 200, r.status; print(r.read().decode())
"#,
        ca = ca_file.display(),
        crt = orders_crt.display(),
        key = orders_key.display(),
        port = port(&server),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    server.stop();
}
