//! A small blocking client for CKAN's Action API (`/api/3/action/NAME`), covering what
//! token issuing needs: users and API tokens.
//!
//! CKAN quirks this client encodes (measured on CKAN 2.11.6 and 2.12.0):
//! - The token goes in the `Authorization` header as the raw JWT. `Bearer …` and
//!   `X-CKAN-API-Key` are ignored, and the request then runs as anonymous.
//! - A bad, revoked or wrongly signed token never gets a 401: CKAN treats the caller as
//!   anonymous. So [`Client::whoami`] is the way to check a token: `user_show` without an
//!   id returns the caller's own user only when the token is valid.
//! - Errors come as `{"success": false, "error": {"__type": …, …}}` with 409 for
//!   validation (field-keyed message lists), 403 for authorization and 404 for not found,
//!   but 400 replies carry a bare JSON string.
//! - `api_token_create` returns only `{"token"}` on 2.11 (2.12 adds `"id"`); the token id
//!   is the JWT's `jti` claim, which [`jwt_id`] reads without verifying the signature.
//!
//! Every request is a JSON `POST` (CKAN accepts it for every action, and nothing lands in
//! URLs or logs). Redirects are not followed, so a token is only ever sent to the
//! configured site. No error message contains a token: CKAN's messages are scrubbed of
//! it and cut to one line.

use std::fmt;
use std::io::Read;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

/// Largest reply body read from CKAN.
const MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;
/// Longest CKAN message kept in an error.
const MAX_MESSAGE_CHARS: usize = 300;

/// Errors from talking to CKAN. Each message is one line that says what to do, and none
/// contains a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "invalid CKAN URL {url:?} ({reason}): set [ckan] url to the site's address, e.g. https://dcor.example.org"
    )]
    InvalidUrl { url: String, reason: String },
    #[error(
        "the API token has characters not allowed in an HTTP header: check the token file for stray bytes"
    )]
    InvalidTokenCharacters,
    #[error(
        "the certificate cannot be used as a TLS root ({reason}): give the site's PEM certificate"
    )]
    InvalidCertificate { reason: String },
    #[error("cannot set up the HTTP client ({reason}): report this as a bug")]
    ClientSetup { reason: String },
    #[error(
        "CKAN at {host} did not answer {action} within {secs} s: check that it is running, or raise the timeout"
    )]
    Timeout {
        host: String,
        action: String,
        secs: u64,
    },
    #[error(
        "cannot connect to CKAN at {host} ({reason}): check [ckan] url and that CKAN is running"
    )]
    Connect { host: String, reason: String },
    #[error(
        "TLS with {host} failed ({reason}): the site does not present a certificate we trust; check [ckan] url and certificate"
    )]
    Tls { host: String, reason: String },
    #[error(
        "CKAN redirected {action} to {location}: set [ckan] url to the address it redirects to"
    )]
    Redirect { action: String, location: String },
    #[error("CKAN refused {action} ({}): fix these values and try again", fields_summary(.fields))]
    Validation {
        action: String,
        /// Field name and CKAN's messages for it, in CKAN's order.
        fields: Vec<(String, Vec<String>)>,
    },
    #[error(
        "CKAN denied {action} ({message}): use a sysadmin's API token, and check that it is not revoked"
    )]
    Authorization { action: String, message: String },
    #[error("CKAN found nothing for {action} ({message}): check the user name or id")]
    NotFound { action: String, message: String },
    #[error(
        "CKAN rejected the {action} request ({message}): check that [ckan] url is a CKAN 2.10 or newer site"
    )]
    BadRequest { action: String, message: String },
    #[error("CKAN failed on {action} (HTTP {status}: {message}): see the CKAN server log")]
    Server {
        action: String,
        status: u16,
        message: String,
    },
    #[error(
        "unexpected reply from CKAN to {action} (HTTP {status}, {reason}): check that [ckan] url points at a CKAN site"
    )]
    Unexpected {
        action: String,
        status: u16,
        reason: String,
    },
    #[error(
        "no API token configured for {action}: set [ckan] api-token-file to a sysadmin's token"
    )]
    NoToken { action: String },
    #[error(
        "token is not valid (CKAN treats it as anonymous): it was revoked, mistyped or is for another site; issue a new one"
    )]
    InvalidToken,
    #[error(
        "the API token is not a JWT ({reason}): CKAN 2.10+ tokens are JWTs; create a new one with `ckan user token add`"
    )]
    MalformedJwt { reason: String },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `status_show`: what the site says about itself.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub ckan_version: String,
    #[serde(default)]
    pub site_url: String,
    #[serde(default)]
    pub site_title: Option<String>,
    #[serde(default)]
    pub extensions: Vec<String>,
}

/// The parts of CKAN's user dictionary ckan-vault uses.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
    /// Present for oneself and for sysadmins.
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub fullname: Option<String>,
    #[serde(default)]
    pub sysadmin: bool,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub created: Option<String>,
}

/// A freshly created API token. `Debug` does not show the token.
pub struct NewToken {
    /// The JWT to put into `api_key.txt`.
    pub token: SecretString,
    /// The token id (the JWT's `jti`), used to list and revoke it.
    pub id: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("token", &"[REDACTED]")
            .field("id", &self.id)
            .finish()
    }
}

/// One entry of `api_token_list` (no secret in it).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token id (`jti`).
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub last_access: Option<String>,
}

/// A CKAN Action API client bound to one site and, optionally, one API token.
pub struct Client {
    http: reqwest::blocking::Client,
    base: Url,
    token: Option<SecretString>,
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Client {
    /// A client for the site at `base_url` (e.g. `https://dcor.example.org`, or with a
    /// path prefix), trusting the system's usual roots.
    pub fn new(
        base_url: &str,
        api_token: Option<SecretString>,
        timeout: Duration,
    ) -> Result<Client> {
        Self::build(base_url, api_token, timeout, None)
    }

    /// A client that trusts ONLY the certificate(s) in `certificate_pem`, with the
    /// built-in roots disabled: what `token verify` needs to show that the site presents
    /// the certificate bundled in a `.dcor-access` file.
    ///
    /// Measured with rustls here: a self-signed certificate without `CA:TRUE` works as
    /// its own trust anchor, and so does a PEM that also holds the issuing CA. Refused
    /// are a self-signed `CA:TRUE` certificate served as the site's own (webpki's
    /// `CaUsedAsEndEntity`; DCOR's example certificate is one, and Python's `ssl` accepts
    /// it) and a CA-issued leaf bundled without its CA (Python 3.11 refuses that too).
    pub fn trusting_only(
        base_url: &str,
        api_token: Option<SecretString>,
        timeout: Duration,
        certificate_pem: &[u8],
    ) -> Result<Client> {
        Self::build(base_url, api_token, timeout, Some(certificate_pem))
    }

    /// A client that trusts exactly the certificate(s) in `certificate_pem` by pinning
    /// (see [`super::tls`]): the server's certificate must be one of them, byte for byte,
    /// or be issued by one of them. Unlike [`Client::trusting_only`] this accepts a
    /// self-signed `CA:TRUE` certificate served as the site's own, as DCOR-Aid (Python's
    /// `ssl`) does. For a plain `http://` URL there is no TLS and nothing is pinned.
    pub fn pinned(
        base_url: &str,
        api_token: Option<SecretString>,
        timeout: Duration,
        certificate_pem: &[u8],
    ) -> Result<Client> {
        let config = super::tls::pinned_config(certificate_pem)?;
        Self::build_with(base_url, api_token, timeout, None, Some(config))
    }

    fn build(
        base_url: &str,
        api_token: Option<SecretString>,
        timeout: Duration,
        trust_only: Option<&[u8]>,
    ) -> Result<Client> {
        Self::build_with(base_url, api_token, timeout, trust_only, None)
    }

    fn build_with(
        base_url: &str,
        api_token: Option<SecretString>,
        timeout: Duration,
        trust_only: Option<&[u8]>,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Client> {
        let base = parse_base_url(base_url)?;
        if let Some(t) = &api_token {
            HeaderValue::from_str(t.expose_secret()).map_err(|_| Error::InvalidTokenCharacters)?;
        }
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ckan-vault/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = trust_only {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                Error::InvalidCertificate {
                    reason: one_line(&e.to_string(), None),
                }
            })?;
            if certs.is_empty() {
                return Err(Error::InvalidCertificate {
                    reason: "no certificate in the PEM data".into(),
                });
            }
            builder = builder.tls_certs_only(certs);
        }
        if let Some(config) = tls {
            builder = builder.tls_backend_preconfigured(config);
        }
        let http = builder.build().map_err(|e| Error::ClientSetup {
            reason: one_line(&e.to_string(), None),
        })?;
        Ok(Client {
            http,
            base,
            token: api_token,
            timeout,
        })
    }

    /// The site's base URL (always ending in `/`).
    #[must_use]
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `status_show`: works anonymously; a cheap "is this a CKAN" probe.
    pub fn status_show(&self) -> Result<Status> {
        self.call_as("status_show", &json!({}))
    }

    /// `user_show`: with `id`, that user; without, the caller (needs a valid token).
    pub fn user_show(&self, id: Option<&str>) -> Result<User> {
        match id {
            Some(id) => self.call_as("user_show", &json!({ "id": id })),
            None => self.call_as("user_show", &json!({})),
        }
    }

    /// The name of the user the token belongs to. A token CKAN does not accept gives
    /// [`Error::InvalidToken`], since CKAN then answers as for an anonymous caller.
    pub fn whoami(&self) -> Result<String> {
        if self.token.is_none() {
            return Err(Error::NoToken {
                action: "whoami".into(),
            });
        }
        match self.call("user_show", &json!({})) {
            Ok(v) => match v.get("name").and_then(Value::as_str) {
                Some(name) if !name.is_empty() => Ok(name.to_owned()),
                _ => Err(Error::InvalidToken),
            },
            Err(Error::Authorization { .. } | Error::NotFound { .. }) => Err(Error::InvalidToken),
            Err(e) => Err(e),
        }
    }

    /// `user_create` (needs a sysadmin token unless the site allows self-registration).
    pub fn user_create(&self, name: &str, email: &str, password: &SecretString) -> Result<User> {
        self.require_token("user_create")?;
        self.call_as(
            "user_create",
            &json!({ "name": name, "email": email, "password": password.expose_secret() }),
        )
    }

    /// `api_token_create` for `user`, named `name`. The id comes from the reply on CKAN
    /// 2.12, and from the JWT's `jti` claim on 2.11.
    pub fn api_token_create(&self, user: &str, name: &str) -> Result<NewToken> {
        self.require_token("api_token_create")?;
        let v = self.call("api_token_create", &json!({ "user": user, "name": name }))?;
        let token = v
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Unexpected {
                action: "api_token_create".into(),
                status: 200,
                reason: "no token in the reply".into(),
            })?;
        let token = SecretString::from(token.to_owned());
        let id = match v.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => jwt_id(&token)?,
        };
        Ok(NewToken { token, id })
    }

    /// `api_token_list` for a user (name or id). Needs that user's token or a sysadmin's.
    pub fn api_token_list(&self, user_id: &str) -> Result<Vec<TokenInfo>> {
        self.require_token("api_token_list")?;
        self.call_as("api_token_list", &json!({ "user_id": user_id }))
    }

    /// `api_token_revoke` by token id. CKAN answers success even for an unknown id.
    pub fn api_token_revoke_jti(&self, jti: &str) -> Result<()> {
        self.require_token("api_token_revoke")?;
        self.call("api_token_revoke", &json!({ "jti": jti }))
            .map(|_| ())
    }

    fn require_token(&self, action: &str) -> Result<()> {
        match self.token {
            Some(_) => Ok(()),
            None => Err(Error::NoToken {
                action: action.into(),
            }),
        }
    }

    fn call_as<T: serde::de::DeserializeOwned>(&self, action: &str, body: &Value) -> Result<T> {
        let v = self.call(action, body)?;
        serde_json::from_value(v).map_err(|e| Error::Unexpected {
            action: action.into(),
            status: 200,
            reason: one_line(&format!("unexpected result shape: {e}"), None),
        })
    }

    /// POSTs `body` to the action and returns its `result`.
    fn call(&self, action: &str, body: &Value) -> Result<Value> {
        let url = self
            .base
            .join(&format!("api/3/action/{action}"))
            .map_err(|e| Error::InvalidUrl {
                url: self.base.to_string(),
                reason: e.to_string(),
            })?;
        let mut req = self.http.post(url).json(body);
        if let Some(t) = &self.token {
            let mut value = HeaderValue::from_str(t.expose_secret())
                .map_err(|_| Error::InvalidTokenCharacters)?;
            value.set_sensitive(true);
            req = req.header(AUTHORIZATION, value);
        }
        let resp = req.send().map_err(|e| self.transport_error(action, &e))?;
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or("(no location)");
            return Err(Error::Redirect {
                action: action.into(),
                location: one_line(location, None),
            });
        }
        let mut bytes = Vec::new();
        resp.take(MAX_BODY_BYTES)
            .read_to_end(&mut bytes)
            .map_err(
                |e| match e.get_ref().and_then(|i| i.downcast_ref::<reqwest::Error>()) {
                    Some(re) if re.is_timeout() => self.timeout_error(action),
                    _ => Error::Unexpected {
                        action: action.into(),
                        status: status.as_u16(),
                        reason: one_line(&format!("reading the reply failed: {e}"), None),
                    },
                },
            )?;
        let token = self.token.as_ref().map(|t| t.expose_secret());
        interpret(action, status.as_u16(), &bytes, token)
    }

    fn host(&self) -> String {
        let host = self.base.host_str().unwrap_or("?");
        match self.base.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        }
    }

    fn timeout_error(&self, action: &str) -> Error {
        Error::Timeout {
            host: self.host(),
            action: action.into(),
            secs: self.timeout.as_secs().max(1),
        }
    }

    fn transport_error(&self, action: &str, e: &reqwest::Error) -> Error {
        if e.is_timeout() {
            return self.timeout_error(action);
        }
        let chain = error_chain(e);
        if let Some(at) = chain.find(super::tls::NOT_PINNED) {
            let rest = &chain[at..];
            let end = rest.find(')').map_or(rest.len(), |i| i + 1);
            return Error::Tls {
                host: self.host(),
                reason: one_line(&rest[..end], None),
            };
        }
        let lower = chain.to_ascii_lowercase();
        if lower.contains("causedasendentity") {
            return Error::Tls {
                host: self.host(),
                reason: "the site's certificate is a CA certificate (CA:TRUE) used as its own, \
                         which rustls refuses"
                    .into(),
            };
        }
        if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake")
            || lower.contains("unknownissuer")
        {
            Error::Tls {
                host: self.host(),
                reason: innermost(e),
            }
        } else {
            Error::Connect {
                host: self.host(),
                reason: innermost(e),
            }
        }
    }
}

/// Reads the `jti` claim of a JWT without verifying it: the token id CKAN uses to list
/// and revoke tokens.
pub fn jwt_id(token: &SecretString) -> Result<String> {
    let malformed = |reason: &str| Error::MalformedJwt {
        reason: reason.into(),
    };
    let mut parts = token.expose_secret().trim().split('.');
    let (Some(_header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not three dot-separated parts"));
    };
    let payload = payload.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| malformed("payload is not base64url"))?;
    let claims: Value =
        serde_json::from_slice(&bytes).map_err(|_| malformed("payload is not JSON"))?;
    match claims.get("jti") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(malformed("jti claim is not a string")),
        None => Err(malformed("no jti claim")),
    }
}

fn parse_base_url(base_url: &str) -> Result<Url> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: base_url.chars().take(100).collect(),
        reason: reason.into(),
    };
    let mut url = Url::parse(base_url.trim()).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(invalid("scheme must be https or http"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::InvalidUrl {
            url: "(redacted: it holds credentials)".into(),
            reason: "credentials in the URL; put the token in [ckan] api-token-file".into(),
        });
    }
    url.set_query(None);
    url.set_fragment(None);
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Turns a CKAN reply into the action's `result`, or the typed error for its shape.
fn interpret(action: &str, status: u16, body: &[u8], token: Option<&str>) -> Result<Value> {
    let action = action.to_owned();
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let unexpected = |reason: String| Error::Unexpected {
        action: action.clone(),
        status,
        reason: one_line(&reason, token),
    };
    let Some(v) = parsed else {
        let snippet = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        return Err(match status {
            500..=599 => Error::Server {
                action,
                status,
                message: one_line(&snippet, token),
            },
            _ if snippet.trim_start().starts_with('<') => {
                unexpected("an HTML page, not a JSON reply".into())
            }
            _ => unexpected(format!("not JSON: {snippet}")),
        });
    };
    if status == 200 && v.get("success") == Some(&Value::Bool(true)) {
        return Ok(v.get("result").cloned().unwrap_or(Value::Null));
    }
    // 400 replies are a bare JSON string.
    if let Value::String(s) = &v {
        let message = one_line(s, token);
        return Err(match status {
            500..=599 => Error::Server {
                action,
                status,
                message,
            },
            _ => Error::BadRequest { action, message },
        });
    }
    let Some(err) = v.get("error").and_then(Value::as_object) else {
        return Err(unexpected("no result and no error in the reply".into()));
    };
    let kind = err.get("__type").and_then(Value::as_str).unwrap_or("");
    let message = one_line(
        err.get("message").and_then(Value::as_str).unwrap_or(kind),
        token,
    );
    match (status, kind) {
        (409, _) | (_, "Validation Error") => {
            let fields = err
                .iter()
                .filter(|(k, _)| !k.starts_with("__"))
                .map(|(k, v)| (one_line(k, token), messages(v, token)))
                .collect();
            Err(Error::Validation { action, fields })
        }
        (403, _) | (_, "Authorization Error") => Err(Error::Authorization { action, message }),
        (404, _) | (_, "Not Found Error") => Err(Error::NotFound { action, message }),
        (500..=599, _) => Err(Error::Server {
            action,
            status,
            message,
        }),
        (400, _) => Err(Error::BadRequest { action, message }),
        _ => Err(unexpected(format!("{kind}: {message}"))),
    }
}

fn messages(v: &Value, token: Option<&str>) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => one_line(s, token),
                other => one_line(&other.to_string(), token),
            })
            .collect(),
        Value::String(s) => vec![one_line(s, token)],
        other => vec![one_line(&other.to_string(), token)],
    }
}

fn fields_summary(fields: &[(String, Vec<String>)]) -> String {
    if fields.is_empty() {
        return "validation failed".into();
    }
    fields
        .iter()
        .map(|(k, msgs)| format!("{k}: {}", msgs.join(" ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One line, at most [`MAX_MESSAGE_CHARS`], with the token (if any) cut out.
fn one_line(s: &str, token: Option<&str>) -> String {
    let mut s = s.to_owned();
    if let Some(t) = token.filter(|t| t.len() >= 8) {
        s = s.replace(t, "[REDACTED]");
    }
    let mut out: String = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if s.chars().count() > MAX_MESSAGE_CHARS {
        out.push('…');
    }
    out
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

/// The most specific cause, which is what a user can act on ("Connection refused",
/// "invalid peer certificate: UnknownIssuer").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    one_line(&cur.to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A JWT as CKAN 2.11 issues them (HS256, claims jti and iat); signature is fake.
    fn jwt(jti: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.{}",
            b64(r#"{"typ":"JWT","alg":"HS256"}"#),
            b64(&format!(r#"{{"jti":"{jti}","iat":1767225600}}"#)),
            b64("not-a-real-signature")
        )
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn jti_is_read_from_the_payload() {
        let t = jwt("Vm9kc2Fr-4d1a_Ir8N6wlpZ9c1b2");
        assert_eq!(jwt_id(&secret(&t)).unwrap(), "Vm9kc2Fr-4d1a_Ir8N6wlpZ9c1b2");
        // Padded payloads are accepted too.
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        parts[1].push_str("==");
        assert!(jwt_id(&secret(&parts.join("."))).is_ok());
    }

    #[test]
    fn malformed_jwts_are_refused_without_echo() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let cases = [
            "7c0c7203-4e25-4b14-a118-553c496a7a52".to_owned(),
            "a.b".to_owned(),
            "a.!!!.c".to_owned(),
            format!("h.{}.s", b64("not json")),
            format!("h.{}.s", b64(r#"{"iat":1}"#)),
            format!("h.{}.s", b64(r#"{"jti":5}"#)),
            "a.b.c.d".to_owned(),
        ];
        for c in cases {
            let err = jwt_id(&secret(&c)).unwrap_err();
            assert!(matches!(err, Error::MalformedJwt { .. }), "{c}: {err}");
            assert!(!err.to_string().contains(&c), "{err}");
        }
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            parse_base_url("https://dcor.example.org").unwrap().as_str(),
            "https://dcor.example.org/"
        );
        assert_eq!(
            parse_base_url("http://127.0.0.1:5000/ckan?x=1")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:5000/ckan/"
        );
        for bad in [
            "dcor.example.org",
            "ftp://x",
            "https://",
            "https://u:p@host/",
        ] {
            assert!(
                matches!(parse_base_url(bad), Err(Error::InvalidUrl { .. })),
                "{bad}"
            );
        }
        let err = parse_base_url("https://admin:hunter22@host/").unwrap_err();
        assert!(!err.to_string().contains("hunter22"), "{err}");
    }

    #[test]
    fn success_envelope() {
        let v = interpret(
            "status_show",
            200,
            br#"{"help":"h","success":true,"result":{"ckan_version":"2.11.6"}}"#,
            None,
        )
        .unwrap();
        assert_eq!(v["ckan_version"], "2.11.6");
    }

    #[test]
    fn validation_409_keeps_field_messages() {
        let body = br#"{"help":"h","success":false,"error":{"name":["That login name is not available."],"email":["The email address 'a@b.c' belongs to a registered user."],"__type":"Validation Error"}}"#;
        let err = interpret("user_create", 409, body, None).unwrap_err();
        let Error::Validation { fields, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(fields.len(), 2);
        let msg = err.to_string();
        assert!(
            msg.contains("name: That login name is not available."),
            "{msg}"
        );
        assert!(msg.contains("email: The email address"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn authorization_403_and_not_found_404() {
        let body = br#"{"success":false,"error":{"__type":"Authorization Error","message":"Access denied: User alice not authorized to create users via the API"}}"#;
        let err = interpret("user_create", 403, body, None).unwrap_err();
        assert!(matches!(err, Error::Authorization { .. }), "{err}");
        assert!(err.to_string().contains("sysadmin"), "{err}");
        let body = br#"{"success":false,"error":{"__type":"Not Found Error","message":"Not found: User not found"}}"#;
        let err = interpret("api_token_create", 404, body, None).unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
    }

    #[test]
    fn bad_request_400_is_a_bare_string() {
        let err = interpret(
            "nope",
            400,
            br#""Bad request - Action name not known: nope""#,
            None,
        )
        .unwrap_err();
        match &err {
            Error::BadRequest { message, .. } => {
                assert_eq!(message, "Bad request - Action name not known: nope")
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn server_errors_and_garbage() {
        let body = br#"{"success":false,"error":{"__type":"Search Connection Error","message":"Unable to connect to the search server"}}"#;
        let err = interpret("package_search", 500, body, None).unwrap_err();
        assert!(matches!(err, Error::Server { status: 500, .. }), "{err}");
        let err = interpret("status_show", 502, b"<html>Bad Gateway</html>", None).unwrap_err();
        assert!(matches!(err, Error::Server { status: 502, .. }), "{err}");
        let err = interpret("status_show", 200, b"<html>welcome</html>", None).unwrap_err();
        assert!(matches!(err, Error::Unexpected { .. }), "{err}");
        let err = interpret("status_show", 200, br#"{"a":1}"#, None).unwrap_err();
        assert!(matches!(err, Error::Unexpected { .. }), "{err}");
    }

    #[test]
    fn token_is_scrubbed_from_ckan_messages() {
        let t = jwt("abc");
        let body = format!(
            r#"{{"success":false,"error":{{"__type":"Authorization Error","message":"bad token {t}\nsecond line"}}}}"#
        );
        let err = interpret("x", 403, body.as_bytes(), Some(&t)).unwrap_err();
        let msg = format!("{err} {err:?}");
        assert!(!msg.contains(&t), "{msg}");
        assert!(!err.to_string().contains('\n'));
    }

    /// Serves canned HTTP replies on loopback, one per connection, and hands back each
    /// request's raw text.
    fn serve(replies: Vec<(u16, String)>) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for (status, body) in replies {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    head.push_str(&line);
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                }
                let mut body_in = vec![0; len];
                reader.read_exact(&mut body_in).unwrap();
                head.push_str(&String::from_utf8_lossy(&body_in));
                tx.send(head).unwrap();
                let mut stream = stream;
                write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
        });
        (base, rx)
    }

    fn ok(result: &str) -> (u16, String) {
        (
            200,
            format!(r#"{{"help":"h","success":true,"result":{result}}}"#),
        )
    }

    #[test]
    fn sends_the_raw_token_as_authorization_and_posts_json() {
        let t = jwt("id-1");
        let (base, rx) = serve(vec![ok(
            r#"{"token":"TOKEN-PLACEHOLDER"}"#.replace("TOKEN-PLACEHOLDER", &t).as_str(),
        )]);
        let c = Client::new(&base, Some(secret(&t)), Duration::from_secs(5)).unwrap();
        let new = c.api_token_create("alice", "dcor-aid").unwrap();
        assert_eq!(new.id, "id-1");
        assert_eq!(new.token.expose_secret(), t);
        assert!(!format!("{new:?} {c:?}").contains(&t));
        let req = rx.recv().unwrap();
        assert!(
            req.starts_with("POST /api/3/action/api_token_create HTTP/1.1"),
            "{req}"
        );
        let lower = req.to_ascii_lowercase();
        assert!(
            lower.contains(&format!("authorization: {}\r\n", t.to_ascii_lowercase())),
            "{req}"
        );
        assert!(!lower.contains("bearer"), "{req}");
        assert!(lower.contains("content-type: application/json"), "{req}");
        assert!(
            req.ends_with(r#"{"name":"dcor-aid","user":"alice"}"#)
                || req.ends_with(r#"{"user":"alice","name":"dcor-aid"}"#),
            "{req}"
        );
    }

    #[test]
    fn token_create_prefers_the_reply_id_of_ckan_2_12() {
        let t = jwt("from-jwt");
        let (base, _rx) = serve(vec![ok(&format!(r#"{{"token":"{t}","id":"from-reply"}}"#))]);
        let c = Client::new(&base, Some(secret("admin-token")), Duration::from_secs(5)).unwrap();
        assert_eq!(c.api_token_create("alice", "n").unwrap().id, "from-reply");
    }

    #[test]
    fn whoami_maps_anonymous_answers_to_invalid_token() {
        let (base, _rx) = serve(vec![
            ok(r#"{"id":"u1","name":"alice","sysadmin":false,"state":"active"}"#),
            (
                403,
                r#"{"success":false,"error":{"__type":"Authorization Error","message":"Access denied"}}"#.into(),
            ),
            (
                404,
                r#"{"success":false,"error":{"__type":"Not Found Error","message":"Not found"}}"#.into(),
            ),
        ]);
        let c = Client::new(&base, Some(secret("tok-12345678")), Duration::from_secs(5)).unwrap();
        assert_eq!(c.whoami().unwrap(), "alice");
        for _ in 0..2 {
            let err = c.whoami().unwrap_err();
            assert!(matches!(err, Error::InvalidToken), "{err}");
            assert!(
                err.to_string()
                    .starts_with("token is not valid (CKAN treats it as anonymous)")
            );
        }
        let anon = Client::new(&base, None, Duration::from_secs(5)).unwrap();
        assert!(matches!(anon.whoami(), Err(Error::NoToken { .. })));
    }

    #[test]
    fn list_and_revoke() {
        let (base, rx) = serve(vec![
            ok(
                r#"[{"id":"j1","name":"dcor-aid","user_id":"u1","created_at":"2026-01-01T00:00:00","last_access":null}]"#,
            ),
            ok("null"),
        ]);
        let c = Client::new(&base, Some(secret("admin-token")), Duration::from_secs(5)).unwrap();
        let list = c.api_token_list("alice").unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, "j1");
        assert_eq!(list[0].last_access, None);
        c.api_token_revoke_jti("j1").unwrap();
        let _ = rx.recv().unwrap();
        let revoke = rx.recv().unwrap();
        assert!(revoke.ends_with(r#"{"jti":"j1"}"#), "{revoke}");
    }

    #[test]
    fn redirects_are_not_followed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 301 Moved\r\nLocation: https://elsewhere.example/api/3/action/status_show\r\nContent-Length: 0\r\n\r\n");
        });
        let c = Client::new(&base, Some(secret("admin-token")), Duration::from_secs(5)).unwrap();
        let err = c.status_show().unwrap_err();
        assert!(matches!(err, Error::Redirect { .. }), "{err}");
        assert!(err.to_string().contains("elsewhere.example"), "{err}");
    }

    #[test]
    fn connection_refused() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t = jwt("x");
        let c = Client::new(
            &format!("http://127.0.0.1:{port}"),
            Some(secret(&t)),
            Duration::from_secs(5),
        )
        .unwrap();
        let err = c.status_show().unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        assert!(!msg.contains(&t) && !msg.contains('\n'), "{msg}");
    }

    #[test]
    fn timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (done_tx, done_rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let (_s, _) = listener.accept().unwrap();
            let _ = done_rx.recv_timeout(Duration::from_secs(10));
        });
        let c = Client::new(&base, None, Duration::from_millis(300)).unwrap();
        let err = c.status_show().unwrap_err();
        drop(done_tx);
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    }

    #[test]
    fn actions_needing_a_token_say_so() {
        let c = Client::new("http://127.0.0.1:9", None, Duration::from_secs(1)).unwrap();
        let err = c
            .user_create("a", "a@b.c", &secret("password1"))
            .unwrap_err();
        assert!(matches!(err, Error::NoToken { .. }), "{err}");
        assert!(matches!(c.api_token_list("a"), Err(Error::NoToken { .. })));
        assert!(matches!(
            c.api_token_revoke_jti("a"),
            Err(Error::NoToken { .. })
        ));
    }

    #[test]
    fn token_with_newline_is_refused_up_front() {
        let err = Client::new(
            "https://x.example",
            Some(secret("abc\ndef")),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidTokenCharacters), "{err}");
    }

    /// `openssl s_server` on a free loopback port with a fixture certificate; killed on drop.
    struct TlsServer {
        child: std::process::Child,
        port: u16,
    }

    impl TlsServer {
        fn start(cert: &str) -> TlsServer {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/token");
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new("openssl")
                .args(["s_server", "-quiet", "-www", "-accept"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("-cert")
                .arg(dir.join(cert))
                .arg("-key")
                .arg(dir.join("key.pem"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("the openssl CLI is needed for this test: apt-get install openssl");
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return TlsServer { child, port };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            panic!("openssl s_server did not start");
        }
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn fixture_pem(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/token")
                .join(name),
        )
        .unwrap()
    }

    /// What `token verify` will rely on: with only the bundled certificate trusted, the
    /// handshake succeeds for that certificate and fails for any other. (s_server is no
    /// CKAN, so a successful handshake still ends in a non-TLS error.)
    #[test]
    fn trusting_only_the_bundled_certificate() {
        let server = TlsServer::start("localhost.pem");
        let url = format!("https://127.0.0.1:{}", server.port);
        let timeout = Duration::from_secs(10);

        // s_server -www never answers a POST: after the handshake the request times out.
        let good = Client::trusting_only(
            &url,
            None,
            Duration::from_secs(2),
            &fixture_pem("localhost.pem"),
        )
        .unwrap();
        let err = good.status_show().unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");

        let other =
            Client::trusting_only(&url, None, timeout, &fixture_pem("dcor.example.com.pem"))
                .unwrap();
        let err = other.status_show().unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "{err}");

        // The system roots do not know a self-signed certificate either.
        let system = Client::new(&url, None, timeout).unwrap();
        let err = system.status_show().unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "{err}");
    }

    /// A known limitation: rustls refuses a self-signed CA:TRUE certificate as the
    /// server's own (DCOR's example certificate is one), where Python's ssl accepts it.
    #[test]
    fn ca_certificate_as_server_certificate_is_refused_by_rustls() {
        let server = TlsServer::start("localhost-ca.pem");
        let url = format!("https://127.0.0.1:{}", server.port);
        let client = Client::trusting_only(
            &url,
            None,
            Duration::from_secs(10),
            &fixture_pem("localhost-ca.pem"),
        )
        .unwrap();
        let err = client.status_show().unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "{err}");
        assert!(err.to_string().contains("CA:TRUE"), "{err}");
    }

    /// The pinning client (what `token verify` uses) accepts the self-signed CA:TRUE
    /// certificate rustls refuses above, and only that certificate.
    #[test]
    fn pinned_accepts_the_bundled_ca_certificate_and_nothing_else() {
        let server = TlsServer::start("localhost-ca.pem");
        let url = format!("https://127.0.0.1:{}", server.port);
        // s_server -www never answers a POST: after the handshake the request times out.
        let pinned = Client::pinned(
            &url,
            None,
            Duration::from_secs(2),
            &fixture_pem("localhost-ca.pem"),
        )
        .unwrap();
        let err = pinned.status_show().unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");

        // localhost.pem has the same names and key, but is not what the server presents
        // (and the CA:TRUE certificate it does present cannot chain to a leaf).
        for other in ["localhost.pem", "dcor.example.com.pem"] {
            let client =
                Client::pinned(&url, None, Duration::from_secs(10), &fixture_pem(other)).unwrap();
            let err = client.status_show().unwrap_err();
            assert!(matches!(err, Error::Tls { .. }), "{other}: {err}");
            assert!(err.to_string().contains("not the bundled one"), "{err}");
        }
    }

    #[test]
    fn trusting_only_needs_a_certificate() {
        let err = Client::trusting_only("https://x.example", None, Duration::from_secs(1), b"nope")
            .unwrap_err();
        assert!(matches!(err, Error::InvalidCertificate { .. }), "{err}");
        let pem = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/token/dcor.example.com.pem"),
        )
        .unwrap();
        Client::trusting_only("https://x.example", None, Duration::from_secs(1), &pem).unwrap();
    }
}
