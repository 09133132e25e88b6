//! PostgreSQL connection targets, parsed once and passed to libpq tools without secrets.
//!
//! CKAN's `sqlalchemy.url` is a URL with the password inside. The tools get a keyword/value
//! conninfo string WITHOUT the password on their command line; the password reaches them
//! through a 0600 `PGPASSFILE` (see [`super::tools`]).

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// A database connection target. `Display` never shows the password.
#[derive(Clone)]
pub struct ConnInfo {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    password: Option<SecretString>,
    pub dbname: Option<String>,
    /// Other libpq parameters (`sslmode`, …), in the order given.
    pub params: Vec<(String, String)>,
}

/// A connection URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{what} in database URL {shown}; use postgresql://USER:PASSWORD@HOST:PORT/DBNAME")]
pub struct ConnInfoError {
    what: String,
    /// The URL with any password replaced by `***`.
    shown: String,
}

impl ConnInfo {
    /// Parses `postgresql://`, `postgres://` or SQLAlchemy's `postgresql+driver://` URLs.
    pub fn parse(url: &str) -> Result<Self, ConnInfoError> {
        let shown = redact_url(url);
        let fail = |what: &str| ConnInfoError {
            what: what.to_string(),
            shown: shown.clone(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| fail("no scheme"))?;
        let scheme_ok = scheme == "postgresql"
            || scheme == "postgres"
            || scheme.starts_with("postgresql+")
            || scheme.starts_with("postgres+");
        if !scheme_ok {
            return Err(fail(&format!("unsupported scheme `{scheme}`")));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut info = ConnInfo {
            host: None,
            port: None,
            user: None,
            password: None,
            dbname: None,
            params: Vec::new(),
        };
        if let Some(u) = userinfo {
            let (user, pass) = match u.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (u, None),
            };
            if !user.is_empty() {
                info.user = Some(decode(user).ok_or_else(|| fail("bad %-escape in user"))?);
            }
            if let Some(p) = pass {
                info.password = Some(
                    decode(p)
                        .ok_or_else(|| fail("bad %-escape in password"))?
                        .into(),
                );
            }
        }
        if !hostport.is_empty() {
            let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
                let (h, rest) = h.split_once(']').ok_or_else(|| fail("unclosed `[`"))?;
                (h.to_string(), rest.strip_prefix(':'))
            } else {
                match hostport.rsplit_once(':') {
                    Some((h, p)) => (h.to_string(), Some(p)),
                    None => (hostport.to_string(), None),
                }
            };
            if !host.is_empty() {
                info.host = Some(decode(&host).ok_or_else(|| fail("bad %-escape in host"))?);
            }
            if let Some(p) = port.filter(|p| !p.is_empty()) {
                info.port = Some(p.parse().map_err(|_| fail("bad port"))?);
            }
        }
        if let Some(p) = path.filter(|p| !p.is_empty()) {
            info.dbname = Some(decode(p).ok_or_else(|| fail("bad %-escape in database name"))?);
        }
        for pair in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v).ok_or_else(|| fail("bad %-escape in a parameter"))?;
            match k {
                "host" => info.host = Some(v),
                "port" => info.port = Some(v.parse().map_err(|_| fail("bad port"))?),
                "user" => info.user = Some(v),
                "password" => info.password = Some(v.into()),
                "dbname" => info.dbname = Some(v),
                _ => info.params.push((k.to_string(), v)),
            }
        }
        Ok(info)
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut c = self.clone();
        c.dbname = Some(dbname.to_string());
        c
    }

    /// The same target, another user and no password (e.g. peer auth as `postgres`).
    pub fn with_user(&self, user: &str) -> Self {
        let mut c = self.clone();
        c.user = Some(user.to_string());
        c.password = None;
        c
    }

    /// A connection to a unix-socket directory (used for scratch clusters).
    pub fn socket(dir: &std::path::Path, port: u16, user: &str, dbname: &str) -> Self {
        ConnInfo {
            host: Some(dir.display().to_string()),
            port: Some(port),
            user: Some(user.to_string()),
            password: None,
            dbname: Some(dbname.to_string()),
            params: Vec::new(),
        }
    }

    /// The password, to be written into a 0600 passfile and nowhere else.
    pub fn password(&self) -> Option<&SecretString> {
        self.password.as_ref()
    }

    /// The database name, or the libpq default (the user name).
    pub fn database(&self) -> &str {
        self.dbname
            .as_deref()
            .or(self.user.as_deref())
            .unwrap_or("postgres")
    }

    /// A libpq keyword/value string WITHOUT the password, safe for a command line.
    pub fn to_conninfo(&self) -> String {
        let mut parts = Vec::new();
        let mut push = |k: &str, v: &str| parts.push(format!("{k}={}", quote(v)));
        if let Some(h) = &self.host {
            push("host", h);
        }
        if let Some(p) = self.port {
            push("port", &p.to_string());
        }
        if let Some(u) = &self.user {
            push("user", u);
        }
        if let Some(d) = &self.dbname {
            push("dbname", d);
        }
        for (k, v) in &self.params {
            push(k, v);
        }
        parts.join(" ")
    }

    /// True when the password (if any) equals `secret` (used by tests of redaction).
    pub fn password_is(&self, secret: &str) -> bool {
        self.password
            .as_ref()
            .is_some_and(|p| p.expose_secret() == secret)
    }
}

impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgresql://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        match &self.host {
            Some(h) if h.starts_with('/') => write!(f, "[socket {h}]")?,
            Some(h) => write!(f, "{h}")?,
            None => write!(f, "[default socket]")?,
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "/{}", self.database())
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnInfo({self})")
    }
}

fn quote(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A URL with its password (userinfo or `password=` parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    // The last `@` ends the user info even when an unescaped `/`, `?` or `@` in the password
    // is what makes the URL invalid: hiding too much is safe, showing a password is not.
    match url.split_once("://") {
        Some((scheme, rest)) => {
            if let Some(at) = rest.rfind('@')
                && let Some(colon) = rest[..at].find(':')
            {
                out = format!("{scheme}://{}:***{}", &rest[..colon], &rest[at..]);
            }
        }
        None => {
            if let Some(at) = url.rfind('@') {
                out = format!("***{}", &url[at..]);
            }
        }
    }
    if let Some(pos) = out.find("password=") {
        let end = out[pos..].find('&').map_or(out.len(), |e| pos + e);
        out.replace_range(pos + "password=".len()..end, "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sqlalchemy_urls() {
        let c = ConnInfo::parse("postgresql://ckan_default:p%40ss@localhost:5433/ckan_default")
            .unwrap();
        assert_eq!(c.host.as_deref(), Some("localhost"));
        assert_eq!(c.port, Some(5433));
        assert_eq!(c.user.as_deref(), Some("ckan_default"));
        assert!(c.password_is("p@ss"));
        assert_eq!(c.dbname.as_deref(), Some("ckan_default"));
        let s = c.to_conninfo();
        assert!(
            !s.contains("p@ss") && s.contains("dbname=ckan_default"),
            "{s}"
        );
        assert_eq!(
            c.to_string(),
            "postgresql://ckan_default@localhost:5433/ckan_default"
        );
        let d =
            ConnInfo::parse("postgresql+psycopg2:///ckan?host=/var/run/postgresql&sslmode=disable")
                .unwrap();
        assert_eq!(d.host.as_deref(), Some("/var/run/postgresql"));
        assert_eq!(d.params, vec![("sslmode".into(), "disable".into())]);
        assert_eq!(
            d.to_conninfo(),
            "host=/var/run/postgresql dbname=ckan sslmode=disable"
        );
    }

    #[test]
    fn errors_never_show_the_password() {
        let e = ConnInfo::parse("mysql://u:topsecret@h/db")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("topsecret") && e.contains("***"), "{e}");
        let e = ConnInfo::parse("postgresql://u:topsecret@h:notaport/db")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("topsecret"), "{e}");
        assert_eq!(
            redact_url("postgresql://h/db?password=topsecret&x=1"),
            "postgresql://h/db?password=***&x=1"
        );
        for bad in [
            "postgresql://u:top/secret@h/db",
            "postgresql://u:top?secret@h/db",
            "postgresql://u:top@secret@h:notaport/db",
            "u:topsecret@h/db",
        ] {
            let e = ConnInfo::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn quotes_odd_values() {
        let c = ConnInfo::parse("postgresql://u@h/my%20db").unwrap();
        assert_eq!(c.to_conninfo(), "host=h user=u dbname='my db'");
    }
}
