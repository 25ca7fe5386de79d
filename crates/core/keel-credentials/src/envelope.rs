//! Envelope encryption of personal data at rest.
//!
//! Each value is encrypted with its own random data key (XChaCha20-Poly1305, random 192-bit
//! nonce: safe to draw at random for any number of values), and the data key is encrypted
//! ("wrapped") with a master key from the configuration. The sealed text names the master key
//! that wrapped it, so keys rotate without a flag day:
//!
//! 1. add a new key and make it primary (first in the keyring): new values are wrapped with it;
//! 2. rewrap stored values at leisure ([`Keyring::rewrap`] re-encrypts only the 32-byte data
//!    key, never the data; [`Keyring::needs_rewrap`] finds those left);
//! 3. remove the old key once nothing names it.
//!
//! The associated data binds a value to its place (for example `users/<id>/email`): a sealed
//! value copied to another row or field does not open there.
//!
//! Format: `k1.<key id>.<wrapped data key, base64url>.<ciphertext, base64url>`, each encrypted
//! part being nonce ‖ ciphertext ‖ tag.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const VERSION: &str = "k1";
const NONCE_BYTES: usize = 24;

/// Why a keyring could not be built or a value not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("a data key is `<id>:<32 bytes in base64>`, ids of letters, digits, `-` and `_`: {0}")]
    BadKey(String),
    #[error("the keyring is empty")]
    NoKeys,
    #[error("two data keys share the id {0:?}")]
    DuplicateId(String),
    #[error("the sealed value is malformed")]
    Malformed,
    #[error("the sealed value names the unknown data key {0:?}")]
    UnknownKey(String),
    #[error("the sealed value does not open: altered, or sealed for another place")]
    Forged,
}

/// Master keys by id; the first is the primary, which seals.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, XChaCha20Poly1305)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring").field("ids", &ids).finish()
    }
}

impl Keyring {
    /// A keyring from `<id>:<base64 of 32 bytes>` entries (standard or URL-safe base64), the
    /// primary first.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, EnvelopeError> {
        let mut keys: Vec<(String, XChaCha20Poly1305)> = Vec::new();
        for entry in entries {
            // The message names the id only: the key material is never echoed.
            let (id, material) = entry
                .split_once(':')
                .ok_or_else(|| EnvelopeError::BadKey("missing `<id>:`".into()))?;
            let id = id.trim();
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(EnvelopeError::BadKey(format!("id {id:?}")));
            }
            let material = material.trim();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(material)
                .or_else(|_| URL_SAFE_NO_PAD.decode(material.trim_end_matches('=')))
                .map_err(|_| EnvelopeError::BadKey(format!("key {id:?} is not base64")))?;
            if bytes.len() != 32 {
                return Err(EnvelopeError::BadKey(format!(
                    "key {id:?} has {} bytes, 32 needed",
                    bytes.len()
                )));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(EnvelopeError::DuplicateId(id.to_owned()));
            }
            let cipher = XChaCha20Poly1305::new_from_slice(&bytes).expect("a 32-byte key");
            keys.push((id.to_owned(), cipher));
        }
        if keys.is_empty() {
            return Err(EnvelopeError::NoKeys);
        }
        Ok(Self { keys })
    }

    /// A fresh key entry for the configuration: `<id>:<base64>`.
    pub fn generate_entry(id: &str) -> String {
        let mut key = [0u8; 32];
        crate::random_bytes(&mut key);
        format!(
            "{id}:{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        )
    }

    fn primary(&self) -> &(String, XChaCha20Poly1305) {
        &self.keys[0]
    }

    fn key(&self, id: &str) -> Result<&XChaCha20Poly1305, EnvelopeError> {
        self.keys
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, cipher)| cipher)
            .ok_or_else(|| EnvelopeError::UnknownKey(id.to_owned()))
    }

    /// Seals `plaintext` for the place named by `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> String {
        let mut data_key = [0u8; 32];
        crate::random_bytes(&mut data_key);
        let data = XChaCha20Poly1305::new_from_slice(&data_key).expect("a 32-byte key");
        let body = encrypt(&data, plaintext, aad.as_bytes());
        let (id, master) = self.primary();
        let wrapped = encrypt(master, &data_key, &wrap_aad(id, aad));
        format!("{VERSION}.{id}.{wrapped}.{body}")
    }

    /// Opens a value sealed for the place named by `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<Vec<u8>, EnvelopeError> {
        let (id, wrapped, body) = split(sealed)?;
        let data = self.unwrap_data_key(id, wrapped, aad)?;
        decrypt(&data, body, aad.as_bytes())
    }

    /// Whether `sealed` is wrapped by another key than the primary.
    pub fn needs_rewrap(&self, sealed: &str) -> bool {
        split(sealed).is_ok_and(|(id, _, _)| id != self.primary().0)
    }

    /// `sealed` with its data key wrapped by the primary key; the data is not re-encrypted.
    pub fn rewrap(&self, sealed: &str, aad: &str) -> Result<String, EnvelopeError> {
        let (id, wrapped, body) = split(sealed)?;
        let mut data_key = [0u8; 32];
        let unwrapped = decrypt(self.key(id)?, wrapped, &wrap_aad(id, aad))?;
        if unwrapped.len() != 32 {
            return Err(EnvelopeError::Malformed);
        }
        data_key.copy_from_slice(&unwrapped);
        // The body must open before it is vouched for under the new key.
        let data = XChaCha20Poly1305::new_from_slice(&data_key).expect("a 32-byte key");
        decrypt(&data, body, aad.as_bytes())?;
        let (primary_id, master) = self.primary();
        let wrapped = encrypt(master, &data_key, &wrap_aad(primary_id, aad));
        Ok(format!("{VERSION}.{primary_id}.{wrapped}.{body}"))
    }

    fn unwrap_data_key(
        &self,
        id: &str,
        wrapped: &str,
        aad: &str,
    ) -> Result<XChaCha20Poly1305, EnvelopeError> {
        let data_key = decrypt(self.key(id)?, wrapped, &wrap_aad(id, aad))?;
        XChaCha20Poly1305::new_from_slice(&data_key).map_err(|_| EnvelopeError::Malformed)
    }
}

/// The wrapped key is bound to both its master key's id and the value's place.
fn wrap_aad(id: &str, aad: &str) -> Vec<u8> {
    format!("{VERSION}/{id}/{aad}").into_bytes()
}

fn split(sealed: &str) -> Result<(&str, &str, &str), EnvelopeError> {
    let mut parts = sealed.split('.');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some(VERSION), Some(id), Some(wrapped), Some(body), None) => Ok((id, wrapped, body)),
        _ => Err(EnvelopeError::Malformed),
    }
}

fn encrypt(cipher: &XChaCha20Poly1305, plaintext: &[u8], aad: &[u8]) -> String {
    let mut nonce = [0u8; NONCE_BYTES];
    crate::random_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any length keel stores");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ciphertext);
    URL_SAFE_NO_PAD.encode(out)
}

fn decrypt(cipher: &XChaCha20Poly1305, part: &str, aad: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| EnvelopeError::Malformed)?;
    if bytes.len() < NONCE_BYTES + 16 {
        return Err(EnvelopeError::Malformed);
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
    let nonce: [u8; NONCE_BYTES] = nonce.try_into().expect("split at the nonce's length");
    cipher
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| EnvelopeError::Forged)
}
