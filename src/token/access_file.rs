//! The `.dcor-access` file: a password-protected ZIP with `api_key.txt` and `server.cert`.
//!
//! DCOR-Aid (through dclab) opens the file with Python's `zipfile`, which can decrypt
//! only the legacy PKWARE "ZipCrypto" scheme, with stored or deflated members. So that is
//! what [`AccessFile::write_to`] writes, even though ZipCrypto is weak: the file's real
//! protection is that it travels on one channel and its password on another, and that an
//! escrow copy lets an admin revoke and re-issue a token that leaked.
//!
//! Reading is strict and bounded, because the file comes from outside: the whole file is
//! capped at [`MAX_FILE_BYTES`] and each member at [`MAX_MEMBER_BYTES`] (read through
//! `take`, so a zip bomb costs nothing), the archive must hold exactly the two members
//! (no paths, no `..`, no duplicates), and both must be ZipCrypto-encrypted. ZipCrypto's
//! header check byte lets about 1 in 256 wrong passwords through; those then fail the
//! CRC-32 or the inflater, and both failures are reported as [`Error::WrongPassword`].
//!
//! [`AccessFile::inspect`] looks at the members without the password, for `token inspect`.

use std::fmt;
use std::io::{Cursor, Read, Write};

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;
use zip::result::ZipError;
use zip::unstable::write::FileOptionsExt;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

/// Name of the member holding the CKAN API token (one line).
pub const API_KEY_MEMBER: &str = "api_key.txt";
/// Name of the member holding the site's PEM certificate.
pub const CERT_MEMBER: &str = "server.cert";
/// The members a `.dcor-access` file holds, no more and no fewer.
pub const MEMBERS: [&str; 2] = [API_KEY_MEMBER, CERT_MEMBER];
/// Largest uncompressed member accepted. A token is under 1 KB, a certificate chain a few KB.
pub const MAX_MEMBER_BYTES: u64 = 64 * 1024;
/// Largest `.dcor-access` file accepted.
pub const MAX_FILE_BYTES: u64 = 256 * 1024;

/// ZIP compression method 99 marks WinZip AES encryption (APPNOTE appendix E).
const METHOD_AES: u16 = 99;
const METHOD_STORED: u16 = 0;
const METHOD_DEFLATED: u16 = 8;
/// Offset of the compression method in a central directory file header.
const CENTRAL_METHOD_OFFSET: usize = 10;
const CENTRAL_SIGNATURE: [u8; 4] = *b"PK\x01\x02";

/// Errors from writing, inspecting or reading a `.dcor-access` file.
///
/// No variant carries the token, the password or member contents; member names are shown
/// escaped and shortened, since they come from an untrusted file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "the token file is empty: it was not copied completely; ask for the .dcor-access file again"
    )]
    Empty,
    #[error(
        "the token file is larger than {limit} bytes: a .dcor-access file is a few KB; check that this is the right file"
    )]
    TooLarge { limit: u64 },
    #[error(
        "the token file is not a ZIP archive ({reason}): check that this is a .dcor-access file"
    )]
    NotZip { reason: String },
    #[error(
        "the token file has duplicate member names: it was not made by ckan-vault or `zip -e`; re-issue it"
    )]
    DuplicateMembers,
    #[error(
        "the token file has an unsafe member name {}: absolute and `..` paths are refused; re-issue it",
        show(.name)
    )]
    UnsafeName { name: String },
    #[error("AES-encrypted zip: DCOR-Aid cannot read it; re-issue with ckan-vault")]
    AesEncrypted,
    #[error(
        "the token file lacks {}: it must hold exactly api_key.txt and server.cert; re-issue it",
        show_list(.missing)
    )]
    MissingMembers { missing: Vec<String> },
    #[error(
        "the token file has unexpected member(s) {}: it must hold exactly api_key.txt and server.cert; re-issue it",
        show_list(.extra)
    )]
    ExtraMembers { extra: Vec<String> },
    #[error(
        "member {} uses compression method {method}: DCOR-Aid reads only stored or deflated members; re-issue with ckan-vault",
        show(.name)
    )]
    UnsupportedMethod { name: String, method: u16 },
    #[error("member {} is not encrypted: the token was exposed; revoke it and re-issue with ckan-vault", show(.name))]
    NotEncrypted { name: String },
    #[error(
        "member {} is larger than {limit} bytes: a token file is a few KB; check that this is the right file",
        show(.name)
    )]
    MemberTooLarge { name: String, limit: u64 },
    #[error(
        "wrong password for the token file (or the file is damaged): check the password that came with it"
    )]
    WrongPassword,
    #[error("the password is empty: use the generated password (ckan-vault makes one for you)")]
    EmptyPassword,
    #[error("api_key.txt holds no token: re-issue the token")]
    EmptyApiKey,
    #[error("api_key.txt is not a single line of text: re-issue the token")]
    MalformedApiKey,
    #[error("server.cert is empty: re-issue the token with the site's certificate")]
    EmptyCertificate,
    #[error("cannot read the token file ({0}): check the path and its permissions")]
    Read(#[source] std::io::Error),
    #[error("cannot write the token file ({0}): check free space and permissions of the output")]
    Write(#[source] std::io::Error),
    #[error("cannot build the token file ({reason}): report this as a bug")]
    Zip { reason: String },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The decrypted content of a `.dcor-access` file.
///
/// `Debug` shows the certificate length, never the token.
pub struct AccessFile {
    /// The CKAN API token (a JWT), without the trailing newline.
    pub api_key: SecretString,
    /// The site's certificate as PEM bytes, as DCOR-Aid will trust it.
    pub certificate_pem: Vec<u8>,
}

impl fmt::Debug for AccessFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessFile")
            .field("api_key", &"[REDACTED]")
            .field(
                "certificate_pem",
                &format_args!("{} bytes", self.certificate_pem.len()),
            )
            .finish()
    }
}

/// One member of a ZIP, as seen without the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member's name, decoded lossily as UTF-8.
    pub name: String,
    /// Declared uncompressed size in bytes.
    pub size: u64,
    /// Compressed size in bytes (including the 12-byte ZipCrypto header when encrypted).
    pub compressed_size: u64,
    /// Whether the encryption flag is set.
    pub encrypted: bool,
    /// The raw compression method from the central directory (0 stored, 8 deflated, 99 AES).
    pub method: u16,
    /// Whether the entry is a directory.
    pub is_dir: bool,
}

impl MemberInfo {
    /// Whether this member is AES-encrypted, which DCOR-Aid cannot read.
    #[must_use]
    pub fn is_aes(&self) -> bool {
        self.method == METHOD_AES
    }
}

/// What a `.dcor-access` file contains, read without its password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// Size of the whole file in bytes.
    pub file_size: u64,
    /// The members in central-directory order.
    pub members: Vec<MemberInfo>,
    duplicate_names: bool,
}

impl Inspection {
    /// Whether the central directory lists a name twice (the zip crate keeps only one).
    #[must_use]
    pub fn has_duplicate_names(&self) -> bool {
        self.duplicate_names
    }

    /// Runs every check that needs no password: exactly the two expected members, safe
    /// names, no duplicates, no AES, stored or deflated, encrypted, sizes within bounds.
    pub fn check(&self) -> Result<()> {
        if self.duplicate_names {
            return Err(Error::DuplicateMembers);
        }
        if let Some(m) = self.members.iter().find(|m| is_unsafe_name(&m.name)) {
            return Err(Error::UnsafeName {
                name: m.name.clone(),
            });
        }
        if self.members.iter().any(MemberInfo::is_aes) {
            return Err(Error::AesEncrypted);
        }
        let missing: Vec<String> = MEMBERS
            .iter()
            .filter(|want| !self.members.iter().any(|m| m.name == **want))
            .map(|s| (*s).to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(Error::MissingMembers { missing });
        }
        let extra: Vec<String> = self
            .members
            .iter()
            .filter(|m| !MEMBERS.contains(&m.name.as_str()))
            .map(|m| m.name.clone())
            .collect();
        if !extra.is_empty() {
            return Err(Error::ExtraMembers { extra });
        }
        for m in &self.members {
            if m.method != METHOD_STORED && m.method != METHOD_DEFLATED {
                return Err(Error::UnsupportedMethod {
                    name: m.name.clone(),
                    method: m.method,
                });
            }
            if !m.encrypted {
                return Err(Error::NotEncrypted {
                    name: m.name.clone(),
                });
            }
            if m.size > MAX_MEMBER_BYTES {
                return Err(Error::MemberTooLarge {
                    name: m.name.clone(),
                    limit: MAX_MEMBER_BYTES,
                });
            }
        }
        Ok(())
    }
}

impl AccessFile {
    /// Bundles a token and a certificate. Neither is checked here: [`AccessFile::write_to`]
    /// refuses an empty or multi-line token, and `token::cert` checks the certificate.
    #[must_use]
    pub fn new(api_key: SecretString, certificate_pem: Vec<u8>) -> Self {
        Self {
            api_key,
            certificate_pem,
        }
    }

    /// Writes the `.dcor-access` ZIP: `api_key.txt` (the token and `\n`) and `server.cert`,
    /// both deflated and encrypted with legacy ZipCrypto under `password`.
    ///
    /// The archive is assembled in memory (it holds only ciphertext) and then written to
    /// `w` in one go, so `w` need not be seekable.
    pub fn write_to<W: Write>(&self, mut w: W, password: &SecretString) -> Result<()> {
        let bytes = self.to_bytes(password)?;
        w.write_all(&bytes).map_err(Error::Write)?;
        w.flush().map_err(Error::Write)
    }

    /// Returns the `.dcor-access` ZIP as bytes; see [`AccessFile::write_to`].
    pub fn to_bytes(&self, password: &SecretString) -> Result<Vec<u8>> {
        let pw = password.expose_secret().as_bytes();
        if pw.is_empty() {
            return Err(Error::EmptyPassword);
        }
        let key = self.api_key.expose_secret();
        if key.trim().is_empty() {
            return Err(Error::EmptyApiKey);
        }
        if !is_single_token_line(key) {
            return Err(Error::MalformedApiKey);
        }
        if self.certificate_pem.is_empty() {
            return Err(Error::EmptyCertificate);
        }
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .unix_permissions(0o600)
            .with_deprecated_encryption(pw)
            .map_err(|_| Error::EmptyPassword)?;
        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        let mut line = Zeroizing::new(String::with_capacity(key.len() + 1));
        line.push_str(key);
        line.push('\n');
        zip.start_file(API_KEY_MEMBER, options)
            .map_err(zip_build_error)?;
        zip.write_all(line.as_bytes()).map_err(Error::Write)?;
        zip.start_file(CERT_MEMBER, options)
            .map_err(zip_build_error)?;
        zip.write_all(&self.certificate_pem).map_err(Error::Write)?;
        let cursor = zip.finish().map_err(zip_build_error)?;
        Ok(cursor.into_inner())
    }

    /// Reads and decrypts a `.dcor-access` file from `r`, reading at most
    /// [`MAX_FILE_BYTES`] + 1 bytes.
    pub fn read<R: Read>(r: R, password: &SecretString) -> Result<AccessFile> {
        let bytes = read_bounded(r)?;
        Self::from_bytes(&bytes, password)
    }

    /// Decrypts a `.dcor-access` file held in memory.
    pub fn from_bytes(bytes: &[u8], password: &SecretString) -> Result<AccessFile> {
        let inspection = inspect_bytes(bytes)?;
        inspection.check()?;
        let pw = password.expose_secret().as_bytes();
        if pw.is_empty() {
            return Err(Error::EmptyPassword);
        }
        let mut archive = open_archive(bytes)?;
        let key = read_member(&mut archive, API_KEY_MEMBER, pw)?;
        let certificate_pem = read_member(&mut archive, CERT_MEMBER, pw)?;
        let key = std::str::from_utf8(&key).map_err(|_| Error::MalformedApiKey)?;
        // dclab strips the text; we also refuse anything that is not one token.
        let key = key.trim();
        if key.is_empty() {
            return Err(Error::EmptyApiKey);
        }
        if !is_single_token_line(key) {
            return Err(Error::MalformedApiKey);
        }
        if certificate_pem.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::EmptyCertificate);
        }
        Ok(AccessFile {
            api_key: SecretString::from(key.to_owned()),
            certificate_pem: certificate_pem.to_vec(),
        })
    }

    /// Lists the members of a `.dcor-access` file from `r` without the password.
    ///
    /// Fails only when the input is empty, too large or not a ZIP; call
    /// [`Inspection::check`] for the structural verdict.
    pub fn inspect<R: Read>(r: R) -> Result<Inspection> {
        let bytes = read_bounded(r)?;
        inspect_bytes(&bytes)
    }

    /// Like [`AccessFile::inspect`], for bytes held in memory.
    pub fn inspect_bytes(bytes: &[u8]) -> Result<Inspection> {
        inspect_bytes(bytes)
    }
}

fn read_bounded<R: Read>(r: R) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    r.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Error::Read)?;
    Ok(bytes)
}

fn open_archive(bytes: &[u8]) -> Result<ZipArchive<Cursor<&[u8]>>> {
    if bytes.is_empty() {
        return Err(Error::Empty);
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::TooLarge {
            limit: MAX_FILE_BYTES,
        });
    }
    ZipArchive::new(Cursor::new(bytes)).map_err(|e| Error::NotZip {
        reason: one_line(&e.to_string()),
    })
}

fn inspect_bytes(bytes: &[u8]) -> Result<Inspection> {
    let archive = open_archive(bytes)?;
    let mut members = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let entry = archive.by_index_data(i).map_err(|e| Error::NotZip {
            reason: one_line(&e.to_string()),
        })?;
        // Read the method from the central directory ourselves: the zip crate replaces
        // 99 with the inner method when its `aes-crypto` feature is on, and features
        // unify across the dependency graph.
        let method =
            raw_method(bytes, entry.central_header_start()).ok_or_else(|| Error::NotZip {
                reason: "inconsistent central directory".to_owned(),
            })?;
        members.push(MemberInfo {
            name: String::from_utf8_lossy(entry.name_raw()).into_owned(),
            size: entry.size(),
            compressed_size: entry.compressed_size(),
            encrypted: entry.encrypted(),
            method,
            is_dir: entry.is_dir(),
        });
    }
    Ok(Inspection {
        file_size: bytes.len() as u64,
        members,
        duplicate_names: archive.has_duplicate_names(),
    })
}

fn raw_method(bytes: &[u8], central_header_start: u64) -> Option<u16> {
    let start = usize::try_from(central_header_start).ok()?;
    let header = bytes.get(start..start.checked_add(CENTRAL_METHOD_OFFSET + 2)?)?;
    if header[..4] != CENTRAL_SIGNATURE {
        return None;
    }
    Some(u16::from_le_bytes([
        header[CENTRAL_METHOD_OFFSET],
        header[CENTRAL_METHOD_OFFSET + 1],
    ]))
}

/// Decrypts one member into a zeroizing buffer of at most [`MAX_MEMBER_BYTES`].
fn read_member(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    name: &str,
    password: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let file = archive
        .by_name_decrypt(name, password)
        .map_err(|e| match e {
            ZipError::InvalidPassword => Error::WrongPassword,
            ZipError::FileNotFound => Error::MissingMembers {
                missing: vec![name.to_owned()],
            },
            other => Error::NotZip {
                reason: one_line(&other.to_string()),
            },
        })?;
    let mut buf = Zeroizing::new(Vec::new());
    // The member passed the ZipCrypto check byte, which ~1/256 wrong passwords also
    // pass. With a wrong key the inflater or the CRC-32 check at the end fails, so any
    // read error here means the password is wrong (or the ciphertext was damaged).
    file.take(MAX_MEMBER_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|_| Error::WrongPassword)?;
    if buf.len() as u64 > MAX_MEMBER_BYTES {
        return Err(Error::MemberTooLarge {
            name: name.to_owned(),
            limit: MAX_MEMBER_BYTES,
        });
    }
    Ok(buf)
}

fn zip_build_error(e: ZipError) -> Error {
    match e {
        ZipError::Io(io) => Error::Write(io),
        other => Error::Zip {
            reason: one_line(&other.to_string()),
        },
    }
}

/// A token is one line of printable ASCII without spaces (a JWT, or a legacy UUID key).
fn is_single_token_line(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic())
}

/// Absolute paths, Windows drive or UNC paths, `..` components and NUL bytes.
fn is_unsafe_name(name: &str) -> bool {
    name.starts_with('/')
        || name.starts_with('\\')
        || name.contains('\0')
        || name.as_bytes().get(1) == Some(&b':')
        || name.split(['/', '\\']).any(|c| c == "..")
}

/// Escapes and shortens an untrusted member name for a one-line message.
fn show(name: &str) -> String {
    const MAX: usize = 60;
    let escaped: String = name.escape_debug().collect();
    if escaped.chars().count() > MAX {
        let cut: String = escaped.chars().take(MAX).collect();
        format!("\"{cut}…\"")
    } else {
        format!("\"{escaped}\"")
    }
}

fn show_list(names: &[String]) -> String {
    const MAX_NAMES: usize = 5;
    let mut shown: Vec<String> = names.iter().take(MAX_NAMES).map(|n| show(n)).collect();
    if names.len() > MAX_NAMES {
        shown.push(format!("and {} more", names.len() - MAX_NAMES));
    }
    shown.join(", ")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const EXAMPLE_KEY: &str = "7c0c7203-4e25-4b14-a118-553c496a7a52";
    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJqdGkiOiJhYmMifQ.c2lnbmF0dXJl";

    fn fixture(name: &str) -> Vec<u8> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/token")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn pw(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    fn cert() -> Vec<u8> {
        fixture("dcor.example.com.pem")
    }

    /// Builds a ZIP with arbitrary members, for malformed-file tests.
    fn custom_zip(members: &[(&str, &[u8])], password: Option<&[u8]>) -> Vec<u8> {
        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in members {
            let mut o =
                SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
            if let Some(p) = password {
                o = o.with_deprecated_encryption(p).unwrap();
            }
            zip.start_file(*name, o).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    fn random_bytes(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        getrandom::fill(&mut v).unwrap();
        v
    }

    #[test]
    fn reads_the_public_dclab_test_vector() {
        let f = AccessFile::from_bytes(&fixture("example_access_token.dcor-access"), &pw("42"))
            .unwrap();
        assert_eq!(f.api_key.expose_secret(), EXAMPLE_KEY);
        assert!(
            f.certificate_pem
                .starts_with(b"-----BEGIN CERTIFICATE-----")
        );
    }

    #[test]
    fn reads_an_info_zip_file() {
        let file = fixture("info-zip.dcor-access");
        let f = AccessFile::read(file.as_slice(), &pw("correct horse")).unwrap();
        assert_eq!(f.api_key.expose_secret(), JWT);
        assert_eq!(f.certificate_pem, cert());
    }

    #[test]
    fn round_trip() {
        let f = AccessFile::new(pw(JWT), cert());
        let mut out = Vec::new();
        f.write_to(&mut out, &pw("k7mq2-xa9fd-3hnpw-eu4rc-zt6vb-y8sj2"))
            .unwrap();
        let back =
            AccessFile::from_bytes(&out, &pw("k7mq2-xa9fd-3hnpw-eu4rc-zt6vb-y8sj2")).unwrap();
        assert_eq!(back.api_key.expose_secret(), JWT);
        assert_eq!(back.certificate_pem, cert());
        // The token is not in the file in plain text.
        assert!(!out.windows(JWT.len()).any(|w| w == JWT.as_bytes()));
    }

    #[test]
    fn written_file_has_the_expected_shape() {
        let out = AccessFile::new(pw(JWT), cert())
            .to_bytes(&pw("pw"))
            .unwrap();
        let ins = AccessFile::inspect_bytes(&out).unwrap();
        ins.check().unwrap();
        let names: Vec<&str> = ins.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, MEMBERS);
        assert!(ins.members.iter().all(|m| m.encrypted && m.method == 8));
        assert_eq!(ins.members[0].size, JWT.len() as u64 + 1);
        assert_eq!(ins.members[1].size, cert().len() as u64);
    }

    #[test]
    fn inspect_needs_no_password_and_shows_members() {
        let ins =
            AccessFile::inspect(fixture("example_access_token.dcor-access").as_slice()).unwrap();
        ins.check().unwrap();
        assert_eq!(ins.members.len(), 2);
        assert_eq!(ins.members[0].name, API_KEY_MEMBER);
        assert_eq!(ins.members[0].size, 37);
        assert_eq!(ins.members[0].method, 0);
        assert_eq!(ins.members[1].name, CERT_MEMBER);
        assert_eq!(ins.members[1].size, 2415);
        assert_eq!(ins.members[1].method, 8);
    }

    #[test]
    fn wrong_password() {
        let err = AccessFile::from_bytes(&fixture("example_access_token.dcor-access"), &pw("43"))
            .unwrap_err();
        assert!(matches!(err, Error::WrongPassword), "{err}");
    }

    /// About 1 in 256 wrong passwords pass ZipCrypto's check byte; with 1000 tries
    /// several do, per file. All must still come back as WrongPassword.
    #[test]
    fn a_thousand_random_wrong_passwords_never_open_a_file() {
        let files = [
            (fixture("example_access_token.dcor-access"), "42"),
            (
                AccessFile::new(pw(JWT), cert())
                    .to_bytes(&pw("right"))
                    .unwrap(),
                "right",
            ),
        ];
        for (bytes, right) in &files {
            for _ in 0..1000 {
                let raw = random_bytes(1 + usize::from(random_bytes(1)[0] % 24));
                let guess: String = raw.iter().map(|b| char::from(b'!' + b % 94)).collect();
                if guess == *right {
                    continue;
                }
                match AccessFile::from_bytes(bytes, &pw(&guess)) {
                    Err(Error::WrongPassword) => {}
                    Ok(_) => panic!("a wrong password opened the file"),
                    Err(other) => panic!("wrong password gave {other}"),
                }
            }
        }
    }

    /// Passwords that pass the check byte exist for every file; find some and make
    /// sure the CRC/inflate failure is what stops them.
    #[test]
    fn passwords_past_the_check_byte_are_still_wrong() {
        let bytes = fixture("example_access_token.dcor-access");
        let mut archive = ZipArchive::new(Cursor::new(bytes.as_slice())).unwrap();
        let mut past_header = 0;
        for n in 0..20_000u32 {
            let guess = format!("guess{n}");
            if archive
                .by_name_decrypt(CERT_MEMBER, guess.as_bytes())
                .is_ok()
            {
                past_header += 1;
                let err = AccessFile::from_bytes(&bytes, &pw(&guess)).unwrap_err();
                assert!(matches!(err, Error::WrongPassword), "{err}");
            }
        }
        assert!(past_header > 10, "only {past_header} passed the check byte");
    }

    #[test]
    fn empty_and_not_zip() {
        assert!(matches!(
            AccessFile::from_bytes(b"", &pw("42")),
            Err(Error::Empty)
        ));
        let err = AccessFile::from_bytes(b"this is not a zip file at all", &pw("42")).unwrap_err();
        assert!(matches!(err, Error::NotZip { .. }), "{err}");
        let err = AccessFile::from_bytes(&cert(), &pw("42")).unwrap_err();
        assert!(matches!(err, Error::NotZip { .. }), "{err}");
        // A truncated token file.
        let mut f = fixture("example_access_token.dcor-access");
        f.truncate(f.len() / 2);
        let err = AccessFile::from_bytes(&f, &pw("42")).unwrap_err();
        assert!(matches!(err, Error::NotZip { .. }), "{err}");
    }

    #[test]
    fn oversize_file_is_refused_without_reading_it_all() {
        let big = std::io::repeat(0).take(10 * MAX_FILE_BYTES);
        let err = AccessFile::read(big, &pw("42")).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    }

    #[test]
    fn zip_bomb_member_is_refused() {
        // 10 MiB of zeros deflates to about 10 KB: small file, huge member.
        let zeros = vec![0u8; 10 << 20];
        let bytes = custom_zip(
            &[("api_key.txt", b"x\n"), ("server.cert", &zeros)],
            Some(b"pw"),
        );
        assert!(bytes.len() < MAX_FILE_BYTES as usize);
        let err = AccessFile::from_bytes(&bytes, &pw("pw")).unwrap_err();
        assert!(matches!(err, Error::MemberTooLarge { .. }), "{err}");
    }

    #[test]
    fn lying_size_is_capped_while_reading() {
        // Declared size patched down to 10 bytes in both headers: the read cap, not the
        // header, must stop it. The zip crate stops at the declared size, and then the
        // CRC fails; either way the content is never accepted.
        let zeros = vec![b'A'; 200 << 10];
        let mut bytes = custom_zip(
            &[("api_key.txt", b"x\n"), ("server.cert", &zeros)],
            Some(b"pw"),
        );
        let ins = AccessFile::inspect_bytes(&bytes).unwrap();
        let declared = (ins.members[1].size as u32).to_le_bytes();
        let mut patched = 0;
        for i in 0..bytes.len() - 4 {
            if bytes[i..i + 4] == declared {
                bytes[i..i + 4].copy_from_slice(&10u32.to_le_bytes());
                patched += 1;
            }
        }
        assert!(patched >= 1);
        // The header check passes (the size is small now); what stops it is the read: either
        // the cap (MemberTooLarge) or the CRC over what the zip crate let through
        // (WrongPassword, which also covers a damaged file). Never another error, never Ok.
        match AccessFile::from_bytes(&bytes, &pw("pw")) {
            Err(Error::MemberTooLarge { .. } | Error::WrongPassword) => {}
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("a member with a lying size was accepted"),
        }
    }

    #[test]
    fn missing_and_extra_members_are_named() {
        let only_key = custom_zip(&[("api_key.txt", b"x\n")], Some(b"pw"));
        match AccessFile::from_bytes(&only_key, &pw("pw")).unwrap_err() {
            Error::MissingMembers { missing } => assert_eq!(missing, ["server.cert"]),
            other => panic!("{other}"),
        }
        let extra = custom_zip(
            &[
                ("api_key.txt", b"x\n"),
                ("server.cert", b"c"),
                ("README", b"hi"),
            ],
            Some(b"pw"),
        );
        let err = AccessFile::from_bytes(&extra, &pw("pw")).unwrap_err();
        assert!(err.to_string().contains("\"README\""), "{err}");
        match err {
            Error::ExtraMembers { extra } => assert_eq!(extra, ["README"]),
            other => panic!("{other}"),
        }
        let renamed = custom_zip(&[("api_key", b"x\n"), ("server.cert", b"c")], Some(b"pw"));
        let err = AccessFile::from_bytes(&renamed, &pw("pw")).unwrap_err();
        assert!(matches!(err, Error::MissingMembers { .. }), "{err}");
        let nested = custom_zip(
            &[("tok/api_key.txt", b"x\n"), ("tok/server.cert", b"c")],
            Some(b"pw"),
        );
        let err = AccessFile::from_bytes(&nested, &pw("pw")).unwrap_err();
        assert!(matches!(err, Error::MissingMembers { .. }), "{err}");
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in [
            "../api_key.txt",
            "/etc/passwd",
            "a/../../b",
            "C:/x",
            "\\\\host\\x",
        ] {
            let z = custom_zip(&[("api_key.txt", b"x\n"), (bad, b"c")], Some(b"pw"));
            let err = AccessFile::from_bytes(&z, &pw("pw")).unwrap_err();
            assert!(matches!(err, Error::UnsafeName { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn member_names_in_messages_are_escaped() {
        let z = custom_zip(
            &[
                ("api_key.txt", b"x\n"),
                ("server.cert", b"c"),
                ("\x1b[2Jevil", b"c"),
            ],
            Some(b"pw"),
        );
        let msg = AccessFile::from_bytes(&z, &pw("pw"))
            .unwrap_err()
            .to_string();
        assert!(!msg.contains('\x1b'), "{msg:?}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn unencrypted_members_are_refused() {
        let z = custom_zip(&[("api_key.txt", b"x\n"), ("server.cert", b"c")], None);
        let err = AccessFile::from_bytes(&z, &pw("pw")).unwrap_err();
        assert!(matches!(err, Error::NotEncrypted { .. }), "{err}");
    }

    #[test]
    fn aes_zip_is_refused_with_the_dcor_aid_message() {
        let bytes = fixture("aes.dcor-access");
        let err = AccessFile::from_bytes(&bytes, &pw("secret")).unwrap_err();
        assert!(matches!(err, Error::AesEncrypted), "{err}");
        assert_eq!(
            err.to_string(),
            "AES-encrypted zip: DCOR-Aid cannot read it; re-issue with ckan-vault"
        );
        let ins = AccessFile::inspect_bytes(&bytes).unwrap();
        assert!(ins.members.iter().all(MemberInfo::is_aes));
    }

    #[test]
    fn api_key_content_is_checked() {
        for (content, want_empty) in [(&b" \n\n"[..], true), (&b"two\nlines\n"[..], false)] {
            let z = custom_zip(
                &[("api_key.txt", content), ("server.cert", b"c")],
                Some(b"pw"),
            );
            let err = AccessFile::from_bytes(&z, &pw("pw")).unwrap_err();
            if want_empty {
                assert!(matches!(err, Error::EmptyApiKey), "{err}");
            } else {
                assert!(matches!(err, Error::MalformedApiKey), "{err}");
            }
        }
        // CRLF and surrounding blanks are fine, as dclab strips them.
        let z = custom_zip(
            &[("api_key.txt", b"  tok\r\n"), ("server.cert", b"c")],
            Some(b"pw"),
        );
        let f = AccessFile::from_bytes(&z, &pw("pw")).unwrap();
        assert_eq!(f.api_key.expose_secret(), "tok");
    }

    #[test]
    fn writing_refuses_bad_input() {
        let e = AccessFile::new(pw(JWT), cert())
            .to_bytes(&pw(""))
            .unwrap_err();
        assert!(matches!(e, Error::EmptyPassword));
        let e = AccessFile::new(pw(""), cert())
            .to_bytes(&pw("p"))
            .unwrap_err();
        assert!(matches!(e, Error::EmptyApiKey));
        let e = AccessFile::new(pw("a b"), cert())
            .to_bytes(&pw("p"))
            .unwrap_err();
        assert!(matches!(e, Error::MalformedApiKey));
        let e = AccessFile::new(pw(JWT), vec![])
            .to_bytes(&pw("p"))
            .unwrap_err();
        assert!(matches!(e, Error::EmptyCertificate));
    }

    #[test]
    fn no_secret_in_debug_or_errors() {
        let f = AccessFile::new(pw(JWT), cert());
        let dbg = format!("{f:?}");
        assert!(!dbg.contains(JWT), "{dbg}");
        let bytes = f.to_bytes(&pw("hunter22")).unwrap();
        let err = AccessFile::from_bytes(&bytes, &pw("hunter23")).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains(JWT),
            "{shown}"
        );
    }

    #[test]
    fn every_error_message_is_one_line() {
        let errors = [
            Error::Empty,
            Error::TooLarge { limit: 1 },
            Error::NotZip {
                reason: one_line("a\nb"),
            },
            Error::DuplicateMembers,
            Error::UnsafeName {
                name: "../x\ny".into(),
            },
            Error::AesEncrypted,
            Error::MissingMembers {
                missing: vec!["a".into()],
            },
            Error::ExtraMembers {
                extra: (0..9).map(|i| format!("f{i}\n")).collect(),
            },
            Error::UnsupportedMethod {
                name: "a".into(),
                method: 12,
            },
            Error::NotEncrypted { name: "a".into() },
            Error::MemberTooLarge {
                name: "a".into(),
                limit: 1,
            },
            Error::WrongPassword,
            Error::EmptyPassword,
            Error::EmptyApiKey,
            Error::MalformedApiKey,
            Error::EmptyCertificate,
        ];
        for e in errors {
            let s = e.to_string();
            assert!(!s.contains('\n'), "{s:?}");
            assert!(s.contains(':'), "names no fix: {s}");
        }
    }
}
