//! MFA: TOTP enrolment (a pending secret, shown as a QR code, confirmed with a code) and the
//! recovery codes handed out on confirmation.

use keel_credentials::envelope::EnvelopeError;
use keel_credentials::totp::{Totp, TotpSecret};
use keel_domain::User;
use serde_json::json;

use crate::service::{AuthError, Enrolment, PENDING, totp_place};
use crate::shared::Core;

/// TOTP enrolment.
#[derive(Clone, Copy)]
pub struct Mfa<'a> {
    core: &'a Core,
}

impl Core {
    pub(crate) fn mfa(&self) -> Mfa<'_> {
        Mfa { core: self }
    }
}

impl Mfa<'_> {
    /// Starts TOTP enrolment: a new secret, kept pending until [`Self::confirm_totp`].
    pub async fn enroll_totp(&self, user: &User, now: i64) -> Result<Enrolment, AuthError> {
        let mut credentials = self.core.credentials_of(user.id).await?;
        if credentials
            .totp_secret
            .as_deref()
            .is_some_and(|s| !s.starts_with(PENDING))
        {
            return Err(AuthError::AlreadyEnrolled);
        }
        let secret = TotpSecret::generate();
        credentials.totp_secret = Some(format!(
            "{PENDING}{}",
            self.core
                .keyring
                .seal(secret.as_bytes(), &totp_place(user.id))
        ));
        credentials.version += 1;
        self.core.store.put_credentials(&credentials).await?;
        self.core
            .record_own(
                now,
                &user.id.to_string(),
                "totp_enrolment_started",
                None,
                json!({}),
            )
            .await?;
        let totp = Totp::new(secret.clone());
        let otpauth_uri = totp.otpauth_uri(&self.core.settings.totp_issuer, user.email.as_str());
        Ok(Enrolment {
            secret: secret.to_base32(),
            qr_svg: crate::qr::qr_svg(&otpauth_uri),
            otpauth_uri,
        })
    }

    /// Confirms enrolment with a first code; returns the recovery codes, shown once.
    pub async fn confirm_totp(
        &self,
        user: &User,
        code: &str,
        now: i64,
    ) -> Result<Vec<String>, AuthError> {
        let mut credentials = self.core.credentials_of(user.id).await?;
        let sealed = credentials
            .totp_secret
            .as_deref()
            .and_then(|s| s.strip_prefix(PENDING))
            .ok_or(AuthError::NothingToConfirm)?
            .to_owned();
        let secret =
            TotpSecret::from_bytes(&self.core.keyring.open(&sealed, &totp_place(user.id))?)
                .map_err(|_| EnvelopeError::Malformed)?;
        let step = Totp::new(secret)
            .verify(code, u64::try_from(now).unwrap_or_default(), None)
            .map_err(|_| AuthError::InvalidCredentials)?;
        let codes = keel_credentials::recovery::RecoveryCodes::generate();
        credentials.totp_secret = Some(sealed);
        credentials.totp_last_step = i64::try_from(step).ok();
        credentials.recovery_codes = codes.hashes;
        credentials.version += 1;
        self.core.store.put_credentials(&credentials).await?;
        self.core
            .record_own(now, &user.id.to_string(), "totp_enrolled", None, json!({}))
            .await?;
        Ok(codes.shown)
    }
}
