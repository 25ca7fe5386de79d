//! Who may use the console, and proof that a form was posted from the console itself.
//!
//! - [`Admin`]: the signed-in operator, as keel's API guard established it (a
//!   [`keel_domain::Caller`] in the request's extensions: an IdP account whose roles grant
//!   `hospital:read`, and `hospital:write` for every `POST`). The console authenticates no one
//!   itself: it is mounted behind that guard, which also sends browsers to the sign-in page.
//!   Checking the permission here again means a console mounted without the guard refuses
//!   everyone instead of serving anyone.
//! - [`Csrf`]: a double-submit token (a random cookie, `SameSite=Strict`, echoed in each form)
//!   plus an `Origin` (or `Referer`) check against `Host`, on every `POST`.

use axum::extract::FromRequestParts;
use axum::http::header::{COOKIE, HOST, ORIGIN, REFERER};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use keel_domain::{Caller, Permission};

use super::ConsoleState;
use super::html;

/// The cookie holding the console's CSRF token.
pub const CSRF_COOKIE: &str = "keel_hospital_csrf";

/// A signed-in operator allowed this request. Every console handler takes one, so none can
/// forget the check.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The account's id.
    pub name: String,
}

impl Admin {
    /// The actor recorded in the audit log.
    pub fn actor(&self) -> String {
        format!("console:{}", self.name)
    }
}

fn refuse(status: StatusCode, text: &str) -> Response {
    let mut response = (
        status,
        html::bare_page("Not allowed", &format!("<p>{}</p>", html::esc(text))),
    )
        .into_response();
    html::secure_headers(response.headers_mut());
    response
}

impl FromRequestParts<ConsoleState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        _: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let Some(caller) = parts.extensions.get::<Caller>() else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "The error hospital console needs you signed in (at /signin) with the operator or admin role.",
            ));
        };
        let needed = if parts.method == Method::POST {
            Permission::HospitalWrite
        } else {
            Permission::HospitalRead
        };
        if !caller.can(needed) {
            tracing::warn!(user_id = %caller.user, path = %parts.uri.path(), "hospital console: not allowed");
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "Your account may not use the error hospital console (it needs the operator or admin role).",
            ));
        }
        Ok(Admin {
            name: caller.user.to_string(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

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
