//! Sealing with [age](https://age-encryption.org): escrow copies of access tokens and
//! sealed copies of `ckan.ini`.
//!
//! The host that issues tokens and runs backups holds only *recipients* (public keys:
//! X25519 `age1…`, `ssh-ed25519 …`, `ssh-rsa …`). It can seal, never unseal. The escrow
//! officers keep the *identities* (private keys) offline and bring one only to recover.
//! So a stolen server or a leaked vault password does not yield working credentials.
//!
//! Sealed data is the binary age v1 format, which Debian's `age` CLI (1.1) decrypts with
//! `age -d -i KEYFILE`. [`unseal`] also accepts ASCII-armored input (`age -a`).
//! Recipients parse like `age -r` / `age -R FILE` (one per line, `#` comments);
//! identities like `age -i FILE` (`AGE-SECRET-KEY-1…` lines, or one unencrypted OpenSSH
//! private key).

use std::fmt;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// Largest recipients or identity file read.
pub const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;

/// Errors from parsing keys, sealing and unsealing. Messages are one line and never
/// contain private key material; recipients (public keys) may be shown, shortened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read {} ({source}): check the path and its permissions", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is larger than {limit} bytes: give a recipients or identity file, not another file", .path.display())]
    FileTooLarge { path: PathBuf, limit: u64 },
    #[error("{origin}: {problem}")]
    BadRecipient {
        /// `recipient #N` or `FILE line N`.
        origin: String,
        problem: RecipientProblem,
    },
    #[error(
        "no escrow recipients: set [escrow] recipients or recipients-file (public keys from `age-keygen -y`)"
    )]
    NoRecipients,
    #[error("{origin}: {problem}")]
    BadIdentity {
        /// `FILE line N` or `FILE`.
        origin: String,
        problem: IdentityProblem,
    },
    #[error(
        "{origin} holds no identities: give the escrow officer's AGE-SECRET-KEY-1… file or ssh private key"
    )]
    NoIdentities { origin: String },
    #[error(
        "none of the given identities can unseal this: use the key of one of the escrow recipients it was sealed to"
    )]
    NoMatchingIdentity,
    #[error("this was sealed with a passphrase, not to recipients: decrypt it with `age -d`")]
    PassphraseSealed,
    #[error("not age-sealed data ({reason}): check that this is an escrow copy")]
    NotAge { reason: String },
    #[error("the sealed data is damaged or truncated: use another copy from the vault")]
    Damaged,
    #[error("cannot seal ({reason}): check the escrow recipients")]
    Seal { reason: String },
}

/// Why a recipient string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecipientProblem {
    #[error("empty recipient: remove the entry or fill in a public key")]
    Empty,
    #[error(
        "this is a private key, not a recipient: give its public key (`age-keygen -y FILE` or the .pub file) and keep the private key offline"
    )]
    SecretKey,
    #[error("{shown:?} is not a valid age X25519 recipient: copy it again from `age-keygen -y`")]
    InvalidX25519 { shown: String },
    #[error("{shown:?} is not a valid SSH public key: copy the whole line from the .pub file")]
    InvalidSsh { shown: String },
    #[error("ssh-rsa key shorter than 2048 bits: use ssh-ed25519 or an age key")]
    RsaTooSmall,
    #[error("ssh-rsa key larger than supported: use ssh-ed25519 or an age key")]
    RsaTooLarge,
    #[error("{kind} keys are not supported: use age1… (X25519), ssh-ed25519 or ssh-rsa")]
    Unsupported { kind: String },
}

/// Why an identity was refused. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityProblem {
    #[error(
        "not an AGE-SECRET-KEY-1… identity: give the escrow officer's age identity file or ssh private key"
    )]
    NotAnIdentity,
    #[error(
        "this is a recipient (public key), not an identity: give the matching AGE-SECRET-KEY-1… file"
    )]
    PublicKey,
    #[error("age plugin identities are not supported: use an X25519 identity from `age-keygen`")]
    Plugin,
    #[error(
        "the identity file is itself encrypted: decrypt it with `age -d` to a safe place first"
    )]
    EncryptedFile,
    #[error(
        "passphrase-protected ssh key: use an unprotected copy on the offline machine, or an age identity"
    )]
    EncryptedSsh,
    #[error("unsupported ssh key ({kind}): use ssh-ed25519 or ssh-rsa, or an age identity")]
    UnsupportedSsh { kind: String },
    #[error(
        "not a valid OpenSSH private key: give the key file itself (-----BEGIN OPENSSH PRIVATE KEY-----)"
    )]
    InvalidSsh,
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone)]
enum Recipient {
    X25519(age::x25519::Recipient),
    Ssh(age::ssh::Recipient),
}

impl Recipient {
    fn as_age(&self) -> &dyn age::Recipient {
        match self {
            Recipient::X25519(r) => r,
            Recipient::Ssh(r) => r,
        }
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recipient::X25519(r) => r.fmt(f),
            Recipient::Ssh(r) => r.fmt(f),
        }
    }
}

/// Public keys to seal to. Anyone holding one matching identity can unseal.
#[derive(Clone, Default)]
pub struct Recipients {
    list: Vec<Recipient>,
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.to_strings()).finish()
    }
}

impl Recipients {
    /// Parses recipients as given in `[escrow] recipients`: `age1…`, `ssh-ed25519 …`,
    /// `ssh-rsa …` (a trailing comment after an SSH key is allowed). A bad entry is
    /// reported by its position (`recipient #2`).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Recipients> {
        let mut list = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            list.push(
                parse_recipient(entry.as_ref()).map_err(|problem| Error::BadRecipient {
                    origin: format!("recipient #{}", i + 1),
                    problem,
                })?,
            );
        }
        Ok(Recipients { list })
    }

    /// Reads a recipients file like `age -R`: one recipient per line; empty lines and
    /// lines starting with `#` are skipped. A bad line is reported by file and line.
    pub fn from_file(path: &Path) -> Result<Recipients> {
        let text = read_key_file(path)?;
        let text = String::from_utf8(text.to_vec()).map_err(|_| Error::BadRecipient {
            origin: path.display().to_string(),
            problem: RecipientProblem::InvalidX25519 {
                shown: "(not UTF-8 text)".into(),
            },
        })?;
        let mut list = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            list.push(
                parse_recipient(line).map_err(|problem| Error::BadRecipient {
                    origin: format!("{} line {}", path.display(), n + 1),
                    problem,
                })?,
            );
        }
        Ok(Recipients { list })
    }

    /// Adds the recipients of `other` (for `recipients` plus `recipients-file`).
    pub fn extend(&mut self, other: Recipients) {
        self.list.extend(other.list);
    }

    /// Number of recipients.
    #[must_use]
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none (sealing would fail).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The recipients in canonical form (`age1…`, `ssh-ed25519 AAAA…`), for reports.
    #[must_use]
    pub fn to_strings(&self) -> Vec<String> {
        self.list.iter().map(ToString::to_string).collect()
    }
}

fn parse_recipient(s: &str) -> Result<Recipient, RecipientProblem> {
    let s = s.trim();
    if s.is_empty() {
        return Err(RecipientProblem::Empty);
    }
    if looks_secret(s) {
        return Err(RecipientProblem::SecretKey);
    }
    if s.starts_with("ssh-") || s.starts_with("ecdsa-") || s.starts_with("sk-") {
        return match s.parse::<age::ssh::Recipient>() {
            Ok(r) => Ok(Recipient::Ssh(r)),
            Err(age::ssh::ParseRecipientKeyError::RsaModulusTooSmall) => {
                Err(RecipientProblem::RsaTooSmall)
            }
            Err(age::ssh::ParseRecipientKeyError::RsaModulusTooLarge) => {
                Err(RecipientProblem::RsaTooLarge)
            }
            Err(age::ssh::ParseRecipientKeyError::Unsupported(kind)) => {
                Err(RecipientProblem::Unsupported { kind })
            }
            Err(_) => {
                let kind = s.split_whitespace().next().unwrap_or_default();
                if kind == "ssh-ed25519" || kind == "ssh-rsa" {
                    Err(RecipientProblem::InvalidSsh { shown: shorten(s) })
                } else {
                    Err(RecipientProblem::Unsupported {
                        kind: shorten(kind),
                    })
                }
            }
        };
    }
    if s.starts_with("age1") {
        // Plugin and post-quantum recipients also start with age1 but have a longer
        // human-readable part (`age1yubikey1…`, `age1pq1…`); X25519 keys are `age1` + data.
        let hrp = s.rfind('1').map_or("", |i| &s[..i]);
        if hrp != "age" {
            return Err(RecipientProblem::Unsupported { kind: shorten(hrp) });
        }
        return s
            .parse::<age::x25519::Recipient>()
            .map(Recipient::X25519)
            .map_err(|_| RecipientProblem::InvalidX25519 { shown: shorten(s) });
    }
    Err(RecipientProblem::InvalidX25519 { shown: shorten(s) })
}

/// Private keys pasted where a public key belongs: never echo them.
fn looks_secret(s: &str) -> bool {
    let upper = s.to_ascii_uppercase();
    upper.starts_with("AGE-SECRET-KEY-")
        || upper.starts_with("AGE-PLUGIN-")
        || upper.contains("PRIVATE KEY")
}

fn shorten(s: &str) -> String {
    const MAX: usize = 24;
    let mut out: String = s.chars().take(MAX).collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    out
}

enum Identity {
    X25519(age::x25519::Identity),
    Ssh(age::ssh::Identity),
}

impl Identity {
    fn as_age(&self) -> &dyn age::Identity {
        match self {
            Identity::X25519(i) => i,
            Identity::Ssh(i) => i,
        }
    }
}

/// Private keys to unseal with. `Debug` shows only how many there are.
pub struct Identities {
    list: Vec<Identity>,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identities({} keys, redacted)", self.list.len())
    }
}

impl Identities {
    /// Reads an identity file like `age -i`: `AGE-SECRET-KEY-1…` lines (empty and `#`
    /// lines skipped, as `age-keygen` writes them), or one unencrypted OpenSSH private
    /// key (ssh-ed25519 or ssh-rsa).
    pub fn from_file(path: &Path) -> Result<Identities> {
        let bytes = read_key_file(path)?;
        Self::parse_bytes(&bytes, &path.display().to_string())
    }

    /// Parses identity text held in memory (the same formats as [`Identities::from_file`]).
    pub fn parse(text: &SecretString) -> Result<Identities> {
        Self::parse_bytes(text.expose_secret().as_bytes(), "identity")
    }

    fn parse_bytes(bytes: &[u8], origin: &str) -> Result<Identities> {
        let bad = |origin: String, problem| Error::BadIdentity { origin, problem };
        if bytes.starts_with(b"age-encryption.org/")
            || bytes.starts_with(b"-----BEGIN AGE ENCRYPTED FILE")
        {
            return Err(bad(origin.to_owned(), IdentityProblem::EncryptedFile));
        }
        if contains(bytes, b"-----BEGIN ") && contains(bytes, b"PRIVATE KEY-----") {
            let id = age::ssh::Identity::from_buffer(bytes, Some(origin.to_owned()))
                .map_err(|_| bad(origin.to_owned(), IdentityProblem::InvalidSsh))?;
            return match id {
                age::ssh::Identity::Unencrypted(_) => Ok(Identities {
                    list: vec![Identity::Ssh(id)],
                }),
                age::ssh::Identity::Encrypted(_) => {
                    Err(bad(origin.to_owned(), IdentityProblem::EncryptedSsh))
                }
                age::ssh::Identity::Unsupported(k) => Err(bad(
                    origin.to_owned(),
                    match k {
                        age::ssh::UnsupportedKey::EncryptedPem
                        | age::ssh::UnsupportedKey::EncryptedSsh(_) => {
                            IdentityProblem::EncryptedSsh
                        }
                        age::ssh::UnsupportedKey::Hardware(kind)
                        | age::ssh::UnsupportedKey::Type(kind) => IdentityProblem::UnsupportedSsh {
                            kind: shorten(&kind),
                        },
                    },
                )),
            };
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| bad(origin.to_owned(), IdentityProblem::NotAnIdentity))?;
        let mut list = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || format!("{origin} line {}", n + 1);
            let line = Zeroizing::new(line.to_owned());
            match line.parse::<age::x25519::Identity>() {
                Ok(id) => list.push(Identity::X25519(id)),
                Err(_) if line.starts_with("AGE-PLUGIN-") => {
                    return Err(bad(at(), IdentityProblem::Plugin));
                }
                Err(_) if line.starts_with("age1") || line.starts_with("ssh-") => {
                    return Err(bad(at(), IdentityProblem::PublicKey));
                }
                Err(_) => return Err(bad(at(), IdentityProblem::NotAnIdentity)),
            }
        }
        if list.is_empty() {
            return Err(Error::NoIdentities {
                origin: origin.to_owned(),
            });
        }
        Ok(Identities { list })
    }

    /// Number of identities.
    #[must_use]
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none (never true for a successfully parsed file).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(Error::FileTooLarge {
            path: path.to_owned(),
            limit: MAX_KEY_FILE_BYTES,
        });
    }
    Ok(bytes)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Seals `plaintext` to every recipient, in the binary age v1 format.
pub fn seal(recipients: &Recipients, plaintext: &[u8]) -> Result<Vec<u8>> {
    if recipients.is_empty() {
        return Err(Error::NoRecipients);
    }
    let encryptor = age::Encryptor::with_recipients(recipients.list.iter().map(Recipient::as_age))
        .map_err(|e| Error::Seal {
            reason: e.to_string().replace('\n', " "),
        })?;
    let seal_io = |e: std::io::Error| Error::Seal {
        reason: e.to_string(),
    };
    let mut out = Vec::with_capacity(plaintext.len() + 512);
    let mut writer = encryptor.wrap_output(&mut out).map_err(seal_io)?;
    writer.write_all(plaintext).map_err(seal_io)?;
    writer.finish().map_err(seal_io)?;
    Ok(out)
}

/// Unseals age data (binary or ASCII-armored) with the first identity that matches.
pub fn unseal(identities: &Identities, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if identities.is_empty() {
        return Err(Error::NoMatchingIdentity);
    }
    let input = age::armor::ArmoredReader::new(BufReader::new(ciphertext));
    let decryptor = age::Decryptor::new(input).map_err(|e| match e {
        age::DecryptError::Io(_) if ciphertext.starts_with(b"age-encryption.org/v1") => {
            Error::Damaged
        }
        other => Error::NotAge {
            reason: other.to_string().replace('\n', " "),
        },
    })?;
    if decryptor.is_scrypt() {
        return Err(Error::PassphraseSealed);
    }
    let mut reader = decryptor
        .decrypt(identities.list.iter().map(Identity::as_age))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => Error::NoMatchingIdentity,
            _ => Error::Damaged,
        })?;
    let mut plaintext = Zeroizing::new(Vec::new());
    reader
        .read_to_end(&mut plaintext)
        .map_err(|_| Error::Damaged)?;
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway identity and its recipient string.
    fn keypair() -> (Identities, String) {
        let id = age::x25519::Identity::generate();
        let recipient = id.to_public().to_string();
        let secret = SecretString::from(id.to_string().expose_secret().to_owned());
        (Identities::parse(&secret).unwrap(), recipient)
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/escrow")
            .join(name)
    }

    fn ssh_public(name: &str) -> String {
        std::fs::read_to_string(fixture(name))
            .unwrap()
            .trim()
            .to_owned()
    }

    #[test]
    fn round_trip() {
        let (ids, r) = keypair();
        let recipients = Recipients::parse(&[r]).unwrap();
        let sealed = seal(&recipients, b"the token and its password").unwrap();
        assert!(sealed.starts_with(b"age-encryption.org/v1\n-> X25519 "));
        let opened = unseal(&ids, &sealed).unwrap();
        assert_eq!(opened.as_slice(), b"the token and its password");
    }

    #[test]
    fn any_one_of_several_recipients_can_unseal() {
        let (a, ra) = keypair();
        let (b, rb) = keypair();
        let recipients = Recipients::parse(&[ra, rb, ssh_public("id_ed25519.pub")]).unwrap();
        assert_eq!(recipients.len(), 3);
        let sealed = seal(&recipients, b"x").unwrap();
        assert_eq!(unseal(&a, &sealed).unwrap().as_slice(), b"x");
        assert_eq!(unseal(&b, &sealed).unwrap().as_slice(), b"x");
    }

    #[test]
    fn identity_that_does_not_match() {
        let (_, r) = keypair();
        let (other, _) = keypair();
        let sealed = seal(&Recipients::parse(&[r]).unwrap(), b"x").unwrap();
        let err = unseal(&other, &sealed).unwrap_err();
        assert!(matches!(err, Error::NoMatchingIdentity), "{err}");
    }

    #[test]
    fn damaged_and_foreign_input() {
        let (ids, r) = keypair();
        let mut sealed = seal(&Recipients::parse(&[r]).unwrap(), b"hello").unwrap();
        let n = sealed.len();
        sealed[n - 3] ^= 1;
        assert!(matches!(unseal(&ids, &sealed), Err(Error::Damaged)));
        sealed.truncate(n - 20);
        assert!(matches!(unseal(&ids, &sealed), Err(Error::Damaged)));
        let err = unseal(&ids, b"PK\x03\x04 not age").unwrap_err();
        assert!(matches!(err, Error::NotAge { .. }), "{err}");
        let err = unseal(&ids, b"").unwrap_err();
        assert!(matches!(err, Error::NotAge { .. }), "{err}");
    }

    #[test]
    fn passphrase_sealed_is_named() {
        let (ids, _) = keypair();
        let enc =
            age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from("pw".to_owned()));
        let mut out = vec![];
        let mut w = enc.wrap_output(&mut out).unwrap();
        w.write_all(b"x").unwrap();
        w.finish().unwrap();
        assert!(matches!(unseal(&ids, &out), Err(Error::PassphraseSealed)));
    }

    #[test]
    fn armored_input_is_accepted() {
        let (ids, r) = keypair();
        let sealed = seal(
            &Recipients::parse(std::slice::from_ref(&r)).unwrap(),
            b"armored",
        )
        .unwrap();
        let recipient: age::x25519::Recipient = r.parse().unwrap();
        let armored = age::encrypt_and_armor(&recipient, b"armored").unwrap();
        assert!(armored.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        assert_eq!(
            unseal(&ids, armored.as_bytes()).unwrap().as_slice(),
            b"armored"
        );
        assert_eq!(unseal(&ids, &sealed).unwrap().as_slice(), b"armored");
    }

    #[test]
    fn bad_recipients_are_named_by_position() {
        let (_, good) = keypair();
        let err = Recipients::parse(&[good.clone(), "age1notakey".to_owned()]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("recipient #2: "), "{msg}");
        assert!(msg.contains("age1notakey"), "{msg}");

        let err = Recipients::parse(&["".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");

        let err = Recipients::parse(&["ssh-ed25519 AAAAnot-base64".to_owned()]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BadRecipient {
                    problem: RecipientProblem::InvalidSsh { .. },
                    ..
                }
            ),
            "{err}"
        );
        let err = Recipients::parse(&["ecdsa-sha2-nistp256 AAAAE2VjZHNh".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
        let err = Recipients::parse(&["age1yubikey1qwerty".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
        let err = Recipients::parse(&["hello".to_owned()]).unwrap_err();
        assert!(err.to_string().starts_with("recipient #1: "), "{err}");
    }

    #[test]
    fn a_secret_key_given_as_recipient_is_not_echoed() {
        let id = age::x25519::Identity::generate();
        let secret = id.to_string().expose_secret().to_owned();
        let err = Recipients::parse(std::slice::from_ref(&secret)).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&secret[16..]), "{shown}");
        assert!(shown.contains("private key"), "{shown}");
    }

    #[test]
    fn ssh_recipients_parse_with_comment() {
        let r = Recipients::parse(&[ssh_public("id_ed25519.pub")]).unwrap();
        assert_eq!(r.len(), 1);
        assert!(r.to_strings()[0].starts_with("ssh-ed25519 AAAAC3"));
    }

    #[test]
    fn ssh_keys_round_trip() {
        for key in ["id_ed25519", "id_rsa"] {
            let recipients = Recipients::parse(&[ssh_public(&format!("{key}.pub"))]).unwrap();
            let sealed = seal(&recipients, key.as_bytes()).unwrap();
            let ids = Identities::from_file(&fixture(key)).unwrap();
            assert_eq!(unseal(&ids, &sealed).unwrap().as_slice(), key.as_bytes());
        }
        // The ed25519 identity does not open what was sealed to the rsa key.
        let sealed = seal(
            &Recipients::parse(&[ssh_public("id_rsa.pub")]).unwrap(),
            b"x",
        )
        .unwrap();
        let ids = Identities::from_file(&fixture("id_ed25519")).unwrap();
        assert!(matches!(
            unseal(&ids, &sealed),
            Err(Error::NoMatchingIdentity)
        ));
    }

    #[test]
    fn passphrase_protected_ssh_key_is_refused_clearly() {
        let err = Identities::from_file(&fixture("id_ed25519_protected")).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BadIdentity {
                    problem: IdentityProblem::EncryptedSsh,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn recipients_file_skips_comments_and_names_lines() {
        let (_, r1) = keypair();
        let (_, r2) = keypair();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipients.txt");
        std::fs::write(
            &path,
            format!("# escrow officers\n{r1}\n\n  {r2}  \n# end\n"),
        )
        .unwrap();
        let r = Recipients::from_file(&path).unwrap();
        assert_eq!(r.to_strings(), [r1.clone(), r2]);
        std::fs::write(&path, format!("{r1}\n# x\nbogus\n")).unwrap();
        let err = Recipients::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("recipients.txt line 3: "), "{err}");
        let err = Recipients::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }

    #[test]
    fn identity_file_like_age_keygen_writes_it() {
        let id = age::x25519::Identity::generate();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.txt");
        std::fs::write(
            &path,
            format!(
                "# created: 2026-01-01T00:00:00Z\n# public key: {}\n{}\n",
                id.to_public(),
                id.to_string().expose_secret()
            ),
        )
        .unwrap();
        let ids = Identities::from_file(&path).unwrap();
        assert_eq!(ids.len(), 1);
        assert!(!format!("{ids:?}").contains("AGE-SECRET"));
        let sealed = seal(
            &Recipients::parse(&[id.to_public().to_string()]).unwrap(),
            b"k",
        )
        .unwrap();
        assert_eq!(unseal(&ids, &sealed).unwrap().as_slice(), b"k");
    }

    #[test]
    fn bad_identity_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let (_, public) = keypair();
        std::fs::write(&path, format!("{public}\n")).unwrap();
        let err = Identities::from_file(&path).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BadIdentity {
                    problem: IdentityProblem::PublicKey,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("line 1"), "{err}");
        std::fs::write(&path, "# only a comment\n").unwrap();
        assert!(matches!(
            Identities::from_file(&path),
            Err(Error::NoIdentities { .. })
        ));
        // A line that is almost a secret key must not be echoed.
        std::fs::write(&path, "AGE-SECRET-KEY-1QQQQQQQQQQQQTYPO\n").unwrap();
        let err = Identities::from_file(&path).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("QQQQ"), "{err}");
        std::fs::write(&path, "age-encryption.org/v1\n-> scrypt x 18\n").unwrap();
        let err = Identities::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("age -d"), "{err}");
    }

    #[test]
    fn seal_needs_recipients() {
        let err = seal(&Recipients::default(), b"x").unwrap_err();
        assert!(matches!(err, Error::NoRecipients));
    }

    #[test]
    fn messages_are_one_line() {
        let errors = [
            Error::NoRecipients,
            Error::NoMatchingIdentity,
            Error::PassphraseSealed,
            Error::Damaged,
            Error::NotAge { reason: "x".into() },
            Error::BadRecipient {
                origin: "recipient #1".into(),
                problem: RecipientProblem::SecretKey,
            },
            Error::BadIdentity {
                origin: "f line 2".into(),
                problem: IdentityProblem::EncryptedSsh,
            },
        ];
        for e in errors {
            let s = e.to_string();
            assert!(!s.contains('\n') && s.contains(':'), "{s:?}");
        }
    }
}
