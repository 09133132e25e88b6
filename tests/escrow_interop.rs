//! Interop between `ckan_vault::escrow` and the reference `age` CLI (Debian's `age`
//! package, 1.1.x): escrow officers must be able to open our escrow copies with the
//! standard tool, and we must open what the standard tool seals.
//!
//! Needs `age` and `age-keygen` on PATH (`apt-get install -y age`); the tests fail, not
//! skip, without them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ckan_vault::escrow::{self, Identities, Recipients};

fn tool(name: &str) -> Command {
    let probe = Command::new(name).arg("--version").output();
    match probe {
        Ok(out) if out.status.success() => Command::new(name),
        _ => panic!(
            "the `{name}` CLI is needed for the escrow interop tests: apt-get install -y age"
        ),
    }
}

fn run(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            input.write_all(data).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `age-keygen -o DIR/key.txt`; returns the identity file and its public key.
fn keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("key.txt");
    let mut cmd = tool("age-keygen");
    cmd.arg("-o").arg(&key);
    run(cmd, None);
    let mut cmd = tool("age-keygen");
    cmd.arg("-y").arg(&key);
    let public = String::from_utf8(run(cmd, None).stdout).unwrap();
    (key, public.trim().to_owned())
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/escrow")
        .join(name)
}

/// Plaintext shaped like an escrow bundle: binary zip bytes and text.
fn bundle() -> Vec<u8> {
    let mut b = b"PK\x03\x04\x00\xff binary part ".to_vec();
    b.extend((0..=255u8).cycle().take(70_000));
    b.extend_from_slice(b"\n{\"user\":\"alice\",\"password\":\"k7mq2-xa9fd\"}\n");
    b
}

#[test]
fn age_cli_decrypts_what_we_seal() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path());
    let recipients = Recipients::parse(&[public]).unwrap();
    let sealed = escrow::seal(&recipients, &bundle()).unwrap();
    let sealed_path = dir.path().join("bundle.age");
    std::fs::write(&sealed_path, &sealed).unwrap();
    let mut cmd = tool("age");
    cmd.arg("-d").arg("-i").arg(&key).arg(&sealed_path);
    assert_eq!(run(cmd, None).stdout, bundle());
}

#[test]
fn we_unseal_what_age_cli_seals() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path());
    let mut cmd = tool("age");
    cmd.arg("-r").arg(&public);
    let sealed = run(cmd, Some(&bundle())).stdout;
    let ids = Identities::from_file(&key).unwrap();
    assert_eq!(escrow::unseal(&ids, &sealed).unwrap().as_slice(), bundle());

    // ASCII armor too.
    let mut cmd = tool("age");
    cmd.arg("-a").arg("-r").arg(&public);
    let armored = run(cmd, Some(b"armored")).stdout;
    assert!(armored.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"));
    assert_eq!(
        escrow::unseal(&ids, &armored).unwrap().as_slice(),
        b"armored"
    );
}

#[test]
fn recipients_file_works_for_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (key_a, pub_a) = keygen(a.path());
    let (key_b, pub_b) = keygen(b.path());
    let ssh_pub = std::fs::read_to_string(fixture("id_ed25519.pub")).unwrap();
    let rfile = dir.path().join("recipients.txt");
    std::fs::write(
        &rfile,
        format!("# escrow officers\n{pub_a}\n\n{pub_b}\n{}", ssh_pub.trim()),
    )
    .unwrap();

    // Ours seals to the file; the CLI opens with each key.
    let sealed = escrow::seal(&Recipients::from_file(&rfile).unwrap(), b"three ways").unwrap();
    let sealed_path = dir.path().join("x.age");
    std::fs::write(&sealed_path, &sealed).unwrap();
    for key in [key_a.clone(), key_b, fixture("id_ed25519")] {
        let mut cmd = tool("age");
        cmd.arg("-d").arg("-i").arg(&key).arg(&sealed_path);
        assert_eq!(run(cmd, None).stdout, b"three ways");
    }

    // The CLI seals to the same file with -R; ours opens it.
    let mut cmd = tool("age");
    cmd.arg("-R").arg(&rfile);
    let sealed = run(cmd, Some(b"from the cli")).stdout;
    let ids = Identities::from_file(&key_a).unwrap();
    assert_eq!(
        escrow::unseal(&ids, &sealed).unwrap().as_slice(),
        b"from the cli"
    );
}

#[test]
fn ssh_keys_interoperate() {
    for key in ["id_ed25519", "id_rsa"] {
        let public = std::fs::read_to_string(fixture(&format!("{key}.pub"))).unwrap();
        // Ours seals to the ssh public key; `age -d -i` with the ssh private key opens it.
        let sealed = escrow::seal(
            &Recipients::parse(&[public.trim()]).unwrap(),
            key.as_bytes(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.age");
        std::fs::write(&path, &sealed).unwrap();
        let mut cmd = tool("age");
        cmd.arg("-d").arg("-i").arg(fixture(key)).arg(&path);
        assert_eq!(run(cmd, None).stdout, key.as_bytes(), "{key}");

        // `age -R key.pub` seals; we open with the ssh private key.
        let mut cmd = tool("age");
        cmd.arg("-R").arg(fixture(&format!("{key}.pub")));
        let sealed = run(cmd, Some(b"ssh")).stdout;
        let ids = Identities::from_file(&fixture(key)).unwrap();
        assert_eq!(
            escrow::unseal(&ids, &sealed).unwrap().as_slice(),
            b"ssh",
            "{key}"
        );
    }
}

#[test]
fn a_key_that_is_not_a_recipient_fails_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let a = tempfile::tempdir().unwrap();
    let (_, pub_a) = keygen(a.path());
    let (key_other, _) = keygen(dir.path());
    let sealed = escrow::seal(&Recipients::parse(&[pub_a]).unwrap(), b"x").unwrap();
    let path = dir.path().join("x.age");
    std::fs::write(&path, &sealed).unwrap();
    let out = tool("age")
        .arg("-d")
        .arg("-i")
        .arg(&key_other)
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = escrow::unseal(&Identities::from_file(&key_other).unwrap(), &sealed).unwrap_err();
    assert!(matches!(err, escrow::Error::NoMatchingIdentity), "{err}");
}
