//! PKCE (RFC 7636): the proof that the client redeeming an authorization code is the one that
//! asked for it. Only `S256` is accepted, from every client: `plain` protects nothing once the
//! authorization request is seen, and every current client library sends `S256`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PkceError {
    #[error("code_challenge_method must be S256")]
    Method,
    #[error("code_challenge must be 43 base64url characters (a SHA-256 digest)")]
    Challenge,
    #[error("code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~")]
    Verifier,
    #[error("code_verifier does not match the code_challenge")]
    Mismatch,
}

/// Checks an authorization request's challenge (kept with the code it is answered with).
pub fn check_challenge(challenge: &str, method: &str) -> Result<(), PkceError> {
    if method != "S256" {
        return Err(PkceError::Method);
    }
    let digest = URL_SAFE_NO_PAD
        .decode(challenge)
        .map_err(|_| PkceError::Challenge)?;
    if challenge.len() != 43 || digest.len() != 32 {
        return Err(PkceError::Challenge);
    }
    Ok(())
}

/// The `S256` challenge of a verifier: base64url(SHA-256(verifier)).
pub fn challenge_of(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Checks the token request's verifier against the stored challenge.
pub fn verify(verifier: &str, challenge: &str) -> Result<(), PkceError> {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if !well_formed {
        return Err(PkceError::Verifier);
    }
    if bool::from(
        challenge_of(verifier)
            .as_bytes()
            .ct_eq(challenge.as_bytes()),
    ) {
        Ok(())
    } else {
        Err(PkceError::Mismatch)
    }
}
