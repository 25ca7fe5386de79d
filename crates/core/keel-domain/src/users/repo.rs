//! The relational repository port: what keel needs from a database, whichever engine it is.

use std::sync::Arc;

use async_trait::async_trait;

use crate::identity::{Accounts, NewAccount};
use crate::users::{User, UserEmail, UserId};

/// Why a repository call failed, split into what the caller can fix and what it cannot.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the write; `field` names the column the caller chose.
    #[error("{field} already exists")]
    Conflict { field: &'static str },
    /// The update was made against an older version than the stored one.
    #[error("stale version")]
    StaleVersion,
    /// The database could not be reached or timed out; retrying later may succeed.
    #[error("database unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Anything else: a bug, a schema mismatch, a corrupt row.
    #[error("database fault")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One page request of a keyset-paginated listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Only rows with an id strictly greater than this one.
    pub after: Option<UserId>,
    /// At most this many rows (callers bound it).
    pub limit: u32,
}

/// One page of rows and the cursor that continues after it, if more rows may follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<UserId>,
}

/// Storage of users. Every relational backend implements it with the same behaviour, proven by
/// one behavioural suite (`keel-test-support`).
///
/// Writes carry whole rows: the caller computes the next version, and `update` applies only if the
/// stored version is older (`StaleVersion` otherwise), which makes replaying a write idempotent.
#[async_trait]
pub trait UserRepo: Send + Sync + 'static {
    /// Inserts a new user; `Conflict { field: "email" }` if the email is taken.
    async fn insert(&self, user: &User) -> Result<(), StoreError>;
    /// Inserts a new account in one transaction: the user (and its `user.created` event), its
    /// credentials and roles, its audit entry and its mails; `Conflict { field: "email" }` if
    /// the email is taken, and then nothing of it is stored.
    async fn insert_account(&self, account: &NewAccount) -> Result<(), StoreError>;
    async fn get(&self, id: UserId) -> Result<Option<User>, StoreError>;
    /// The user holding `email` (already lower-cased by [`crate::UserEmail`]), if any.
    async fn get_by_email(&self, email: &UserEmail) -> Result<Option<User>, StoreError>;
    /// Replaces the stored row with `user` if the stored version is older; returns false when the
    /// user does not exist.
    async fn update(&self, user: &User) -> Result<bool, StoreError>;
    /// Deletes the user; returns false when it did not exist.
    async fn delete(&self, id: UserId) -> Result<bool, StoreError>;
    /// Users in id order (which is creation order), after the cursor.
    async fn list(&self, page: PageRequest) -> Result<Page<User>, StoreError>;
    /// Writes a batch atomically: each user is inserted or, if present with an older version,
    /// replaced; each id in `deletes` is removed. Used by the write-back flusher, which replays
    /// journal entries and so must be idempotent.
    async fn apply_batch(&self, upserts: &[User], deletes: &[UserId]) -> Result<(), StoreError>;
    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The users straight from the database, as [`Accounts`]: for a process with no users cache in
/// front of the database (`keel admin create`, the IdP's own tests, the bench).
pub struct Uncached(pub Arc<dyn UserRepo>);

#[async_trait]
impl Accounts for Uncached {
    async fn get(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.0.get(id).await
    }

    async fn get_by_email(&self, email: &UserEmail) -> Result<Option<User>, StoreError> {
        self.0.get_by_email(email).await
    }

    async fn create(&self, account: &NewAccount) -> Result<(), StoreError> {
        self.0.insert_account(account).await
    }
}

impl Page<User> {
    /// Builds a page from a query that fetched up to `limit + 1` rows in id order: the extra row
    /// only proves that another page follows.
    pub fn from_overfetch(mut items: Vec<User>, limit: u32) -> Self {
        let limit = limit as usize;
        let next_after = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|u| u.id)
        } else {
            None
        };
        Self { items, next_after }
    }
}
