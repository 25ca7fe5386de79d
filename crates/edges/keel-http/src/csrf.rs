//! The one CSRF scheme of keel's browser forms (the IdP's sign-in and consent pages, the error
//! hospital's console), decided in docs/decisions/0101:
//!
//! - a **signed double-submit token**: the browser holds a random cookie; each form carries
//!   [`CsrfKey::token`] of it, an HMAC under a server key. A cookie planted by a sibling
//!   subdomain does not pass on its own, since the attacker cannot make its token;
//! - and, where a page asks for it, the **same-origin check** [`same_origin`] on each `POST`.
//!
//! Also the cookie reader the scheme needs and [`constant_time_eq`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use http::header::{COOKIE, HOST, ORIGIN, REFERER};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The server key CSRF tokens are signed with. Its `Debug` output hides it.
#[derive(Clone)]
pub struct CsrfKey(Vec<u8>);

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey(..)")
    }
}

impl CsrfKey {
    /// A key from secret bytes (at least 32 of them, from a key derivation).
    pub fn new(key: &[u8]) -> Self {
        assert!(key.len() >= 32, "a CSRF key needs 32 bytes");
        Self(key.to_vec())
    }

    fn mac(&self, cookie: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("any key");
        // Length-prefixed parts: no two (label, cookie) pairs share an input.
        for part in [&b"csrf"[..], cookie.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The token a form of the browser holding `cookie` carries.
    pub fn token(&self, cookie: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(cookie).finalize().into_bytes())
    }

    /// Whether `token` is the token of `cookie` (in constant time).
    pub fn verify(&self, cookie: &str, token: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        self.mac(cookie).verify_slice(&tag).is_ok()
    }
}

/// A fresh CSRF cookie value: 32 random bytes, base64url.
pub fn new_cookie() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The value of the cookie `name` in a request's `Cookie` headers, if any.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request's `Origin` (or, without one, its `Referer`) is the host it was sent to.
/// Browsers send `Origin` on every form `POST`; a request with neither is refused.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let matches = |origin: &str| {
        ["http://", "https://"]
            .iter()
            .filter_map(|scheme| origin.strip_prefix(scheme))
            .any(|rest| rest == host || rest.starts_with(&format!("{host}/")))
    };
    if let Some(origin) = headers.get(ORIGIN) {
        return origin.to_str().is_ok_and(matches);
    }
    headers
        .get(REFERER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(matches)
}

/// Equality whose time depends only on the lengths, not on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn constant_time_equality_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn a_token_belongs_to_its_cookie_and_its_key() {
        let key = CsrfKey::new(KEY);
        let cookie = new_cookie();
        assert_eq!(cookie.len(), 43);
        assert_ne!(cookie, new_cookie());
        let token = key.token(&cookie);
        assert!(key.verify(&cookie, &token));
        assert!(
            !key.verify(&new_cookie(), &token),
            "another browser's cookie"
        );
        assert!(
            !key.verify(&cookie, &cookie),
            "the cookie itself is no token"
        );
        assert!(!key.verify(&cookie, "not base64 !"));
        let other = CsrfKey::new(b"another key, another key, another");
        assert!(!other.verify(&cookie, &token), "a token of another key");
        assert_eq!(format!("{key:?}"), "CsrfKey(..)");
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "a_csrf=1; csrf=2".parse().unwrap());
        headers.append(COOKIE, "other=3".parse().unwrap());
        assert_eq!(cookie(&headers, "csrf"), Some("2"));
        assert_eq!(cookie(&headers, "other"), Some("3"));
        assert_eq!(cookie(&headers, "srf"), None);
    }

    #[test]
    fn posts_must_come_from_the_same_origin() {
        let mut headers = HeaderMap::new();
        assert!(!same_origin(&headers), "no host");
        headers.insert(HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(!same_origin(&headers), "no origin");
        headers.insert(ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&headers));
        headers.insert(ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(same_origin(&headers));
        headers.remove(ORIGIN);
        headers.insert(
            REFERER,
            "http://127.0.0.1:8080/admin/hospital".parse().unwrap(),
        );
        assert!(same_origin(&headers));
        headers.insert(
            REFERER,
            "http://127.0.0.1:8080.evil.example/".parse().unwrap(),
        );
        assert!(!same_origin(&headers));
    }
}
