//! The site certificate that goes into a `.dcor-access` file as `server.cert`.
//!
//! DCOR-Aid takes the site's hostname from this certificate's subject common name (CN)
//! and trusts the certificate for that host. So a usable certificate must be PEM, must
//! have a CN that names the site's host (or a SAN that does, with some CN present, which
//! is then what DCOR-Aid connects to: that case comes with a warning), and must be valid
//! now. [`check_for_site`] checks all of that and reports the facts `token inspect` and
//! `token issue` print: hostname, SHA-256 fingerprint, expiry.
//!
//! A PEM file with several certificates (a leaf followed by its chain) is accepted: the
//! first certificate is the one checked, as dclab reads only the first one for the
//! hostname, while a TLS stack given the whole file as trust roots can use the rest. The
//! report carries a warning that says how many more there are. A private key anywhere
//! in the file is refused: it must never travel inside a token file.
//!
//! A wildcard CN (`*.example.org`) is not a hostname DCOR-Aid can connect to, so it does
//! not count as a CN here.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// A certificate that expires within this many days gets [`Warning::ExpiresSoon`].
pub const EXPIRY_WARNING_DAYS: i64 = 30;
/// Largest certificate file read by [`Certificate::from_file`].
pub const MAX_CERT_FILE_BYTES: u64 = 1024 * 1024;

/// Errors from parsing or checking a certificate. Messages are one line, name the
/// problem and the fix, and never quote file contents beyond escaped names.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "cannot read the certificate {} ({source}): check [ckan] certificate and the file's permissions",
        .path.display()
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the certificate file is larger than {limit} bytes: give the site's PEM certificate, not a bundle or archive"
    )]
    TooLarge { limit: u64 },
    #[error(
        "the certificate is DER, not PEM: convert it with `openssl x509 -inform der -in FILE -out FILE.pem`"
    )]
    Der,
    #[error(
        "no PEM certificate found (no -----BEGIN CERTIFICATE----- line): give the site's certificate in PEM form"
    )]
    NotPem,
    #[error(
        "the file holds a private key: give the site's certificate (-----BEGIN CERTIFICATE-----), never its key"
    )]
    PrivateKey,
    #[error(
        "the file holds a PEM block of type {}, not a certificate: give the site's certificate in PEM form",
        escape(.label)
    )]
    UnexpectedBlock { label: String },
    #[error(
        "malformed PEM ({reason}): re-export the certificate with `openssl x509 -in FILE -out FILE.pem`"
    )]
    BadPem { reason: String },
    #[error(
        "the PEM block is not an X.509 certificate ({reason}): re-export it with `openssl x509 -in FILE -out FILE.pem`"
    )]
    BadCertificate { reason: String },
    #[error("the site host is empty: set [ckan] url to the site's https URL")]
    EmptyHost,
    #[error(
        "the certificate has no subject common name (CN): DCOR-Aid takes the hostname from the CN; use one with CN={host}"
    )]
    NoCommonName { host: String },
    #[error(
        "the certificate names {names}, not {host}: use the site's own certificate, or fix [ckan] url"
    )]
    HostMismatch { host: String, names: String },
    #[error(
        "the certificate expired on {}: renew it and point [ckan] certificate at the new file",
        day(*.not_after)
    )]
    Expired { not_after: Timestamp },
    #[error(
        "the certificate is not valid before {}: check this machine's clock, or use the current certificate",
        day(*.not_before)
    )]
    NotYetValid { not_before: Timestamp },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A parsed site certificate: the first certificate of a PEM file, plus the file itself.
#[derive(Clone)]
pub struct Certificate {
    pem: Vec<u8>,
    der: Vec<u8>,
    count: usize,
    common_name: Option<String>,
    san_names: Vec<String>,
    not_before: Timestamp,
    not_after: Timestamp,
    is_ca: bool,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("common_name", &self.common_name)
            .field("san_names", &self.san_names)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("certificates_in_file", &self.count)
            .field("sha256", &self.fingerprint_sha256())
            .finish()
    }
}

impl Certificate {
    /// Reads and parses a PEM certificate file of at most [`MAX_CERT_FILE_BYTES`].
    pub fn from_file(path: &Path) -> Result<Certificate> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_CERT_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_CERT_FILE_BYTES {
            return Err(Error::TooLarge {
                limit: MAX_CERT_FILE_BYTES,
            });
        }
        Self::from_pem(&bytes)
    }

    /// Parses PEM bytes. The first certificate is the leaf; further certificates are
    /// counted (see [`Certificate::certificates_in_file`]). DER input, a private key or
    /// any other PEM block type is an error.
    pub fn from_pem(bytes: &[u8]) -> Result<Certificate> {
        if !contains(bytes, b"-----BEGIN ") {
            // A DER certificate is an ASN.1 SEQUENCE: 0x30 then a long-form length.
            return Err(if bytes.first() == Some(&0x30) {
                Error::Der
            } else {
                Error::NotPem
            });
        }
        let mut blocks = Vec::new();
        for block in Pem::iter_from_buffer(bytes) {
            let block = block.map_err(|e| Error::BadPem {
                reason: e.to_string(),
            })?;
            if block.label.contains("PRIVATE KEY") {
                return Err(Error::PrivateKey);
            }
            if block.label != "CERTIFICATE" {
                return Err(Error::UnexpectedBlock { label: block.label });
            }
            blocks.push(block);
        }
        let first = blocks.first().ok_or(Error::NotPem)?;
        for other in &blocks[1..] {
            other.parse_x509().map_err(|e| Error::BadCertificate {
                reason: e.to_string(),
            })?;
        }
        let x509 = first.parse_x509().map_err(|e| Error::BadCertificate {
            reason: e.to_string(),
        })?;
        let common_name = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut san_names = Vec::new();
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => san_names.push((*dns).to_owned()),
                    GeneralName::IPAddress(ip) => {
                        if let Some(ip) = ip_to_string(ip) {
                            san_names.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        let time = |t: &x509_parser::time::ASN1Time| {
            Timestamp::from_second(t.timestamp()).map_err(|e| Error::BadCertificate {
                reason: format!("validity out of range: {e}"),
            })
        };
        let validity = x509.validity();
        Ok(Certificate {
            not_before: time(&validity.not_before)?,
            not_after: time(&validity.not_after)?,
            is_ca: x509.is_ca(),
            common_name,
            san_names,
            count: blocks.len(),
            der: first.contents.clone(),
            pem: bytes.to_vec(),
        })
    }

    /// The file as given, which is what goes into `server.cert`.
    #[must_use]
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }

    /// The first certificate in DER form.
    #[must_use]
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The first certificate's subject CN, the hostname DCOR-Aid will use.
    #[must_use]
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// DNS names and IP addresses from the subjectAltName extension.
    #[must_use]
    pub fn san_names(&self) -> &[String] {
        &self.san_names
    }

    /// Start of the validity window.
    #[must_use]
    pub fn not_before(&self) -> Timestamp {
        self.not_before
    }

    /// End of the validity window.
    #[must_use]
    pub fn not_after(&self) -> Timestamp {
        self.not_after
    }

    /// Whether the certificate has `basicConstraints CA:TRUE` (self-signed site
    /// certificates often do).
    #[must_use]
    pub fn is_ca(&self) -> bool {
        self.is_ca
    }

    /// How many certificates the PEM file holds (1 for a lone certificate).
    #[must_use]
    pub fn certificates_in_file(&self) -> usize {
        self.count
    }

    /// SHA-256 over the first certificate's DER bytes.
    #[must_use]
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.der).into()
    }

    /// The SHA-256 fingerprint as `openssl x509 -fingerprint -sha256` prints it:
    /// uppercase hex pairs joined by `:`.
    #[must_use]
    pub fn fingerprint_sha256(&self) -> String {
        let hex = hex::encode_upper(self.sha256());
        let pairs: Vec<&str> = (0..hex.len()).step_by(2).map(|i| &hex[i..i + 2]).collect();
        pairs.join(":")
    }
}

/// How the site's host matched the certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMatch {
    /// The subject CN is the host: DCOR-Aid connects to the right place.
    CommonName,
    /// A SAN names the host, but the CN is something else, which DCOR-Aid will use.
    SubjectAltName,
}

/// Something worth telling the admin that does not stop a token from being issued.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Warning {
    /// The certificate expires within [`EXPIRY_WARNING_DAYS`].
    ExpiresSoon {
        not_after: Timestamp,
        days_left: i64,
    },
    /// The host matched a SAN, not the CN that DCOR-Aid reads.
    CommonNameIsNotHost { common_name: String, host: String },
    /// The PEM file holds more than one certificate; only the first was checked.
    ExtraCertificates { count: usize },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::ExpiresSoon {
                not_after,
                days_left,
            } => write!(
                f,
                "the certificate expires on {} (in {days_left} days): renew it soon, then re-issue tokens",
                day(*not_after)
            ),
            Warning::CommonNameIsNotHost { common_name, host } => write!(
                f,
                "the certificate's CN is {}, not {host}: DCOR-Aid will connect to the CN; prefer a certificate with CN={host}",
                escape(common_name)
            ),
            Warning::ExtraCertificates { count } => write!(
                f,
                "the file holds {count} more certificate(s) after the first: only the first was checked; they go into the token as trust roots"
            ),
        }
    }
}

/// What [`check_for_site`] found for a certificate that DCOR-Aid can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertReport {
    /// The hostname DCOR-Aid will take from the certificate (its CN).
    pub hostname: String,
    /// How the site's host matched.
    pub matched: HostMatch,
    /// Start of the validity window.
    pub not_before: Timestamp,
    /// End of the validity window.
    pub not_after: Timestamp,
    /// Whole days from `now` to `not_after`.
    pub days_left: i64,
    /// Whether it expires within [`EXPIRY_WARNING_DAYS`].
    pub expires_soon: bool,
    /// SHA-256 fingerprint, `AB:CD:…`.
    pub fingerprint_sha256: String,
    /// Warnings to show; empty for a clean certificate.
    pub warnings: Vec<Warning>,
}

/// Checks that `cert` is one DCOR-Aid can use for `site_host` at time `now`.
///
/// Accepted: the CN equals the host, or a SAN matches the host (wildcards cover one
/// label) and a non-wildcard CN is present. Hosts compare case-insensitively, ignoring
/// a trailing dot. Expired and not-yet-valid certificates are errors; one expiring
/// within [`EXPIRY_WARNING_DAYS`] gets a warning.
pub fn check_for_site(cert: &Certificate, site_host: &str, now: Timestamp) -> Result<CertReport> {
    let host = normalize_host(site_host);
    if host.is_empty() {
        return Err(Error::EmptyHost);
    }
    let cn = cert
        .common_name()
        .filter(|cn| !cn.contains('*') && !cn.trim().is_empty());
    let cn_matches = cn.is_some_and(|cn| normalize_host(cn) == host);
    let san_matches = cert.san_names().iter().any(|n| san_matches(n, &host));
    let mut warnings = Vec::new();
    let matched = match (cn, san_matches) {
        (Some(_), _) if cn_matches => HostMatch::CommonName,
        (Some(cn), true) => {
            warnings.push(Warning::CommonNameIsNotHost {
                common_name: cn.to_owned(),
                host: host.clone(),
            });
            HostMatch::SubjectAltName
        }
        (None, true) => return Err(Error::NoCommonName { host }),
        (_, false) => {
            return Err(Error::HostMismatch {
                host,
                names: describe_names(cert),
            });
        }
    };
    let hostname = cn.map(str::to_owned).unwrap_or_default();
    if now > cert.not_after() {
        return Err(Error::Expired {
            not_after: cert.not_after(),
        });
    }
    if now < cert.not_before() {
        return Err(Error::NotYetValid {
            not_before: cert.not_before(),
        });
    }
    let left: SignedDuration = cert.not_after().duration_since(now);
    let days_left = left.as_secs() / 86_400;
    let expires_soon = left < SignedDuration::from_hours(24 * EXPIRY_WARNING_DAYS);
    if expires_soon {
        warnings.push(Warning::ExpiresSoon {
            not_after: cert.not_after(),
            days_left,
        });
    }
    if cert.certificates_in_file() > 1 {
        warnings.push(Warning::ExtraCertificates {
            count: cert.certificates_in_file() - 1,
        });
    }
    Ok(CertReport {
        hostname,
        matched,
        not_before: cert.not_before(),
        not_after: cert.not_after(),
        days_left,
        expires_soon,
        fingerprint_sha256: cert.fingerprint_sha256(),
        warnings,
    })
}

fn normalize_host(h: &str) -> String {
    h.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// RFC 6125 matching: exact, or `*.rest` covering exactly one leftmost label.
fn san_matches(pattern: &str, host: &str) -> bool {
    let pattern = normalize_host(pattern);
    if let Some(rest) = pattern.strip_prefix("*.") {
        match host.split_once('.') {
            Some((label, host_rest)) => {
                !label.is_empty() && host_rest == rest && rest.contains('.')
            }
            None => false,
        }
    } else {
        pattern == host
    }
}

fn describe_names(cert: &Certificate) -> String {
    let cn = match cert.common_name() {
        Some(cn) => format!("CN={}", escape(cn)),
        None => "no CN".to_owned(),
    };
    if cert.san_names().is_empty() {
        cn
    } else {
        let sans: Vec<String> = cert.san_names().iter().take(5).map(|s| escape(s)).collect();
        let more = cert.san_names().len().saturating_sub(5);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        format!("{cn} (SANs {}{more})", sans.join(", "))
    }
}

fn ip_to_string(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
        _ => None,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Escapes a value from the certificate (untrusted) and shortens it to one short token.
fn escape(s: &str) -> String {
    let e: String = s.escape_debug().take(80).collect();
    if e.len() < s.escape_debug().count() {
        format!("{e}…")
    } else {
        e
    }
}

fn day(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/token")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn load(name: &str) -> Certificate {
        Certificate::from_pem(&fixture(name)).unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const HOST: &str = "dcor.example.com";

    fn now() -> Timestamp {
        at("2026-06-01T00:00:00Z")
    }

    #[test]
    fn good_certificate() {
        let c = load("dcor.example.com.pem");
        assert_eq!(c.common_name(), Some(HOST));
        assert_eq!(c.san_names(), [HOST]);
        assert_eq!(c.not_before(), at("2024-01-01T00:00:00Z"));
        assert_eq!(c.not_after(), at("2124-01-01T00:00:00Z"));
        assert_eq!(c.certificates_in_file(), 1);
        assert!(!c.is_ca());
        let r = check_for_site(&c, HOST, now()).unwrap();
        assert_eq!(r.hostname, HOST);
        assert_eq!(r.matched, HostMatch::CommonName);
        assert!(!r.expires_soon);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.fingerprint_sha256.len(), 32 * 3 - 1);
    }

    #[test]
    fn host_compare_ignores_case_and_trailing_dot() {
        let c = load("dcor.example.com.pem");
        check_for_site(&c, "DCOR.Example.com.", now()).unwrap();
        assert!(matches!(
            check_for_site(&c, " ", now()),
            Err(Error::EmptyHost)
        ));
    }

    #[test]
    fn fingerprint_matches_openssl_and_der_fixture() {
        let c = load("dcor.example.com.pem");
        assert_eq!(c.der(), fixture("dcor.example.com.der"));
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/token/dcor.example.com.pem"),
            )
            .output()
            .expect("openssl CLI is needed for this test: apt-get install openssl");
        let text = String::from_utf8(out.stdout).unwrap();
        let theirs = text.trim().split_once('=').unwrap().1;
        assert_eq!(c.fingerprint_sha256(), theirs);
    }

    #[test]
    fn the_dclab_example_certificate_is_usable() {
        let c = load("dclab-example.cert");
        assert_eq!(c.common_name(), Some(HOST));
        assert!(c.san_names().is_empty());
        let r = check_for_site(&c, HOST, now()).unwrap();
        assert_eq!(r.matched, HostMatch::CommonName);
        assert_eq!(
            r.fingerprint_sha256,
            "D5:EC:E0:93:37:4B:A5:BA:06:D9:52:23:14:38:7D:07:A9:E4:60:E4:5D:2A:20:41:D1:DF:E5:E3:1C:4B:9C:79"
        );
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let err = check_for_site(&load("expired.pem"), HOST, now()).unwrap_err();
        assert!(matches!(err, Error::Expired { .. }), "{err}");
        assert!(err.to_string().contains("2021-01-01"), "{err}");
        let err = check_for_site(&load("not-yet-valid.pem"), HOST, now()).unwrap_err();
        assert!(matches!(err, Error::NotYetValid { .. }), "{err}");
        assert!(err.to_string().contains("2120-01-01"), "{err}");
    }

    #[test]
    fn expiry_warning_at_thirty_days() {
        let c = load("dcor.example.com.pem");
        let end = c.not_after();
        let r = check_for_site(&c, HOST, end - SignedDuration::from_hours(24 * 10)).unwrap();
        assert!(r.expires_soon);
        assert_eq!(r.days_left, 10);
        assert!(matches!(
            r.warnings[..],
            [Warning::ExpiresSoon { days_left: 10, .. }]
        ));
        let r = check_for_site(&c, HOST, end - SignedDuration::from_hours(24 * 31)).unwrap();
        assert!(!r.expires_soon);
        assert!(r.warnings.is_empty());
        // The last second is still valid; one later is not.
        check_for_site(&c, HOST, end).unwrap();
        let err = check_for_site(&c, HOST, end + SignedDuration::from_secs(1)).unwrap_err();
        assert!(matches!(err, Error::Expired { .. }));
    }

    #[test]
    fn san_only_certificate_has_no_cn() {
        let c = load("san-only.pem");
        assert_eq!(c.common_name(), None);
        let err = check_for_site(&c, HOST, now()).unwrap_err();
        assert!(matches!(err, Error::NoCommonName { .. }), "{err}");
        assert!(err.to_string().contains("CN=dcor.example.com"), "{err}");
    }

    #[test]
    fn san_match_with_other_cn_is_accepted_with_a_warning() {
        let r = check_for_site(&load("san-match.pem"), HOST, now()).unwrap();
        assert_eq!(r.matched, HostMatch::SubjectAltName);
        assert_eq!(r.hostname, "www.example.com");
        assert!(matches!(
            r.warnings[..],
            [Warning::CommonNameIsNotHost { .. }]
        ));
    }

    #[test]
    fn wrong_cn_is_refused_and_named() {
        let err = check_for_site(&load("wrong-cn.pem"), HOST, now()).unwrap_err();
        assert!(matches!(err, Error::HostMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("CN=other.example.org") && msg.contains(HOST),
            "{msg}"
        );
    }

    #[test]
    fn wildcard_cn_is_not_a_hostname() {
        let c = load("wildcard.pem");
        assert!(san_matches("*.example.com", HOST));
        let err = check_for_site(&c, HOST, now()).unwrap_err();
        assert!(matches!(err, Error::NoCommonName { .. }), "{err}");
    }

    #[test]
    fn wildcard_san_rules() {
        assert!(san_matches("*.example.com", "a.example.com"));
        assert!(!san_matches("*.example.com", "a.b.example.com"));
        assert!(!san_matches("*.example.com", "example.com"));
        assert!(!san_matches("*.com", "example.com"));
    }

    #[test]
    fn der_key_and_garbage_are_refused() {
        assert!(matches!(
            Certificate::from_pem(&fixture("dcor.example.com.der")),
            Err(Error::Der)
        ));
        assert!(matches!(
            Certificate::from_pem(&fixture("key.pem")),
            Err(Error::PrivateKey)
        ));
        assert!(matches!(
            Certificate::from_pem(&fixture("cert-and-key.pem")),
            Err(Error::PrivateKey)
        ));
        assert!(matches!(
            Certificate::from_pem(b"hello world"),
            Err(Error::NotPem)
        ));
        assert!(matches!(Certificate::from_pem(b""), Err(Error::NotPem)));
        let csr = b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        assert!(matches!(
            Certificate::from_pem(csr),
            Err(Error::UnexpectedBlock { .. })
        ));
        let bad = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            Certificate::from_pem(bad),
            Err(Error::BadPem { .. })
        ));
        let not_x509 = b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            Certificate::from_pem(not_x509),
            Err(Error::BadCertificate { .. })
        ));
        let truncated = &fixture("dcor.example.com.pem")[..200];
        assert!(matches!(
            Certificate::from_pem(truncated),
            Err(Error::BadPem { .. })
        ));
    }

    #[test]
    fn chain_takes_the_first_and_warns() {
        let c = load("chain.pem");
        assert_eq!(c.common_name(), Some(HOST));
        assert_eq!(c.certificates_in_file(), 2);
        assert_eq!(c.pem(), fixture("chain.pem"));
        let r = check_for_site(&c, HOST, now()).unwrap();
        assert!(matches!(
            r.warnings[..],
            [Warning::ExtraCertificates { count: 1 }]
        ));
    }

    #[test]
    fn from_file_names_the_path() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/token");
        let c = Certificate::from_file(&dir.join("dcor.example.com.pem")).unwrap();
        assert_eq!(c.common_name(), Some(HOST));
        let err = Certificate::from_file(&dir.join("no-such.pem")).unwrap_err();
        assert!(err.to_string().contains("no-such.pem"), "{err}");
    }

    #[test]
    fn messages_are_one_line() {
        let t = at("2021-01-01T00:00:00Z");
        let errors = [
            Error::TooLarge { limit: 1 },
            Error::Der,
            Error::NotPem,
            Error::PrivateKey,
            Error::UnexpectedBlock {
                label: "X\nY".into(),
            },
            Error::EmptyHost,
            Error::NoCommonName { host: HOST.into() },
            Error::HostMismatch {
                host: HOST.into(),
                names: "CN=a".into(),
            },
            Error::Expired { not_after: t },
            Error::NotYetValid { not_before: t },
        ];
        for e in errors {
            let s = e.to_string();
            assert!(!s.contains('\n') && s.contains(':'), "{s:?}");
        }
        let warnings = [
            Warning::ExpiresSoon {
                not_after: t,
                days_left: 3,
            },
            Warning::CommonNameIsNotHost {
                common_name: "a\nb".into(),
                host: HOST.into(),
            },
            Warning::ExtraCertificates { count: 2 },
        ];
        for w in warnings {
            assert!(!w.to_string().contains('\n'));
        }
    }
}
