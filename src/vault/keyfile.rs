//! The key file of a new vault.
//!
//! rustic_core 0.13 makes key files with scrypt at N = 2^17, r = 8 and offers no way to choose
//! other values. Opening such a vault takes 128 MiB, more than everything else a backup or a
//! restore needs. restic calibrates its keys to at most 60 MiB, which in practice means
//! N = 2^15, r = 8, with p raised until the derivation takes about half a second.
//! ckan-vault therefore writes the key file of a new vault itself, in restic's format, with
//! N = 2^15, r = 8, p = 4. Each guess of the password costs as much CPU as with
//! rustic_core's values (N·r·p is the same), in a quarter of the memory. rustic_core and
//! restic read the parameters from the key file, so both open such a vault as usual. Vaults
//! created before this keep their key, until it is replaced with
//! `restic key add` and `restic key remove` (docs/performance.md).

use rustic_core::jiff::Zoned;
use rustic_core::repofile::{KeyFile, MasterKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::crypt::Crypt;

/// scrypt's cost parameters for new key files (see the module documentation).
pub const LOG_N: u8 = 15;
pub const R: u32 = 8;
pub const P: u32 = 4;

/// A restic key file that opens `masterkey` with `password`: its id (the SHA-256 of its
/// bytes, as restic names files) and its JSON bytes.
pub(crate) fn new_key_file(
    masterkey: &MasterKey,
    password: &str,
    hostname: String,
    username: Option<String>,
) -> (String, Vec<u8>) {
    let mut salt = vec![0u8; 64];
    getrandom::fill(&mut salt).expect("the OS random source works");
    let params = scrypt::Params::new(LOG_N, R, P).expect("valid scrypt parameters");
    let mut derived = Zeroizing::new([0u8; 64]);
    scrypt::scrypt(password.as_bytes(), &salt, &params, derived.as_mut_slice())
        .expect("64 bytes is a valid scrypt output length");
    let plain = Zeroizing::new(serde_json::to_vec(masterkey).expect("serializable"));
    let key = KeyFile {
        hostname: Some(hostname),
        username,
        created: Some(Zoned::now()),
        kdf: "scrypt".into(),
        n: 1 << LOG_N,
        r: R,
        p: P,
        data: Crypt::from_bytes(&derived).encrypt(&plain),
        salt,
    };
    let json = serde_json::to_vec(&key).expect("serializable");
    (hex::encode(Sha256::digest(&json)), json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustic_core_opens_a_key_file_written_here() {
        let master = MasterKey::new();
        let (id, json) = new_key_file(&master, "pw", "host".into(), None);
        assert_eq!(id, hex::encode(Sha256::digest(&json)));
        let key: KeyFile = serde_json::from_slice(&json).unwrap();
        assert_eq!((key.n, key.r, key.p), (32768, 8, 4));
        // rustic_core derives with the file's parameters, checks the MAC and parses the
        // master key.
        assert!(key.key_from_password(&"pw").is_ok());
        // What it decrypts is the master key we gave.
        let mut derived = [0u8; 64];
        let params = scrypt::Params::new(LOG_N, R, P).unwrap();
        scrypt::scrypt(b"pw", &key.salt, &params, &mut derived).unwrap();
        let plain = Crypt::from_bytes(&derived).decrypt(&key.data).unwrap();
        assert_eq!(plain, serde_json::to_vec(&master).unwrap());
        assert!(key.key_from_password(&"wrong").is_err());
    }
}
