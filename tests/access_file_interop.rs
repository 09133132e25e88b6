//! Our `.dcor-access` files open the way DCOR-Aid opens them: Python's `zipfile` with the
//! password, hostname from the certificate's CN (tests/interop/read_token.py mirrors
//! dclab), and Info-ZIP's `unzip`. Needs `python3` and `unzip` on PATH; fails without.

use std::path::Path;
use std::process::Command;

use ckan_vault::token::access_file::AccessFile;
use ckan_vault::token::password;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJqdGkiOiJhYmMifQ.c2lnbmF0dXJl";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn write_token(dir: &Path, password: &SecretString) -> (std::path::PathBuf, Vec<u8>) {
    let cert = std::fs::read(root().join("tests/fixtures/token/dcor.example.com.pem")).unwrap();
    let path = dir.join("alice.dcor-access");
    let f = std::fs::File::create(&path).unwrap();
    AccessFile::new(SecretString::from(JWT.to_owned()), cert.clone())
        .write_to(f, password)
        .unwrap();
    (path, cert)
}

fn read_with_python(path: &Path, password: &str) -> std::process::Output {
    Command::new("python3")
        .arg(root().join("tests/interop/read_token.py"))
        .arg(path)
        .env("TOKEN_PASSWORD", password)
        .output()
        .expect("python3 is needed for this test: apt-get install -y python3")
}

#[test]
fn python_zipfile_reads_our_token_like_dclab() {
    let dir = tempfile::tempdir().unwrap();
    let pw = password::generate();
    let (path, cert) = write_token(dir.path(), &pw);
    let out = read_with_python(&path, pw.expose_secret());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["api_key"], JWT);
    assert_eq!(got["hostname"], "dcor.example.com");
    assert_eq!(got["cert_sha256"], hex::encode(Sha256::digest(&cert)));
}

#[test]
fn python_zipfile_refuses_a_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_token(dir.path(), &SecretString::from("right-one".to_owned()));
    let out = read_with_python(&path, "wrong-one");
    assert!(!out.status.success());
}

#[test]
fn info_zip_unzip_tests_our_token() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_token(dir.path(), &SecretString::from("unzip-pw".to_owned()));
    let out = Command::new("unzip")
        .args(["-t", "-P", "unzip-pw"])
        .arg(&path)
        .output()
        .expect("unzip is needed for this test: apt-get install -y unzip");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("No errors detected"), "{text}");
}
