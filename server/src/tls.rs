//! Native TLS with rustls: the listener's certificate and key, optional
//! client certificates (mutual TLS), reloading both without dropping open
//! connections, and the names a client certificate carries.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use crate::config::TlsSettings;

/// A TLS file or setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct TlsError {
    /// The setting whose file is at fault.
    pub setting: &'static str,
    /// What is wrong, naming the file.
    pub message: String,
}

/// The most bytes read from one PEM file.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

fn read_pem(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let fail = |message: String| TlsError {
        setting,
        message: format!("{}: {message}", path.display()),
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_PEM_BYTES + 1),
        &mut bytes,
    )
    .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(fail(format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(bytes)
}

/// The certificates of a PEM file; `setting` names it in errors.
pub fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(setting, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError {
            setting,
            message: format!("{}: not PEM certificates: {e}", path.display()),
        })?;
    if certs.is_empty() {
        return Err(TlsError {
            setting,
            message: format!("{}: holds no PEM certificate", path.display()),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file; `setting` names it in errors.
pub fn private_key(setting: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem(setting, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError {
        setting,
        message: format!("{}: no usable PEM private key: {e}", path.display()),
    })
}

/// The cryptography: ring rather than aws-lc-rs, which builds a C library
/// with cmake; the cost is no post-quantum key exchange (X25519 and the
/// NIST curves remain).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration the settings describe: TLS 1.2 and 1.3, ALPN
/// `http/1.1`, and client certificates required when a client CA is set.
pub fn server_config(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let (Some(cert_file), Some(key_file)) = (&settings.cert_file, &settings.key_file) else {
        return Err(TlsError {
            setting: "tls.cert_file",
            message: "tls.cert_file and tls.key_file are both needed".into(),
        });
    };
    let chain = certificates("tls.cert_file", cert_file)?;
    let key = private_key("tls.key_file", key_file)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError {
            setting: "tls.cert_file",
            message: e.to_string(),
        })?;
    let builder = match &settings.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("tls.client_ca_file", ca_file)? {
                roots.add(cert).map_err(|e| TlsError {
                    setting: "tls.client_ca_file",
                    message: format!("{}: {e}", ca_file.display()),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError {
                    setting: "tls.client_ca_file",
                    message: format!("{}: {e}", ca_file.display()),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError {
        setting: "tls.key_file",
        message: format!(
            "{} does not go with {}: {e}",
            key_file.display(),
            cert_file.display()
        ),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The TLS configuration in force, replaced whole by [`Tls::reload`]: new
/// connections take the new one, open ones keep theirs.
pub struct Tls {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Loads the certificate, key and client CA.
    pub fn load(settings: &TlsSettings) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new(Arc::new(server_config(settings)?)),
            settings: settings.clone(),
        })
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = match self.current.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Reads the files again; on error the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(server_config(&self.settings)?);
        match self.current.write() {
            Ok(mut c) => *c = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }
}

/// The names a (verified) client certificate carries: its subject common
/// names, then its DNS and URI subject alternative names.
pub fn certificate_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) => names.push((*n).to_owned()),
                _ => {}
            }
        }
    }
    names
}

/// Whether the first bytes a client sent can open a TLS handshake (a
/// handshake record, type 22); anything else, such as a plain-HTTP
/// request line, gets a plain answer saying to use TLS.
pub fn looks_like_tls(first: u8) -> bool {
    first == 0x16
}

/// What a plain-HTTP request to the TLS port is told before it is closed.
pub const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: application/json\r\nconnection: close\r\ncontent-length: 81\r\n\r\n\
{\"error\":{\"code\":\"tls_required\",\"message\":\"this port speaks TLS: use https://\"}}\n";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_plain_http_answer_is_well_formed() {
        crate::error::assert_canned_answer(PLAIN_HTTP_ANSWER, "tls_required");
    }

    #[test]
    fn files_are_checked_and_names_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["svc.internal".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "orders");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let settings = TlsSettings {
            cert_file: Some(cert_file.clone()),
            key_file: Some(key_file.clone()),
            client_ca_file: None,
        };
        let tls = Tls::load(&settings).unwrap();
        assert_eq!(
            certificate_names(cert.der()),
            ["orders".to_owned(), "svc.internal".to_owned()]
        );
        // A key that is not the certificate's, and a file that is not PEM.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&key_file, other.serialize_pem()).unwrap();
        let e = tls.reload().unwrap_err();
        assert_eq!(e.setting, "tls.key_file");
        std::fs::write(&cert_file, "not a certificate").unwrap();
        let e = server_config(&settings).unwrap_err();
        assert!(e.message.contains("c.pem"), "{e}");
        assert!(looks_like_tls(0x16) && !looks_like_tls(b'G'));
    }
}
