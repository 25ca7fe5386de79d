//! The OpenID Connect provider's logic (OpenID Connect Core 1.0, authorization code flow with
//! PKCE; Discovery 1.0): registered clients, authorization requests checked before anyone signs
//! in, codes issued once and redeemed once, the token endpoint's grants and client
//! authentication, ID tokens, userinfo, and the browser session a signed-in person keeps at the
//! IdP (a cookie value signed here, so sign-in is asked once per browser, not per client).
//!
//! Errors carry the OAuth 2.0 error codes (RFC 6749 §4.1.2.1 and §5.2) the HTTP layer sends.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel_domain::{OidcClient, StoreError, UserId};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::service::AuthError;
use crate::shared::Core;

mod authorize;
pub mod browser;
mod grants;

/// How long an authorization code lives (RFC 6749 recommends at most 10 minutes).
pub const CODE_TTL_SECS: i64 = 60;

/// An OAuth error: its code, and a description for developers (never a secret).
#[derive(Debug, thiserror::Error)]
#[error("{code}: {description}")]
pub struct OAuthError {
    pub code: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(code: &'static str, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "identity store failed");
        Self::new("server_error", "the identity store failed")
    }
}

impl From<AuthError> for OAuthError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidRefresh(_) | AuthError::InvalidCredentials => {
                Self::new("invalid_grant", "the grant is not valid")
            }
            AuthError::NotReady => Self::new("temporarily_unavailable", "starting"),
            other => {
                tracing::warn!(error = %other, "token endpoint failed");
                Self::new("server_error", "the request failed")
            }
        }
    }
}

/// An authorization request as received (`GET /oauth/authorize` query or `POST` form, Core
/// §3.1.2.1).
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize)]
pub struct AuthorizeRequest {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub prompt: Option<String>,
    /// Seconds: a sign-in older than this must be made again (Core §3.1.2.1).
    pub max_age: Option<String>,
    /// A request object (JAR), not supported: refused with `request_not_supported`.
    pub request: Option<String>,
    /// A request object by reference, not supported: refused with `request_uri_not_supported`.
    pub request_uri: Option<String>,
}

/// The `prompt` values of a request (Core §3.1.2.1); `select_account` asks for a sign-in as
/// `login` does (a browser holds one account's session here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Prompt {
    /// No page may be shown: a code, or an error, at once.
    pub none: bool,
    /// Sign in again, whatever session the browser has.
    pub login: bool,
    /// Ask for consent again, whatever was allowed before.
    pub consent: bool,
}

/// What an authorization request needs from the person now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Sign in (no current session, `prompt=login`, or a session older than `max_age`); the
    /// sign-in page asks for consent with it.
    SignIn,
    /// Signed in; the client's consent to these scopes is missing or `prompt=consent` asks again.
    Consent(BrowserSession),
    /// Nothing: a code goes back at once.
    Code(BrowserSession),
}

/// Why an authorization request is refused. `Display` errors (no client, or a redirect URI
/// not registered) are shown to the person and never redirected (an open redirector
/// otherwise); the others go back to the client's redirect URI.
#[derive(Debug)]
pub enum AuthorizeError {
    Display(String),
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: OAuthError,
    },
}

/// An authorization request that passed every check.
#[derive(Debug, Clone, Serialize)]
pub struct Authorized {
    pub client: OidcClient,
    pub redirect_uri: String,
    pub scope: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub challenge: Option<String>,
    pub prompt: Prompt,
    /// Seconds, from `max_age`.
    pub max_age: Option<i64>,
}

/// What the token endpoint answers.
#[derive(Debug, Clone, Serialize)]
pub struct OidcTokens {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub refresh_token: String,
    pub id_token: String,
    pub scope: String,
}

/// What a grant gives the tokens: the scope granted, and for a code the request's `nonce` and
/// the sign-in's time.
struct Grant<'a> {
    scope: &'a str,
    nonce: Option<&'a str>,
    auth_time: Option<i64>,
    /// How the person signed in (RFC 8176), for both tokens' `amr`.
    amr: Vec<&'a str>,
    /// The refresh-token family the tokens belong to: the access token names it, so userinfo
    /// refuses it once the family is revoked (a replayed code, a withdrawn consent).
    family: &'a str,
    /// Whether the account's address is verified (the `email_verified` claim).
    email_verified: bool,
    /// The account's token generation, carried by the access token.
    generation: i64,
}

/// A client registration's result: the secret is shown once and stored only as a hash.
#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

/// A person signed in at the IdP in a browser: the session cookie's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserSession {
    pub user: UserId,
    pub auth_time: i64,
    pub expires_at: i64,
    /// The account's token generation when it signed in: raising it ends the session.
    pub generation: i64,
    /// How the person signed in (RFC 8176 values: `pwd`, `otp`, `fed`).
    pub amr: Vec<String>,
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    keel_credentials::random_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

const SUPPORTED_SCOPES: [&str; 3] = ["openid", "email", "profile"];

/// The access-token claim naming the refresh-token family of an OpenID Connect grant.
const FAMILY_CLAIM: &str = "family";

/// Whether every scope of `wanted` is among `allowed` (both space-separated).
fn covers(allowed: &str, wanted: &str) -> bool {
    wanted
        .split_whitespace()
        .all(|w| allowed.split_whitespace().any(|a| a == w))
}

/// `prompt`'s values: unknown ones are ignored (Core lists four); `none` with any other is an
/// error.
fn parse_prompt(prompt: Option<&str>) -> Result<Prompt, &'static str> {
    let mut parsed = Prompt::default();
    let mut others = false;
    for value in prompt.unwrap_or_default().split_whitespace() {
        match value {
            "none" => parsed.none = true,
            "login" | "select_account" => parsed.login = true,
            "consent" => parsed.consent = true,
            _ => continue,
        }
        others |= value != "none";
    }
    if parsed.none && others {
        return Err("prompt=none cannot be combined with other prompt values");
    }
    Ok(parsed)
}

/// The OpenID Connect provider: clients, authorization requests, consent, codes, the token
/// endpoint's grants, userinfo and discovery.
#[derive(Clone, Copy)]
pub struct OidcProvider<'a> {
    core: &'a Core,
}

impl Core {
    pub(crate) fn oidc(&self) -> OidcProvider<'_> {
        OidcProvider { core: self }
    }
}
