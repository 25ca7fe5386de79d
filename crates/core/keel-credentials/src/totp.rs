//! Time-based one-time passwords (RFC 6238, on HOTP of RFC 4226) for authenticator apps.
//!
//! Enrolment gives the person a [`TotpSecret`] as an `otpauth://` URI (shown as a QR code by the
//! HTTP layer); the profile authenticator apps agree on is SHA-1, 6 digits, 30-second steps,
//! which [`Totp::new`] uses. Verification accepts the current step and one step either side
//! (clock drift, and a code typed as it changed), nothing wider, and refuses a code of a step at
//! or before the last one accepted for the account, so a code seen over a shoulder or in a
//! log cannot be used again.

use hmac::{Hmac, KeyInit, Mac};

/// The HMAC hash of a [`Totp`]. Apps support SHA-1; the others exist for RFC 6238's vectors and
/// for hardware tokens that use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
            Self::Sha512 => "SHA512",
        }
    }

    fn mac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        fn run<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
            let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Self::Sha1 => run::<Hmac<sha1::Sha1>>(key, message),
            Self::Sha256 => run::<Hmac<sha2::Sha256>>(key, message),
            Self::Sha512 => run::<Hmac<sha2::Sha512>>(key, message),
        }
    }
}

/// A shared TOTP secret. Its `Debug` output hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret(Vec<u8>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

impl TotpSecret {
    /// A fresh 160-bit secret (RFC 4226 recommends 160 bits).
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; 20];
        crate::random_bytes(&mut bytes);
        Self(bytes)
    }

    /// A secret from its bytes: at least 16 (RFC 4226's minimum of 128 bits).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TotpError> {
        if bytes.len() < 16 {
            return Err(TotpError::WeakSecret);
        }
        Ok(Self(bytes.to_vec()))
    }

    /// A secret in base32, as apps and `otpauth://` URIs carry it.
    pub fn from_base32(text: &str) -> Result<Self, TotpError> {
        let bytes = crate::base32::decode(text).ok_or(TotpError::MalformedSecret)?;
        Self::from_bytes(&bytes)
    }

    pub fn to_base32(&self) -> String {
        crate::base32::encode(&self.0)
    }

    /// The raw bytes, for storing the secret (encrypted) with the account.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Why a code was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    #[error("the code must be {digits} digits")]
    Malformed { digits: u32 },
    #[error("the code is wrong or has expired")]
    Wrong,
    #[error("the code was already used")]
    Replayed,
    #[error("a TOTP secret must have at least 128 bits")]
    WeakSecret,
    #[error("the TOTP secret is not valid base32")]
    MalformedSecret,
}

/// A TOTP generator and verifier for one secret.
#[derive(Debug, Clone)]
pub struct Totp {
    secret: TotpSecret,
    algorithm: Algorithm,
    digits: u32,
    step_secs: u64,
}

impl Totp {
    /// Steps accepted either side of the current one.
    pub const DRIFT_STEPS: u64 = 1;

    /// The authenticator-app profile: SHA-1, 6 digits, 30-second steps.
    pub fn new(secret: TotpSecret) -> Self {
        Self::with(secret, Algorithm::Sha1, 6, 30)
    }

    /// Any profile: `digits` in 6..=8 (RFC 4226), `step_secs` at least 1.
    ///
    /// # Panics
    /// On digits or a step outside those bounds: a programming error, not input.
    pub fn with(secret: TotpSecret, algorithm: Algorithm, digits: u32, step_secs: u64) -> Self {
        assert!((6..=8).contains(&digits), "TOTP digits must be 6 to 8");
        assert!(step_secs >= 1, "a TOTP step must last at least a second");
        Self {
            secret,
            algorithm,
            digits,
            step_secs,
        }
    }

    /// The step (RFC 6238's T) that `unix_secs` falls in.
    pub fn step_at(&self, unix_secs: u64) -> u64 {
        unix_secs / self.step_secs
    }

    /// The code of `step` (HOTP with the step as counter, RFC 4226 section 5.3).
    pub fn code_for_step(&self, step: u64) -> String {
        let mac = self
            .algorithm
            .mac(self.secret.as_bytes(), &step.to_be_bytes());
        let offset = usize::from(mac[mac.len() - 1] & 0x0f);
        let binary = u32::from_be_bytes([
            mac[offset] & 0x7f,
            mac[offset + 1],
            mac[offset + 2],
            mac[offset + 3],
        ]);
        let code = binary % 10u32.pow(self.digits);
        format!("{code:0width$}", width = self.digits as usize)
    }

    /// The code at `unix_secs`.
    pub fn code_at(&self, unix_secs: u64) -> String {
        self.code_for_step(self.step_at(unix_secs))
    }

    /// Checks `code` at `unix_secs` against the current step and one step either side. `last`
    /// is the step of the code last accepted for this secret, if any: codes of that step or
    /// earlier are refused as replays. On success, returns the step matched, which the caller
    /// stores as the new `last` in the same write that records the login.
    ///
    /// All candidate steps are compared, in constant time, whatever matches first.
    pub fn verify(&self, code: &str, unix_secs: u64, last: Option<u64>) -> Result<u64, TotpError> {
        let code = code.trim();
        if code.len() != self.digits as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TotpError::Malformed {
                digits: self.digits,
            });
        }
        let now = self.step_at(unix_secs);
        let mut matched = None;
        for step in now.saturating_sub(Self::DRIFT_STEPS)..=now + Self::DRIFT_STEPS {
            let expected = self.code_for_step(step);
            if bool::from(subtle::ConstantTimeEq::ct_eq(
                expected.as_bytes(),
                code.as_bytes(),
            )) {
                // The latest matching step wins: it is the one that must not be used again.
                matched = Some(step);
            }
        }
        let step = matched.ok_or(TotpError::Wrong)?;
        if last.is_some_and(|last| step <= last) {
            return Err(TotpError::Replayed);
        }
        Ok(step)
    }

    /// The `otpauth://totp/` URI authenticator apps enrol from (Google Authenticator's Key Uri
    /// Format): label `issuer:account`, with the secret, issuer, algorithm, digits and period.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        let label = format!(
            "{}:{}",
            crate::percent_encode(issuer),
            crate::percent_encode(account)
        );
        format!(
            "otpauth://totp/{label}?secret={}&issuer={}&algorithm={}&digits={}&period={}",
            self.secret.to_base32(),
            crate::percent_encode(issuer),
            self.algorithm.name(),
            self.digits,
            self.step_secs
        )
    }
}
