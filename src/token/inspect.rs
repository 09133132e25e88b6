//! `token inspect` (offline) and `token verify` (online) of a `.dcor-access` file.
//!
//! `inspect` lists the members without the password and runs every structural check;
//! with the password it also reads the certificate (hostname from the CN, as DCOR-Aid
//! takes it, fingerprint, validity) and the token's id, never showing the token.
//!
//! `verify` does what DCOR-Aid will do: connect to `https://<CN>` (or `--url`) trusting
//! only the bundled certificate (pinned, see [`crate::ckan::tls`]), and check that CKAN
//! accepts the token. CKAN treats a bad or revoked token as anonymous rather than
//! answering 401, so the check asks who the caller is (`user_show` without an id).

use std::time::Duration;

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::ckan::api::{self, Client};

use super::TokenError;
use super::access_file::{AccessFile, MemberInfo};
use super::cert::{self, Certificate};
use super::issue::{is_https, site_host};

/// One member as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub name: String,
    pub size: u64,
    pub compressed_size: u64,
    pub encrypted: bool,
    /// `stored`, `deflated`, `AES` or the raw method number.
    pub method: String,
}

impl From<&MemberInfo> for Member {
    fn from(m: &MemberInfo) -> Member {
        Member {
            name: m.name.escape_debug().take(80).collect(),
            size: m.size,
            compressed_size: m.compressed_size,
            encrypted: m.encrypted,
            method: match m.method {
                0 => "stored".into(),
                8 => "deflated".into(),
                99 => "AES".into(),
                n => format!("method {n}"),
            },
        }
    }
}

/// The certificate as DCOR-Aid will see it.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    /// The subject CN: the hostname DCOR-Aid connects to.
    pub hostname: Option<String>,
    pub san_names: Vec<String>,
    pub fingerprint_sha256: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub days_left: i64,
    pub expired: bool,
    pub not_yet_valid: bool,
    pub expires_soon: bool,
    /// `CA:TRUE` (usual for DCOR's self-signed certificates).
    pub is_ca: bool,
    pub certificates_in_file: usize,
}

impl CertInfo {
    fn of(c: &Certificate, now: Timestamp) -> CertInfo {
        let left = c.not_after().duration_since(now);
        CertInfo {
            hostname: c.common_name().map(str::to_string),
            san_names: c.san_names().to_vec(),
            fingerprint_sha256: c.fingerprint_sha256(),
            not_before: c.not_before(),
            not_after: c.not_after(),
            days_left: left.as_secs() / 86_400,
            expired: now > c.not_after(),
            not_yet_valid: now < c.not_before(),
            expires_soon: left < jiff::SignedDuration::from_hours(24 * cert::EXPIRY_WARNING_DAYS),
            is_ca: c.is_ca(),
            certificates_in_file: c.certificates_in_file(),
        }
    }
}

/// What the password opens.
#[derive(Debug, Clone, Serialize)]
pub struct Content {
    /// The token shown redacted: its length and id only.
    pub api_key: String,
    /// The token id (the JWT's `jti`), if the token is a JWT.
    pub token_id: Option<String>,
    pub certificate: Option<CertInfo>,
    /// Why the certificate is not usable, if it is not.
    pub certificate_problem: Option<String>,
}

/// The result of `token inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct Inspected {
    pub file_size: u64,
    pub members: Vec<Member>,
    /// The first structural problem (DCOR-Aid could not use the file), if any.
    pub problem: Option<String>,
    /// With the password: what the file holds.
    pub content: Option<Content>,
}

/// Redacts a token: its length and id, nothing of the secret part.
fn redact(token: &SecretString, id: Option<&str>) -> String {
    let len = token.expose_secret().chars().count();
    match id {
        Some(id) => format!("[redacted: JWT, {len} characters, token id {id}]"),
        None => format!("[redacted: {len} characters]"),
    }
}

/// Inspects a `.dcor-access` file held in memory; with `password`, also decrypts it.
pub fn inspect(
    bytes: &[u8],
    password: Option<&SecretString>,
    now: Timestamp,
) -> Result<Inspected, TokenError> {
    let listing = AccessFile::inspect_bytes(bytes)?;
    let members = listing.members.iter().map(Member::from).collect();
    let problem = listing.check().err().map(|e| e.to_string());
    let mut out = Inspected {
        file_size: listing.file_size,
        members,
        problem,
        content: None,
    };
    let Some(password) = password else {
        return Ok(out);
    };
    if out.problem.is_some() {
        return Ok(out);
    }
    let file = AccessFile::from_bytes(bytes, password)?;
    let token_id = api::jwt_id(&file.api_key).ok();
    let (certificate, certificate_problem) = match Certificate::from_pem(&file.certificate_pem) {
        Ok(c) => {
            let info = CertInfo::of(&c, now);
            let problem = if info.hostname.is_none() {
                Some("the certificate has no CN: DCOR-Aid cannot take a hostname from it".into())
            } else if info.expired {
                Some(format!(
                    "the certificate expired on {}",
                    info.not_after.strftime("%Y-%m-%d")
                ))
            } else if info.not_yet_valid {
                Some(format!(
                    "the certificate is not valid before {}",
                    info.not_before.strftime("%Y-%m-%d")
                ))
            } else {
                None
            };
            (Some(info), problem)
        }
        Err(e) => (None, Some(e.to_string())),
    };
    out.content = Some(Content {
        api_key: redact(&file.api_key, token_id.as_deref()),
        token_id,
        certificate,
        certificate_problem,
    });
    Ok(out)
}

/// The result of `token verify`.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// The CKAN user the token belongs to.
    pub user: String,
    /// The URL that was checked.
    pub url: String,
    /// Whether TLS was used, trusting only the bundled certificate.
    pub tls_pinned: bool,
    pub token_id: Option<String>,
    pub ckan_version: String,
    pub certificate: CertInfo,
    pub warnings: Vec<String>,
}

/// Verifies a `.dcor-access` file against its site; see the module documentation.
/// `url` defaults to `https://<CN>`, where DCOR-Aid connects. With an `http://` URL only
/// the token is checked (there is no TLS), and a warning says so.
pub fn verify(
    bytes: &[u8],
    password: &SecretString,
    url: Option<&str>,
    timeout: Duration,
    now: Timestamp,
) -> Result<Verified, TokenError> {
    let file = AccessFile::from_bytes(bytes, password)?;
    let c = Certificate::from_pem(&file.certificate_pem)?;
    let info = CertInfo::of(&c, now);
    if info.expired {
        return Err(cert::Error::Expired {
            not_after: info.not_after,
        }
        .into());
    }
    if info.not_yet_valid {
        return Err(cert::Error::NotYetValid {
            not_before: info.not_before,
        }
        .into());
    }
    let cn = info
        .hostname
        .clone()
        .filter(|h| !h.contains('*') && !h.trim().is_empty());
    let url = match (url, &cn) {
        (Some(u), _) => u.to_string(),
        (None, Some(cn)) => format!("https://{cn}"),
        (None, None) => return Err(TokenError::NoSiteForVerify),
    };
    let mut warnings = Vec::new();
    let host = site_host(&url)?;
    match &cn {
        Some(cn) if cn.eq_ignore_ascii_case(&host) => {}
        Some(cn) => warnings.push(format!(
            "checked {url}, but DCOR-Aid connects to the certificate's CN {cn}"
        )),
        None => warnings
            .push("the certificate has no CN: DCOR-Aid cannot take a hostname from it".to_string()),
    }
    if info.expires_soon {
        warnings.push(format!(
            "the certificate expires on {} (in {} days): renew it, then re-issue tokens",
            info.not_after.strftime("%Y-%m-%d"),
            info.days_left
        ));
    }
    let tls = is_https(&url);
    let client = if tls {
        Client::pinned(
            &url,
            Some(file.api_key.clone()),
            timeout,
            &file.certificate_pem,
        )?
    } else {
        warnings.push(format!(
            "{url} is plain http: only the token was checked, not the certificate"
        ));
        Client::new(&url, Some(file.api_key.clone()), timeout)?
    };
    let status = client.status_show()?;
    let user = client.whoami()?;
    Ok(Verified {
        user,
        url,
        tls_pinned: tls,
        token_id: api::jwt_id(&file.api_key).ok(),
        ckan_version: status.ckan_version,
        certificate: info,
        warnings,
    })
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

    fn pw(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn inspects_the_dclab_vector_with_and_without_password() {
        let bytes = fixture("example_access_token.dcor-access");
        let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        let without = inspect(&bytes, None, now).unwrap();
        assert!(without.problem.is_none(), "{:?}", without.problem);
        assert!(without.content.is_none());
        let names: Vec<&str> = without.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["api_key.txt", "server.cert"]);
        assert!(without.members.iter().all(|m| m.encrypted));

        let with = inspect(&bytes, Some(&pw("42")), now).unwrap();
        let content = with.content.unwrap();
        let cert = content.certificate.unwrap();
        assert_eq!(cert.hostname.as_deref(), Some("dcor.example.com"));
        assert!(cert.is_ca);
        assert!(!cert.expired);
        // The key is not a JWT in this vector, and it is never shown.
        assert!(!content.api_key.contains("7c0c7203"), "{}", content.api_key);
        assert!(content.token_id.is_none());

        let err = inspect(&bytes, Some(&pw("43")), now).unwrap_err();
        assert!(
            matches!(
                err,
                TokenError::AccessFile(super::super::access_file::Error::WrongPassword)
            ),
            "{err}"
        );
    }

    #[test]
    fn inspect_reports_an_aes_zip_as_a_problem() {
        let bytes = fixture("aes.dcor-access");
        let out = inspect(&bytes, Some(&pw("secret")), Timestamp::now()).unwrap();
        assert!(out.problem.unwrap().contains("AES"));
        assert!(out.content.is_none());
    }

    #[test]
    fn verify_refuses_an_expired_certificate_before_connecting() {
        let file = AccessFile::new(
            pw("eyJhbGciOiJIUzI1NiJ9.eyJqdGkiOiJhYmMifQ.c2ln"),
            fixture("expired.pem"),
        );
        let bytes = file.to_bytes(&pw("pw")).unwrap();
        let err = verify(
            &bytes,
            &pw("pw"),
            Some("https://127.0.0.1:9"),
            Duration::from_secs(1),
            Timestamp::now(),
        )
        .unwrap_err();
        assert!(
            matches!(err, TokenError::Certificate(cert::Error::Expired { .. })),
            "{err}"
        );
    }
}
