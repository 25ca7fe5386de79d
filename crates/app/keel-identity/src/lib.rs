//! keel's identity core (DESIGN.md C8), with no I/O: what the IdP's storage and HTTP layers build
//! on.
//!
//! - [`password`]: argon2id hashing (OWASP's minimum parameters or stronger, refused below) and
//!   the password policy (length, the shipped list of common passwords, personal data);
//! - [`totp`]: time-based one-time passwords (RFC 6238) for authenticator apps, with ±1 step of
//!   drift, replay refusal and `otpauth://` enrolment URIs;
//! - [`recovery`]: single-use MFA recovery codes, kept only as hashes;
//! - [`token`]: signed access tokens (JWT, EdDSA) with a `kid`, signing keys that rotate with an
//!   overlap, their JWKS, and a strict verifier (no `alg: none`, no algorithm confusion, no
//!   unknown key, times, issuer and audience checked);
//! - [`refresh`]: refresh tokens that rotate on every use, a reused one revoking its family;
//! - [`revocation`]: an account's token generation, cached per instance and dropped across
//!   instances, that refuses every token issued before its sign-ins were ended;
//! - [`lockout`]: brute-force slow-down per client, per account, and per trusted device, never
//!   a lockout without end;
//! - [`pkce`]: RFC 7636 proof keys, `S256` only;
//! - [`oidc`]: the OpenID Connect provider: clients, authorization codes, the token grants, ID
//!   tokens, userinfo, discovery, the browser session and CSRF tokens of its pages;
//! - [`federation`]: signing in through external OpenID Connect providers (the relying
//!   party's code flow with PKCE, the state cookie, ID token checks, account linking);
//! - [`lifecycle`]: mailed links (email verification, invitations, password resets), export
//!   and the erasure tombstone;
//! - [`sealed`]: `SealedNames`, the users repository with names encrypted at rest;
//! - [`envelope`]: envelope encryption of personal data at rest, with master-key rotation.
//!
//! **Invariant:** nothing here reads a clock, a file or the network; callers pass the time in,
//! so every rule is tested at exact instants.

pub mod envelope;
pub mod federation;
pub mod lifecycle;
pub mod lockout;
pub mod oidc;
pub mod password;
pub mod pkce;
pub mod recovery;
pub mod refresh;
pub mod revocation;
pub mod sealed;
pub mod service;
pub mod token;
pub mod totp;

/// Fills `buf` from the operating system's random source.
///
/// # Panics
/// When the operating system has no random source to give, which no keel deployment survives:
/// a key, salt or code made without one would be guessable.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random source");
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for URI components: the
/// enrolment URI's label, the query of a redirect back to an OpenID Connect client).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// RFC 4648 base32 (`A`–`Z`, `2`–`7`), unpadded: the alphabet authenticator apps read secrets in.
pub(crate) mod base32 {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
        let (mut buffer, mut bits) = (0u32, 0u32);
        for &byte in data {
            buffer = (buffer << 8) | u32::from(byte);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
            }
        }
        if bits > 0 {
            out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
        }
        out
    }

    /// Decodes, ignoring case, spaces, dashes and trailing `=`; `None` on any other character
    /// or on leftover bits that are not zero (a truncated or altered secret).
    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(text.len() * 5 / 8);
        let (mut buffer, mut bits) = (0u32, 0u32);
        for c in text.trim_end_matches('=').chars() {
            if c == ' ' || c == '-' {
                continue;
            }
            let value = ALPHABET
                .iter()
                .position(|&a| char::from(a) == c.to_ascii_uppercase())?;
            buffer = (buffer << 5) | value as u32;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out.push((buffer >> bits) as u8);
                buffer &= (1 << bits) - 1;
            }
        }
        (buffer == 0).then_some(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn rfc4648_vectors_round_trip() {
            for (plain, encoded) in [
                ("", ""),
                ("f", "MY"),
                ("fo", "MZXQ"),
                ("foo", "MZXW6"),
                ("foob", "MZXW6YQ"),
                ("fooba", "MZXW6YTB"),
                ("foobar", "MZXW6YTBOI"),
            ] {
                assert_eq!(encode(plain.as_bytes()), encoded);
                assert_eq!(decode(encoded).unwrap(), plain.as_bytes());
                assert_eq!(decode(&encoded.to_lowercase()).unwrap(), plain.as_bytes());
            }
        }

        #[test]
        fn garbage_and_nonzero_leftover_bits_are_refused() {
            assert_eq!(decode("MZ1W6"), None);
            assert_eq!(decode("MZ"), None, "leftover bits of 'f' altered");
        }
    }
}
