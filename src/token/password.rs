//! Passwords for `.dcor-access` files.
//!
//! The password travels on a different channel than the file, often read out over the
//! phone, so it is made of lowercase letters and digits in short groups, from an alphabet
//! without look-alikes (`0`/`o`, `1`/`l` are left out). The alphabet has exactly 32
//! symbols, so each random byte gives 5 unbiased bits by masking, with no rejection loop.
//!
//! Six groups of five symbols give 30 × 5 = 150 bits from the operating system's CSPRNG,
//! above the 128 bits the token issue asks for. The groups are joined with `-`, which is
//! part of the password: the recipient types it as shown.

use secrecy::SecretString;
use zeroize::Zeroizing;

/// The 32 symbols a password is made of: `a`–`z` and `2`–`9` without `l`, `o`.
pub const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
/// Number of groups in a password.
pub const GROUPS: usize = 6;
/// Symbols per group.
pub const GROUP_LEN: usize = 5;
/// Separator between groups (part of the password).
pub const SEPARATOR: char = '-';
/// Entropy of a generated password in bits: `GROUPS × GROUP_LEN × log2(32)`.
pub const ENTROPY_BITS: u32 = (GROUPS * GROUP_LEN) as u32 * ALPHABET.len().ilog2();

// The token issue asks for at least 128 bits; a change to the shape must not go below.
const _: () = assert!(ENTROPY_BITS >= 128 && ALPHABET.len().is_power_of_two());

/// Generates a fresh password such as `k7mq2-xa9fd-…` with [`ENTROPY_BITS`] bits of entropy.
///
/// # Panics
///
/// Panics if the operating system's random number generator fails: there is no safe
/// fallback for key material, and on a working system `getrandom` does not fail.
#[must_use]
pub fn generate() -> SecretString {
    let mut bytes = Zeroizing::new([0u8; GROUPS * GROUP_LEN]);
    getrandom::fill(bytes.as_mut_slice()).expect("the OS random number generator failed");
    let mut out = String::with_capacity(GROUPS * (GROUP_LEN + 1));
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % GROUP_LEN == 0 {
            out.push(SEPARATOR);
        }
        // 256 is a multiple of 32: masking keeps every symbol equally likely.
        out.push(char::from(ALPHABET[usize::from(b & 0x1f)]));
    }
    SecretString::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashSet;

    /// Entropy of what `generate` actually returns: each symbol is uniform over the
    /// alphabet (masking a uniform byte to 5 bits), symbols are independent, so the
    /// entropy is the number of symbols times log2 of the alphabet size.
    #[test]
    fn entropy_is_at_least_128_bits() {
        let pw = generate();
        let symbols = pw
            .expose_secret()
            .chars()
            .filter(|c| *c != SEPARATOR)
            .count();
        let bits = symbols as f64 * (ALPHABET.len() as f64).log2();
        assert_eq!(bits, f64::from(ENTROPY_BITS));
        assert!(bits >= 128.0, "{bits} bits");
        assert_eq!(ENTROPY_BITS, 150);
    }

    #[test]
    fn alphabet_has_no_look_alikes_or_duplicates() {
        let set: HashSet<u8> = ALPHABET.iter().copied().collect();
        assert_eq!(set.len(), ALPHABET.len());
        for c in b"01lo" {
            assert!(!set.contains(c), "{}", char::from(*c));
        }
        assert!(
            ALPHABET
                .iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }

    #[test]
    fn shape_is_groups_of_five() {
        let pw = generate();
        let pw = pw.expose_secret();
        let groups: Vec<&str> = pw.split(SEPARATOR).collect();
        assert_eq!(groups.len(), GROUPS);
        for g in groups {
            assert_eq!(g.len(), GROUP_LEN);
            assert!(g.bytes().all(|c| ALPHABET.contains(&c)));
        }
    }

    #[test]
    fn passwords_differ_and_use_the_whole_alphabet() {
        let mut seen = HashSet::new();
        let mut symbols = HashSet::new();
        for _ in 0..200 {
            let pw = generate();
            symbols.extend(pw.expose_secret().bytes().filter(|c| *c != b'-'));
            assert!(seen.insert(pw.expose_secret().to_owned()));
        }
        // 6000 draws from 32 symbols: missing any one has probability ~32·(31/32)^6000.
        assert_eq!(symbols.len(), ALPHABET.len());
    }
}
