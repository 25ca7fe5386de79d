//! Who may use the console, and proof that a form was posted from the console itself.
//!
//! - [`Admin`]: the signed-in operator, as keel's API guard established it (a
//!   [`keel_domain::Caller`] in the request's extensions: an IdP account whose roles grant
//!   `hospital:read`, and `hospital:write` for every `POST`). The console authenticates no one
//!   itself: it is mounted behind that guard, which also sends browsers to the sign-in page.
//!   Checking the permission here again means a console mounted without the guard refuses
//!   everyone instead of serving anyone.
//! - [`Csrf`]: keel-http's scheme (docs/decisions/0101): a random cookie (`SameSite=Strict`)
//!   whose signed token each form carries, plus an `Origin` (or `Referer`) check against
//!   `Host`, on every `POST`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use keel_domain::{Caller, Permission};

use super::ConsoleState;
use super::html::{self, esc};

/// The cookie holding the console's CSRF cookie value.
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
        html::bare_page("Not allowed", &format!("<p>{}</p>", esc(text))),
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

/// The request's CSRF cookie (or a new one the response must set) and its forms' token.
#[derive(Debug, Clone)]
pub struct Csrf {
    key: keel_http::CsrfKey,
    cookie: String,
    /// The token this browser's forms carry.
    pub token: String,
    /// Not in the request: the page's response sets the cookie.
    pub fresh: bool,
}

impl Csrf {
    /// The `Set-Cookie` value for a fresh cookie.
    pub fn set_cookie(&self) -> Option<String> {
        self.fresh.then(|| {
            format!(
                "{CSRF_COOKIE}={}; Path=/admin/hospital; HttpOnly; SameSite=Strict",
                self.cookie
            )
        })
    }

    /// Checks a `POST`: it comes from a page of this origin and carries this client's token.
    pub fn check_post(&self, headers: &HeaderMap, form_token: &str) -> Result<(), &'static str> {
        if !keel_http::same_origin(headers) {
            return Err("the form was not posted from this console (origin check)");
        }
        if self.fresh || !self.key.verify(&self.cookie, form_token) {
            return Err("the form's token does not match (reload the page and try again)");
        }
        Ok(())
    }
}

/// Whether a cookie value is one this console could have set (or a sane stand-in): the token
/// is what proves it, this only keeps odd bytes out of pages and headers.
fn plausible(value: &str) -> bool {
    (16..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl FromRequestParts<ConsoleState> for Csrf {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let key = state.csrf.clone();
        let (cookie, fresh) = match keel_http::cookie(&parts.headers, CSRF_COOKIE) {
            Some(value) if plausible(value) => (value.to_owned(), false),
            _ => (keel_http::csrf::new_cookie(), true),
        };
        let token = key.token(&cookie);
        Ok(Csrf {
            key,
            cookie,
            token,
            fresh,
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::header::{HOST, ORIGIN};

    use super::*;

    #[test]
    fn posts_need_the_origin_and_the_token_of_a_cookie_the_client_had() {
        let key = keel_http::CsrfKey::new(&[7; 32]);
        let cookie = "0123456789abcdef0123456789abcdef".to_owned();
        let csrf = Csrf {
            token: key.token(&cookie),
            key,
            cookie,
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
        assert!(
            csrf.check_post(&headers, &csrf.cookie).is_err(),
            "the cookie itself is no token"
        );
        let fresh = Csrf {
            fresh: true,
            ..csrf.clone()
        };
        assert!(
            fresh.check_post(&headers, &csrf.token).is_err(),
            "a token the client never had"
        );
    }

    #[test]
    fn only_plausible_cookies_are_taken() {
        assert!(plausible("0123456789abcdef0123456789abcdef"));
        assert!(plausible(&keel_http::csrf::new_cookie()));
        assert!(!plausible("short"));
        assert!(!plausible("0123456789abcdef0123456789abcde\""));
    }
}
