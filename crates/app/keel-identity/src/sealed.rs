//! Personal fields encrypted at rest (issue 4 §8): [`SealedNames`] keeps users' names sealed in
//! the database with the IdP's [`Keyring`] (envelope encryption, bound to `users/<id>/name`).
//!
//! Names are personal and never looked up by, so they are sealed; email addresses stay clear
//! because sign-in and uniqueness look them up (a keyed blind index would be the next step).
//! The repository hands out and takes plain users: the layers above (caches, API, workers) see
//! names as before. Rows written before sealing was on open as they are and are sealed at their
//! next write. Rotation: a new primary key in `identity.data_keys` seals every new write; older
//! values keep opening with the older keys, which stay in the ring until no row names them.

use std::sync::Arc;

use async_trait::async_trait;
use keel_domain::{
    NewAccount, Page, PageRequest, StoreError, User, UserEmail, UserId, UserName, UserRepo,
};

use keel_credentials::envelope::Keyring;

/// A [`UserRepo`] that seals names on the way in and opens them on the way out.
pub struct SealedNames {
    inner: Arc<dyn UserRepo>,
    keyring: Keyring,
}

impl std::fmt::Debug for SealedNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedNames").finish_non_exhaustive()
    }
}

fn place(id: UserId) -> String {
    format!("users/{id}/name")
}

fn broken(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("a sealed name does not open: {e}").into())
}

impl SealedNames {
    pub fn new(inner: Arc<dyn UserRepo>, keyring: Keyring) -> Self {
        Self { inner, keyring }
    }

    fn seal(&self, user: &User) -> User {
        let sealed = self
            .keyring
            .seal(user.name.as_str().as_bytes(), &place(user.id));
        let name = UserName::sealed(&format!("{}{sealed}", keel_domain::users::SEALED_NAME_MARK))
            .expect("marked as sealed");
        User {
            name,
            ..user.clone()
        }
    }

    fn open(&self, mut user: User) -> Result<User, StoreError> {
        if user.name.is_sealed() {
            let sealed = &user.name.as_str()[keel_domain::users::SEALED_NAME_MARK.len_utf8()..];
            let plain = self.keyring.open(sealed, &place(user.id)).map_err(broken)?;
            let text = String::from_utf8(plain).map_err(broken)?;
            user.name = UserName::parse(&text).map_err(broken)?;
        }
        Ok(user)
    }
}

#[async_trait]
impl UserRepo for SealedNames {
    async fn insert(&self, user: &User) -> Result<(), StoreError> {
        self.inner.insert(&self.seal(user)).await
    }

    async fn insert_account(&self, account: &NewAccount) -> Result<(), StoreError> {
        let sealed = NewAccount {
            user: self.seal(&account.user),
            ..account.clone()
        };
        self.inner.insert_account(&sealed).await
    }

    async fn get(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.inner.get(id).await?.map(|u| self.open(u)).transpose()
    }

    async fn get_by_email(&self, email: &UserEmail) -> Result<Option<User>, StoreError> {
        self.inner
            .get_by_email(email)
            .await?
            .map(|u| self.open(u))
            .transpose()
    }

    async fn update(&self, user: &User) -> Result<bool, StoreError> {
        self.inner.update(&self.seal(user)).await
    }

    async fn delete(&self, id: UserId) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }

    async fn list(&self, page: PageRequest) -> Result<Page<User>, StoreError> {
        let page = self.inner.list(page).await?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|u| self.open(u))
                .collect::<Result<_, _>>()?,
            next_after: page.next_after,
        })
    }

    async fn apply_batch(&self, upserts: &[User], deletes: &[UserId]) -> Result<(), StoreError> {
        let sealed: Vec<User> = upserts.iter().map(|u| self.seal(u)).collect();
        self.inner.apply_batch(&sealed, deletes).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
