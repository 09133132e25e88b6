//! TLS that trusts exactly the site certificate a `.dcor-access` file bundles (pinning).
//!
//! DCOR-Aid trusts the certificate in `server.cert` for the site, whatever signed it. Many
//! DCOR sites use a self-signed certificate with `basicConstraints CA:TRUE`; webpki (and
//! so rustls' standard verifier) refuses such a certificate as the server's own
//! (`CaUsedAsEndEntity`) even when it is the only trust anchor. So [`pinned_config`]
//! builds a rustls client configuration whose verifier accepts the handshake when the
//! certificate the server presents is byte-for-byte (DER) one of the bundled
//! certificates. Otherwise it falls back to ordinary webpki path validation with the
//! bundled certificates as the only roots (a CA-issued leaf bundled with its CA, as
//! Python's `ssl` would accept it). Nothing else is trusted: no system roots.
//!
//! The handshake signature is always checked against the presented certificate's key,
//! so a server that merely copies the public certificate cannot pass. The validity
//! window of a pinned certificate is not checked here: the callers report expiry
//! themselves, with a clearer message.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use super::api::Error;

/// The crypto provider reqwest itself uses (rustls with aws-lc-rs). Named explicitly:
/// more than one provider is compiled in, so rustls cannot pick a process default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A rustls client configuration that trusts only the certificate(s) in `pem` (see the
/// module documentation). Fails when `pem` holds no parsable certificate.
pub fn pinned_config(pem: &[u8]) -> Result<rustls::ClientConfig, Error> {
    let verifier = PinnedVerifier::new(pem)?;
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::ClientSetup {
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(config)
}

/// Accepts exactly the pinned certificates; see the module documentation.
pub struct PinnedVerifier {
    pinned: Vec<Vec<u8>>,
    fallback: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for PinnedVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pins: Vec<String> = self.pinned.iter().map(|d| fingerprint(d)).collect();
        f.debug_struct("PinnedVerifier")
            .field("pinned_sha256", &pins)
            .field("ca_fallback", &self.fallback.is_some())
            .finish()
    }
}

impl PinnedVerifier {
    /// Pins every certificate of a PEM file (the first one is the site's own).
    pub fn new(pem: &[u8]) -> Result<PinnedVerifier, Error> {
        let mut pinned = Vec::new();
        for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let block = block.map_err(|e| Error::InvalidCertificate {
                reason: format!("malformed PEM: {e}"),
            })?;
            if block.label != "CERTIFICATE" {
                continue;
            }
            block.parse_x509().map_err(|e| Error::InvalidCertificate {
                reason: format!("not an X.509 certificate: {e}"),
            })?;
            pinned.push(block.contents);
        }
        if pinned.is_empty() {
            return Err(Error::InvalidCertificate {
                reason: "no certificate in the PEM data".into(),
            });
        }
        let provider = provider();
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(pinned.iter().map(|d| CertificateDer::from(d.clone())));
        let fallback = if roots.is_empty() {
            None
        } else {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .ok()
        };
        Ok(PinnedVerifier {
            pinned,
            fallback,
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

/// How the refusal of an unpinned certificate starts; [`super::api`] looks for it to
/// give a clean one-line reason.
pub(crate) const NOT_PINNED: &str = "the site presents a certificate that is not the bundled one";

/// Why the presented certificate was refused. rustls shows the inner error with `Debug`,
/// so `Debug` prints the same sentence as `Display`.
struct NotPinned {
    presented: String,
}

impl fmt::Display for NotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{NOT_PINNED} (SHA-256 {})", self.presented)
    }
}

impl fmt::Debug for NotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for NotPinned {}

fn fingerprint(der: &[u8]) -> String {
    let hex = hex::encode_upper(Sha256::digest(der));
    let pairs: Vec<&str> = (0..hex.len()).step_by(2).map(|i| &hex[i..i + 2]).collect();
    pairs.join(":")
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|d| d.as_slice() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        if let Some(fallback) = &self.fallback
            && fallback
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .is_ok()
        {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(NotPinned {
                presented: fingerprint(end_entity.as_ref()),
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/token")
                .join(name),
        )
        .unwrap()
    }

    fn der(name: &str) -> CertificateDer<'static> {
        let pem = fixture(name);
        let block = x509_parser::pem::Pem::iter_from_buffer(&pem)
            .next()
            .unwrap()
            .unwrap();
        CertificateDer::from(block.contents)
    }

    #[test]
    fn accepts_exactly_the_pinned_certificate() {
        let v = PinnedVerifier::new(&fixture("localhost-ca.pem")).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        v.verify_server_cert(&der("localhost-ca.pem"), &[], &name, &[], UnixTime::now())
            .unwrap();
        let err = v
            .verify_server_cert(
                &der("dcor.example.com.pem"),
                &[],
                &name,
                &[],
                UnixTime::now(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("not the bundled one"), "{err}");
    }

    /// `localhost.pem` is signed by the same key as `localhost-ca.pem` and names it as
    /// issuer: a leaf issued by the bundled CA passes the webpki fallback, for that name.
    #[test]
    fn accepts_a_leaf_issued_by_the_bundled_ca() {
        let v = PinnedVerifier::new(&fixture("localhost-ca.pem")).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        v.verify_server_cert(&der("localhost.pem"), &[], &name, &[], UnixTime::now())
            .unwrap();
        let other = ServerName::try_from("dcor.example.com").unwrap();
        assert!(
            v.verify_server_cert(&der("localhost.pem"), &[], &other, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn needs_a_certificate() {
        assert!(matches!(
            PinnedVerifier::new(b"nope"),
            Err(Error::InvalidCertificate { .. })
        ));
        assert!(matches!(
            PinnedVerifier::new(&fixture("key.pem")),
            Err(Error::InvalidCertificate { .. })
        ));
    }
}
