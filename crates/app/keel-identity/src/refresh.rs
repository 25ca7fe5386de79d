//! Refresh tokens that rotate on every use, with reuse detection.
//!
//! A sign-in starts a *family*; each refresh answers a new token of the family's next
//! generation and the old one stops working. A token is `<family>.<generation>.<mac>`, the MAC
//! (HMAC-SHA-256 under a server key) proving the server issued it, so the store keeps only the
//! family's current generation, no token or hash of one. Presenting a genuine token of an
//! *earlier* generation means two parties hold the family's tokens (one of them stole a token):
//! the whole family is revoked and both must sign in again (OAuth 2.0 Security BCP, refresh token
//! rotation). A token whose MAC does not verify is refused without touching the family, so
//! guessing cannot revoke anyone's session.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub use keel_domain::RefreshFamily as Family;

/// What presenting a token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// Accepted: store `family` (its generation advanced, compare-and-set on the old
    /// generation so two concurrent uses cannot both win) and give out `token`.
    Rotated { family: Family, token: String },
    /// An earlier generation came back: store `family` (now revoked) and refuse.
    Reused { family: Family },
    /// Refused, nothing to store.
    Refused(RefreshError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    #[error("the refresh token is malformed or was not issued here")]
    Invalid,
    #[error("the refresh token has expired")]
    Expired,
    #[error("the refresh token was revoked")]
    Revoked,
}

/// Issues and checks refresh tokens with one server key.
#[derive(Clone)]
pub struct RefreshTokens {
    key: Vec<u8>,
}

impl std::fmt::Debug for RefreshTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshTokens(..)")
    }
}

impl RefreshTokens {
    /// `key`: at least 32 bytes of secret.
    ///
    /// # Panics
    /// On a shorter key: configuration is checked before this is built.
    pub fn new(key: &[u8]) -> Self {
        assert!(key.len() >= 32, "a refresh-token key needs 32 bytes");
        Self { key: key.to_vec() }
    }

    fn mac(&self, family: &str, generation: u64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("any key");
        mac.update(family.as_bytes());
        mac.update(b".");
        mac.update(&generation.to_be_bytes());
        mac
    }

    fn token(&self, family: &str, generation: u64) -> String {
        let tag = self.mac(family, generation).finalize().into_bytes();
        format!("{family}.{generation}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Starts a family for a sign-in at `now` lasting `lifetime_secs`; returns it (to store) and
    /// its first token. The family records a password sign-in now; the caller sets its `amr`
    /// and `auth_time` when the sign-in was another.
    pub fn start(
        &self,
        subject: &str,
        client_id: &str,
        scope: &str,
        now: i64,
        lifetime_secs: i64,
    ) -> (Family, String) {
        let mut id = [0u8; 16];
        keel_credentials::random_bytes(&mut id);
        self.start_as(
            URL_SAFE_NO_PAD.encode(id),
            subject,
            client_id,
            scope,
            now,
            lifetime_secs,
        )
    }

    /// [`Self::start`] with the family id chosen by the caller (an authorization code's family,
    /// found again from the code when it is replayed).
    pub fn start_as(
        &self,
        id: String,
        subject: &str,
        client_id: &str,
        scope: &str,
        now: i64,
        lifetime_secs: i64,
    ) -> (Family, String) {
        let family = Family {
            id,
            subject: subject.to_owned(),
            client_id: client_id.to_owned(),
            scope: scope.to_owned(),
            generation: 0,
            expires_at: now.saturating_add(lifetime_secs),
            revoked: false,
            amr: vec!["pwd".to_owned()],
            auth_time: now,
        };
        let token = self.token(&family.id, 0);
        (family, token)
    }

    /// The family id a token claims, once its MAC verifies: what the caller loads.
    pub fn family_of<'t>(&self, token: &'t str) -> Result<(&'t str, u64), RefreshError> {
        let mut parts = token.split('.');
        let (Some(family), Some(generation), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(RefreshError::Invalid);
        };
        let generation: u64 = generation.parse().map_err(|_| RefreshError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| RefreshError::Invalid)?;
        self.mac(family, generation)
            .verify_slice(&tag)
            .map_err(|_| RefreshError::Invalid)?;
        Ok((family, generation))
    }

    /// Presents `token` for `family` (as loaded by the id from [`Self::family_of`]) at `now`,
    /// from `client_id`.
    pub fn redeem(&self, family: &Family, token: &str, client_id: &str, now: i64) -> Redeemed {
        let (id, generation) = match self.family_of(token) {
            Ok(parts) => parts,
            Err(e) => return Redeemed::Refused(e),
        };
        if id != family.id || client_id != family.client_id {
            return Redeemed::Refused(RefreshError::Invalid);
        }
        if family.revoked {
            return Redeemed::Refused(RefreshError::Revoked);
        }
        if now >= family.expires_at {
            return Redeemed::Refused(RefreshError::Expired);
        }
        if generation < family.generation {
            return Redeemed::Reused {
                family: Family {
                    revoked: true,
                    ..family.clone()
                },
            };
        }
        if generation > family.generation {
            // Genuine but never current here: a store restored from a backup. Refuse, and do
            // not revoke: nothing shows a theft.
            return Redeemed::Refused(RefreshError::Invalid);
        }
        let next = Family {
            generation: family.generation + 1,
            ..family.clone()
        };
        let token = self.token(&next.id, next.generation);
        Redeemed::Rotated {
            family: next,
            token,
        }
    }
}
