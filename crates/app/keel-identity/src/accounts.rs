//! Accounts: making them (by an admin, by sign-up), their roles, disabling them, and the
//! audit log.

use keel_domain::{
    AuthEvent, Credentials, NewAccount, NewUser, StoreError, User, UserEmail, UserId, UserName,
};
use serde_json::json;

use crate::service::{AccountMail, AuthError, PENDING, check_policy, role_list};
use crate::shared::Core;

/// Making accounts, their roles, disabling them, the audit log.
#[derive(Clone, Copy)]
pub struct Accounts<'a> {
    core: &'a Core,
}

impl Core {
    pub(crate) fn accounts(&self) -> Accounts<'_> {
        Accounts { core: self }
    }
}

impl Accounts<'_> {
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
        check_policy(&self.core.settings.policy, &name, &email, password)?;
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
                    c.password_hash = Some(self.core.hasher.hash(password));
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
            AccountMail::Verification => {
                self.core
                    .lifecycle()
                    .verification_mail(&user, &credentials, now)
            }
            AccountMail::Invitation => {
                self.core
                    .lifecycle()
                    .invitation_mail(&user, &credentials, now)
            }
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
        match self.core.users.create(&account).await {
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
            .any(|r| self.core.settings.mfa_required_roles.contains(r));
        if needs_mfa && !enrolled {
            Vec::new()
        } else {
            credentials.roles.clone()
        }
    }

    /// Whether any account holds `role` (`keel up` says how to make the first admin).
    pub async fn anyone_holds(&self, role: &str) -> Result<bool, AuthError> {
        Ok(!self.core.store.holders_of(role, 1).await?.is_empty())
    }

    /// Whether the account must enrol a second factor before its roles apply.
    pub async fn mfa_setup_required(&self, user: UserId) -> Result<bool, AuthError> {
        let credentials = self.core.credentials_of(user).await?;
        Ok(credentials.roles != self.effective_roles(&credentials))
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
        let Some(mut credentials) = self.core.store.credentials(user).await? else {
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
            self.core.store.put_credentials(&credentials).await?;
        }
        let ended = if disabled {
            self.core.store.revoke_families_of(&subject).await?
        } else {
            0
        };
        // Either way the cached floors are wrong now: "nothing" after enabling, the old
        // generation after disabling.
        self.core.tokens_revoked(user).await;
        let action = if disabled {
            "account_disabled"
        } else {
            "account_enabled"
        };
        self.core
            .record(
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
        Ok(self.core.store.audit(query).await?)
    }
}
