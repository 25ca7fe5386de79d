//! Federation (issue 4 §5): signing in through an external OpenID Connect provider ("social
//! login"), configured by issuer URL, client id and secret.
//!
//! keel is the relying party of the code flow with PKCE (`S256`), `state` and `nonce`. What the
//! browser must bring back — the state, the nonce, the PKCE verifier, where to return, and the
//! account asking to link — travels in a cookie MAC'd with the IdP secret, so nothing is stored
//! between the two requests and any instance can take the callback. The HTTP calls (discovery,
//! token endpoint, JWKS) are the caller's (keel-api); this module decides.
//!
//! **Accounts:** an external identity (provider, `sub`) is linked to one account. A first
//! sign-in links to the account with the same address when the provider says the address is
//! verified (and the provider is trusted to, `link_by_verified_email`); makes an account when
//! none has the address and sign-up is open; and otherwise refuses, telling the person to sign
//! in and link explicitly (a signed-in browser starting the flow with `link`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;
use keel_domain::{
    FederatedLink, NewUser, SignupMode, StoreError, User, UserEmail, UserId, UserName,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::service::{AccountMail, AuthError, mac};
use crate::shared::Core;
use keel_credentials::token::{Expect, TokenError, Verifier};

/// How long a started sign-in may take at the provider.
pub const PENDING_TTL_SECS: i64 = 600;

/// An external OpenID Connect provider, as configured.
#[derive(Debug, Clone)]
pub struct Provider {
    /// `[a-z0-9-]`, 1 to 32 characters: the provider's name in keel's URLs and links.
    pub name: String,
    /// The provider's issuer URL (its discovery document is under it).
    pub issuer: String,
    pub client_id: String,
    /// `None`: keel is a public client there (PKCE alone).
    pub client_secret: Option<String>,
    /// Scopes asked for; `openid` is always among them.
    pub scopes: String,
    /// Link a first sign-in to the account with the same address when the provider says the
    /// address is verified. Only for providers trusted to verify addresses.
    pub link_by_verified_email: bool,
}

/// The provider's endpoints, from its discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
}

impl ProviderMetadata {
    /// Discovery's own rule (OpenID Connect Discovery §4.3): the document names the issuer it
    /// was fetched for, or it is not used.
    pub fn check(&self, provider: &Provider) -> Result<(), FederationError> {
        if self.issuer.trim_end_matches('/') != provider.issuer.trim_end_matches('/') {
            return Err(FederationError::Provider(format!(
                "the discovery document of {} names the issuer {}",
                provider.issuer, self.issuer
            )));
        }
        Ok(())
    }
}

/// What the browser carries from the start of a federated sign-in to its callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub provider: String,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    pub return_to: String,
    /// The signed-in account that asked to link this identity, if any.
    pub link_to: Option<UserId>,
    pub expires_at: i64,
}

/// The person, as the provider's ID token describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
}

/// Why a federated sign-in did not complete.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("no identity provider of that name is configured")]
    UnknownProvider,
    /// The callback does not belong to a sign-in this browser started, or it took too long.
    #[error("this sign-in expired or was not started here; start again")]
    Expired,
    /// The provider failed or answered something keel cannot use.
    #[error("the identity provider failed: {0}")]
    Provider(String),
    #[error("the identity provider's ID token is not valid: {0}")]
    IdToken(#[from] TokenError),
    /// No account may be signed in or made for this identity without the person linking it.
    #[error("{0}")]
    NoAccount(&'static str),
    #[error("this identity is linked to another account")]
    LinkedElsewhere,
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl From<StoreError> for FederationError {
    fn from(e: StoreError) -> Self {
        Self::Auth(e.into())
    }
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    keel_credentials::random_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Signing in through external OpenID Connect providers.
#[derive(Clone, Copy)]
pub struct Federation<'a> {
    core: &'a Core,
}

impl Core {
    pub(crate) fn federation(&self) -> Federation<'_> {
        Federation { core: self }
    }
}

impl Federation<'_> {
    /// Starts a federated sign-in: the provider's authorization URL to send the browser to,
    /// and the cookie value the browser keeps until the callback.
    pub fn federation_start(
        &self,
        provider: &Provider,
        metadata: &ProviderMetadata,
        redirect_uri: &str,
        return_to: &str,
        link_to: Option<UserId>,
        now: i64,
    ) -> (String, String) {
        let pending = Pending {
            provider: provider.name.clone(),
            state: random_b64(24),
            nonce: random_b64(24),
            verifier: random_b64(48),
            return_to: return_to.to_owned(),
            link_to,
            expires_at: now + PENDING_TTL_SECS,
        };
        let mut scopes: Vec<&str> = provider.scopes.split_whitespace().collect();
        if !scopes.contains(&"openid") {
            scopes.insert(0, "openid");
        }
        let enc = keel_credentials::percent_encode;
        let sep = if metadata.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!(
            "{endpoint}{sep}response_type=code&client_id={client}&redirect_uri={redirect}\
             &scope={scope}&state={state}&nonce={nonce}&code_challenge={challenge}\
             &code_challenge_method=S256",
            endpoint = metadata.authorization_endpoint,
            client = enc(&provider.client_id),
            redirect = enc(redirect_uri),
            scope = enc(&scopes.join(" ")),
            state = enc(&pending.state),
            nonce = enc(&pending.nonce),
            challenge = keel_credentials::pkce::challenge_of(&pending.verifier),
        );
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&pending).expect("serializes"));
        let tag = mac(&self.core.session_key, &[b"federation", body.as_bytes()])
            .finalize()
            .into_bytes();
        (url, format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag)))
    }

    /// The sign-in a callback completes: the cookie must be genuine and current, and the
    /// `state` the provider sent back the one it holds.
    pub fn federation_pending(
        &self,
        cookie: &str,
        state: &str,
        now: i64,
    ) -> Result<Pending, FederationError> {
        let (body, tag) = cookie.rsplit_once('.').ok_or(FederationError::Expired)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| FederationError::Expired)?;
        mac(&self.core.session_key, &[b"federation", body.as_bytes()])
            .verify_slice(&tag)
            .map_err(|_| FederationError::Expired)?;
        let pending: Pending = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(FederationError::Expired)?;
        let same_state: bool = pending.state.as_bytes().ct_eq(state.as_bytes()).into();
        if !same_state || now >= pending.expires_at {
            return Err(FederationError::Expired);
        }
        Ok(pending)
    }

    /// Checks the provider's ID token against its JWKS: signature, issuer, audience (keel's
    /// client id), times and the nonce of this sign-in.
    pub fn check_id_token(
        &self,
        provider: &Provider,
        jwks: &Value,
        id_token: &str,
        nonce: &str,
        now: i64,
    ) -> Result<ExternalIdentity, FederationError> {
        let verifier = Verifier::from_jwks(jwks)?;
        let expect = Expect {
            issuer: provider.issuer.clone(),
            audience: provider.client_id.clone(),
            leeway_secs: 60,
        };
        let claims = verifier.verify(id_token, &expect, now)?;
        let sent = claims.extra.get("nonce").and_then(Value::as_str);
        let same_nonce = sent.is_some_and(|n| bool::from(n.as_bytes().ct_eq(nonce.as_bytes())));
        if !same_nonce {
            return Err(FederationError::Provider(
                "the ID token is not for this sign-in (nonce)".into(),
            ));
        }
        if claims.sub.is_empty() || claims.sub.len() > 255 {
            return Err(FederationError::Provider(
                "the ID token has no usable sub".into(),
            ));
        }
        let text = |name: &str| {
            claims
                .extra
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Ok(ExternalIdentity {
            subject: claims.sub.clone(),
            email: text("email"),
            email_verified: claims.extra.get("email_verified") == Some(&Value::Bool(true)),
            name: text("name"),
        })
    }

    /// The account an external identity signs in: linked already, linked now (explicitly, or
    /// by verified address), or made now (sign-up open). The sign-in is audited.
    pub async fn federated_account(
        &self,
        provider: &Provider,
        external: &ExternalIdentity,
        link_to: Option<UserId>,
        client: &str,
        now: i64,
    ) -> Result<User, FederationError> {
        let detail = json!({ "provider": provider.name, "external_subject": external.subject });
        let linked = self
            .core
            .store
            .linked_account(&provider.name, &external.subject)
            .await?;
        let (user, action) = match (linked, link_to) {
            (Some(linked), Some(asking)) if linked != asking => {
                return Err(FederationError::LinkedElsewhere);
            }
            (Some(linked), _) => (linked, "login_succeeded"),
            (None, Some(asking)) => {
                self.link_external(provider, external, asking, now).await?;
                (asking, "identity_linked")
            }
            (None, None) => {
                self.first_federated_sign_in(provider, external, now)
                    .await?
            }
        };
        let Some(account) = self.core.users.get(user).await? else {
            return Err(FederationError::NoAccount(
                "the linked account no longer exists",
            ));
        };
        let mut credentials = self.core.credentials_of(user).await?;
        if credentials.disabled_at.is_some() {
            self.core
                .record(
                    now,
                    "anonymous",
                    "login_failed",
                    Some(&user.to_string()),
                    Some(client),
                    json!({ "reason": "account_disabled", "provider": provider.name }),
                )
                .await?;
            return Err(FederationError::Auth(AuthError::InvalidCredentials));
        }
        credentials.last_login_at = Some(now);
        credentials.version += 1;
        self.core.store.put_credentials(&credentials).await?;
        let subject = user.to_string();
        let mut detail = detail;
        detail["amr"] = json!(["fed"]);
        self.core
            .record_own(now, &subject, action, Some(client), detail)
            .await?;
        Ok(account)
    }

    async fn link_external(
        &self,
        provider: &Provider,
        external: &ExternalIdentity,
        user: UserId,
        now: i64,
    ) -> Result<(), FederationError> {
        let fresh = self
            .core
            .store
            .link_identity(&FederatedLink {
                provider: provider.name.clone(),
                subject: external.subject.clone(),
                user_id: user,
                linked_at: now,
            })
            .await?;
        if fresh {
            Ok(())
        } else {
            Err(FederationError::LinkedElsewhere)
        }
    }

    /// A first sign-in of an identity nobody linked: by verified address, or a new account.
    async fn first_federated_sign_in(
        &self,
        provider: &Provider,
        external: &ExternalIdentity,
        now: i64,
    ) -> Result<(UserId, &'static str), FederationError> {
        let Some(email) = external
            .email
            .as_deref()
            .and_then(|e| UserEmail::parse(e).ok())
        else {
            return Err(FederationError::NoAccount(
                "the identity provider gave no email address: sign in to keel and link this identity from there",
            ));
        };
        if let Some(existing) = self.core.users.get_by_email(&email).await? {
            if !(provider.link_by_verified_email && external.email_verified) {
                return Err(FederationError::NoAccount(
                    "an account with this address exists: sign in to it, then link this identity",
                ));
            }
            self.link_external(provider, external, existing.id, now)
                .await?;
            return Ok((existing.id, "identity_linked"));
        }
        if self.core.settings.signup != SignupMode::Open {
            return Err(FederationError::NoAccount(
                "there is no account for this address, and sign-up is not open",
            ));
        }
        let name = external
            .name
            .as_deref()
            .and_then(|n| UserName::parse(n).ok())
            .unwrap_or_else(|| {
                let local = email.as_str().split('@').next().unwrap_or("user");
                UserName::parse(local).unwrap_or_else(|_| UserName::parse("user").expect("valid"))
            });
        let actor = format!("federation:{}", provider.name);
        // The account and its link commit together: a crash cannot leave an account made for
        // this identity that the identity does not sign in to.
        let made = self
            .core
            .accounts()
            .insert_account(
                NewUser { name, email },
                "account_created",
                &actor,
                now,
                |c| {
                    c.email_verified_at = external.email_verified.then_some(now);
                },
                if external.email_verified {
                    AccountMail::None
                } else {
                    AccountMail::Verification
                },
                |user_id| {
                    Some(FederatedLink {
                        provider: provider.name.clone(),
                        subject: external.subject.clone(),
                        user_id,
                        linked_at: now,
                    })
                },
            )
            .await;
        let user = match made {
            Ok((user, _)) => user,
            // Made by another sign-in a moment ago (the address, or this identity's link, is
            // taken): the next attempt signs in, links or refuses.
            Err(AuthError::EmailTaken | AuthError::Store(StoreError::Conflict { .. })) => {
                return Err(FederationError::Expired);
            }
            Err(e) => return Err(e.into()),
        };
        Ok((user.id, "login_succeeded"))
    }
}
