//! Who may use the console, and proof that a form was posted from the console itself.
//!
//! - [`AdminAuth`]: the configured admin credential, checked by HTTP Basic on every request by
//!   the [`Admin`] extractor that every handler takes (compared in constant time).
//! - [`Csrf`]: a double-submit token (a random cookie, `SameSite=Strict`, echoed in each form)
//!   plus an `Origin` (or `Referer`) check against `Host`, on every `POST`.

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN, REFERER, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};

use super::ConsoleState;
use super::html;

/// Shortest admin password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// The cookie holding the console's CSRF token.
pub const CSRF_COOKIE: &str = "keel_hospital_csrf";

/// The admin credential the console accepts (until the identity component brings roles).
#[derive(Clone)]
pub struct AdminAuth {
    username: String,
    password: SecretString,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

/// Why a credential is refused at configuration time.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("the admin username must be 1-64 characters without ':' or control characters")]
    Username,
    #[error("the admin password must be at least {MIN_PASSWORD_CHARS} characters")]
    Password,
}

impl AdminAuth {
    pub fn new(
        username: impl Into<String>,
        password: SecretString,
    ) -> Result<Self, AuthConfigError> {
        let username = username.into();
        if username.is_empty()
            || username.chars().count() > 64
            || username.contains(':')
            || username.chars().any(char::is_control)
        {
            return Err(AuthConfigError::Username);
        }
        if password.expose_secret().chars().count() < MIN_PASSWORD_CHARS {
            return Err(AuthConfigError::Password);
        }
        Ok(Self { username, password })
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    /// Whether an `Authorization` header value carries this credential.
    fn accepts(&self, header: &str) -> bool {
        let Some(encoded) = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))
        else {
            return false;
        };
        let Some(decoded) = base64_decode(encoded.trim()) else {
            return false;
        };
        let (user, password) = match decoded.iter().position(|&b| b == b':') {
            Some(at) => (&decoded[..at], &decoded[at + 1..]),
            None => (decoded.as_slice(), &[][..]),
        };
        // Both compared whatever the first says, so that timing tells nothing about either.
        let user_ok = constant_time_eq(user, self.username.as_bytes());
        let password_ok = constant_time_eq(password, self.password.expose_secret().as_bytes());
        user_ok & password_ok
    }
}

/// An authenticated operator. Every console handler takes one, so none can forget the check.
#[derive(Debug, Clone)]
pub struct Admin {
    pub name: String,
}

impl Admin {
    /// The actor recorded in the audit log.
    pub fn actor(&self) -> String {
        format!("console:{}", self.name)
    }
}

impl FromRequestParts<ConsoleState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match header {
            Some(value) if state.auth.accepts(value) => Ok(Admin {
                name: state.auth.username.clone(),
            }),
            other => {
                if other.is_some() {
                    tracing::warn!(path = %parts.uri.path(), "hospital console: wrong credential");
                }
                let mut response = (
                    StatusCode::UNAUTHORIZED,
                    html::bare_page(
                        "Sign in required",
                        "<p>The error hospital console needs the admin credential.</p>",
                    ),
                )
                    .into_response();
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static(
                        "Basic realm=\"keel error hospital\", charset=\"UTF-8\"",
                    ),
                );
                html::secure_headers(response.headers_mut());
                Err(response)
            }
        }
    }
}

/// The request's CSRF token: the cookie's, or a new one the response must set.
#[derive(Debug, Clone)]
pub struct Csrf {
    pub token: String,
    /// Not in the request: the page's response sets the cookie.
    pub fresh: bool,
}

impl Csrf {
    /// The `Set-Cookie` value for a fresh token.
    pub fn cookie(&self) -> Option<String> {
        self.fresh.then(|| {
            format!(
                "{CSRF_COOKIE}={}; Path=/admin/hospital; HttpOnly; SameSite=Strict",
                self.token
            )
        })
    }

    /// Checks a `POST`: it comes from a page of this origin and carries this client's token.
    pub fn check_post(&self, headers: &HeaderMap, form_token: &str) -> Result<(), &'static str> {
        if !same_origin(headers) {
            return Err("the form was not posted from this console (origin check)");
        }
        if self.fresh || !constant_time_eq(self.token.as_bytes(), form_token.as_bytes()) {
            return Err("the form's token does not match (reload the page and try again)");
        }
        Ok(())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Csrf {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let existing = parts
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, value)| {
                *name == CSRF_COOKIE
                    && value.len() == 32
                    && value.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .map(|(_, value)| value.to_owned());
        Ok(match existing {
            Some(token) => Csrf {
                token,
                fresh: false,
            },
            None => Csrf {
                token: uuid::Uuid::new_v4().simple().to_string(),
                fresh: true,
            },
        })
    }
}

/// Whether the request's `Origin` (or, without one, its `Referer`) is the host it was sent to.
/// Browsers send `Origin` on every form `POST`; a request with neither is refused.
fn same_origin(headers: &HeaderMap) -> bool {
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
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(x ^ y);
    }
    diff == 0
}

/// Standard base64 (with or without padding); `None` if malformed.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    if bytes.len() % 4 == 1 || text.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let n = chunk.len() - 1; // 2 chars → 1 byte, 3 → 2, 4 → 3
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> AdminAuth {
        AdminAuth::new("admin", SecretString::from("correct horse battery")).unwrap()
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64_decode("YWRtaW46cHc=").unwrap(), b"admin:pw");
        assert_eq!(base64_decode("YWRtaW46cHc").unwrap(), b"admin:pw");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
        assert!(base64_decode("Y").is_none());
        assert!(base64_decode("a$b=").is_none());
    }

    #[test]
    fn only_the_configured_credential_is_accepted() {
        let auth = auth();
        // admin:correct horse battery
        assert!(auth.accepts("Basic YWRtaW46Y29ycmVjdCBob3JzZSBiYXR0ZXJ5"));
        // admin:correct horse batterz
        assert!(!auth.accepts("Basic YWRtaW46Y29ycmVjdCBob3JzZSBiYXR0ZXJ6"));
        // root:correct horse battery
        assert!(!auth.accepts("Basic cm9vdDpjb3JyZWN0IGhvcnNlIGJhdHRlcnk="));
        assert!(!auth.accepts("Bearer YWRtaW46Y29ycmVjdCBob3JzZSBiYXR0ZXJ5"));
        assert!(!auth.accepts("Basic"));
    }

    #[test]
    fn weak_credentials_are_refused_at_configuration() {
        assert!(AdminAuth::new("admin", SecretString::from("short")).is_err());
        assert!(AdminAuth::new("a:b", SecretString::from("long enough password")).is_err());
        assert!(format!("{:?}", auth()).contains("redacted"));
    }

    #[test]
    fn constant_time_equality_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn posts_must_come_from_the_same_origin_with_the_cookie_token() {
        let csrf = Csrf {
            token: "0123456789abcdef0123456789abcdef".into(),
            fresh: false,
        };
        let mut headers = HeaderMap::new();
        headers.insert(HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(csrf.check_post(&headers, &csrf.token).is_err(), "no origin");
        headers.insert(ORIGIN, "http://evil.example".parse().unwrap());
        assert!(csrf.check_post(&headers, &csrf.token).is_err());
        headers.insert(ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(csrf.check_post(&headers, &csrf.token).is_ok());
        assert!(csrf.check_post(&headers, "ffff").is_err(), "wrong token");
        headers.remove(ORIGIN);
        headers.insert(
            REFERER,
            "http://127.0.0.1:8080/admin/hospital".parse().unwrap(),
        );
        assert!(csrf.check_post(&headers, &csrf.token).is_ok());
        headers.insert(
            REFERER,
            "http://127.0.0.1:8080.evil.example/".parse().unwrap(),
        );
        assert!(csrf.check_post(&headers, &csrf.token).is_err());
        let fresh = Csrf {
            fresh: true,
            ..csrf.clone()
        };
        headers.insert(ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(
            fresh.check_post(&headers, &csrf.token).is_err(),
            "a token the client never had"
        );
    }
}
