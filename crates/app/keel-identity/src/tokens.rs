//! Access tokens: the signing keys (made, sealed, stored, rotated and reloaded across
//! processes), the JWKS, and verifying an access token against the keys and the account's token
//! generation.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel_credentials::envelope::EnvelopeError;
use keel_credentials::token::{Claims, Expect, KeySet, KeyState, StoredKey, TokenError, Verifier};
use keel_domain::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::service::{AuthError, GENERATION_CLAIM};
use crate::shared::Core;

/// The signing keys as stored (sealed): the set and when it last rotated.
#[derive(Serialize, Deserialize)]
struct StoredKeySet {
    rotated_at: i64,
    keys: Vec<StoredKey>,
}

const KEYS_PLACE: &str = "identity/signing-keys";

/// Shortest time between two key reloads caused by unknown `kid`s.
const KEY_RELOAD_SECS: i64 = 10;

/// Verified tokens kept at most; past it, expired ones go, and if none had, all do.
const VERIFIED_MAX: usize = 65_536;

/// A token verified before: the whole token, its claims, and the subject and token
/// generation read from them once.
pub(crate) struct VerifiedToken {
    pub(crate) token: Box<str>,
    claims: Arc<Claims>,
    user: UserId,
    generation: i64,
}

/// The signing keys as loaded, with the verifier made from them once.
pub(crate) struct Loaded {
    set: KeySet,
    verifier: Arc<Verifier>,
}

/// The signing keys, the JWKS and access-token verification.
#[derive(Clone, Copy)]
pub struct AccessTokens<'a> {
    core: &'a Core,
}

impl Core {
    pub(crate) fn tokens(&self) -> AccessTokens<'_> {
        AccessTokens { core: self }
    }
}

impl AccessTokens<'_> {
    /// Loads the signing keys, making them on the very first start and rotating them when due;
    /// safe when several processes start together (the store writes one version once).
    pub async fn ensure_keys(&self, now: i64) -> Result<(), AuthError> {
        loop {
            let (mut set, rotated_at, version) = match self.core.store.signing_keys().await? {
                Some((sealed, version)) => {
                    let plain = self.core.keyring.open(&sealed, KEYS_PLACE)?;
                    let stored: StoredKeySet =
                        serde_json::from_slice(&plain).map_err(|_| EnvelopeError::Malformed)?;
                    let set = KeySet::load(&stored.keys, self.core.settings.access_ttl_secs * 2)
                        .map_err(|_| EnvelopeError::Malformed)?;
                    (set, stored.rotated_at, version)
                }
                None => {
                    let set = KeySet::generate(self.core.settings.access_ttl_secs * 2);
                    if self.core.write_keys(&set, now, 1).await? {
                        self.core
                            .record(now, "system", "signing_keys_created", None, None, json!({}))
                            .await?;
                        self.core.install(set, now);
                        return Ok(());
                    }
                    continue;
                }
            };
            if now - rotated_at >= self.core.settings.key_rotation_secs {
                set.rotate(now);
                if !self.core.write_keys(&set, now, version + 1).await? {
                    continue;
                }
                self.core
                    .record(now, "system", "signing_keys_rotated", None, None, json!({}))
                    .await?;
                self.core.install(set, now);
                return Ok(());
            }
            set.prune(now);
            self.core.install(set, now);
            return Ok(());
        }
    }

    /// The published signing keys (`/.well-known/jwks.json`).
    pub fn jwks(&self) -> Result<Value, AuthError> {
        self.core.with_keys(KeySet::jwks)
    }

    /// Whether the signing keys are loaded (readiness).
    pub fn is_ready(&self) -> bool {
        self.core.keys.read().expect("keys lock").is_some()
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
            .core
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
            return self.core.unrevoked(claims, user, generation, now).await;
        }
        let expect = Expect {
            issuer: self.core.settings.issuer.clone(),
            audience: self.core.settings.audience.clone(),
            leeway_secs: LEEWAY,
        };
        let claims = match self.core.verifier()?.verify(token, &expect, now) {
            Err(TokenError::UnknownKey) if self.core.may_reload(now) => {
                self.ensure_keys(now).await?;
                self.core.verifier()?.verify(token, &expect, now)?
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
            let mut verified = self.core.verified.lock().expect("verified lock");
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
        self.core.unrevoked(claims, user, generation, now).await
    }

    /// The active signing key's id (for tests and the admin view).
    pub fn active_kid(&self) -> Option<String> {
        self.core
            .with_keys(|set| {
                set.keys()
                    .iter()
                    .find(|k| k.state == KeyState::Active)
                    .map(|k| k.kid.clone())
            })
            .ok()
            .flatten()
    }

    /// `user`'s token generation as stored now (0 for an account without credentials), for a
    /// browser session begun outside [`Sessions::authenticate`](crate::sessions::Sessions::authenticate) (federation).
    pub async fn token_generation(&self, user: UserId) -> Result<i64, AuthError> {
        Ok(self
            .core
            .store
            .credentials(user)
            .await?
            .map_or(0, |c| c.token_generation))
    }

    /// Forgets what this instance read of `user`'s token generation (another instance revoked
    /// its tokens).
    pub fn forget_floor(&self, user: UserId) {
        self.core.floors.drop_one(user);
    }

    /// Forgets every account's token generation (the revocation feed may have missed some).
    pub fn forget_floors(&self) {
        self.core.floors.drop_all();
    }
}

impl Core {
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
}
