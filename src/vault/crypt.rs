//! restic's symmetric format (AES-256-CTR with a Poly1305-AES MAC: nonce, ciphertext,
//! tag) for the few repository files ckan-vault writes itself: lock objects and key files.
//! rustic_core has the same code but keeps it private.

use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use aes256ctr_poly1305aes::aead::Aead;
use rustic_core::repofile::MasterKey;
use zeroize::Zeroizing;

/// Encrypts and decrypts restic-format repository files with the vault's key.
pub(crate) struct Crypt(Aes256CtrPoly1305Aes);

impl Crypt {
    /// With the vault's master key.
    pub(crate) fn new(key: &MasterKey) -> Self {
        let mut k = Zeroizing::new([0u8; 64]);
        k[..32].copy_from_slice(&key.encrypt);
        k[32..48].copy_from_slice(&key.mac.k);
        k[48..].copy_from_slice(&key.mac.r);
        Self::from_bytes(&k)
    }

    /// With 64 key bytes laid out as restic does: AES-256 key, then Poly1305-AES `k` and `r`
    /// (a master key's parts, or what scrypt derives from a password for a key file).
    pub(crate) fn from_bytes(k: &[u8; 64]) -> Self {
        Self(Aes256CtrPoly1305Aes::new(k.into()))
    }

    pub(crate) fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        let ct = self
            .0
            .encrypt(&nonce.into(), plain)
            .expect("AES-CTR encryption cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    pub(crate) fn decrypt(&self, data: &[u8]) -> Option<Vec<u8>> {
        if data.len() < 32 {
            return None;
        }
        let nonce: [u8; 16] = data[..16].try_into().ok()?;
        let plain = self.0.decrypt(&nonce.into(), &data[16..]).ok()?;
        // Repository format 2 may compress (first byte 2, then zstd); locks and key data
        // are small uncompressed JSON.
        match plain.first() {
            Some(b'{') => Some(plain),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypt_round_trip_and_tamper() {
        let c = Crypt::new(&MasterKey::new());
        let ct = c.encrypt(b"{\"a\":1}");
        assert_eq!(c.decrypt(&ct).unwrap(), b"{\"a\":1}");
        let mut bad = ct.clone();
        bad[20] ^= 1;
        assert!(c.decrypt(&bad).is_none());
        assert!(Crypt::new(&MasterKey::new()).decrypt(&ct).is_none());
    }
}
