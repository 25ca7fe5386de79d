//! The OpenID Connect provider's front half: registered clients, authorization requests checked
//! before anyone signs in, consent, and discovery.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;
use keel_domain::{Consent, OidcClient, UserId};
use serde_json::{Value, json};

use crate::service::{AuthError, mac};

use super::*;

impl OidcProvider<'_> {
    /// Registers (or replaces) a client. A confidential client gets a new secret, returned
    /// once; a public client (a browser or mobile app) has none and must use PKCE.
    pub async fn register_client(
        &self,
        id: &str,
        name: &str,
        redirect_uris: &[String],
        public: bool,
        actor: &str,
        now: i64,
    ) -> Result<Registered, AuthError> {
        let valid_id = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid_id {
            return Err(keel_domain::ValidationError::new(
                "client_id",
                "1 to 64 letters, digits, `-`, `_` or `.`",
            )
            .into());
        }
        if redirect_uris.is_empty()
            || redirect_uris.iter().any(|u| {
                !(u.starts_with("https://") || u.starts_with("http://")) || u.contains('#')
            })
        {
            return Err(keel_domain::ValidationError::new(
                "redirect_uris",
                "one or more absolute http(s) URIs without a fragment",
            )
            .into());
        }
        let secret = (!public).then(random_token);
        let client = OidcClient {
            id: id.to_owned(),
            name: name.to_owned(),
            secret_hash: secret.as_deref().map(sha256_hex),
            redirect_uris: redirect_uris.to_vec(),
            created_at: now,
        };
        self.core.store.put_client(&client).await?;
        self.core
            .record(
                now,
                actor,
                "client_registered",
                None,
                None,
                json!({ "client_id": id, "public": public, "redirect_uris": redirect_uris }),
            )
            .await?;
        Ok(Registered {
            client_id: id.to_owned(),
            client_secret: secret,
        })
    }

    /// A registered client.
    pub async fn client(&self, id: &str) -> Result<Option<OidcClient>, AuthError> {
        Ok(self.core.store.client(id).await?)
    }

    /// Checks an authorization request before anyone signs in.
    pub async fn check_authorize(
        &self,
        request: &AuthorizeRequest,
    ) -> Result<Authorized, AuthorizeError> {
        let display = |text: &str| AuthorizeError::Display(text.to_owned());
        let client_id = request
            .client_id
            .as_deref()
            .ok_or_else(|| display("the request names no client_id"))?;
        let client = self
            .core
            .store
            .client(client_id)
            .await
            .map_err(|_| display("the identity store failed; try again"))?
            .ok_or_else(|| display("the client is not registered"))?;
        let redirect_uri = match request.redirect_uri.as_deref() {
            Some(uri) if client.redirect_uris.iter().any(|r| r == uri) => uri.to_owned(),
            Some(_) => {
                return Err(display(
                    "the redirect_uri is not registered for this client",
                ));
            }
            // Optional only when the client registered exactly one.
            None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
            None => return Err(display("the request names no redirect_uri")),
        };
        let back = |code: &'static str, description: &str| AuthorizeError::Redirect {
            redirect_uri: redirect_uri.clone(),
            state: request.state.clone(),
            error: OAuthError::new(code, description),
        };
        if request.request.is_some() {
            return Err(back(
                "request_not_supported",
                "request objects are not supported",
            ));
        }
        if request.request_uri.is_some() {
            return Err(back(
                "request_uri_not_supported",
                "request_uri is not supported",
            ));
        }
        if request.response_type.as_deref() != Some("code") {
            return Err(back(
                "unsupported_response_type",
                "only the authorization code flow (response_type=code) is supported",
            ));
        }
        let scope = request.scope.clone().unwrap_or_default();
        let scopes: Vec<&str> = scope.split_whitespace().collect();
        if !scopes.contains(&"openid") {
            return Err(back("invalid_scope", "the scope must include openid"));
        }
        let kept: Vec<&str> = scopes
            .into_iter()
            .filter(|s| SUPPORTED_SCOPES.contains(s))
            .collect();
        let challenge = match (&request.code_challenge, &request.code_challenge_method) {
            (Some(challenge), method) => {
                keel_credentials::pkce::check_challenge(
                    challenge,
                    method.as_deref().unwrap_or("plain"),
                )
                .map_err(|e| back("invalid_request", &e.to_string()))?;
                Some(challenge.clone())
            }
            (None, _) if client.secret_hash.is_none() => {
                return Err(back(
                    "invalid_request",
                    "a public client must send a code_challenge (PKCE, S256)",
                ));
            }
            (None, _) => None,
        };
        let prompt =
            parse_prompt(request.prompt.as_deref()).map_err(|e| back("invalid_request", e))?;
        let max_age = match request.max_age.as_deref() {
            None => None,
            Some(text) => Some(
                text.parse::<i64>()
                    .ok()
                    .filter(|secs| *secs >= 0)
                    .ok_or_else(|| {
                        back("invalid_request", "max_age must be a number of seconds")
                    })?,
            ),
        };
        Ok(Authorized {
            client,
            redirect_uri,
            scope: kept.join(" "),
            state: request.state.clone(),
            nonce: request.nonce.clone(),
            challenge,
            prompt,
            max_age,
        })
    }

    /// Whether `session` may stand for the person on this request at `now`: not when the
    /// request asks for a sign-in (`prompt=login`) or the session has reached `max_age` (so
    /// `max_age=0` always signs in again, and a relying party checking `auth_time + max_age`
    /// against its clock never sees an older sign-in).
    pub fn session_suffices(request: &Authorized, session: &BrowserSession, now: i64) -> bool {
        !request.prompt.login
            && request
                .max_age
                .is_none_or(|max_age| now.saturating_sub(session.auth_time) < max_age)
    }

    /// What the request needs from the person whose browser holds `session` (already checked
    /// by [`BrowserSessions::current_session`](super::browser::BrowserSessions::current_session)).
    pub async fn next_step(
        &self,
        request: &Authorized,
        session: Option<BrowserSession>,
        now: i64,
    ) -> Result<Next, AuthError> {
        let Some(session) = session.filter(|s| Self::session_suffices(request, s, now)) else {
            return Ok(Next::SignIn);
        };
        if request.prompt.consent || !self.has_consent(session.user, request).await? {
            return Ok(Next::Consent(session));
        }
        Ok(Next::Code(session))
    }

    /// Whether the person allowed this client every scope of the request before.
    pub async fn has_consent(&self, user: UserId, request: &Authorized) -> Result<bool, AuthError> {
        Ok(self
            .core
            .store
            .consent(user, &request.client.id)
            .await?
            .is_some_and(|c| covers(&c.scope, &request.scope)))
    }

    /// Records that the person allowed the request's scopes to its client (added to what they
    /// allowed before).
    pub async fn remember_consent(
        &self,
        user: UserId,
        request: &Authorized,
        now: i64,
    ) -> Result<(), AuthError> {
        let before = self.core.store.consent(user, &request.client.id).await?;
        let mut scopes: Vec<&str> = before
            .as_ref()
            .map(|c| c.scope.split_whitespace().collect())
            .unwrap_or_default();
        for scope in request.scope.split_whitespace() {
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        let scope = scopes.join(" ");
        if before.as_ref().is_some_and(|c| c.scope == scope) {
            return Ok(());
        }
        self.core
            .store
            .put_consent(&Consent {
                user_id: user,
                client_id: request.client.id.clone(),
                scope: scope.clone(),
                granted_at: now,
            })
            .await?;
        self.core
            .record_own(
                now,
                &user.to_string(),
                "consent_given",
                None,
                json!({ "client_id": request.client.id, "scope": scope }),
            )
            .await
    }

    /// The person's consents, by client id.
    pub async fn consents(&self, user: UserId) -> Result<Vec<Consent>, AuthError> {
        Ok(self.core.store.consents_of(user).await?)
    }

    /// Withdraws the person's consent to a client: the next request asks again, and the
    /// client's refresh tokens for the person stop working. False when there was none.
    pub async fn withdraw_consent(
        &self,
        user: UserId,
        client_id: &str,
        now: i64,
    ) -> Result<bool, AuthError> {
        let withdrawn = self.core.store.withdraw_consent(user, client_id).await?;
        if withdrawn {
            self.core
                .record_own(
                    now,
                    &user.to_string(),
                    "consent_withdrawn",
                    None,
                    json!({ "client_id": client_id }),
                )
                .await?;
        }
        Ok(withdrawn)
    }

    /// The refresh-token family the tokens of `code` start: derived from the code under a
    /// server key, so a replayed code finds its family again (and revokes it) with nothing
    /// stored beside the code, and nobody can name a family without holding its code.
    pub(super) fn code_family(&self, code: &str) -> String {
        let tag = mac(&self.core.session_key, &[b"code-family", code.as_bytes()])
            .finalize()
            .into_bytes();
        URL_SAFE_NO_PAD.encode(&tag[..16])
    }

    /// The discovery document (`/.well-known/openid-configuration`).
    pub fn discovery(&self) -> Value {
        let base = self.core.settings.issuer.trim_end_matches('/');
        json!({
            "issuer": self.core.settings.issuer,
            "authorization_endpoint": format!("{base}/oauth/authorize"),
            "token_endpoint": format!("{base}/oauth/token"),
            "userinfo_endpoint": format!("{base}/oauth/userinfo"),
            "jwks_uri": format!("{base}/.well-known/jwks.json"),
            "end_session_endpoint": format!("{base}/oauth/logout"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "scopes_supported": SUPPORTED_SCOPES,
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "amr", "email", "email_verified", "name"],
            "prompt_values_supported": ["none", "login", "consent", "select_account"],
            // Absent, these mean true for request_uri (Discovery §3): keel takes neither.
            "request_parameter_supported": false,
            "request_uri_parameter_supported": false,
            "claims_parameter_supported": false,
            // Every authorization response, code or error, carries `iss` (RFC 9207).
            "authorization_response_iss_parameter_supported": true,
        })
    }
}
