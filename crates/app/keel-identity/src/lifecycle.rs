//! The account lifecycle beyond signing in (issue 4 §1, §7): email verification, invitations,
//! forgotten passwords, data export and erasure.
//!
//! **Links by mail.** Verification, invitation and reset links carry a token that is stateless
//! but single-use: `<purpose>.<user>.<expires>.<mac>`, where the MAC also covers the state the
//! token may change — the email address it verifies, the password hash it replaces. Once used,
//! that state is different and the token no longer verifies; nothing has to be stored or swept.
//!
//! **Mail** goes through the transactional outbox to the `notifier` subscriber group
//! (`mail.<kind>` topics), which records it as sent: the dev mailbox that admins read at
//! `GET /auth/dev/mailbox`. The token is never logged.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;
use keel_domain::messaging::events::{MAIL_TOPIC_PREFIX, Mail};
use keel_domain::{Credentials, NewUser, Outgoing, StoreError, User, UserEmail, UserId, UserName};
use serde::Serialize;
use serde_json::{Value, json};

use crate::service::{AccountMail, AuthError, OutboxMail, mac};
use crate::shared::Core;

/// How long links stay valid.
pub const VERIFY_TTL_SECS: i64 = 48 * 3600;
pub const RESET_TTL_SECS: i64 = 3600;
pub const INVITATION_TTL_SECS: i64 = 7 * 24 * 3600;

/// What a link token is for; part of what its MAC covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    VerifyEmail,
    ResetPassword,
    Invitation,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify",
            Self::ResetPassword => "reset",
            Self::Invitation => "invite",
        }
    }
}

/// What a person may take away of their account (GDPR art. 15 and 20).
#[derive(Debug, Clone, Serialize)]
pub struct AccountExport {
    pub user: User,
    pub roles: Vec<String>,
    pub email_verified_at: Option<i64>,
    pub password_changed_at: Option<i64>,
    pub mfa_enrolled: bool,
    pub disabled_at: Option<i64>,
    pub last_login_at: Option<i64>,
    /// Its identities at external providers.
    pub linked_identities: Vec<keel_domain::FederatedLink>,
    /// The authentication events about the account, newest first.
    pub events: Vec<keel_domain::AuthEvent>,
}

/// The state a link of `purpose` is bound to: once it changes, the link is dead.
fn binding(purpose: Purpose, user: &User, credentials: &Credentials) -> String {
    match purpose {
        Purpose::VerifyEmail => user.email.as_str().to_owned(),
        Purpose::ResetPassword | Purpose::Invitation => {
            credentials.password_hash.clone().unwrap_or_default()
        }
    }
}

/// Mailed links, export and erasure.
#[derive(Clone, Copy)]
pub struct Lifecycle<'a> {
    core: &'a Core,
}

impl Core {
    pub(crate) fn lifecycle(&self) -> Lifecycle<'_> {
        Lifecycle { core: self }
    }
}

impl Lifecycle<'_> {
    fn link_mac(&self, purpose: Purpose, body: &str, binding: &str) -> hmac::Hmac<sha2::Sha256> {
        mac(
            &self.core.link_key,
            &[
                purpose.as_str().as_bytes(),
                body.as_bytes(),
                binding.as_bytes(),
            ],
        )
    }

    /// A link token of `purpose` for the account as it is now.
    fn link_token(
        &self,
        purpose: Purpose,
        user: &User,
        credentials: &Credentials,
        expires_at: i64,
    ) -> String {
        let body = format!("{}.{}.{expires_at}", purpose.as_str(), user.id);
        let tag = self
            .link_mac(purpose, &body, &binding(purpose, user, credentials))
            .finalize()
            .into_bytes();
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The account a link token of `purpose` names, if the token is genuine, current and its
    /// account unchanged since it was made.
    async fn check_link(
        &self,
        purpose: Purpose,
        token: &str,
        now: i64,
    ) -> Result<(User, Credentials), AuthError> {
        let parsed = (|| {
            let (body, tag) = token.trim().rsplit_once('.')?;
            let mut parts = body.split('.');
            (parts.next()? == purpose.as_str()).then_some(())?;
            let user: UserId = parts.next()?.parse().ok()?;
            let expires_at: i64 = parts.next()?.parse().ok()?;
            let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
            Some((body, user, expires_at, tag))
        })();
        let (body, user, expires_at, tag) = parsed.ok_or(AuthError::InvalidLink)?;
        if now >= expires_at {
            return Err(AuthError::InvalidLink);
        }
        let account = self
            .core
            .users
            .get(user)
            .await?
            .ok_or(AuthError::InvalidLink)?;
        let credentials = self
            .core
            .store
            .credentials(user)
            .await?
            .ok_or(AuthError::InvalidLink)?;
        self.link_mac(purpose, body, &binding(purpose, &account, &credentials))
            .verify_slice(&tag)
            .map_err(|_| AuthError::InvalidLink)?;
        if credentials.disabled_at.is_some() {
            return Err(AuthError::InvalidLink);
        }
        Ok((account, credentials))
    }

    /// A mail for the outbox (when the IdP has one; without, the mail is dropped with a
    /// warning: tests of the core run without a notifier).
    fn outbox_mail(
        &self,
        kind: &str,
        user: &User,
        subject: &str,
        text: String,
    ) -> Option<OutboxMail> {
        if self.core.outbox.is_none() {
            tracing::warn!(kind, "no outbox: mail not sent");
            return None;
        }
        let mail = Mail {
            user_id: user.id,
            to: user.email.as_str().to_owned(),
            subject: subject.to_owned(),
            text,
        };
        let mut message = Outgoing::new(serde_json::to_vec(&mail).expect("mails serialize"))
            .with_key(user.id.to_string());
        message.headers = keel_domain::messaging::trace::headers();
        Some((format!("{MAIL_TOPIC_PREFIX}{kind}"), message))
    }

    /// Sends a mail through the outbox on its own.
    async fn send(&self, mail: Option<OutboxMail>) -> Result<(), AuthError> {
        if let (Some(outbox), Some((topic, message))) = (&self.core.outbox, mail) {
            outbox.publish(&topic, &message).await?;
        }
        Ok(())
    }

    fn link(&self, path: &str, token: &str) -> String {
        format!(
            "{}{path}?token={}",
            self.core.settings.issuer.trim_end_matches('/'),
            keel_credentials::percent_encode(token)
        )
    }

    // ---- verification ----

    /// Mails the account a link that verifies its address (after sign-up or an address change).
    pub async fn send_verification(&self, user: UserId, now: i64) -> Result<(), AuthError> {
        let account = self
            .core
            .users
            .get(user)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        let credentials = self.core.credentials_of(user).await?;
        if credentials.email_verified_at.is_some() {
            return Ok(());
        }
        self.send(self.verification_mail(&account, &credentials, now))
            .await
    }

    /// The mail with the link that verifies `account`'s address, as `account` says it is.
    pub(crate) fn verification_mail(
        &self,
        account: &User,
        credentials: &Credentials,
        now: i64,
    ) -> Option<OutboxMail> {
        let token = self.link_token(
            Purpose::VerifyEmail,
            account,
            credentials,
            now + VERIFY_TTL_SECS,
        );
        let text = format!(
            "Confirm that {} is your address: {}\n\nOr send this token to POST /auth/verify-email: {token}\n",
            account.email.as_str(),
            self.link("/auth/verify-email", &token)
        );
        self.outbox_mail("verify_email", account, "Confirm your email address", text)
    }

    /// Marks the address a verification link was sent to as verified.
    pub async fn verify_email(&self, token: &str, now: i64) -> Result<User, AuthError> {
        let (account, mut credentials) = self.check_link(Purpose::VerifyEmail, token, now).await?;
        if credentials.email_verified_at.is_none() {
            credentials.email_verified_at = Some(now);
            credentials.version += 1;
            self.core.store.put_credentials(&credentials).await?;
            let subject = account.id.to_string();
            self.core
                .record(
                    now,
                    &subject,
                    "email_verified",
                    Some(&subject),
                    None,
                    json!({}),
                )
                .await?;
        }
        Ok(account)
    }

    /// After an address change: the new address is not verified until its link is used. The
    /// mail goes to `user` as the change acknowledged it, which under the write-back cache the
    /// database may not show yet.
    pub async fn email_changed(&self, user: &User, now: i64) -> Result<(), AuthError> {
        let Some(mut credentials) = self.core.store.credentials(user.id).await? else {
            return Ok(());
        };
        if credentials.email_verified_at.take().is_some() {
            credentials.version += 1;
            self.core.store.put_credentials(&credentials).await?;
        }
        self.send(self.verification_mail(user, &credentials, now))
            .await
    }

    // ---- invitations ----

    /// Makes an account without a password and mails its owner an invitation to choose one.
    pub async fn invite(
        &self,
        name: &str,
        email: &str,
        roles: &[&str],
        actor: &str,
        now: i64,
    ) -> Result<User, AuthError> {
        let name = UserName::parse(name)?;
        let email = UserEmail::parse(email)?;
        let roles = crate::service::role_list(roles)?;
        let (user, _) = self
            .core
            .accounts()
            .insert_account(
                NewUser { name, email },
                "account_invited",
                actor,
                now,
                |c| {
                    c.roles = roles;
                },
                AccountMail::Invitation,
                |_| None,
            )
            .await?;
        Ok(user)
    }

    /// Mails (again) the invitation of an account that has no password yet (and repairs one
    /// left without credentials by a crash of an older version).
    pub async fn reinvite(&self, user: UserId, actor: &str, now: i64) -> Result<bool, AuthError> {
        let Some(account) = self.core.users.get(user).await? else {
            return Ok(false);
        };
        let credentials = self.core.credentials_or_repair(user, now).await?;
        if credentials.password_hash.is_some() {
            return Err(AuthError::AlreadyActive);
        }
        self.core
            .record(
                now,
                actor,
                "account_invited",
                Some(&user.to_string()),
                None,
                json!({ "again": true }),
            )
            .await?;
        self.send(self.invitation_mail(&account, &credentials, now))
            .await?;
        Ok(true)
    }

    /// The invitation mail of `user`, with the link that lets it choose a password.
    pub(crate) fn invitation_mail(
        &self,
        user: &User,
        credentials: &Credentials,
        now: i64,
    ) -> Option<OutboxMail> {
        let token = self.link_token(
            Purpose::Invitation,
            user,
            credentials,
            now + INVITATION_TTL_SECS,
        );
        let text = format!(
            "You are invited to keel. Choose your password within 7 days: send this token and \
             a password to POST /auth/invitation/accept: {token}\n\nLink: {}\n",
            self.link("/auth/invitation/accept", &token)
        );
        self.outbox_mail("invitation", user, "Your invitation", text)
    }

    /// Accepts an invitation: the account gets its password, and its address counts as
    /// verified (the token came to it).
    pub async fn accept_invitation(
        &self,
        token: &str,
        password: &str,
        client: &str,
        now: i64,
    ) -> Result<User, AuthError> {
        let (account, mut credentials) = self.check_link(Purpose::Invitation, token, now).await?;
        if credentials.password_hash.is_some() {
            return Err(AuthError::InvalidLink);
        }
        self.core.check_policy(&account, password)?;
        credentials.password_hash = Some(self.core.hasher.hash(password));
        credentials.password_changed_at = Some(now);
        credentials.email_verified_at.get_or_insert(now);
        credentials.version += 1;
        self.core.store.put_credentials(&credentials).await?;
        let subject = account.id.to_string();
        self.core
            .record_own(
                now,
                &subject,
                "invitation_accepted",
                Some(client),
                json!({}),
            )
            .await?;
        Ok(account)
    }

    // ---- forgotten passwords ----

    /// Mails a reset link if `email` names an enabled account. Answers the
    /// same whether or not it does (no enumeration); the caller answers 202 either way.
    pub async fn forgot_password(
        &self,
        email: &str,
        client: &str,
        now: i64,
    ) -> Result<(), AuthError> {
        let Ok(email) = UserEmail::parse(email) else {
            return Ok(());
        };
        // Each request counts against the address like a failed sign-in (the throttle's free
        // attempts, then waits doubling to 15 minutes), so nobody can flood a mailbox with
        // reset mails. A refused request answers the same as any other.
        let key = format!("reset:{}", email.as_str());
        let mut requests = self.core.store.failures(&key).await?;
        if self.core.settings.lockout.check(&requests, now).is_err() {
            return Ok(());
        }
        self.core.settings.lockout.fail(&mut requests, now);
        self.core.store.put_failures(&key, requests).await?;
        let Some(account) = self.core.users.get_by_email(&email).await? else {
            return Ok(());
        };
        // An account without a password gets the link too: it lets its owner choose one, as an
        // invitation would (both prove the mailbox). That is how an account a crash of an older
        // version left without credentials (its password lost with them) is repaired.
        let credentials = self.core.credentials_or_repair(account.id, now).await?;
        if credentials.disabled_at.is_some() {
            return Ok(());
        }
        let token = self.link_token(
            Purpose::ResetPassword,
            &account,
            &credentials,
            now + RESET_TTL_SECS,
        );
        let text = format!(
            "Someone asked to reset the password of {}. If it was you, send this token and a new \
             password to POST /auth/password/reset within an hour: {token}\n\nLink: {}\n\n\
             If it was not you, ignore this mail: nothing changes.\n",
            account.email.as_str(),
            self.link("/auth/password/reset", &token)
        );
        let subject = account.id.to_string();
        self.core
            .record(
                now,
                "anonymous",
                "password_reset_requested",
                Some(&subject),
                Some(client),
                json!({}),
            )
            .await?;
        self.send(self.outbox_mail("reset_password", &account, "Reset your password", text))
            .await
    }

    /// Sets a new password with a reset link; every sign-in of the account ends.
    pub async fn reset_password(
        &self,
        token: &str,
        password: &str,
        client: &str,
        now: i64,
    ) -> Result<(), AuthError> {
        let (account, mut credentials) =
            self.check_link(Purpose::ResetPassword, token, now).await?;
        let ended = match self
            .core
            .sessions()
            .replace_password(&account, &mut credentials, password, now)
            .await
        {
            // Two resets racing with one token: the second finds the hash changed.
            Err(AuthError::Store(StoreError::StaleVersion)) => Err(AuthError::InvalidLink),
            other => other,
        }?;
        let subject = account.id.to_string();
        self.core
            .record_own(
                now,
                &subject,
                "password_reset",
                Some(client),
                json!({ "sessions_ended": ended }),
            )
            .await
    }

    // ---- export and erasure ----

    /// Everything the IdP keeps about an account, for its owner.
    pub async fn export_account(&self, user: UserId) -> Result<Option<AccountExport>, AuthError> {
        let Some(account) = self.core.users.get(user).await? else {
            return Ok(None);
        };
        let credentials = self.core.credentials_of(user).await?;
        let events = self
            .core
            .store
            .audit(&keel_domain::AuthEventQuery {
                subject: Some(user.to_string()),
                limit: 1000,
                ..Default::default()
            })
            .await?;
        Ok(Some(AccountExport {
            user: account,
            roles: credentials.roles,
            email_verified_at: credentials.email_verified_at,
            password_changed_at: credentials.password_changed_at,
            mfa_enrolled: credentials
                .totp_secret
                .as_deref()
                .is_some_and(|s| !s.starts_with(crate::service::PENDING)),
            disabled_at: credentials.disabled_at,
            last_login_at: credentials.last_login_at,
            linked_identities: self.core.store.links_of(user).await?,
            events,
        }))
    }

    /// Records an erasure: the tombstone that stays when the account's personal data goes
    /// (its id, when, by whom; no name, no address).
    pub async fn record_erasure(
        &self,
        user: UserId,
        actor: &str,
        now: i64,
    ) -> Result<(), AuthError> {
        let subject = user.to_string();
        // The credentials are gone with the user, unless the users cache writes back and its
        // flush has not run yet: disabled meanwhile, so that nothing signs in to them.
        self.core.store.revoke_families_of(&subject).await?;
        self.core.raise_generation(user, Some(now)).await?;
        self.core.tokens_revoked(user).await;
        self.core
            .record(
                now,
                actor,
                "account_erased",
                Some(&subject),
                None,
                Value::Object(Default::default()),
            )
            .await
    }
}
