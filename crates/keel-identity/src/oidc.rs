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
use keel_domain::{AuthorizationCode, OidcClient, StoreError, UserId};
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

/// An authorization request as received (`GET /oauth/authorize` query).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrowserSession {
    pub user: UserId,
    pub auth_time: i64,
    pub expires_at: i64,
    /// The account's token generation when it signed in: raising it ends the session.
    pub generation: i64,
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
        Ok(Authorized {
            client,
            redirect_uri,
            scope: kept.join(" "),
            state: request.state.clone(),
            nonce: request.nonce.clone(),
            challenge,
        })
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
        let stored = self
            .store
            .take_code(&sha256_hex(code))
            .await?
            .ok_or_else(|| invalid("the code is not valid or was used"))?;
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
        let (family, refresh_token) = self.refresh_tokens().start(
            &stored.user_id.to_string(),
            &client.id,
            &stored.scope,
            now,
            self.settings.session_ttl_secs,
        );
        self.store.insert_family(&family).await?;
        let tokens = self.oidc_tokens(
            client,
            &user,
            &self.effective_roles(&credentials),
            Grant {
                scope: &stored.scope,
                nonce: stored.nonce.as_deref(),
                auth_time: Some(stored.auth_time),
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
        // The scope the sign-in granted, no more; no auth_time, which would have to repeat the
        // original sign-in's (Core §12.2) and the family does not keep it.
        self.oidc_tokens(
            client,
            &account,
            &self.effective_roles(&rotated.credentials),
            Grant {
                scope: &rotated.family.scope,
                nonce: None,
                auth_time: None,
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
        let access_token = self.access_token_with(user, roles, &["pwd"], extra, now)?;
        let mut id = serde_json::Map::new();
        if let Some(auth_time) = grant.auth_time {
            id.insert("auth_time".into(), json!(auth_time));
        }
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
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "email", "email_verified", "name"],
        })
    }

    // ---- the browser session at the IdP ----

    /// A browser session for `user` signing in now under token `generation`, and its cookie
    /// value: `<user>.<auth_time>.<expires_at>.<generation>.<mac>`.
    pub fn browser_session(
        &self,
        user: UserId,
        generation: i64,
        now: i64,
    ) -> (BrowserSession, String) {
        let expires_at = now + self.settings.session_ttl_secs.min(12 * 3600);
        let body = format!("{user}.{now}.{expires_at}.{generation}");
        let tag = mac(&self.session_key, &[body.as_bytes()])
            .finalize()
            .into_bytes();
        let session = BrowserSession {
            user,
            auth_time: now,
            expires_at,
            generation,
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
        (now < expires_at).then_some(BrowserSession {
            user,
            auth_time,
            expires_at,
            generation,
        })
    }

    /// The session a cookie value proves at `now`, if it is genuine, unexpired, and its
    /// account's sign-ins have not been ended since (sign out everywhere, a password change,
    /// the account disabled or erased).
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

    /// The caller of a browser session cookie at `now`: the account and its roles as stored
    /// now. `None` when the cookie is not genuine or current, or the account's sign-ins ended
    /// since the session began (it is gone or disabled, signed out everywhere, or changed
    /// its password).
    pub async fn session_caller(
        &self,
        cookie: &str,
        now: i64,
    ) -> Result<Option<keel_domain::Caller>, AuthError> {
        let Some(session) = self.check_browser_session(cookie, now) else {
            return Ok(None);
        };
        let Some(credentials) = self.store.credentials(session.user).await? else {
            return Ok(None);
        };
        let current = crate::revocation::Floor::of(Some(&credentials)).admits(session.generation);
        Ok(current.then(|| keel_domain::Caller {
            user: session.user,
            roles: self.effective_roles(&credentials),
        }))
    }

    /// A CSRF token for a form, bound to the browser's CSRF cookie value (double submit,
    /// signed so that a cookie planted by a sibling subdomain does not pass on its own).
    pub fn csrf_token(&self, cookie: &str) -> String {
        let tag = mac(&self.session_key, &[b"csrf", cookie.as_bytes()])
            .finalize()
            .into_bytes();
        URL_SAFE_NO_PAD.encode(tag)
    }

    pub fn check_csrf(&self, cookie: &str, token: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        mac(&self.session_key, &[b"csrf", cookie.as_bytes()])
            .verify_slice(&tag)
            .is_ok()
    }

    /// A fresh CSRF cookie value.
    pub fn new_csrf_cookie(&self) -> String {
        random_token()
    }
}
