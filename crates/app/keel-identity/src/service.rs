//! The IdP as one value: [`Idp`] holds the shared core and hands out its duties (accounts,
//! sessions, MFA, tokens, the OpenID Connect provider, browser sessions, federation,
//! lifecycle); and the types they share: [`IdpSettings`], [`AuthError`], what a sign-in takes
//! and gives.
//!
//! Time is passed in (unix seconds), as everywhere in this crate. The HTTP layer maps
//! [`AuthError`] to status codes; every sign-in failure a caller can cause is the same
//! [`AuthError::InvalidCredentials`], whether the account exists or not, and takes the time of
//! a password verification either way (no user enumeration by message or timing).

use std::sync::{Arc, RwLock};

use hmac::{Hmac, KeyInit, Mac};
use keel_domain::{
    Accounts, Credentials, IdentityStore, Outgoing, StoreError, User, UserEmail, UserId, UserName,
    ValidationError,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::lockout::LockoutPolicy;
use crate::refresh::{RefreshError, RefreshTokens};
use crate::revocation::{Floors, RevocationFeed};
use crate::shared::Core;
use keel_credentials::envelope::{EnvelopeError, Keyring};
use keel_credentials::password::{PasswordHasher, PasswordPolicy, PolicyViolation};
use keel_credentials::token::{Claims, TokenError};

/// How the IdP is set up.
#[derive(Debug, Clone)]
pub struct IdpSettings {
    /// The `iss` of every token: the IdP's public base URL.
    pub issuer: String,
    /// The `aud` of access tokens for keel's own API.
    pub audience: String,
    pub access_ttl_secs: i64,
    /// How long a sign-in lasts: its refresh tokens stop working after this.
    pub session_ttl_secs: i64,
    /// How often the signing key rotates.
    pub key_rotation_secs: i64,
    pub lockout: LockoutPolicy,
    pub policy: PasswordPolicy,
    /// The name authenticator apps show beside the account.
    pub totp_issuer: String,
    /// Who may make an account without being an admin.
    pub signup: keel_domain::SignupMode,
    /// A password older than this must be reset before signing in; `None`: never expires.
    pub password_max_age_secs: Option<i64>,
    /// An account not signed in for this long is disabled at its next sign-in attempt;
    /// `None`: never.
    pub dormant_after_secs: Option<i64>,
    /// Roles that need a second factor: an account holding one without TOTP enrolled signs in
    /// without its roles until it enrols.
    pub mfa_required_roles: Vec<String>,
    /// External OpenID Connect providers people may sign in through.
    pub providers: Vec<crate::federation::Provider>,
    /// How long an instance trusts what it read of an account's token generation (seconds):
    /// the longest another instance keeps accepting a revoked token when no revocation feed
    /// reaches it (the instance that revokes, and those the feed reaches, refuse at once).
    pub revocation_check_secs: i64,
}

impl Default for IdpSettings {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8080".into(),
            audience: "keel".into(),
            access_ttl_secs: 15 * 60,
            session_ttl_secs: 30 * 24 * 3600,
            key_rotation_secs: 30 * 24 * 3600,
            lockout: LockoutPolicy::default(),
            policy: PasswordPolicy::default(),
            totp_issuer: "keel".into(),
            signup: keel_domain::SignupMode::Open,
            password_max_age_secs: None,
            dormant_after_secs: None,
            mfa_required_roles: Vec::new(),
            providers: Vec::new(),
            revocation_check_secs: 5,
        }
    }
}

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong email, password, code or token, or a disabled account: one answer for all.
    #[error("the credentials are not valid")]
    InvalidCredentials,
    /// The password was right and the account has MFA: send a TOTP or recovery code too.
    #[error("a second factor is required")]
    MfaRequired,
    /// A mailed link that is malformed, expired, already used or for a disabled account.
    #[error("the link is not valid: it is malformed, expired or already used")]
    InvalidLink,
    /// The account already has a password (an invitation is for accounts without one).
    #[error("the account is already active")]
    AlreadyActive,
    /// The password is older than the policy allows: reset it (`POST /auth/password/forgot`).
    #[error("the password has expired")]
    PasswordExpired,
    #[error("too many failed attempts; try again in {retry_after_secs} s")]
    Locked { retry_after_secs: i64 },
    #[error("the token is not valid")]
    InvalidToken(#[from] TokenError),
    #[error("the refresh token is not valid")]
    InvalidRefresh(#[from] RefreshError),
    #[error(transparent)]
    Policy(#[from] PolicyViolation),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("TOTP is already enrolled")]
    AlreadyEnrolled,
    #[error("no TOTP enrolment is pending")]
    NothingToConfirm,
    #[error("stored identity data is unusable")]
    Sealed(#[from] EnvelopeError),
    /// The signing keys are not loaded yet (the database was unreachable at start).
    #[error("the identity provider is starting")]
    NotReady,
    #[error("storage failed")]
    Store(#[from] StoreError),
}

/// What a successful sign-in or refresh gives the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub refresh_token: String,
    /// Present on a sign-in: the device token to send with later sign-ins from this device
    /// (failures from elsewhere then never slow this device down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
}

/// A sign-in attempt.
#[derive(Debug, Clone, Default)]
pub struct SignIn<'a> {
    pub email: &'a str,
    pub password: &'a str,
    /// A TOTP code, or a recovery code, when the account has MFA.
    pub second_factor: Option<&'a str>,
    /// The device token from an earlier sign-in on this device, if any.
    pub device_token: Option<&'a str>,
    /// The client's address, for throttling and the audit log.
    pub client: &'a str,
    /// The OAuth client signing in (keel's own clients use `keel`).
    pub client_id: &'a str,
}

/// A sign-in that passed every check.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user: User,
    pub roles: Vec<String>,
    /// How, in RFC 8176 values: `pwd`, then `otp` when a second factor was used (a TOTP code or
    /// a recovery code, which is a one-time password too; the audit log tells them apart).
    pub amr: Vec<&'static str>,
    /// The account's token generation: what its tokens and browser session carry.
    pub generation: i64,
}

/// A refresh token rotated: its family as now stored, the account's credentials, the new token.
pub(crate) struct Rotated {
    pub family: keel_domain::RefreshFamily,
    pub credentials: Credentials,
    pub token: String,
}

/// A pending TOTP enrolment: show `otpauth_uri` as a QR code, then confirm with a code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enrolment {
    pub secret: String,
    pub otpauth_uri: String,
    /// The `otpauth://` URI as a QR code, an SVG image for authenticator apps to scan.
    pub qr_svg: String,
}

/// The mail a new account sends, in the transaction that makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccountMail {
    None,
    Verification,
    Invitation,
}

/// A mail ready for the outbox: its topic and message.
pub(crate) type OutboxMail = (String, Outgoing);

/// Pending TOTP secrets carry this prefix in `totp_secret` until confirmed.
pub(crate) const PENDING: &str = "pending:";

/// The claim carrying the account's token generation at issue (absent: 0, tokens issued
/// before generations existed).
pub(crate) const GENERATION_CLAIM: &str = "gen";

/// Role names as stored: sorted, once each; an unknown one is refused.
pub(crate) fn role_list(roles: &[&str]) -> Result<Vec<String>, AuthError> {
    if let Some(role) = roles
        .iter()
        .find(|r| !keel_domain::identity::rbac::is_role(r))
    {
        return Err(ValidationError::new(
            "roles",
            format!(
                "unknown role {role:?}; known: {}",
                keel_domain::identity::rbac::ROLES.join(", ")
            ),
        )
        .into());
    }
    let mut roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    roles.sort();
    roles.dedup();
    Ok(roles)
}

/// The password policy, with the account's own name and address as words it must not be.
pub(crate) fn check_policy(
    policy: &PasswordPolicy,
    name: &UserName,
    email: &UserEmail,
    password: &str,
) -> Result<(), AuthError> {
    let local = email.as_str().split('@').next().unwrap_or_default();
    policy.check(password, &[email.as_str(), local, name.as_str()])?;
    Ok(())
}

/// The caller an access token names: its subject and the roles it was signed with.
pub fn caller_of(claims: &Claims) -> Result<keel_domain::Caller, AuthError> {
    let user = claims
        .sub
        .parse()
        .map_err(|_| AuthError::InvalidToken(TokenError::Malformed))?;
    let roles = claims
        .extra
        .get("roles")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    Ok(keel_domain::Caller { user, roles })
}

/// How a refresh token's sign-in was made, as its access tokens state it (`amr`).
pub(crate) fn family_amr(family: &keel_domain::RefreshFamily) -> Vec<&str> {
    match family.amr.is_empty() {
        true => vec!["pwd"],
        false => family.amr.iter().map(String::as_str).collect(),
    }
}

/// Where an account's TOTP secret is sealed (the envelope's associated data).
pub(crate) fn totp_place(user: UserId) -> String {
    format!("identity/{user}/totp")
}

pub(crate) fn mac(key: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key");
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

/// The built-in identity provider: the shared [`Core`](crate::shared) and the duties over it,
/// each handed out by a method (`idp.sessions().sign_in(..)`).
pub struct Idp {
    core: Core,
}

impl std::fmt::Debug for Idp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idp")
            .field("settings", &self.core.settings)
            .finish_non_exhaustive()
    }
}

impl Idp {
    /// `secret`: at least 32 bytes, from which the refresh-token and device-token keys are
    /// derived; `keyring`: the master keys that seal TOTP secrets and signing keys.
    pub fn new(
        users: Arc<dyn Accounts>,
        store: Arc<dyn IdentityStore>,
        hasher: PasswordHasher,
        keyring: Keyring,
        secret: &[u8],
        settings: IdpSettings,
    ) -> Self {
        assert!(secret.len() >= 32, "the IdP secret needs 32 bytes");
        let derive = |label: &[u8]| mac(secret, &[label]).finalize().into_bytes().to_vec();
        let settings_ttl = settings.revocation_check_secs.max(0);
        let core = Core {
            users,
            store,
            hasher,
            keyring,
            refresh: RefreshTokens::new(&derive(b"refresh-tokens")),
            device_key: derive(b"device-tokens"),
            session_key: derive(b"browser-sessions"),
            link_key: derive(b"mailed-links"),
            outbox: None,
            settings,
            keys: RwLock::new(None),
            verified: std::sync::Mutex::default(),
            reloaded_at: std::sync::atomic::AtomicI64::new(i64::MIN),
            floors: Floors::new(settings_ttl),
            feed: None,
        };
        Self { core }
    }

    /// Tells other instances through `feed` when an account's tokens are revoked.
    pub fn with_revocation_feed(mut self, feed: Arc<dyn RevocationFeed>) -> Self {
        self.core.feed = Some(feed);
        self
    }

    /// Sends mails (verification, invitation, reset) through `outbox`.
    pub fn with_outbox(mut self, outbox: Arc<dyn keel_domain::EventStore>) -> Self {
        self.core.outbox = Some(outbox);
        self
    }

    pub fn settings(&self) -> &IdpSettings {
        &self.core.settings
    }

    /// Making accounts, their roles, disabling them, the audit log.
    pub fn accounts(&self) -> crate::accounts::Accounts<'_> {
        self.core.accounts()
    }

    /// Signing in, refreshing, signing out, changing the password.
    pub fn sessions(&self) -> crate::sessions::Sessions<'_> {
        self.core.sessions()
    }

    /// TOTP enrolment.
    pub fn mfa(&self) -> crate::mfa::Mfa<'_> {
        self.core.mfa()
    }

    /// The signing keys, the JWKS and access-token verification.
    pub fn tokens(&self) -> crate::tokens::AccessTokens<'_> {
        self.core.tokens()
    }

    /// The OpenID Connect provider.
    pub fn oidc(&self) -> crate::oidc::OidcProvider<'_> {
        self.core.oidc()
    }

    /// The browser session kept at the IdP and the CSRF tokens of its pages.
    pub fn browser(&self) -> crate::oidc::browser::BrowserSessions<'_> {
        self.core.browser()
    }

    /// Signing in through external OpenID Connect providers.
    pub fn federation(&self) -> crate::federation::Federation<'_> {
        self.core.federation()
    }

    /// Mailed links, export and erasure.
    pub fn lifecycle(&self) -> crate::lifecycle::Lifecycle<'_> {
        self.core.lifecycle()
    }
}
