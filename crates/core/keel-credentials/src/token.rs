//! Signed access tokens: compact JWS (RFC 7515) JWTs (RFC 7519) signed with Ed25519 (`EdDSA`,
//! RFC 8037), their signing keys, the JWKS that publishes them, and a strict verifier.
//!
//! One algorithm only, fixed by the verifier and never taken from the token: a token whose header
//! names any other (`none`, `HS256` keyed with the public key, `RS256`, …) is refused before its
//! signature is looked at, which rules out the algorithm-confusion attacks. Every token names its
//! key (`kid`); an unknown one is refused, not tried against every key.
//!
//! Keys rotate in three states: the *next* key is published before it signs anything (relying
//! parties that cache the JWKS learn it ahead of use), the *active* key signs, and a *retired*
//! key stays published and accepted for an overlap that must be at least the tokens' lifetime,
//! so no token still within its lifetime stops verifying at a rotation.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The only `alg` keel signs with and accepts.
pub const ALGORITHM: &str = "EdDSA";

/// Longest token the verifier reads: larger input is refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The registered claims keel issues, and any others (`scope`, `roles`, …) in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    /// One audience is written as a string, several as an array (RFC 7519 allows both).
    #[serde(with = "audience")]
    pub aud: Vec<String>,
    /// Expiry, unix seconds: the token is refused from this instant on.
    pub exp: i64,
    /// Not before, unix seconds (absent in many providers' ID tokens: then 0).
    #[serde(default)]
    pub nbf: i64,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// The token's id, for revocation lists (absent in many providers' ID tokens).
    #[serde(default)]
    pub jti: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

mod audience {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(aud: &[String], s: S) -> Result<S::Ok, S::Error> {
        match aud {
            [one] => s.serialize_str(one),
            many => s.collect_seq(many),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    /// Extensions the recipient must understand (RFC 7515 §4.1.11): keel understands none, so a
    /// token carrying any is refused.
    #[serde(default, skip_serializing)]
    crit: Option<Value>,
}

/// Why a token was refused. Callers answer every variant the same way (401); the variants are
/// for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed signed JWT")]
    Malformed,
    #[error("the token's algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("the token names no known signing key")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by another issuer")]
    Issuer,
    #[error("the token is not meant for this audience")]
    Audience,
    /// Its account signed out everywhere, changed its password, or was disabled or erased
    /// after it was issued.
    #[error("the token was revoked")]
    Revoked,
}

/// What a verifier expects of a token besides its signature.
#[derive(Debug, Clone)]
pub struct Expect {
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: i64,
}

/// Verifies tokens against a set of public keys by `kid`.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    keys: HashMap<String, PublicKey>,
}

/// A verification key, which fixes the one algorithm a token under it may use: `EdDSA` for an
/// Ed25519 key (keel's own), `RS256` for an RSA key and `ES256` for a P-256 key (external
/// providers' ID tokens). The token cannot choose: a token whose `alg` is not its key's is
/// refused before any verification.
#[derive(Debug, Clone)]
enum PublicKey {
    Ed25519(VerifyingKey),
    Rs256(rsa::pkcs1v15::VerifyingKey<sha2::Sha256>),
    Es256(p256::ecdsa::VerifyingKey),
}

/// The algorithms a [`Verifier`] knows; any other `alg` is refused before a key is looked up.
const KNOWN_ALGORITHMS: [&str; 3] = [ALGORITHM, "RS256", "ES256"];

impl PublicKey {
    fn algorithm(&self) -> &'static str {
        match self {
            Self::Ed25519(_) => ALGORITHM,
            Self::Rs256(_) => "RS256",
            Self::Es256(_) => "ES256",
        }
    }

    fn verify(&self, signed: &[u8], signature: &[u8]) -> Result<(), TokenError> {
        match self {
            Self::Ed25519(key) => {
                let signature: [u8; 64] =
                    signature.try_into().map_err(|_| TokenError::Malformed)?;
                // Strict: refuses the malleable and small-order edge cases plain verification
                // allows.
                key.verify_strict(signed, &Signature::from_bytes(&signature))
                    .map_err(|_| TokenError::Signature)
            }
            Self::Rs256(key) => {
                use rsa::signature::Verifier as _;
                let signature = rsa::pkcs1v15::Signature::try_from(signature)
                    .map_err(|_| TokenError::Malformed)?;
                key.verify(signed, &signature)
                    .map_err(|_| TokenError::Signature)
            }
            Self::Es256(key) => {
                use p256::ecdsa::signature::Verifier as _;
                // JWS carries `r || s`, 64 bytes (RFC 7518 §3.4), not DER.
                let signature = p256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| TokenError::Malformed)?;
                key.verify(signed, &signature)
                    .map_err(|_| TokenError::Signature)
            }
        }
    }
}

/// A P-256 JWK's key for ES256 signatures: `x` and `y`, 32 bytes each, a point on the curve.
fn p256_key(key: &Value) -> Result<PublicKey, TokenError> {
    let x = b64_field(key, "x")?;
    let y = b64_field(key, "y")?;
    if x.len() != 32 || y.len() != 32 {
        return Err(TokenError::Malformed);
    }
    let mut sec1 = Vec::with_capacity(65);
    sec1.push(0x04);
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    let public =
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| TokenError::Malformed)?;
    Ok(PublicKey::Es256(public))
}

/// Fewest bits of an RSA key accepted (NIST SP 800-131A: 2048).
const RSA_MIN_BITS: usize = 2048;

fn b64_field(key: &Value, name: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(
            key.get(name)
                .and_then(Value::as_str)
                .ok_or(TokenError::Malformed)?,
        )
        .map_err(|_| TokenError::Malformed)
}

/// An RSA JWK's key for RS256 signatures; `None` for a key under 2048 bits (skipped: a JWKS
/// may still list an old weak key beside its good ones, and nothing it signs is accepted).
fn rsa_key(key: &Value) -> Result<Option<PublicKey>, TokenError> {
    let n = b64_field(key, "n")?;
    let e = b64_field(key, "e")?;
    let n = n.strip_prefix(&[0][..]).unwrap_or(&n);
    if n.len() * 8 < RSA_MIN_BITS {
        return Ok(None);
    }
    if e.is_empty() || e.len() > 8 {
        return Err(TokenError::Malformed);
    }
    let public = rsa::PublicKey::new(
        rsa::BoxedUint::from_be_slice_vartime(n),
        rsa::BoxedUint::from_be_slice_vartime(&e),
    )
    .map_err(|_| TokenError::Malformed)?;
    Ok(Some(PublicKey::Rs256(rsa::pkcs1v15::VerifyingKey::new(
        public,
    ))))
}

impl Verifier {
    /// The Ed25519, RSA (RS256) and P-256 (ES256) signing keys of a JWKS document (`{"keys": [...]}`); keys
    /// of other types, algorithms or uses, and RSA keys under 2048 bits, are skipped (a JWKS may
    /// publish keys for other uses); malformed ones are an error.
    pub fn from_jwks(jwks: &Value) -> Result<Self, TokenError> {
        let keys = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(TokenError::Malformed)?;
        let mut verifier = Self::default();
        for key in keys {
            let field = |name: &str| key.get(name).and_then(Value::as_str);
            if field("use").is_some_and(|u| u != "sig") {
                continue;
            }
            let public = match (field("kty"), field("crv"), field("alg")) {
                (Some("OKP"), Some("Ed25519"), None | Some(ALGORITHM)) => {
                    let x = b64_field(key, "x")?;
                    let x: [u8; 32] = x.try_into().map_err(|_| TokenError::Malformed)?;
                    PublicKey::Ed25519(
                        VerifyingKey::from_bytes(&x).map_err(|_| TokenError::Malformed)?,
                    )
                }
                (Some("RSA"), _, None | Some("RS256")) => match rsa_key(key)? {
                    Some(public) => public,
                    None => continue,
                },
                (Some("EC"), Some("P-256"), None | Some("ES256")) => p256_key(key)?,
                _ => continue,
            };
            let kid = field("kid").ok_or(TokenError::Malformed)?;
            verifier.keys.insert(kid.to_owned(), public);
        }
        Ok(verifier)
    }

    /// The token's claims, if it is signed by one of the keys, with `alg` `EdDSA`, within its
    /// times at `now` (unix seconds), from the expected issuer, for the expected audience.
    pub fn verify(&self, token: &str, expect: &Expect, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Header = decode_json(header_b64)?;
        if !KNOWN_ALGORITHMS.contains(&header.alg.as_str()) {
            return Err(TokenError::Algorithm(header.alg));
        }
        if header.crit.is_some() {
            return Err(TokenError::Malformed);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(TokenError::UnknownKey)?;
        // The key decides the algorithm; the token's header only has to agree.
        if header.alg != key.algorithm() {
            return Err(TokenError::Algorithm(header.alg));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| TokenError::Malformed)?;
        let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
        key.verify(signed.as_bytes(), &signature)?;
        let claims: Claims = decode_json(payload_b64)?;
        if now >= claims.exp.saturating_add(expect.leeway_secs) {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now.saturating_add(expect.leeway_secs) {
            return Err(TokenError::NotYetValid);
        }
        if claims.iss != expect.issuer {
            return Err(TokenError::Issuer);
        }
        if !claims.aud.contains(&expect.audience) {
            return Err(TokenError::Audience);
        }
        Ok(claims)
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

/// A signing key's place in the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Published, not yet signing.
    Next,
    /// Signing.
    Active,
    /// Published and accepted until `retired_at` plus the overlap.
    Retired { retired_at: i64 },
}

/// One signing key with its id and state. Its `Debug` output shows no secret.
#[derive(Clone)]
pub struct KeyEntry {
    pub kid: String,
    pub state: KeyState,
    key: SigningKey,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("kid", &self.kid)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A key as stored: the caller keeps `secret` encrypted at rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredKey {
    pub kid: String,
    pub state: KeyState,
    /// The 32-byte Ed25519 seed, base64url.
    pub secret: String,
}

impl KeyEntry {
    fn generate(state: KeyState) -> Self {
        let mut seed = [0u8; 32];
        crate::random_bytes(&mut seed);
        let key = SigningKey::from_bytes(&seed);
        // The id is derived from the public key (RFC 7638's idea, shortened): stable, and two
        // keys never share one by accident.
        let kid = URL_SAFE_NO_PAD.encode(&key.verifying_key().to_bytes()[..12]);
        Self { kid, state, key }
    }

    fn jwk(&self) -> Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "use": "sig",
            "alg": ALGORITHM,
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes()),
        })
    }
}

/// The IdP's signing keys: one active, one next, and the retired ones still in their overlap.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: Vec<KeyEntry>,
    /// How long a retired key stays published and accepted, in seconds.
    overlap_secs: i64,
}

/// Why stored keys could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored signing keys are unusable: {0}")]
pub struct KeyStoreError(String);

impl KeySet {
    /// A new set (an active and a next key). `overlap_secs` must be at least the longest lifetime
    /// of the tokens it signs.
    pub fn generate(overlap_secs: i64) -> Self {
        Self {
            keys: vec![
                KeyEntry::generate(KeyState::Active),
                KeyEntry::generate(KeyState::Next),
            ],
            overlap_secs,
        }
    }

    /// The set as it was stored; exactly one active key is required.
    pub fn load(stored: &[StoredKey], overlap_secs: i64) -> Result<Self, KeyStoreError> {
        let mut keys = Vec::with_capacity(stored.len());
        for s in stored {
            let seed = URL_SAFE_NO_PAD
                .decode(&s.secret)
                .map_err(|_| KeyStoreError(format!("key {} is not base64url", s.kid)))?;
            let seed: [u8; 32] = seed
                .try_into()
                .map_err(|_| KeyStoreError(format!("key {} is not 32 bytes", s.kid)))?;
            keys.push(KeyEntry {
                kid: s.kid.clone(),
                state: s.state,
                key: SigningKey::from_bytes(&seed),
            });
        }
        let active = keys.iter().filter(|k| k.state == KeyState::Active).count();
        if active != 1 {
            return Err(KeyStoreError(format!(
                "{active} active keys, exactly one needed"
            )));
        }
        Ok(Self { keys, overlap_secs })
    }

    /// The set to store (secrets included: encrypt before writing).
    pub fn store(&self) -> Vec<StoredKey> {
        self.keys
            .iter()
            .map(|k| StoredKey {
                kid: k.kid.clone(),
                state: k.state,
                secret: URL_SAFE_NO_PAD.encode(k.key.to_bytes()),
            })
            .collect()
    }

    pub fn keys(&self) -> &[KeyEntry] {
        &self.keys
    }

    fn active(&self) -> &KeyEntry {
        self.keys
            .iter()
            .find(|k| k.state == KeyState::Active)
            .expect("a key set always has an active key")
    }

    /// Rotates at `now`: the active key retires, the next key becomes active, a new next key is
    /// made, and retired keys past their overlap are dropped.
    pub fn rotate(&mut self, now: i64) {
        for key in &mut self.keys {
            key.state = match key.state {
                KeyState::Active => KeyState::Retired { retired_at: now },
                KeyState::Next => KeyState::Active,
                retired => retired,
            };
        }
        if !self.keys.iter().any(|k| k.state == KeyState::Active) {
            self.keys.push(KeyEntry::generate(KeyState::Active));
        }
        self.keys.push(KeyEntry::generate(KeyState::Next));
        self.prune(now);
    }

    /// Drops retired keys whose overlap has passed at `now`.
    pub fn prune(&mut self, now: i64) {
        let overlap = self.overlap_secs;
        self.keys.retain(|k| match k.state {
            KeyState::Retired { retired_at } => now < retired_at.saturating_add(overlap),
            _ => true,
        });
    }

    /// Signs `claims` with the active key.
    pub fn sign(&self, claims: &Claims) -> String {
        let key = self.active();
        let header = Header {
            alg: ALGORITHM.to_owned(),
            kid: Some(key.kid.clone()),
            typ: Some("JWT".to_owned()),
            crit: None,
        };
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("a header"));
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims"));
        let signed = format!("{header}.{payload}");
        let signature = key.key.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    /// The published keys (next, active, retired in overlap) as a JWKS document.
    pub fn jwks(&self) -> Value {
        serde_json::json!({ "keys": self.keys.iter().map(KeyEntry::jwk).collect::<Vec<_>>() })
    }

    /// A verifier for the tokens this set signed and still accepts at `now`.
    pub fn verifier(&self, now: i64) -> Verifier {
        let mut set = self.clone();
        set.prune(now);
        Verifier::from_jwks(&set.jwks()).expect("the set's own JWKS")
    }
}
