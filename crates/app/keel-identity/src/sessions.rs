//! Sessions: signing in (password, then TOTP or a recovery code when enrolled) with throttling
//! and trusted devices, refresh-token rotation, signing out, and changing the password.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;
use keel_credentials::envelope::EnvelopeError;
use keel_credentials::totp::{Totp, TotpSecret};
use keel_domain::{Credentials, StoreError, User, UserEmail, UserId};
use serde_json::json;

use crate::refresh::{Redeemed, RefreshError};
use crate::service::{
    AuthError, Authenticated, PENDING, Rotated, SignIn, Tokens, family_amr, mac, totp_place,
};
use crate::shared::Core;

/// The failure records a sign-in is checked against: `(key, failures)` of the client and of the
/// account (or of the account on a trusted device).
struct Throttle {
    client: (String, keel_domain::Failures),
    account: (String, keel_domain::Failures),
}

/// Signing in, refreshing, signing out, changing the password.
#[derive(Clone, Copy)]
pub struct Sessions<'a> {
    core: &'a Core,
}

impl Core {
    pub(crate) fn sessions(&self) -> Sessions<'_> {
        Sessions { core: self }
    }
}

impl Sessions<'_> {
    fn device_token(&self, user: UserId) -> String {
        let mut id = [0u8; 16];
        keel_credentials::random_bytes(&mut id);
        let id = URL_SAFE_NO_PAD.encode(id);
        let tag = mac(
            &self.core.device_key,
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
            &self.core.device_key,
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
        let (mut family, refresh_token) = self.core.refresh.start(
            &user.to_string(),
            attempt.client_id,
            "",
            now,
            self.core.settings.session_ttl_secs,
        );
        family.amr = signed_in.amr.iter().map(|m| (*m).to_owned()).collect();
        self.core.store.insert_family(&family).await?;
        let device_token = match attempt
            .device_token
            .and_then(|t| self.trusted_device(user, t))
        {
            Some(_) => attempt.device_token.map(str::to_owned),
            None => Some(self.device_token(user)),
        };
        Ok(Tokens {
            access_token: self.core.access_token(
                user,
                signed_in.generation,
                &signed_in.roles,
                &signed_in.amr,
                now,
            )?,
            token_type: "Bearer".into(),
            expires_in: self.core.settings.access_ttl_secs,
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
        let lockout = self.core.settings.lockout;
        let client_key = format!("client:{}", attempt.client);
        let client_failures = self.core.store.failures(&client_key).await?;
        if let Err(locked) = lockout.check(&client_failures, now) {
            return Err(AuthError::Locked {
                retry_after_secs: locked.retry_after_secs,
            });
        }
        let email = UserEmail::parse(attempt.email).ok();
        let user = match &email {
            Some(email) => self.core.users.get_by_email(email).await?,
            None => None,
        };
        let credentials = match &user {
            Some(user) => self.core.store.credentials(user.id).await?,
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
        let mut account_failures = self.core.store.failures(&account_key).await?;
        if let Err(locked) = lockout.check(&account_failures, now) {
            return Err(AuthError::Locked {
                retry_after_secs: locked.retry_after_secs,
            });
        }
        let throttle = Throttle {
            client: (client_key, client_failures),
            account: (account_key.clone(), account_failures),
        };

        let (Some(user), Some(mut credentials)) = (user, credentials) else {
            self.core.hasher.verify_nothing(attempt.password);
            return self
                .failed(attempt, throttle, None, "unknown_account", now)
                .await;
        };
        let subject = user.id.to_string();
        let password_ok = credentials
            .password_hash
            .as_deref()
            .map(|stored| self.core.hasher.verify(attempt.password, stored));
        let Some(keel_credentials::password::Verified::Yes { rehash }) = password_ok else {
            if password_ok.is_none() {
                self.core.hasher.verify_nothing(attempt.password);
            }
            return self
                .failed(attempt, throttle, Some(&subject), "wrong_password", now)
                .await;
        };
        if credentials.disabled_at.is_some() {
            return self
                .failed(attempt, throttle, Some(&subject), "account_disabled", now)
                .await;
        }
        if let Some(dormant) = self.core.settings.dormant_after_secs {
            let created = user.created_at.timestamp();
            let active = credentials.last_login_at.unwrap_or(created);
            if now - active > dormant {
                // Families first, then the generation (see `rotate_refresh`).
                self.core.store.revoke_families_of(&subject).await?;
                credentials.disabled_at = Some(now);
                credentials.token_generation += 1;
                credentials.version += 1;
                self.core.store.put_credentials(&credentials).await?;
                self.core.tokens_revoked(user.id).await;
                self.core
                    .record(
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
            self.core.settings.password_max_age_secs,
            credentials.password_changed_at,
        ) && now - changed > max_age
        {
            self.core
                .record_own(
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
            let secret =
                TotpSecret::from_bytes(&self.core.keyring.open(sealed, &totp_place(user.id))?)
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
            credentials.password_hash = Some(self.core.hasher.hash(attempt.password));
        }
        credentials.last_login_at = Some(now);
        credentials.version += 1;
        // A concurrent sign-in with the same TOTP code loses here: the code is used once.
        self.core
            .store
            .put_credentials(&credentials)
            .await
            .map_err(|e| match e {
                StoreError::StaleVersion => AuthError::InvalidCredentials,
                other => other.into(),
            })?;
        lockout.succeed(&mut account_failures);
        self.core
            .store
            .put_failures(&account_key, account_failures)
            .await?;
        self.core.record_own(
            now,
            &subject,
            "login_succeeded",
            Some(attempt.client),
            json!({ "amr": amr, "second_factor": second_factor, "client_id": attempt.client_id }),
        )
        .await?;
        Ok(Authenticated {
            roles: self.core.accounts().effective_roles(&credentials),
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
        let lockout = self.core.settings.lockout;
        lockout.fail(&mut throttle.client.1, now);
        lockout.fail(&mut throttle.account.1, now);
        for (key, failures) in [throttle.client, throttle.account] {
            self.core.store.put_failures(&key, failures).await?;
        }
        self.core
            .record(
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
            access_token: self.core.access_token(
                credentials.user_id,
                credentials.token_generation,
                &self.core.accounts().effective_roles(credentials),
                &family_amr(&rotated.family),
                now,
            )?,
            token_type: "Bearer".into(),
            expires_in: self.core.settings.access_ttl_secs,
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
        let (family_id, _) = self.core.refresh.family_of(token)?;
        let family = self
            .core
            .store
            .family(family_id)
            .await?
            .ok_or(RefreshError::Invalid)?;
        match self.core.refresh.redeem(&family, token, client_id, now) {
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
                    .core
                    .store
                    .credentials(user)
                    .await?
                    .filter(|c| c.disabled_at.is_none())
                    .ok_or(AuthError::InvalidCredentials)?;
                if !self
                    .core
                    .store
                    .advance_family(&next, family.generation)
                    .await?
                {
                    // Another use of the same token won: that is a reuse too.
                    self.core.store.revoke_family(&family.id).await?;
                    return Err(RefreshError::Revoked.into());
                }
                Ok(Rotated {
                    family: next,
                    credentials,
                    token,
                })
            }
            Redeemed::Reused { family } => {
                self.core.store.revoke_family(&family.id).await?;
                self.core
                    .record(
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
        let (family_id, _) = self.core.refresh.family_of(token)?;
        if let Some(family) = self.core.store.family(family_id).await? {
            self.core.store.revoke_family(&family.id).await?;
            self.core
                .record_own(now, &family.subject, "logout", Some(client), json!({}))
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
            .core
            .users
            .get(user)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        let mut credentials = self.core.credentials_of(user).await?;
        let matches = credentials
            .password_hash
            .as_deref()
            .is_some_and(|stored| self.core.hasher.verify(current, stored).is_match());
        if !matches {
            self.core
                .record_own(
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
        self.core
            .record_own(
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
        self.core.check_policy(account, password)?;
        credentials.password_hash = Some(self.core.hasher.hash(password));
        credentials.password_changed_at = Some(now);
        // Families first, then the generation (see `rotate_refresh`).
        let ended = self
            .core
            .store
            .revoke_families_of(&account.id.to_string())
            .await?;
        credentials.token_generation += 1;
        credentials.version += 1;
        self.core.store.put_credentials(credentials).await?;
        self.core.tokens_revoked(account.id).await;
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
        let ended = self.core.store.revoke_families_of(&subject).await?;
        self.core.raise_generation(user, None).await?;
        self.core.tokens_revoked(user).await;
        self.core
            .record_own(
                now,
                &subject,
                "logout_everywhere",
                Some(client),
                json!({ "sessions_ended": ended }),
            )
            .await?;
        Ok(ended)
    }
}
