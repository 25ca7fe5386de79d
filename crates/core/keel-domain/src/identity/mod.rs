//! The identity provider's storage port (DESIGN.md C8): what the IdP keeps beside the users.
//!
//! The IdP's accounts *are* the users of [`crate::UserRepo`] (one identity model): an account's
//! [`Credentials`] hang off its user id, and deleting the user deletes them in the same
//! transaction. Times here are unix seconds, the resolution of every rule they feed (token
//! lifetimes, lockout waits). Secrets arrive already protected: password hashes, sealed TOTP
//! secrets and sealed signing keys, hashed recovery codes — the store never sees a plaintext.

pub mod auth_scheme;
pub mod rbac;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::messaging::queue::Outgoing;
use crate::users::repo::StoreError;
use crate::users::{User, UserEmail, UserId};

/// An account's credentials and security state. `version` grows by one per write; a write
/// applies only over the version before it (optimistic concurrency: two logins racing to record
/// a TOTP step cannot both win).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user_id: UserId,
    /// argon2id PHC string; `None` for an invited account that has not chosen one yet.
    pub password_hash: Option<String>,
    pub password_changed_at: Option<i64>,
    pub email_verified_at: Option<i64>,
    pub disabled_at: Option<i64>,
    /// Role names, sorted.
    pub roles: Vec<String>,
    /// The TOTP secret, sealed (envelope encryption); `None` until MFA is enrolled.
    pub totp_secret: Option<String>,
    /// The TOTP step last accepted (replays of it and earlier steps are refused).
    pub totp_last_step: Option<i64>,
    /// Hashes of the unused recovery codes.
    pub recovery_codes: Vec<String>,
    pub last_login_at: Option<i64>,
    /// Raised by every event that ends the account's sign-ins (sign out everywhere, a password
    /// change or reset, disabling, erasure). Access tokens, browser sessions and authorization
    /// codes carry the generation they were issued under and are refused once it is raised: a
    /// counter, not a time, so two events in one second, or instances whose clocks differ,
    /// cannot blur "before" and "after".
    pub token_generation: i64,
    pub version: i64,
}

impl Credentials {
    /// A new account's credentials (version 1).
    pub fn new(user_id: UserId) -> Self {
        Self {
            user_id,
            password_hash: None,
            password_changed_at: None,
            email_verified_at: None,
            disabled_at: None,
            roles: Vec::new(),
            totp_secret: None,
            totp_last_step: None,
            recovery_codes: Vec::new(),
            last_login_at: None,
            token_generation: 0,
            version: 1,
        }
    }
}

/// Consecutive failed sign-ins for one key (a client, an account, an account on a device).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    pub count: u32,
    /// Unix seconds before which attempts are refused (0: none).
    pub wait_until: i64,
}

/// A refresh-token family: one sign-in of one subject at one client; only its current
/// generation's token works.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshFamily {
    pub id: String,
    pub subject: String,
    pub client_id: String,
    /// The scopes granted to an OpenID Connect client (empty for keel's own sign-ins): a
    /// refresh grants no more than the sign-in did.
    pub scope: String,
    pub generation: u64,
    /// Unix seconds after which no token of the family works.
    pub expires_at: i64,
    pub revoked: bool,
    /// How the person signed in (RFC 8176 values), repeated in every access token a refresh
    /// gives.
    pub amr: Vec<String>,
    /// When the person signed in (unix seconds; 0 for families older than this field), the
    /// `auth_time` of ID tokens a refresh gives (OpenID Connect Core §12.2).
    pub auth_time: i64,
}

/// One entry of the authentication audit log: who did what, when, from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthEvent {
    /// Assigned by the store, growing in commit order; 0 before it is stored.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// Who acted: a user id, `anonymous`, or `system`.
    pub actor: String,
    /// What happened, in snake_case (`login_succeeded`, `login_failed`, `account_disabled`, …).
    pub action: String,
    /// The account acted on, if any.
    pub subject: Option<String>,
    /// Where from: the client's address.
    pub client: Option<String>,
    /// Anything else, as a JSON object (never a secret).
    pub detail: serde_json::Value,
}

/// Which audit entries to read: newest first, before `before` if given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthEventQuery {
    pub subject: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub before: Option<i64>,
    pub limit: u32,
}

/// An account's identity at an external OpenID Connect provider (federation): the provider's
/// configured name and the `sub` it gives the person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedLink {
    pub provider: String,
    pub subject: String,
    pub user_id: UserId,
    pub linked_at: i64,
}

/// A relying party registered with the IdP's OpenID Connect provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcClient {
    pub id: String,
    pub name: String,
    /// SHA-256 of the client secret, hex; `None` for a public client (PKCE only).
    pub secret_hash: Option<String>,
    /// Exact redirect URIs allowed (no wildcard, no prefix match).
    pub redirect_uris: Vec<String>,
    pub created_at: i64,
}

/// An authorization code issued and not yet redeemed; it is stored by its hash and taken once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationCode {
    pub code_hash: String,
    pub client_id: String,
    pub user_id: UserId,
    pub redirect_uri: String,
    pub scope: String,
    pub nonce: Option<String>,
    /// The PKCE `S256` challenge, when the request carried one.
    pub challenge: Option<String>,
    /// When the account signed in (unix seconds), for the ID token's `auth_time`.
    pub auth_time: i64,
    /// How the account signed in (RFC 8176 values: `pwd`, `otp`, `mfa`, `fed`), for the ID
    /// token's `amr`.
    pub amr: Vec<String>,
    pub expires_at: i64,
}

/// A new account as one unit: its user, its credentials (roles included), the audit entry of its
/// making and the mails it sends. Stores write it in one transaction, so an account exists whole
/// or not at all: a crash can no longer leave a user without credentials or without its mail.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub user: User,
    /// Version 1.
    pub credentials: Credentials,
    pub audit: AuthEvent,
    /// Outbox messages as (topic, message): the verification or invitation mail, if any.
    pub mails: Vec<(String, Outgoing)>,
    /// Its identity at an external provider, for an account made by a federated sign-in.
    pub link: Option<FederatedLink>,
}

/// The users as the identity provider reads and makes them: as acknowledged, which under the
/// `write-back` cache includes writes still in its journal. The users cache implements it;
/// [`crate::users::repo::Uncached`] is the database alone, for a process with no cache.
#[async_trait]
pub trait Accounts: Send + Sync + 'static {
    async fn get(&self, id: UserId) -> Result<Option<User>, StoreError>;
    async fn get_by_email(&self, email: &UserEmail) -> Result<Option<User>, StoreError>;
    /// Makes the account whole or not at all; `Conflict { field: "email" }` when its address is
    /// taken, by a stored user or by an acknowledged write not yet stored.
    async fn create(&self, account: &NewAccount) -> Result<(), StoreError>;
}

/// A person's consent to a client: the scopes they allowed it, so that a request within them
/// asks nothing again (OpenID Connect Core §3.1.2.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub user_id: UserId,
    pub client_id: String,
    /// The scopes allowed, space-separated: every scope allowed so far.
    pub scope: String,
    /// Unix seconds of the latest allowance.
    pub granted_at: i64,
}

/// Storage of the IdP's state. Every relational backend implements it with the same behaviour,
/// proven by one behavioural suite (`keel-test-support::identity_suite`).
#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    async fn credentials(&self, user: UserId) -> Result<Option<Credentials>, StoreError>;
    /// Writes `credentials` if the stored version is `credentials.version - 1` (or there is no
    /// row and the version is 1); `StaleVersion` otherwise.
    async fn put_credentials(&self, credentials: &Credentials) -> Result<(), StoreError>;
    /// Accounts holding `role`, in user-id order (for "is there an admin yet?" and admin lists).
    async fn holders_of(&self, role: &str, limit: u32) -> Result<Vec<UserId>, StoreError>;

    /// The failures recorded for `key` (none: the default).
    async fn failures(&self, key: &str) -> Result<Failures, StoreError>;
    /// Records `failures` for `key`; the default record removes the key.
    async fn put_failures(&self, key: &str, failures: Failures) -> Result<(), StoreError>;

    async fn family(&self, id: &str) -> Result<Option<RefreshFamily>, StoreError>;
    async fn insert_family(&self, family: &RefreshFamily) -> Result<(), StoreError>;
    /// Replaces the family with `family` if its stored generation is still `from_generation`
    /// and it is not revoked; false otherwise (another use won the race).
    async fn advance_family(
        &self,
        family: &RefreshFamily,
        from_generation: u64,
    ) -> Result<bool, StoreError>;
    /// Revokes one family.
    async fn revoke_family(&self, id: &str) -> Result<(), StoreError>;
    /// Revokes every family of `subject` (sign out everywhere, disable, password change);
    /// returns how many were live.
    async fn revoke_families_of(&self, subject: &str) -> Result<u64, StoreError>;

    /// The signing key set, sealed, and its version; `None` before the first start.
    async fn signing_keys(&self) -> Result<Option<(String, i64)>, StoreError>;
    /// Stores the sealed key set if the stored version is `version - 1` (or none is stored and
    /// `version` is 1): false when another process wrote first (it then reads theirs).
    async fn put_signing_keys(&self, sealed: &str, version: i64) -> Result<bool, StoreError>;

    async fn client(&self, id: &str) -> Result<Option<OidcClient>, StoreError>;
    /// Registers `client`, or replaces the one with its id.
    async fn put_client(&self, client: &OidcClient) -> Result<(), StoreError>;
    async fn clients(&self) -> Result<Vec<OidcClient>, StoreError>;
    async fn insert_code(&self, code: &AuthorizationCode) -> Result<(), StoreError>;
    /// Removes and returns the code with this hash: a second take of one code finds nothing.
    async fn take_code(&self, code_hash: &str) -> Result<Option<AuthorizationCode>, StoreError>;

    /// The person's consent to a client, if they gave one.
    async fn consent(&self, user: UserId, client_id: &str) -> Result<Option<Consent>, StoreError>;
    /// Records `consent`, replacing the person's earlier one to that client.
    async fn put_consent(&self, consent: &Consent) -> Result<(), StoreError>;
    /// The person's consents, by client id.
    async fn consents_of(&self, user: UserId) -> Result<Vec<Consent>, StoreError>;
    /// Withdraws the person's consent to a client and, in the same transaction, revokes the
    /// refresh-token families that client holds for them; false when there was no consent.
    async fn withdraw_consent(&self, user: UserId, client_id: &str) -> Result<bool, StoreError>;

    /// Appends to the audit log (append-only: the store refuses to change or remove entries);
    /// returns the entry's id.
    /// Links an external identity to an account; `false` when that identity is linked already
    /// (to this account or another: one external identity signs in one account).
    async fn link_identity(&self, link: &FederatedLink) -> Result<bool, StoreError>;
    /// The account an external identity is linked to.
    async fn linked_account(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<UserId>, StoreError>;
    /// The external identities linked to an account.
    async fn links_of(&self, user: UserId) -> Result<Vec<FederatedLink>, StoreError>;
    async fn append_audit(&self, event: &AuthEvent) -> Result<i64, StoreError>;
    async fn audit(&self, query: &AuthEventQuery) -> Result<Vec<AuthEvent>, StoreError>;
}
