//! The IdP's shared core: the storage ports, the keys derived from the IdP secret, the signing
//! keys, the revocation floors and the settings. Every duty (accounts, sessions, MFA, tokens,
//! the OpenID Connect provider, browser sessions, federation, lifecycle) is a view that holds
//! nothing but a reference to it, so the duties cannot drift apart in what they know.

use std::sync::{Arc, RwLock};

use keel_credentials::envelope::Keyring;
use keel_credentials::password::PasswordHasher;
use keel_domain::{Accounts, AuthEvent, Credentials, IdentityStore, StoreError, User, UserId};
use serde_json::{Value, json};

use crate::refresh::RefreshTokens;
use crate::revocation::{Floor, Floors, RevocationFeed};
use crate::service::{AuthError, IdpSettings, check_policy};
use crate::tokens::{Loaded, VerifiedToken};

/// What every duty of the IdP shares.
pub(crate) struct Core {
    /// The users as acknowledged (through the users cache in `keel`): an account is made, and
    /// an address looked up, against the same state the API's user writes answer from.
    pub(crate) users: Arc<dyn Accounts>,
    pub(crate) store: Arc<dyn IdentityStore>,
    pub(crate) hasher: PasswordHasher,
    pub(crate) keyring: Keyring,
    pub(crate) refresh: RefreshTokens,
    pub(crate) device_key: Vec<u8>,
    /// Signs browser sessions (the OpenID Connect provider's cookie) and CSRF tokens.
    pub(crate) session_key: Vec<u8>,
    /// Signs the links mailed to people (verification, invitation, reset).
    pub(crate) link_key: Vec<u8>,
    /// Where mails go (the transactional outbox); `None`: mails are dropped (core tests).
    pub(crate) outbox: Option<Arc<dyn keel_domain::EventStore>>,
    pub(crate) settings: IdpSettings,
    pub(crate) keys: RwLock<Option<Loaded>>,
    /// Access tokens verified lately, by signature (with the whole token, compared on a hit):
    /// a request repeating a token (every request of a session does) costs a lookup, not an
    /// Ed25519 verification (39 µs here; `bench/identity.sh`).
    pub(crate) verified: std::sync::Mutex<std::collections::HashMap<Box<str>, VerifiedToken>>,
    /// When a token naming an unknown key last made this process reload the keys (unix
    /// seconds): at most once per `KEY_RELOAD_SECS`, so tokens with made-up `kid`s cannot
    /// turn every request into a database read.
    pub(crate) reloaded_at: std::sync::atomic::AtomicI64,
    /// The token generation each account's tokens must carry, as lately read.
    pub(crate) floors: Floors,
    /// Tells the other instances when an account's tokens are revoked; `None`: one instance,
    /// or several that converge within `revocation_check_secs`.
    pub(crate) feed: Option<Arc<dyn RevocationFeed>>,
}

impl Core {
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

    pub(crate) fn refresh_tokens(&self) -> &RefreshTokens {
        &self.refresh
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

    /// The password policy for `account`'s new password.
    pub(crate) fn check_policy(&self, account: &User, password: &str) -> Result<(), AuthError> {
        check_policy(
            &self.settings.policy,
            &account.name,
            &account.email,
            password,
        )
    }
}
