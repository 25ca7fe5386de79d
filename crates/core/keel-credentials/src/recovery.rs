//! MFA recovery codes: shown once at enrolment, kept only as hashes, each good for one sign-in.
//!
//! A code carries 50 random bits (ten base32 characters, shown as `xxxxx-xxxxx`), so a fast hash
//! is enough: unlike a password, it cannot be found by trying likely values. SHA-256 of the
//! normalised code is stored; redeeming compares against every stored hash in constant time and
//! removes the one used.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How many codes an enrolment gives.
pub const CODES_PER_SET: usize = 10;

/// A fresh set: the codes to show the person once, and their hashes to store.
#[derive(Debug)]
pub struct RecoveryCodes {
    pub shown: Vec<String>,
    pub hashes: Vec<String>,
}

impl RecoveryCodes {
    pub fn generate() -> Self {
        let mut shown = Vec::with_capacity(CODES_PER_SET);
        for _ in 0..CODES_PER_SET {
            let mut bytes = [0u8; 7];
            crate::random_bytes(&mut bytes);
            // 56 random bits in, the first 50 kept as ten base32 characters.
            let text = crate::base32::encode(&bytes)[..10].to_lowercase();
            shown.push(format!("{}-{}", &text[..5], &text[5..]));
        }
        let hashes = shown.iter().map(|code| hash(code)).collect();
        Self { shown, hashes }
    }
}

/// The stored form of a code: SHA-256 of the code without spaces or dashes, lowercase, in hex.
pub fn hash(code: &str) -> String {
    let normal: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let digest = Sha256::digest(normal.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Redeems `code` against the account's stored `hashes`: when one matches it is removed (the
/// caller stores what is left in the write that records the sign-in) and `true` is returned.
pub fn redeem(code: &str, hashes: &mut Vec<String>) -> bool {
    let candidate = hash(code);
    let mut found = None;
    for (i, stored) in hashes.iter().enumerate() {
        if bool::from(stored.as_bytes().ct_eq(candidate.as_bytes())) {
            found = Some(i);
        }
    }
    match found {
        Some(i) => {
            hashes.swap_remove(i);
            true
        }
        None => false,
    }
}
