//! The IdP's operations over the storage ports: sign-up, sign-in (password, then TOTP or a
//! recovery code when enrolled), access and refresh tokens, sign-out, TOTP enrolment, the
//! signing keys' life, and the audit log of each event.
//!
//! Time is passed in (unix seconds), as everywhere in this crate. The HTTP layer maps
//! [`AuthError`] to status codes; every sign-in failure a caller can cause is the same
//! [`AuthError::InvalidCredentials`], whether the account exists or not, and takes the time of
//! a password verification either way (no user enumeration by message or timing).

use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use keel_domain::{
    Accounts, AuthEvent, Credentials, IdentityStore, NewAccount, NewUser, Outgoing, StoreError,
    User, UserEmail, UserId, UserName, ValidationError,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::lockout::LockoutPolicy;
use crate::refresh::{Redeemed, RefreshError, RefreshTokens};
use crate::revocation::{Floor, Floors, RevocationFeed};
use keel_credentials::envelope::{EnvelopeError, Keyring};
use keel_credentials::password::{PasswordHasher, PasswordPolicy, PolicyViolation};
use keel_credentials::token::{Claims, Expect, KeySet, KeyState, StoredKey, TokenError, Verifier};
use keel_credentials::totp::{Totp, TotpSecret};

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

/// The signing keys as stored (sealed): the set and when it last rotated.
#[derive(Serialize, Deserialize)]
struct StoredKeySet {
    rotated_at: i64,
    keys: Vec<StoredKey>,
}

const KEYS_PLACE: &str = "identity/signing-keys";
/// Pending TOTP secrets carry this prefix in `totp_secret` until confirmed.
pub(crate) const PENDING: &str = "pending:";

/// The built-in identity provider.
pub struct Idp {
    /// The users as acknowledged (through the users cache in `keel`): an account is made, and
    /// an address looked up, against the same state the API's user writes answer from.
    pub(crate) users: Arc<dyn Accounts>,
    pub(crate) store: Arc<dyn IdentityStore>,
    pub(crate) hasher: PasswordHasher,
    keyring: Keyring,
    refresh: RefreshTokens,
    device_key: Vec<u8>,
    /// Signs browser sessions (the OpenID Connect provider's cookie) and CSRF tokens.
    pub(crate) session_key: Vec<u8>,
    /// Signs the links mailed to people (verification, invitation, reset).
    pub(crate) link_key: Vec<u8>,
    /// Where mails go (the transactional outbox); `None`: mails are dropped (core tests).
    pub(crate) outbox: Option<Arc<dyn keel_domain::EventStore>>,
    pub(crate) settings: IdpSettings,
    keys: RwLock<Option<Loaded>>,
    /// Access tokens verified lately, by signature (with the whole token, compared on a hit):
    /// a request repeating a token (every request of a session does) costs a lookup, not an
    /// Ed25519 verification (39 µs here; `bench/identity.sh`).
    verified: std::sync::Mutex<std::collections::HashMap<Box<str>, VerifiedToken>>,
    /// When a token naming an unknown key last made this process reload the keys (unix
    /// seconds): at most once per [`KEY_RELOAD_SECS`], so tokens with made-up `kid`s cannot
    /// turn every request into a database read.
    reloaded_at: std::sync::atomic::AtomicI64,
    /// The token generation each account's tokens must carry, as lately read.
    floors: Floors,
    /// Tells the other instances when an account's tokens are revoked; `None`: one instance,
    /// or several that converge within `revocation_check_secs`.
    feed: Option<Arc<dyn RevocationFeed>>,
}

/// A token verified before: the whole token, its claims, and the subject and token
/// generation read from them once.
struct VerifiedToken {
    token: Box<str>,
    claims: Arc<Claims>,
    user: UserId,
    generation: i64,
}

/// The claim carrying the account's token generation at issue (absent: 0, tokens issued
/// before generations existed).
pub(crate) const GENERATION_CLAIM: &str = "gen";

/// Shortest time between two key reloads caused by unknown `kid`s.
const KEY_RELOAD_SECS: i64 = 10;

/// The signing keys as loaded, with the verifier made from them once.
struct Loaded {
    set: KeySet,
    verifier: Arc<Verifier>,
}

/// Verified tokens kept at most; past it, expired ones go, and if none had, all do.
const VERIFIED_MAX: usize = 65_536;

impl std::fmt::Debug for Idp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idp")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Role names as stored: sorted, once each; an unknown one is refused.
pub(crate) fn role_list(roles: &[&str]) -> Result<Vec<String>, AuthError> {
    if let Some(role) = roles.iter().find(|r| !keel_domain::rbac::is_role(r)) {
        return Err(ValidationError::new(
            "roles",
            format!(
                "unknown role {role:?}; known: {}",
                keel_domain::rbac::ROLES.join(", ")
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
fn check_policy(
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

/// The failure records a sign-in is checked against: `(key, failures)` of the client and of the
/// account (or of the account on a trusted device).
struct Throttle {
    client: (String, keel_domain::Failures),
    account: (String, keel_domain::Failures),
}

/// Where an account's TOTP secret is sealed (the envelope's associated data).
fn totp_place(user: UserId) -> String {
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
        Self {
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
        }
    }

    /// Tells other instances through `feed` when an account's tokens are revoked.
    pub fn with_revocation_feed(mut self, feed: Arc<dyn RevocationFeed>) -> Self {
        self.feed = Some(feed);
        self
    }

    /// Forgets what this instance read of `user`'s token generation (another instance revoked
    /// its tokens).
    pub fn forget_floor(&self, user: UserId) {
        self.floors.drop_one(user);
    }

    /// Forgets every account's token generation (the revocation feed may have missed some).
    pub fn forget_floors(&self) {
        self.floors.drop_all();
    }

    /// The token generation `user`'s tokens must carry at least, from memory when read less
    /// than `revocation_check_secs` ago.
    pub(crate) async fn floor(&self, user: UserId, now: i64) -> Result<Floor, AuthError> {
        if let Some(floor) = self.floors.cached(user, now) {
            return Ok(floor);
        }
        let ticket = self.floors.ticket();
        let floor = Floor::of(self.store.credentials(user).await?.as_ref());
        self.floors.remember(user, floor, now, ticket);
        Ok(floor)
    }

    /// `user`'s token generation as stored now (0 for an account without credentials), for a
    /// browser session begun outside [`Self::authenticate`] (federation).
    pub async fn token_generation(&self, user: UserId) -> Result<i64, AuthError> {
        Ok(self
            .store
            .credentials(user)
            .await?
            .map_or(0, |c| c.token_generation))
    }

    /// After `user`'s token generation was raised or its account disabled or erased: this
    /// instance forgets its copy, then the others are told (and have dropped theirs when this
    /// returns, as far as the feed reaches).
    pub(crate) async fn tokens_revoked(&self, user: UserId) {
        self.floors.drop_one(user);
        if let Some(feed) = &self.feed {
            feed.publish(user).await;
        }
    }

    /// Raises `user`'s token generation (every token, session and code issued before stops),
    /// and disables the account too when `disable` says when. `false` when it has no
    /// credentials (nothing to revoke: its tokens are refused already).
    pub(crate) async fn raise_generation(
        &self,
        user: UserId,
        disable: Option<i64>,
    ) -> Result<bool, AuthError> {
        loop {
            let Some(mut credentials) = self.store.credentials(user).await? else {
                return Ok(false);
            };
            credentials.token_generation += 1;
            if let Some(at) = disable {
                credentials.disabled_at.get_or_insert(at);
            }
            credentials.version += 1;
            match self.store.put_credentials(&credentials).await {
                // A sign-in recorded itself meanwhile: read again and raise over it.
                Err(StoreError::StaleVersion) => continue,
                other => other?,
            }
            return Ok(true);
        }
    }

    /// Sends mails (verification, invitation, reset) through `outbox`.
    pub fn with_outbox(mut self, outbox: Arc<dyn keel_domain::EventStore>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    pub(crate) fn refresh_tokens(&self) -> &RefreshTokens {
        &self.refresh
    }

    pub fn settings(&self) -> &IdpSettings {
        &self.settings
    }

    pub(crate) async fn record(
        &self,
        now: i64,
        actor: &str,
        action: &str,
        subject: Option<&str>,
        client: Option<&str>,
        detail: Value,
    ) -> Result<(), AuthError> {
        self.store
            .append_audit(&AuthEvent {
                id: 0,
                at: now,
                actor: actor.to_owned(),
                action: action.to_owned(),
                subject: subject.map(str::to_owned),
                client: client.map(str::to_owned),
                detail,
            })
            .await?;
        Ok(())
    }

    /// The credentials of `user`, made empty (no password, no roles) when it has none: the
    /// repair of an account a crash left half-made before accounts were made in one transaction.
    pub(crate) async fn credentials_or_repair(
        &self,
        user: UserId,
        now: i64,
    ) -> Result<Credentials, AuthError> {
        if let Some(credentials) = self.store.credentials(user).await? {
            return Ok(credentials);
        }
        match self.store.put_credentials(&Credentials::new(user)).await {
            // Repaired at the same moment by another request: take theirs.
            Ok(()) | Err(StoreError::StaleVersion) => {}
            Err(e) => return Err(e.into()),
        }
        self.record(
            now,
            "system",
            "account_repaired",
            Some(&user.to_string()),
            None,
            json!({ "reason": "credentials_missing" }),
        )
        .await?;
        self.credentials_of(user).await
    }

    /// An entry of the account acting on itself.
    pub(crate) async fn record_own(
        &self,
        now: i64,
        subject: &str,
        action: &str,
        client: Option<&str>,
        detail: Value,
    ) -> Result<(), AuthError> {
        self.record(now, subject, action, Some(subject), client, detail)
            .await
    }

    /// The credentials of an account that must have them.
    pub(crate) async fn credentials_of(&self, user: UserId) -> Result<Credentials, AuthError> {
        self.store
            .credentials(user)
            .await?
            .ok_or(AuthError::InvalidCredentials)
    }

    // ---- signing keys ----

    /// Loads the signing keys, making them on the very first start and rotating them when due;
    /// safe when several processes start together (the store writes one version once).
    pub async fn ensure_keys(&self, now: i64) -> Result<(), AuthError> {
        loop {
            let (mut set, rotated_at, version) = match self.store.signing_keys().await? {
                Some((sealed, version)) => {
                    let plain = self.keyring.open(&sealed, KEYS_PLACE)?;
                    let stored: StoredKeySet =
                        serde_json::from_slice(&plain).map_err(|_| EnvelopeError::Malformed)?;
                    let set = KeySet::load(&stored.keys, self.settings.access_ttl_secs * 2)
                        .map_err(|_| EnvelopeError::Malformed)?;
                    (set, stored.rotated_at, version)
                }
                None => {
                    let set = KeySet::generate(self.settings.access_ttl_secs * 2);
                    if self.write_keys(&set, now, 1).await? {
                        self.record(now, "system", "signing_keys_created", None, None, json!({}))
                            .await?;
                        self.install(set, now);
                        return Ok(());
                    }
                    continue;
                }
            };
            if now - rotated_at >= self.settings.key_rotation_secs {
                set.rotate(now);
                if !self.write_keys(&set, now, version + 1).await? {
                    continue;
                }
                self.record(now, "system", "signing_keys_rotated", None, None, json!({}))
                    .await?;
                self.install(set, now);
                return Ok(());
            }
            set.prune(now);
            self.install(set, now);
            return Ok(());
        }
    }

    async fn write_keys(&self, set: &KeySet, now: i64, version: i64) -> Result<bool, AuthError> {
        let stored = StoredKeySet {
            rotated_at: now,
            keys: set.store(),
        };
        let plain = serde_json::to_vec(&stored).expect("keys serialize");
        let sealed = self.keyring.seal(&plain, KEYS_PLACE);
        Ok(self.store.put_signing_keys(&sealed, version).await?)
    }

    /// Whether an unknown `kid` may reload the keys now; claims the reload if so.
    fn may_reload(&self, now: i64) -> bool {
        use std::sync::atomic::Ordering;
        let last = self.reloaded_at.load(Ordering::Relaxed);
        now.saturating_sub(last) >= KEY_RELOAD_SECS
            && self
                .reloaded_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Makes `set` the keys in use, with its verifier (retired keys past their overlap are
    /// already pruned; a token of a key pruned later has expired by then, so the verifier
    /// built now stays right until the next load).
    fn install(&self, set: KeySet, now: i64) {
        let verifier = Arc::new(set.verifier(now));
        *self.keys.write().expect("keys lock") = Some(Loaded { set, verifier });
    }

    pub(crate) fn with_keys<T>(&self, f: impl FnOnce(&KeySet) -> T) -> Result<T, AuthError> {
        let keys = self.keys.read().expect("keys lock");
        let loaded = keys.as_ref().ok_or(AuthError::NotReady)?;
        Ok(f(&loaded.set))
    }

    fn verifier(&self) -> Result<Arc<Verifier>, AuthError> {
        let keys = self.keys.read().expect("keys lock");
        Ok(keys.as_ref().ok_or(AuthError::NotReady)?.verifier.clone())
    }

    /// The published signing keys (`/.well-known/jwks.json`).
    pub fn jwks(&self) -> Result<Value, AuthError> {
        self.with_keys(KeySet::jwks)
    }

    /// Whether the signing keys are loaded (readiness).
    pub fn is_ready(&self) -> bool {
        self.keys.read().expect("keys lock").is_some()
    }

    /// Checks an access token for keel's API. A token verified lately is answered from memory
    /// while its times hold; a token signed by a key this process has not seen yet (another
    /// process rotated) makes it reload the keys once.
    pub async fn verify_access(&self, token: &str, now: i64) -> Result<Arc<Claims>, AuthError> {
        const LEEWAY: i64 = 30;
        // Keyed by the signature (86 characters, unforgeable), the whole token compared: the
        // map's keyed SipHash then runs over a fifth of the token, not all of it (a SHA-256 of
        // the token cost a quarter of the cached path's time).
        let signature = token.rsplit_once('.').map_or(token, |(_, s)| s);
        let known = self
            .verified
            .lock()
            .expect("verified lock")
            .get(signature)
            .filter(|known| known.token.as_ref() == token)
            .map(|known| (known.claims.clone(), known.user, known.generation));
        if let Some((claims, user, generation)) = known {
            if now >= claims.exp.saturating_add(LEEWAY) {
                return Err(TokenError::Expired.into());
            }
            if claims.nbf > now.saturating_add(LEEWAY) {
                return Err(TokenError::NotYetValid.into());
            }
            return self.unrevoked(claims, user, generation, now).await;
        }
        let expect = Expect {
            issuer: self.settings.issuer.clone(),
            audience: self.settings.audience.clone(),
            leeway_secs: LEEWAY,
        };
        let claims = match self.verifier()?.verify(token, &expect, now) {
            Err(TokenError::UnknownKey) if self.may_reload(now) => {
                self.ensure_keys(now).await?;
                self.verifier()?.verify(token, &expect, now)?
            }
            other => other?,
        };
        let user: UserId = claims.sub.parse().map_err(|_| TokenError::Malformed)?;
        let generation = match claims.extra.get(GENERATION_CLAIM) {
            None => 0,
            Some(value) => value.as_i64().ok_or(TokenError::Malformed)?,
        };
        let claims = Arc::new(claims);
        {
            let mut verified = self.verified.lock().expect("verified lock");
            if verified.len() >= VERIFIED_MAX {
                verified.retain(|_, known| now < known.claims.exp.saturating_add(LEEWAY));
                if verified.len() >= VERIFIED_MAX {
                    verified.clear();
                }
            }
            verified.insert(
                signature.into(),
                VerifiedToken {
                    token: token.into(),
                    claims: claims.clone(),
                    user,
                    generation,
                },
            );
        }
        self.unrevoked(claims, user, generation, now).await
    }

    /// `claims` if the account's tokens of `generation` still hold.
    async fn unrevoked(
        &self,
        claims: Arc<Claims>,
        user: UserId,
        generation: i64,
        now: i64,
    ) -> Result<Arc<Claims>, AuthError> {
        if self.floor(user, now).await?.admits(generation) {
            Ok(claims)
        } else {
            Err(TokenError::Revoked.into())
        }
    }

    pub(crate) fn access_token(
        &self,
        user: UserId,
        generation: i64,
        roles: &[String],
        amr: &[&str],
        now: i64,
    ) -> Result<String, AuthError> {
        let mut extra = serde_json::Map::new();
        extra.insert(GENERATION_CLAIM.into(), json!(generation));
        self.access_token_with(user, roles, amr, extra, now)
    }

    /// An access token for keel's API with `extra` claims besides roles and `amr` (the token
    /// generation; an OpenID Connect client's `client_id` and `scope`).
    pub(crate) fn access_token_with(
        &self,
        user: UserId,
        roles: &[String],
        amr: &[&str],
        mut extra: serde_json::Map<String, Value>,
        now: i64,
    ) -> Result<String, AuthError> {
        let mut jti = [0u8; 16];
        keel_credentials::random_bytes(&mut jti);
        extra.insert("roles".into(), json!(roles));
        extra.insert("amr".into(), json!(amr));
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            sub: user.to_string(),
            aud: vec![self.settings.audience.clone()],
            exp: now + self.settings.access_ttl_secs,
            nbf: now,
            iat: now,
            jti: URL_SAFE_NO_PAD.encode(jti),
            extra,
        };
        self.with_keys(|set| set.sign(&claims))
    }

    // ---- accounts ----

    /// Makes an account: a user and its credentials, with `password` checked by the policy.
    /// `roles` are given only by admins and `keel admin create`. No mail goes out (see
    /// [`Self::register`]).
    pub async fn create_account(
        &self,
        name: &str,
        email: &str,
        password: &str,
        roles: &[&str],
        actor: &str,
        now: i64,
    ) -> Result<User, AuthError> {
        self.make_account(name, email, password, roles, actor, now, false)
            .await
    }

    /// Makes an account as [`Self::create_account`] does, and mails it the link that verifies
    /// its address in the same transaction (sign-up, and an admin's account with a password).
    pub async fn register(
        &self,
        name: &str,
        email: &str,
        password: &str,
        roles: &[&str],
        actor: &str,
        now: i64,
    ) -> Result<User, AuthError> {
        self.make_account(name, email, password, roles, actor, now, true)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn make_account(
        &self,
        name: &str,
        email: &str,
        password: &str,
        roles: &[&str],
        actor: &str,
        now: i64,
        verify: bool,
    ) -> Result<User, AuthError> {
        let name = UserName::parse(name)?;
        let email = UserEmail::parse(email)?;
        check_policy(&self.settings.policy, &name, &email, password)?;
        let roles = role_list(roles)?;
        let mail = if verify {
            AccountMail::Verification
        } else {
            AccountMail::None
        };
        let (user, _) = self
            .insert_account(
                NewUser { name, email },
                "account_created",
                actor,
                now,
                |c| {
                    c.password_hash = Some(self.hasher.hash(password));
                    c.password_changed_at = Some(now);
                    c.roles = roles;
                },
                mail,
                |_| None,
            )
            .await?;
        Ok(user)
    }

    /// Makes a new user, its credentials (set by `fill`), the audit entry of `action` with the
    /// roles given, `mail` and the external identity `link` (a federated sign-up), all in one
    /// transaction: the account exists whole or not at all. `EmailTaken` when the address has
    /// an account.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn insert_account(
        &self,
        new: NewUser,
        action: &str,
        actor: &str,
        now: i64,
        fill: impl FnOnce(&mut Credentials),
        mail: AccountMail,
        link: impl FnOnce(UserId) -> Option<keel_domain::FederatedLink>,
    ) -> Result<(User, Credentials), AuthError> {
        let created = chrono::DateTime::from_timestamp(now, 0).unwrap_or_default();
        let user = User::create(new, created);
        let mut credentials = Credentials::new(user.id);
        fill(&mut credentials);
        let mails = match mail {
            AccountMail::None => None,
            AccountMail::Verification => self.verification_mail(&user, &credentials, now),
            AccountMail::Invitation => self.invitation_mail(&user, &credentials, now),
        };
        let account = NewAccount {
            audit: AuthEvent {
                id: 0,
                at: now,
                actor: actor.to_owned(),
                action: action.to_owned(),
                subject: Some(user.id.to_string()),
                client: None,
                detail: json!({ "roles": credentials.roles }),
            },
            link: link(user.id),
            user,
            credentials,
            mails: mails.into_iter().collect(),
        };
        match self.users.create(&account).await {
            Err(StoreError::Conflict { field: "email" }) => return Err(AuthError::EmailTaken),
            other => other?,
        }
        Ok((account.user, account.credentials))
    }

    /// The roles an account acts with: all of its roles, unless one of them needs a second
    /// factor it has not enrolled; then none, until it enrols (it can still sign in to do so).
    pub fn effective_roles(&self, credentials: &Credentials) -> Vec<String> {
        let enrolled = credentials
            .totp_secret
            .as_deref()
            .is_some_and(|s| !s.starts_with(PENDING));
        let needs_mfa = credentials
            .roles
            .iter()
            .any(|r| self.settings.mfa_required_roles.contains(r));
        if needs_mfa && !enrolled {
            Vec::new()
        } else {
            credentials.roles.clone()
        }
    }

    /// Whether any account holds `role` (`keel up` says how to make the first admin).
    pub async fn anyone_holds(&self, role: &str) -> Result<bool, AuthError> {
        Ok(!self.store.holders_of(role, 1).await?.is_empty())
    }

    /// Whether the account must enrol a second factor before its roles apply.
    pub async fn mfa_setup_required(&self, user: UserId) -> Result<bool, AuthError> {
        let credentials = self.credentials_of(user).await?;
        Ok(credentials.roles != self.effective_roles(&credentials))
    }

    /// The password policy for `account`'s new password.
    pub(crate) fn check_policy(&self, account: &User, password: &str) -> Result<(), AuthError> {
        check_policy(
            &self.settings.policy,
            &account.name,
            &account.email,
            password,
        )
    }

    fn device_token(&self, user: UserId) -> String {
        let mut id = [0u8; 16];
        keel_credentials::random_bytes(&mut id);
        let id = URL_SAFE_NO_PAD.encode(id);
        let tag = mac(
            &self.device_key,
            &[user.to_string().as_bytes(), id.as_bytes()],
        )
        .finalize()
        .into_bytes();
        format!("{id}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The device id of a genuine device token of `user`.
    fn trusted_device<'t>(&self, user: UserId, token: &'t str) -> Option<&'t str> {
        let (id, tag) = token.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        mac(
            &self.device_key,
            &[user.to_string().as_bytes(), id.as_bytes()],
        )
        .verify_slice(&tag)
        .ok()?;
        Some(id)
    }

    /// Signs in. Failures are counted for the client and for the account (or, from a trusted
    /// device, for the account on that device), and each key slows down on its own.
    pub async fn sign_in(&self, attempt: &SignIn<'_>, now: i64) -> Result<Tokens, AuthError> {
        let signed_in = self.authenticate(attempt, now).await?;
        let user = signed_in.user.id;
        let (mut family, refresh_token) = self.refresh.start(
            &user.to_string(),
            attempt.client_id,
            "",
            now,
            self.settings.session_ttl_secs,
        );
        family.amr = signed_in.amr.iter().map(|m| (*m).to_owned()).collect();
        self.store.insert_family(&family).await?;
        let device_token = match attempt
            .device_token
            .and_then(|t| self.trusted_device(user, t))
        {
            Some(_) => attempt.device_token.map(str::to_owned),
            None => Some(self.device_token(user)),
        };
        Ok(Tokens {
            access_token: self.access_token(
                user,
                signed_in.generation,
                &signed_in.roles,
                &signed_in.amr,
                now,
            )?,
            token_type: "Bearer".into(),
            expires_in: self.settings.access_ttl_secs,
            refresh_token,
            device_token,
        })
    }

    /// Checks a sign-in attempt (throttles, password, second factor) and records it, without
    /// issuing tokens: [`Self::sign_in`] and the OpenID Connect provider's login page build on it.
    pub async fn authenticate(
        &self,
        attempt: &SignIn<'_>,
        now: i64,
    ) -> Result<Authenticated, AuthError> {
        let lockout = self.settings.lockout;
        let client_key = format!("client:{}", attempt.client);
        let client_failures = self.store.failures(&client_key).await?;
        if let Err(locked) = lockout.check(&client_failures, now) {
            return Err(AuthError::Locked {
                retry_after_secs: locked.retry_after_secs,
            });
        }
        let email = UserEmail::parse(attempt.email).ok();
        let user = match &email {
            Some(email) => self.users.get_by_email(email).await?,
            None => None,
        };
        let credentials = match &user {
            Some(user) => self.store.credentials(user.id).await?,
            None => None,
        };
        // Keyed by the address typed, not the account: an address without an account slows
        // down the same way, so the answer tells nothing about which accounts exist.
        let typed = email
            .as_ref()
            .map_or(attempt.email.trim().to_lowercase(), |e| {
                e.as_str().to_owned()
            });
        let account_key = match (&user, attempt.device_token) {
            (Some(user), Some(token)) => match self.trusted_device(user.id, token) {
                Some(device) => format!("device:{}:{device}", user.id),
                None => format!("account:{typed}"),
            },
            _ => format!("account:{typed}"),
        };
        let mut account_failures = self.store.failures(&account_key).await?;
        if let Err(locked) = lockout.check(&account_failures, now) {
            return Err(AuthError::Locked {
                retry_after_secs: locked.retry_after_secs,
            });
        }
        let throttle = Throttle {
            client: (client_key, client_failures),
            account: (account_key.clone(), account_failures),
        };

        let (user, mut credentials) = match (user, credentials) {
            (Some(user), Some(credentials)) => (user, credentials),
            _ => {
                self.hasher.verify_nothing(attempt.password);
                return self
                    .failed(attempt, throttle, None, "unknown_account", now)
                    .await;
            }
        };
        let subject = user.id.to_string();
        let password_ok = credentials
            .password_hash
            .as_deref()
            .map(|stored| self.hasher.verify(attempt.password, stored));
        let rehash = match password_ok {
            Some(keel_credentials::password::Verified::Yes { rehash }) => rehash,
            _ => {
                if password_ok.is_none() {
                    self.hasher.verify_nothing(attempt.password);
                }
                return self
                    .failed(attempt, throttle, Some(&subject), "wrong_password", now)
                    .await;
            }
        };
        if credentials.disabled_at.is_some() {
            return self
                .failed(attempt, throttle, Some(&subject), "account_disabled", now)
                .await;
        }
        if let Some(dormant) = self.settings.dormant_after_secs {
            let created = user.created_at.timestamp();
            let active = credentials.last_login_at.unwrap_or(created);
            if now - active > dormant {
                // Families first, then the generation (see `rotate_refresh`).
                self.store.revoke_families_of(&subject).await?;
                credentials.disabled_at = Some(now);
                credentials.token_generation += 1;
                credentials.version += 1;
                self.store.put_credentials(&credentials).await?;
                self.tokens_revoked(user.id).await;
                self.record(
                    now,
                    "system",
                    "account_disabled",
                    Some(&subject),
                    None,
                    json!({ "reason": "dormant", "last_active": active }),
                )
                .await?;
                return self
                    .failed(attempt, throttle, Some(&subject), "account_dormant", now)
                    .await;
            }
        }
        if let (Some(max_age), Some(changed)) = (
            self.settings.password_max_age_secs,
            credentials.password_changed_at,
        ) && now - changed > max_age
        {
            self.record_own(
                now,
                &subject,
                "login_password_expired",
                Some(attempt.client),
                json!({}),
            )
            .await?;
            return Err(AuthError::PasswordExpired);
        }
        let mut amr = vec!["pwd"];
        let mut second_factor = None;
        let enrolled = credentials
            .totp_secret
            .as_deref()
            .filter(|s| !s.starts_with(PENDING));
        if let Some(sealed) = enrolled {
            let Some(code) = attempt.second_factor else {
                return Err(AuthError::MfaRequired);
            };
            let code = code.trim();
            let secret = TotpSecret::from_bytes(&self.keyring.open(sealed, &totp_place(user.id))?)
                .map_err(|_| EnvelopeError::Malformed)?;
            let last = credentials
                .totp_last_step
                .and_then(|s| u64::try_from(s).ok());
            let unix = u64::try_from(now).unwrap_or_default();
            if let Ok(step) = Totp::new(secret).verify(code, unix, last) {
                credentials.totp_last_step = i64::try_from(step).ok();
                amr.push("otp");
                second_factor = Some("totp");
            } else if keel_credentials::recovery::redeem(code, &mut credentials.recovery_codes) {
                amr.push("otp");
                second_factor = Some("recovery_code");
            } else {
                return self
                    .failed(
                        attempt,
                        throttle,
                        Some(&subject),
                        "wrong_second_factor",
                        now,
                    )
                    .await;
            }
        }
        if rehash {
            credentials.password_hash = Some(self.hasher.hash(attempt.password));
        }
        credentials.last_login_at = Some(now);
        credentials.version += 1;
        // A concurrent sign-in with the same TOTP code loses here: the code is used once.
        self.store
            .put_credentials(&credentials)
            .await
            .map_err(|e| match e {
                StoreError::StaleVersion => AuthError::InvalidCredentials,
                other => other.into(),
            })?;
        lockout.succeed(&mut account_failures);
        self.store
            .put_failures(&account_key, account_failures)
            .await?;
        self.record_own(
            now,
            &subject,
            "login_succeeded",
            Some(attempt.client),
            json!({ "amr": amr, "second_factor": second_factor, "client_id": attempt.client_id }),
        )
        .await?;
        Ok(Authenticated {
            roles: self.effective_roles(&credentials),
            user,
            amr,
            generation: credentials.token_generation,
        })
    }

    /// Counts a failed sign-in for the client and the account keys, audits it, and answers
    /// the one failure every caller-caused failure gets.
    async fn failed<T>(
        &self,
        attempt: &SignIn<'_>,
        mut throttle: Throttle,
        subject: Option<&str>,
        reason: &str,
        now: i64,
    ) -> Result<T, AuthError> {
        let lockout = self.settings.lockout;
        lockout.fail(&mut throttle.client.1, now);
        lockout.fail(&mut throttle.account.1, now);
        for (key, failures) in [throttle.client, throttle.account] {
            self.store.put_failures(&key, failures).await?;
        }
        self.record(
            now,
            "anonymous",
            "login_failed",
            subject,
            Some(attempt.client),
            json!({ "reason": reason }),
        )
        .await?;
        Err(AuthError::InvalidCredentials)
    }

    /// Exchanges a refresh token for new tokens; a reused one revokes its whole sign-in.
    pub async fn refresh(
        &self,
        token: &str,
        client_id: &str,
        client: &str,
        now: i64,
    ) -> Result<Tokens, AuthError> {
        let rotated = self.rotate_refresh(token, client_id, client, now).await?;
        let credentials = &rotated.credentials;
        Ok(Tokens {
            access_token: self.access_token(
                credentials.user_id,
                credentials.token_generation,
                &self.effective_roles(credentials),
                &family_amr(&rotated.family),
                now,
            )?,
            token_type: "Bearer".into(),
            expires_in: self.settings.access_ttl_secs,
            refresh_token: rotated.token,
            device_token: None,
        })
    }

    /// Rotates a refresh token of `client_id`'s family: the family one generation on, the
    /// account's credentials (refused when disabled) and the new token. A reused token revokes
    /// the family; two uses of one token racing both lose. Shared by keel's own refresh and
    /// the OpenID Connect `refresh_token` grant.
    pub(crate) async fn rotate_refresh(
        &self,
        token: &str,
        client_id: &str,
        client: &str,
        now: i64,
    ) -> Result<Rotated, AuthError> {
        let (family_id, _) = self.refresh.family_of(token)?;
        let family = self
            .store
            .family(family_id)
            .await?
            .ok_or(RefreshError::Invalid)?;
        match self.refresh.redeem(&family, token, client_id, now) {
            Redeemed::Rotated {
                family: next,
                token,
            } => {
                // The credentials before the family advances: revocations revoke the families
                // first and raise the generation after, so a generation read here that is
                // already raised means the advance below fails, and one read before the raise
                // puts an access token into the world that the raise refuses.
                let user: UserId = family.subject.parse().map_err(|_| RefreshError::Invalid)?;
                let credentials = self
                    .store
                    .credentials(user)
                    .await?
                    .filter(|c| c.disabled_at.is_none())
                    .ok_or(AuthError::InvalidCredentials)?;
                if !self.store.advance_family(&next, family.generation).await? {
                    // Another use of the same token won: that is a reuse too.
                    self.store.revoke_family(&family.id).await?;
                    return Err(RefreshError::Revoked.into());
                }
                Ok(Rotated {
                    family: next,
                    credentials,
                    token,
                })
            }
            Redeemed::Reused { family } => {
                self.store.revoke_family(&family.id).await?;
                self.record(
                    now,
                    "anonymous",
                    "refresh_token_reused",
                    Some(&family.subject),
                    Some(client),
                    json!({ "family": family.id }),
                )
                .await?;
                Err(RefreshError::Revoked.into())
            }
            Redeemed::Refused(e) => Err(e.into()),
        }
    }

    /// Ends the sign-in a refresh token belongs to.
    pub async fn sign_out(&self, token: &str, client: &str, now: i64) -> Result<(), AuthError> {
        let (family_id, _) = self.refresh.family_of(token)?;
        if let Some(family) = self.store.family(family_id).await? {
            self.store.revoke_family(&family.id).await?;
            self.record_own(now, &family.subject, "logout", Some(client), json!({}))
                .await?;
        }
        Ok(())
    }

    /// Changes the account's password after checking the current one; every sign-in of the
    /// account ends (its refresh tokens stop working), this one included.
    pub async fn change_password(
        &self,
        user: UserId,
        current: &str,
        new: &str,
        client: &str,
        now: i64,
    ) -> Result<(), AuthError> {
        let subject = user.to_string();
        let account = self
            .users
            .get(user)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        let mut credentials = self.credentials_of(user).await?;
        let matches = credentials
            .password_hash
            .as_deref()
            .is_some_and(|stored| self.hasher.verify(current, stored).is_match());
        if !matches {
            self.record_own(
                now,
                &subject,
                "password_change_failed",
                Some(client),
                json!({}),
            )
            .await?;
            return Err(AuthError::InvalidCredentials);
        }
        let ended = self
            .replace_password(&account, &mut credentials, new, now)
            .await?;
        self.record_own(
            now,
            &subject,
            "password_changed",
            Some(client),
            json!({ "sessions_ended": ended }),
        )
        .await
    }

    /// Sets a new password (checked by the policy) over the stored `credentials`, and ends
    /// every sign-in of the account: a change and a reset alike. Returns the sign-ins ended.
    pub(crate) async fn replace_password(
        &self,
        account: &User,
        credentials: &mut Credentials,
        password: &str,
        now: i64,
    ) -> Result<u64, AuthError> {
        self.check_policy(account, password)?;
        credentials.password_hash = Some(self.hasher.hash(password));
        credentials.password_changed_at = Some(now);
        // Families first, then the generation (see `rotate_refresh`).
        let ended = self
            .store
            .revoke_families_of(&account.id.to_string())
            .await?;
        credentials.token_generation += 1;
        credentials.version += 1;
        self.store.put_credentials(credentials).await?;
        self.tokens_revoked(account.id).await;
        Ok(ended)
    }

    /// Ends every sign-in of the account: its refresh tokens, access tokens and browser
    /// sessions stop. Returns how many sign-ins (refresh-token families) were live.
    pub async fn sign_out_everywhere(
        &self,
        user: UserId,
        client: &str,
        now: i64,
    ) -> Result<u64, AuthError> {
        let subject = user.to_string();
        // Families first, then the generation (see `rotate_refresh`).
        let ended = self.store.revoke_families_of(&subject).await?;
        self.raise_generation(user, None).await?;
        self.tokens_revoked(user).await;
        self.record_own(
            now,
            &subject,
            "logout_everywhere",
            Some(client),
            json!({ "sessions_ended": ended }),
        )
        .await?;
        Ok(ended)
    }

    /// Disables or enables an account (admins). A disabled account cannot sign in or refresh,
    /// and its sign-ins end at once, access tokens and browser sessions included; enabling it
    /// again does not bring those back.
    pub async fn set_disabled(
        &self,
        actor: &str,
        user: UserId,
        disabled: bool,
        now: i64,
    ) -> Result<bool, AuthError> {
        let Some(mut credentials) = self.store.credentials(user).await? else {
            return Ok(false);
        };
        let subject = user.to_string();
        if credentials.disabled_at.is_some() != disabled {
            credentials.disabled_at = disabled.then_some(now);
            if disabled {
                credentials.token_generation += 1;
            } else {
                // Enabling counts as activity: an account disabled as dormant would otherwise
                // be disabled again at its next sign-in.
                credentials.last_login_at = Some(now);
            }
            credentials.version += 1;
            self.store.put_credentials(&credentials).await?;
        }
        let ended = if disabled {
            self.store.revoke_families_of(&subject).await?
        } else {
            0
        };
        // Either way the cached floors are wrong now: "nothing" after enabling, the old
        // generation after disabling.
        self.tokens_revoked(user).await;
        let action = if disabled {
            "account_disabled"
        } else {
            "account_enabled"
        };
        self.record(
            now,
            actor,
            action,
            Some(&subject),
            None,
            json!({ "sessions_ended": ended }),
        )
        .await?;
        Ok(true)
    }

    /// The authentication audit log, newest first.
    pub async fn audit(
        &self,
        query: &keel_domain::AuthEventQuery,
    ) -> Result<Vec<AuthEvent>, AuthError> {
        Ok(self.store.audit(query).await?)
    }

    // ---- MFA ----

    /// Starts TOTP enrolment: a new secret, kept pending until [`Self::confirm_totp`].
    pub async fn enroll_totp(&self, user: &User, now: i64) -> Result<Enrolment, AuthError> {
        let mut credentials = self.credentials_of(user.id).await?;
        if credentials
            .totp_secret
            .as_deref()
            .is_some_and(|s| !s.starts_with(PENDING))
        {
            return Err(AuthError::AlreadyEnrolled);
        }
        let secret = TotpSecret::generate();
        credentials.totp_secret = Some(format!(
            "{PENDING}{}",
            self.keyring.seal(secret.as_bytes(), &totp_place(user.id))
        ));
        credentials.version += 1;
        self.store.put_credentials(&credentials).await?;
        self.record_own(
            now,
            &user.id.to_string(),
            "totp_enrolment_started",
            None,
            json!({}),
        )
        .await?;
        let totp = Totp::new(secret.clone());
        let otpauth_uri = totp.otpauth_uri(&self.settings.totp_issuer, user.email.as_str());
        Ok(Enrolment {
            secret: secret.to_base32(),
            qr_svg: crate::qr::qr_svg(&otpauth_uri),
            otpauth_uri,
        })
    }

    /// Confirms enrolment with a first code; returns the recovery codes, shown once.
    pub async fn confirm_totp(
        &self,
        user: &User,
        code: &str,
        now: i64,
    ) -> Result<Vec<String>, AuthError> {
        let mut credentials = self.credentials_of(user.id).await?;
        let sealed = credentials
            .totp_secret
            .as_deref()
            .and_then(|s| s.strip_prefix(PENDING))
            .ok_or(AuthError::NothingToConfirm)?
            .to_owned();
        let secret = TotpSecret::from_bytes(&self.keyring.open(&sealed, &totp_place(user.id))?)
            .map_err(|_| EnvelopeError::Malformed)?;
        let step = Totp::new(secret)
            .verify(code, u64::try_from(now).unwrap_or_default(), None)
            .map_err(|_| AuthError::InvalidCredentials)?;
        let codes = keel_credentials::recovery::RecoveryCodes::generate();
        credentials.totp_secret = Some(sealed);
        credentials.totp_last_step = i64::try_from(step).ok();
        credentials.recovery_codes = codes.hashes;
        credentials.version += 1;
        self.store.put_credentials(&credentials).await?;
        self.record_own(now, &user.id.to_string(), "totp_enrolled", None, json!({}))
            .await?;
        Ok(codes.shown)
    }

    /// The active signing key's id (for tests and the admin view).
    pub fn active_kid(&self) -> Option<String> {
        self.with_keys(|set| {
            set.keys()
                .iter()
                .find(|k| k.state == KeyState::Active)
                .map(|k| k.kid.clone())
        })
        .ok()
        .flatten()
    }
}
