//! The browser session a signed-in person keeps at the IdP (a cookie value signed here, so
//! sign-in is asked once per browser, not per client) and the CSRF tokens of the IdP's pages.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;
use keel_domain::UserId;

use crate::service::{AuthError, mac};
use crate::shared::Core;

use super::*;

/// The browser session kept at the IdP and the CSRF tokens of its pages.
#[derive(Clone, Copy)]
pub struct BrowserSessions<'a> {
    core: &'a Core,
}

impl Core {
    pub(crate) fn browser(&self) -> BrowserSessions<'_> {
        BrowserSessions { core: self }
    }
}

impl BrowserSessions<'_> {
    /// A browser session for `user` signing in now under token `generation` as `amr` says, and
    /// its cookie value: `<user>.<auth_time>.<expires_at>.<generation>.<amr, joined by '+'>.<mac>`.
    pub fn browser_session(
        &self,
        user: UserId,
        generation: i64,
        amr: &[&str],
        now: i64,
    ) -> (BrowserSession, String) {
        let expires_at = now + self.core.settings.session_ttl_secs.min(12 * 3600);
        let body = format!("{user}.{now}.{expires_at}.{generation}.{}", amr.join("+"));
        let tag = mac(&self.core.session_key, &[body.as_bytes()])
            .finalize()
            .into_bytes();
        let session = BrowserSession {
            user,
            auth_time: now,
            expires_at,
            generation,
            amr: amr.iter().map(|m| (*m).to_owned()).collect(),
        };
        (session, format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag)))
    }

    /// The session a cookie value proves at `now`, if it is genuine and unexpired; whether its
    /// account's sign-ins were ended since is [`Self::current_browser_session`]'s question.
    pub fn check_browser_session(&self, value: &str, now: i64) -> Option<BrowserSession> {
        let (body, tag) = value.rsplit_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        mac(&self.core.session_key, &[body.as_bytes()])
            .verify_slice(&tag)
            .ok()?;
        let mut parts = body.split('.');
        let user: UserId = parts.next()?.parse().ok()?;
        let auth_time: i64 = parts.next()?.parse().ok()?;
        let expires_at: i64 = parts.next()?.parse().ok()?;
        // Cookies made before generations existed have none: generation 0.
        let generation: i64 = parts.next().map_or(Some(0), |g| g.parse().ok())?;
        // Cookies made before sessions recorded `amr` were password sign-ins.
        let amr = parts.next().map_or_else(
            || vec!["pwd".to_owned()],
            |amr| amr.split('+').map(str::to_owned).collect(),
        );
        (now < expires_at).then_some(BrowserSession {
            user,
            auth_time,
            expires_at,
            generation,
            amr,
        })
    }

    /// The session a cookie value proves at `now`, if it is genuine, unexpired, and its
    /// account's sign-ins have not been ended since (sign out everywhere, a password change,
    /// the account disabled or erased). Answered from the cached token floor.
    pub async fn current_browser_session(
        &self,
        value: &str,
        now: i64,
    ) -> Result<Option<BrowserSession>, AuthError> {
        let Some(session) = self.check_browser_session(value, now) else {
            return Ok(None);
        };
        let current = self
            .core
            .floor(session.user, now)
            .await?
            .admits(session.generation);
        Ok(current.then_some(session))
    }

    /// The session a cookie value proves at `now` with its account's stored credentials, if it
    /// is genuine and current and its account's sign-ins have not been ended since.
    pub async fn current_session(
        &self,
        cookie: &str,
        now: i64,
    ) -> Result<Option<(BrowserSession, keel_domain::Credentials)>, AuthError> {
        let Some(session) = self.check_browser_session(cookie, now) else {
            return Ok(None);
        };
        let Some(credentials) = self.core.store.credentials(session.user).await? else {
            return Ok(None);
        };
        let current = crate::revocation::Floor::of(Some(&credentials)).admits(session.generation);
        Ok(current.then_some((session, credentials)))
    }

    /// The caller of a browser session cookie at `now`: the account and its roles as stored
    /// now. `None` when the cookie is not genuine or current, or the account's sign-ins ended
    /// since the session began (it is gone or disabled, signed out everywhere, or changed
    /// its password).
    pub async fn session_caller(
        &self,
        cookie: &str,
        now: i64,
    ) -> Result<Option<keel_domain::Caller>, AuthError> {
        Ok(self
            .current_session(cookie, now)
            .await?
            .map(|(session, credentials)| keel_domain::Caller {
                user: session.user,
                roles: self.core.accounts().effective_roles(&credentials),
            }))
    }

    /// The key of the browser forms' CSRF tokens (keel-http's signed double submit), derived
    /// from the IdP secret, so that every process of one deployment makes and accepts the same
    /// tokens.
    pub fn csrf_key(&self) -> [u8; 32] {
        mac(&self.core.session_key, &[b"csrf-key"])
            .finalize()
            .into_bytes()
            .into()
    }
}
