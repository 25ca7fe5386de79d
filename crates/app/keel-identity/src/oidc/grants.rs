//! The OpenID Connect provider's back half: codes issued once and redeemed once, client
//! authentication, the token endpoint's grants, ID tokens and userinfo.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel_credentials::token::Claims;
use keel_domain::{AuthorizationCode, OidcClient, UserId};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::service::AuthError;

use super::*;

impl OidcProvider<'_> {
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
            .core
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
        self.core
            .store
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
        self.core
            .record(
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
        let client = self
            .core
            .store
            .client(client_id)
            .await?
            .ok_or_else(invalid)?;
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
        let Some(stored) = self.core.store.take_code(&sha256_hex(code)).await? else {
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
                keel_credentials::pkce::verify(verifier, challenge)
                    .map_err(|e| invalid(&e.to_string()))?;
            }
            (Some(_), None) => return Err(invalid("code_verifier is required")),
            (None, Some(_)) => return Err(invalid("no code_challenge was sent for this code")),
            (None, None) => {}
        }
        let credentials = self
            .core
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
            .core
            .users
            .get(stored.user_id)
            .await?
            .ok_or_else(|| invalid("the account is not available"))?;
        let (mut family, refresh_token) = self.core.refresh_tokens().start_as(
            self.code_family(code),
            &stored.user_id.to_string(),
            &client.id,
            &stored.scope,
            now,
            self.core.settings.session_ttl_secs,
        );
        family.amr.clone_from(&stored.amr);
        family.auth_time = stored.auth_time;
        self.core.store.insert_family(&family).await?;
        let tokens = self.oidc_tokens(
            client,
            &user,
            &self.core.accounts().effective_roles(&credentials),
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
        self.core
            .record(
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
    pub(super) async fn revoke_code_family(
        &self,
        code: &str,
        client: &OidcClient,
        now: i64,
    ) -> Result<(), OAuthError> {
        let id = self.code_family(code);
        let Some(family) = self.core.store.family(&id).await? else {
            return Ok(());
        };
        if family.revoked {
            return Ok(());
        }
        self.core.store.revoke_family(&id).await?;
        self.core
            .record(
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
            .core
            .sessions()
            .rotate_refresh(refresh_token, &client.id, peer, now)
            .await?;
        let account = self
            .core
            .users
            .get(rotated.credentials.user_id)
            .await?
            .ok_or_else(|| OAuthError::new("invalid_grant", "the account is not available"))?;
        // The scope the sign-in granted, no more; the sign-in's own auth_time and amr (Core
        // §12.2), unknown (0) only for families older than the columns that keep them.
        self.oidc_tokens(
            client,
            &account,
            &self.core.accounts().effective_roles(&rotated.credentials),
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

    pub(super) fn oidc_tokens(
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
        let access_token = self
            .core
            .access_token_with(user, roles, &grant.amr, extra, now)?;
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
        keel_credentials::random_bytes(&mut jti);
        let claims = Claims {
            iss: self.core.settings.issuer.clone(),
            sub: user.to_string(),
            aud: vec![client.id.clone()],
            exp: now + self.core.settings.access_ttl_secs,
            nbf: now,
            iat: now,
            jti: URL_SAFE_NO_PAD.encode(jti),
            extra: id,
        };
        let id_token = self.core.with_keys(|set| set.sign(&claims))?;
        Ok(OidcTokens {
            access_token,
            token_type: "Bearer",
            expires_in: self.core.settings.access_ttl_secs,
            refresh_token,
            id_token,
            scope: scope.to_owned(),
        })
    }

    /// The userinfo endpoint's claims for an access token.
    pub async fn userinfo(&self, access_token: &str, now: i64) -> Result<Value, AuthError> {
        let claims = self.core.tokens().verify_access(access_token, now).await?;
        let user: UserId = claims
            .sub
            .parse()
            .map_err(|_| AuthError::InvalidCredentials)?;
        // A token of an OpenID Connect grant lives as long as its refresh-token family: a
        // replayed code or a withdrawn consent revokes it.
        if let Some(family) = claims.extra.get(FAMILY_CLAIM).and_then(Value::as_str) {
            let live = self
                .core
                .store
                .family(family)
                .await?
                .is_some_and(|f| !f.revoked);
            if !live {
                return Err(AuthError::InvalidCredentials);
            }
        }
        let account = self
            .core
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
                .core
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
}
