//! keel's credential primitives (DESIGN.md C8), with no I/O: what the IdP (keel-identity) and
//! the gateway's edge JWT check build on.
//!
//! - [`password`] (feature `password`, on by default): argon2id hashing (OWASP's minimum
//!   parameters or stronger, refused below) and the password policy (length, the shipped list of
//!   common passwords, personal data);
//! - [`totp`]: time-based one-time passwords (RFC 6238) for authenticator apps, with ±1 step of
//!   drift, replay refusal and `otpauth://` enrolment URIs;
//! - [`recovery`]: single-use MFA recovery codes, kept only as hashes;
//! - [`token`]: signed access tokens (JWT, EdDSA) with a `kid`, signing keys that rotate with an
//!   overlap, their JWKS, and a strict verifier (no `alg: none`, no algorithm confusion, no
//!   unknown key, times, issuer and audience checked);
//! - [`envelope`]: envelope encryption of personal data and secrets at rest, with master-key
//!   rotation;
//! - [`pkce`]: RFC 7636 proof keys, `S256` only;
//! - [`percent_encode`]: URI components as the enrolment URI and the redirects need them.
//!
//! **Invariant:** nothing here reads a clock, a file or the network, and nothing here knows a
//! store: callers pass the time in, so every rule is tested at exact instants.

pub mod envelope;
#[cfg(feature = "password")]
pub mod password;
pub mod pkce;
pub mod recovery;
pub mod token;
pub mod totp;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Fills `buf` from the operating system's random source: every key, salt, code and token id
/// of keel's identity is made here.
///
/// # Panics
/// When the operating system has no random source to give, which no keel deployment survives:
/// a key, salt or code made without one would be guessable.
pub fn random_bytes(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random source");
}

/// Everything but RFC 3986's unreserved characters (`A`–`Z`, `a`–`z`, `0`–`9`, `-._~`).
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but RFC 3986's unreserved characters, bytes of UTF-8 as `%XX` in
/// upper case (for URI components: the enrolment URI's label, the query of a redirect back to an
/// OpenID Connect client).
pub fn percent_encode(text: &str) -> String {
    utf8_percent_encode(text, URI_COMPONENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::percent_encode;

    #[test]
    fn only_unreserved_characters_are_kept() {
        assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(
            percent_encode("a b/c?d=e&f+g%h:i@j#k"),
            "a%20b%2Fc%3Fd%3De%26f%2Bg%25h%3Ai%40j%23k"
        );
        assert_eq!(percent_encode("é✓"), "%C3%A9%E2%9C%93");
        assert_eq!(percent_encode("!*'()[]"), "%21%2A%27%28%29%5B%5D");
    }
}

/// RFC 4648 base32 (`A`–`Z`, `2`–`7`), unpadded: the alphabet authenticator apps read secrets in.
pub(crate) mod base32 {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

    pub(crate) fn encode(data: &[u8]) -> String {
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
    pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
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
