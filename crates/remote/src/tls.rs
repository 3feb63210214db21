//! TLS on both ends: the server's certificate (given, or self-signed at
//! first start and kept), its SHA-256 fingerprint, and the client's
//! verifier that pins that fingerprint, the way Proxmox Backup Server's
//! clients trust a self-signed server.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use strata_engine::error::{Error, IoContext, Result};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate's fingerprint as people compare it: SHA-256 of its DER,
/// lower-case hex pairs joined by `:`.
pub fn fingerprint(cert: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A fingerprint as given by a person: case, and `:` between pairs, do not
/// matter.
pub fn normalize_fingerprint(text: &str) -> Result<String> {
    let hex: String = text.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidInput(format!(
            "fingerprint {text:?} is not a SHA-256 fingerprint (64 hex digits, pairs may be joined by ':')"
        )));
    }
    let bytes: Vec<String> = (0..32).map(|i| hex[2 * i..2 * i + 2].to_string()).collect();
    Ok(bytes.join(":"))
}

/// The server's certificate chain and key.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    /// The fingerprint clients pin: the leaf certificate's.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.chain[0].as_ref())
    }

    /// From PEM files given by the operator.
    pub fn from_files(cert: &Path, key: &Path) -> Result<ServerIdentity> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| Error::InvalidInput(format!("reading certificates from {}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(Error::InvalidInput(format!("{} holds no certificate", cert.display())));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| Error::InvalidInput(format!("reading the private key from {}: {e}", key.display())))?;
        Ok(ServerIdentity { chain, key })
    }

    /// The self-signed identity kept in `dir` (`cert.pem`, `key.pem`),
    /// made on first use for `names` (host names and addresses).
    pub fn self_signed(dir: &Path, names: &[String]) -> Result<ServerIdentity> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        if !cert.exists() {
            std::fs::create_dir_all(dir).at("creating", dir)?;
            let made = rcgen::generate_simple_self_signed(names.to_vec())
                .map_err(|e| Error::InvalidInput(format!("making a self-signed certificate: {e}")))?;
            write_private(&key, made.signing_key.serialize_pem().as_bytes())?;
            // The certificate last: its presence says both are complete.
            write_private(&cert, made.cert.pem().as_bytes())?;
            tracing::info!(path = %cert.display(), "made a self-signed certificate");
        }
        Self::from_files(&cert, &key)
    }

    pub fn server_config(self) -> Result<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(self.chain, self.key))
            .map_err(|e| Error::InvalidInput(format!("the server's certificate or key is unusable: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Writes a file readable by its owner only, durably, under its name at
/// once (a crash leaves the old file or the new one).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let staging = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staging)
        .at("creating", &staging)?;
    file.write_all(bytes).at("writing", &staging)?;
    file.sync_all().at("syncing", &staging)?;
    std::fs::rename(&staging, path).at("renaming into place", path)?;
    Ok(())
}

/// How a client decides to trust the server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The server's certificate has this fingerprint, whoever signed it.
    Fingerprint(String),
    /// The server's certificate chains to the system's authorities, or to
    /// the certificates in this PEM file.
    Authorities(Option<std::path::PathBuf>),
}

/// The client's TLS configuration for `trust`.
pub fn client_config(trust: &Trust) -> Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidInput(format!("TLS: {e}")))?;
    let mut config = match trust {
        Trust::Fingerprint(expected) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                expected: normalize_fingerprint(expected)?,
                provider: provider(),
            }))
            .with_no_client_auth(),
        Trust::Authorities(extra) => {
            let mut roots = rustls::RootCertStore::empty();
            if let Some(path) = extra {
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| Error::InvalidInput(format!("reading {}: {e}", path.display())))?
                {
                    let cert = cert.map_err(|e| Error::InvalidInput(format!("reading {}: {e}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
                }
            } else {
                for path in ["/etc/ssl/certs/ca-certificates.crt"] {
                    if let Ok(certs) = CertificateDer::pem_file_iter(path) {
                        for cert in certs.flatten() {
                            let _ = roots.add(cert);
                        }
                    }
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts exactly the certificate with the pinned fingerprint, and still
/// checks the handshake's signatures with its key: a pinned certificate
/// replayed by someone without the key does not pass.
#[derive(Debug)]
struct PinnedVerifier {
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity.as_ref());
        // Not a secret: a plain comparison is enough.
        if seen == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate has fingerprint {seen}, not the pinned {}",
                self.expected
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_normalize() {
        let fp = fingerprint(b"x");
        assert_eq!(normalize_fingerprint(&fp.to_uppercase()).unwrap(), fp);
        assert_eq!(normalize_fingerprint(&fp.replace(':', "")).unwrap(), fp);
        assert!(normalize_fingerprint("ab:cd").is_err());
    }
}
