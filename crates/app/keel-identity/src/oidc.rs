//! The OpenID Connect provider's logic (OpenID Connect Core 1.0, authorization code flow with
//! PKCE; Discovery 1.0): registered clients, authorization requests checked before anyone signs
//! in, codes issued once and redeemed once, the token endpoint's grants and client
//! authentication, ID tokens, userinfo, and the browser session a signed-in person keeps at the
//! IdP (a cookie value signed here, so sign-in is asked once per browser, not per client).
//!
//! Errors carry the OAuth 2.0 error codes (RFC 6749 §4.1.2.1 and §5.2) the HTTP layer sends.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;
use keel_domain::{AuthorizationCode, Consent, OidcClient, StoreError, UserId};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::service::{AuthError, Idp, mac};
use crate::token::Claims;

/// How long an authorization code lives (RFC 6749 recommends at most 10 minutes).
pub const CODE_TTL_SECS: i64 = 60;

/// An OAuth error: its code, and a description for developers (never a secret).
#[derive(Debug, thiserror::Error)]
#[error("{code}: {description}")]
pub struct OAuthError {
    pub code: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(code: &'static str, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "identity store failed");
        Self::new("server_error", "the identity store failed")
    }
}

impl From<AuthError> for OAuthError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidRefresh(_) | AuthError::InvalidCredentials => {
                Self::new("invalid_grant", "the grant is not valid")
            }
            AuthError::NotReady => Self::new("temporarily_unavailable", "starting"),
            other => {
                tracing::warn!(error = %other, "token endpoint failed");
                Self::new("server_error", "the request failed")
            }
        }
    }
}

/// An authorization request as received (`GET /oauth/authorize` query or `POST` form, Core
/// §3.1.2.1).
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize)]
pub struct AuthorizeRequest {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub prompt: Option<String>,
    /// Seconds: a sign-in older than this must be made again (Core §3.1.2.1).
    pub max_age: Option<String>,
    /// A request object (JAR), not supported: refused with `request_not_supported`.
    pub request: Option<String>,
    /// A request object by reference, not supported: refused with `request_uri_not_supported`.
    pub request_uri: Option<String>,
}

/// The `prompt` values of a request (Core §3.1.2.1); `select_account` asks for a sign-in as
/// `login` does (a browser holds one account's session here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Prompt {
    /// No page may be shown: a code, or an error, at once.
    pub none: bool,
    /// Sign in again, whatever session the browser has.
    pub login: bool,
    /// Ask for consent again, whatever was allowed before.
    pub consent: bool,
}

/// What an authorization request needs from the person now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Sign in (no current session, `prompt=login`, or a session older than `max_age`); the
    /// sign-in page asks for consent with it.
    SignIn,
    /// Signed in; the client's consent to these scopes is missing or `prompt=consent` asks again.
    Consent(BrowserSession),
    /// Nothing: a code goes back at once.
    Code(BrowserSession),
}

/// Why an authorization request is refused. `Display` errors (no client, or a redirect URI
/// not registered) are shown to the person and never redirected (an open redirector
/// otherwise); the others go back to the client's redirect URI.
#[derive(Debug)]
pub enum AuthorizeError {
    Display(String),
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: OAuthError,
    },
}

/// An authorization request that passed every check.
#[derive(Debug, Clone, Serialize)]
pub struct Authorized {
    pub client: OidcClient,
    pub redirect_uri: String,
    pub scope: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub challenge: Option<String>,
    pub prompt: Prompt,
    /// Seconds, from `max_age`.
    pub max_age: Option<i64>,
}

/// What the token endpoint answers.
#[derive(Debug, Clone, Serialize)]
pub struct OidcTokens {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub refresh_token: String,
    pub id_token: String,
    pub scope: String,
}

/// What a grant gives the tokens: the scope granted, and for a code the request's `nonce` and
/// the sign-in's time.
struct Grant<'a> {
    scope: &'a str,
    nonce: Option<&'a str>,
    auth_time: Option<i64>,
    /// How the person signed in (RFC 8176), for both tokens' `amr`.
    amr: Vec<&'a str>,
    /// The refresh-token family the tokens belong to: the access token names it, so userinfo
    /// refuses it once the family is revoked (a replayed code, a withdrawn consent).
    family: &'a str,
    /// Whether the account's address is verified (the `email_verified` claim).
    email_verified: bool,
    /// The account's token generation, carried by the access token.
    generation: i64,
}

/// A client registration's result: the secret is shown once and stored only as a hash.
#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

/// A person signed in at the IdP in a browser: the session cookie's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserSession {
    pub user: UserId,
    pub auth_time: i64,
    pub expires_at: i64,
    /// The account's token generation when it signed in: raising it ends the session.
    pub generation: i64,
    /// How the person signed in (RFC 8176 values: `pwd`, `otp`, `fed`).
    pub amr: Vec<String>,
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    crate::random_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

const SUPPORTED_SCOPES: [&str; 3] = ["openid", "email", "profile"];

/// The access-token claim naming the refresh-token family of an OpenID Connect grant.
const FAMILY_CLAIM: &str = "family";

/// Whether every scope of `wanted` is among `allowed` (both space-separated).
fn covers(allowed: &str, wanted: &str) -> bool {
    wanted
        .split_whitespace()
        .all(|w| allowed.split_whitespace().any(|a| a == w))
}

/// `prompt`'s values: unknown ones are ignored (Core lists four); `none` with any other is an
/// error.
fn parse_prompt(prompt: Option<&str>) -> Result<Prompt, &'static str> {
    let mut parsed = Prompt::default();
    let mut others = false;
    for value in prompt.unwrap_or_default().split_whitespace() {
        match value {
            "none" => parsed.none = true,
            "login" | "select_account" => parsed.login = true,
            "consent" => parsed.consent = true,
            _ => continue,
        }
        others |= value != "none";
    }
    if parsed.none && others {
        return Err("prompt=none cannot be combined with other prompt values");
    }
    Ok(parsed)
}

impl Idp {
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
        self.store.put_client(&client).await?;
        self.record(
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
        Ok(self.store.client(id).await?)
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
                crate::pkce::check_challenge(challenge, method.as_deref().unwrap_or("plain"))
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
    /// by [`Self::current_session`]).
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
        let before = self.store.consent(user, &request.client.id).await?;
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
        self.store
            .put_consent(&Consent {
                user_id: user,
                client_id: request.client.id.clone(),
                scope: scope.clone(),
                granted_at: now,
            })
            .await?;
        self.record_own(
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
        Ok(self.store.consents_of(user).await?)
    }

    /// Withdraws the person's consent to a client: the next request asks again, and the
    /// client's refresh tokens for the person stop working. False when there was none.
    pub async fn withdraw_consent(
        &self,
        user: UserId,
        client_id: &str,
        now: i64,
    ) -> Result<bool, AuthError> {
        let withdrawn = self.store.withdraw_consent(user, client_id).await?;
        if withdrawn {
            self.record_own(
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
    fn code_family(&self, code: &str) -> String {
        let tag = mac(&self.session_key, &[b"code-family", code.as_bytes()])
            .finalize()
            .into_bytes();
        URL_SAFE_NO_PAD.encode(&tag[..16])
    }

    /// Issues a code for `user` to the checked request; returns the code.
    pub async fn issue_code(
        &self,
        request: &Authorized,
        session: &BrowserSession,
        now: i64,
    ) -> Result<String, AuthError> {
        // The handlers check the session first; this keeps a revoked one from ever getting a
        // code, whichever handler forgot to.
        if !self
            .floor(session.user, now)
            .await?
            .admits(session.generation)
        {
            return Err(AuthError::InvalidCredentials);
        }
        // The code names the generation it was issued under (it is stored only as a hash, so
        // the suffix cannot be changed): a revocation between the code and its exchange
        // refuses the exchange.
        let code = format!("{}.{}", random_token(), session.generation);
        self.store
            .insert_code(&AuthorizationCode {
                code_hash: sha256_hex(&code),
                client_id: request.client.id.clone(),
                user_id: session.user,
                redirect_uri: request.redirect_uri.clone(),
                scope: request.scope.clone(),
                nonce: request.nonce.clone(),
                challenge: request.challenge.clone(),
                auth_time: session.auth_time,
                amr: session.amr.clone(),
                expires_at: now + CODE_TTL_SECS,
            })
            .await?;
        self.record(
            now,
            &session.user.to_string(),
            "authorization_code_issued",
            Some(&session.user.to_string()),
            None,
            json!({ "client_id": request.client.id, "scope": request.scope }),
        )
        .await?;
        Ok(code)
    }

    /// Authenticates a client at the token endpoint: a confidential client by its secret
    /// (compared as hashes, in constant time), a public client by id alone (PKCE then proves
    /// the rest).
    pub async fn authenticate_client(
        &self,
        client_id: &str,
        secret: Option<&str>,
    ) -> Result<OidcClient, OAuthError> {
        let invalid = || OAuthError::new("invalid_client", "client authentication failed");
        let client = self.store.client(client_id).await?.ok_or_else(invalid)?;
        match (&client.secret_hash, secret) {
            (Some(stored), Some(given)) => {
                let given = sha256_hex(given);
                if bool::from(stored.as_bytes().ct_eq(given.as_bytes())) {
                    Ok(client)
                } else {
                    Err(invalid())
                }
            }
            (None, None) => Ok(client),
            _ => Err(invalid()),
        }
    }

    /// The `authorization_code` grant.
    pub async fn exchange_code(
        &self,
        client: &OidcClient,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
        now: i64,
    ) -> Result<OidcTokens, OAuthError> {
        let invalid = |why: &str| OAuthError::new("invalid_grant", why);
        let Some(stored) = self.store.take_code(&sha256_hex(code)).await? else {
            self.revoke_code_family(code, client, now).await?;
            return Err(invalid("the code is not valid or was used"));
        };
        if stored.client_id != client.id {
            return Err(invalid("the code was issued to another client"));
        }
        if now >= stored.expires_at {
            return Err(invalid("the code has expired"));
        }
        if redirect_uri != Some(stored.redirect_uri.as_str()) {
            return Err(invalid(
                "redirect_uri differs from the authorization request's",
            ));
        }
        match (&stored.challenge, verifier) {
            (Some(challenge), Some(verifier)) => {
                crate::pkce::verify(verifier, challenge).map_err(|e| invalid(&e.to_string()))?
            }
            (Some(_), None) => return Err(invalid("code_verifier is required")),
            (None, Some(_)) => return Err(invalid("no code_challenge was sent for this code")),
            (None, None) => {}
        }
        let credentials = self
            .store
            .credentials(stored.user_id)
            .await?
            .filter(|c| c.disabled_at.is_none())
            .ok_or_else(|| invalid("the account is not available"))?;
        let issued_under = code
            .rsplit_once('.')
            .and_then(|(_, generation)| generation.parse::<i64>().ok())
            .unwrap_or(0);
        if issued_under < credentials.token_generation {
            return Err(invalid(
                "the account's sign-ins ended after the code was issued",
            ));
        }
        let user = self
            .users
            .get(stored.user_id)
            .await?
            .ok_or_else(|| invalid("the account is not available"))?;
        let (mut family, refresh_token) = self.refresh_tokens().start_as(
            self.code_family(code),
            &stored.user_id.to_string(),
            &client.id,
            &stored.scope,
            now,
            self.settings.session_ttl_secs,
        );
        family.amr.clone_from(&stored.amr);
        family.auth_time = stored.auth_time;
        self.store.insert_family(&family).await?;
        let tokens = self.oidc_tokens(
            client,
            &user,
            &self.effective_roles(&credentials),
            Grant {
                scope: &stored.scope,
                nonce: stored.nonce.as_deref(),
                auth_time: Some(stored.auth_time),
                amr: crate::service::family_amr(&family),
                family: &family.id,
                email_verified: credentials.email_verified_at.is_some(),
                generation: credentials.token_generation,
            },
            refresh_token,
            now,
        )?;
        self.record(
            now,
            &stored.user_id.to_string(),
            "oidc_tokens_issued",
            Some(&stored.user_id.to_string()),
            None,
            json!({ "client_id": client.id, "grant": "authorization_code" }),
        )
        .await?;
        Ok(tokens)
    }

    /// A code presented again (or never issued): the tokens its first use gave stop working
    /// (RFC 6749 §4.1.2). Their refresh-token family is revoked; access tokens naming it are
    /// refused by userinfo from now on. A made-up code names no family and changes nothing.
    async fn revoke_code_family(
        &self,
        code: &str,
        client: &OidcClient,
        now: i64,
    ) -> Result<(), OAuthError> {
        let id = self.code_family(code);
        let Some(family) = self.store.family(&id).await? else {
            return Ok(());
        };
        if family.revoked {
            return Ok(());
        }
        self.store.revoke_family(&id).await?;
        self.record(
            now,
            "anonymous",
            "authorization_code_reused",
            Some(&family.subject),
            None,
            json!({ "client_id": client.id, "family": id }),
        )
        .await?;
        Ok(())
    }

    /// The `refresh_token` grant for an OpenID Connect client (rotation and reuse detection as
    /// for first-party sign-ins).
    pub async fn refresh_oidc(
        &self,
        client: &OidcClient,
        refresh_token: &str,
        peer: &str,
        now: i64,
    ) -> Result<OidcTokens, OAuthError> {
        let rotated = self
            .rotate_refresh(refresh_token, &client.id, peer, now)
            .await?;
        let account = self
            .users
            .get(rotated.credentials.user_id)
            .await?
            .ok_or_else(|| OAuthError::new("invalid_grant", "the account is not available"))?;
        // The scope the sign-in granted, no more; the sign-in's own auth_time and amr (Core
        // §12.2), unknown (0) only for families older than the columns that keep them.
        self.oidc_tokens(
            client,
            &account,
            &self.effective_roles(&rotated.credentials),
            Grant {
                scope: &rotated.family.scope,
                nonce: None,
                auth_time: (rotated.family.auth_time > 0).then_some(rotated.family.auth_time),
                amr: crate::service::family_amr(&rotated.family),
                family: &rotated.family.id,
                email_verified: rotated.credentials.email_verified_at.is_some(),
                generation: rotated.credentials.token_generation,
            },
            rotated.token,
            now,
        )
    }

    fn oidc_tokens(
        &self,
        client: &OidcClient,
        account: &keel_domain::User,
        roles: &[String],
        grant: Grant<'_>,
        refresh_token: String,
        now: i64,
    ) -> Result<OidcTokens, OAuthError> {
        let (user, scope) = (account.id, grant.scope);
        let mut extra = serde_json::Map::new();
        extra.insert("client_id".into(), json!(client.id));
        extra.insert("scope".into(), json!(scope));
        extra.insert(
            crate::service::GENERATION_CLAIM.into(),
            json!(grant.generation),
        );
        extra.insert(FAMILY_CLAIM.into(), json!(grant.family));
        let access_token = self.access_token_with(user, roles, &grant.amr, extra, now)?;
        let mut id = serde_json::Map::new();
        if let Some(auth_time) = grant.auth_time {
            id.insert("auth_time".into(), json!(auth_time));
        }
        id.insert("amr".into(), json!(grant.amr));
        if let Some(nonce) = grant.nonce {
            id.insert("nonce".into(), json!(nonce));
        }
        // No at_hash: optional in the code flow (Core §3.1.3.6), and which hash EdDSA ties it
        // to is read differently by relying parties.
        let scopes: Vec<&str> = scope.split_whitespace().collect();
        if scopes.contains(&"email") {
            id.insert("email".into(), json!(account.email.as_str()));
            id.insert("email_verified".into(), json!(grant.email_verified));
        }
        if scopes.contains(&"profile") {
            id.insert("name".into(), json!(account.name.as_str()));
        }
        let mut jti = [0u8; 16];
        crate::random_bytes(&mut jti);
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            sub: user.to_string(),
            aud: vec![client.id.clone()],
            exp: now + self.settings.access_ttl_secs,
            nbf: now,
            iat: now,
            jti: URL_SAFE_NO_PAD.encode(jti),
            extra: id,
        };
        let id_token = self.with_keys(|set| set.sign(&claims))?;
        Ok(OidcTokens {
            access_token,
            token_type: "Bearer",
            expires_in: self.settings.access_ttl_secs,
            refresh_token,
            id_token,
            scope: scope.to_owned(),
        })
    }

    /// The userinfo endpoint's claims for an access token.
    pub async fn userinfo(&self, access_token: &str, now: i64) -> Result<Value, AuthError> {
        let claims = self.verify_access(access_token, now).await?;
        let user: UserId = claims
            .sub
            .parse()
            .map_err(|_| AuthError::InvalidCredentials)?;
        // A token of an OpenID Connect grant lives as long as its refresh-token family: a
        // replayed code or a withdrawn consent revokes it.
        if let Some(family) = claims.extra.get(FAMILY_CLAIM).and_then(Value::as_str) {
            let live = self.store.family(family).await?.is_some_and(|f| !f.revoked);
            if !live {
                return Err(AuthError::InvalidCredentials);
            }
        }
        let account = self
            .users
            .get(user)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        let scope = claims
            .extra
            .get("scope")
            .and_then(Value::as_str)
            .unwrap_or("openid email profile");
        let mut info = json!({ "sub": claims.sub });
        if scope.split_whitespace().any(|s| s == "email") {
            let verified = self
                .store
                .credentials(user)
                .await?
                .is_some_and(|c| c.email_verified_at.is_some());
            info["email"] = json!(account.email.as_str());
            info["email_verified"] = json!(verified);
        }
        if scope.split_whitespace().any(|s| s == "profile") {
            info["name"] = json!(account.name.as_str());
        }
        Ok(info)
    }

    /// The discovery document (`/.well-known/openid-configuration`).
    pub fn discovery(&self) -> Value {
        let base = self.settings.issuer.trim_end_matches('/');
        json!({
            "issuer": self.settings.issuer,
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

    // ---- the browser session at the IdP ----

    /// A browser session for `user` signing in now under token `generation` as `amr` says, and
    /// its cookie value: `<user>.<auth_time>.<expires_at>.<generation>.<amr, joined by '+'>.<mac>`.
    pub fn browser_session(
        &self,
        user: UserId,
        generation: i64,
        amr: &[&str],
        now: i64,
    ) -> (BrowserSession, String) {
        let expires_at = now + self.settings.session_ttl_secs.min(12 * 3600);
        let body = format!("{user}.{now}.{expires_at}.{generation}.{}", amr.join("+"));
        let tag = mac(&self.session_key, &[body.as_bytes()])
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
        mac(&self.session_key, &[body.as_bytes()])
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
        let Some(credentials) = self.store.credentials(session.user).await? else {
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
                roles: self.effective_roles(&credentials),
            }))
    }

    /// The key of the browser forms' CSRF tokens (keel-http's signed double submit), derived
    /// from the IdP secret, so that every process of one deployment makes and accepts the same
    /// tokens.
    pub fn csrf_key(&self) -> [u8; 32] {
        mac(&self.session_key, &[b"csrf-key"])
            .finalize()
            .into_bytes()
            .into()
    }
}
