//! Signing in through an external OpenID Connect provider (issue 4 §5), the browser side:
//!
//! - `GET /federation/{provider}/start?return_to=…[&link=1]`: to the provider's sign-in, with a
//!   cookie holding this sign-in's state, nonce and PKCE verifier (`link=1`, from a browser
//!   signed in to keel, links the external identity to that account);
//! - `GET /federation/{provider}/callback?code&state`: the code exchanged at the provider's
//!   token endpoint, its ID token checked, the account found, linked or made
//!   (`keel_identity::federation`), the browser session started, and back to `return_to`.
//!
//! The provider's discovery document and keys are fetched when first needed and kept an hour;
//! a token signed by a key not in them refetches the keys once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use keel_identity::federation::{FederationError, Provider, ProviderMetadata};
use keel_identity::service::Idp;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{ClientAddr, idp, now};
use crate::extract::{Path, Query};
use crate::oidc::{SESSION_COOKIE, cookie, escape, no_store, page, set_cookie};
use crate::{ApiError, AppState};

const FEDERATION_COOKIE: &str = "keel_federation";
/// How long a provider's discovery document and keys are used before being fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/federation/{provider}/start", get(start))
        .route("/federation/{provider}/callback", get(callback))
}

/// What keel knows of the providers it talks to, and the HTTP client it talks with.
pub struct Federation {
    http: reqwest::Client,
    known: Mutex<HashMap<String, Known>>,
}

#[derive(Clone)]
struct Known {
    metadata: ProviderMetadata,
    jwks: Value,
    fetched: Instant,
}

impl Default for Federation {
    fn default() -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                // A provider's answers are read, never followed elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client with defaults builds"),
            known: Mutex::new(HashMap::new()),
        }
    }
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation").finish_non_exhaustive()
    }
}

fn provider_failed(e: impl std::fmt::Display) -> FederationError {
    FederationError::Provider(e.to_string())
}

impl Federation {
    async fn get_json(&self, url: &str) -> Result<Value, FederationError> {
        let res = self.http.get(url).send().await.map_err(provider_failed)?;
        if !res.status().is_success() {
            return Err(provider_failed(format!(
                "GET {url} answered {}",
                res.status()
            )));
        }
        res.json().await.map_err(provider_failed)
    }

    /// The provider's metadata and keys, fetched if not known or older than an hour (or when
    /// `refresh`: a token named a key not among them).
    async fn known(&self, provider: &Provider, refresh: bool) -> Result<Known, FederationError> {
        let cached = self
            .known
            .lock()
            .expect("federation cache lock")
            .get(&provider.name)
            .cloned();
        if let Some(known) = cached
            && !refresh
            && known.fetched.elapsed() < METADATA_TTL
        {
            return Ok(known);
        }
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            provider.issuer.trim_end_matches('/')
        );
        let metadata: ProviderMetadata =
            serde_json::from_value(self.get_json(&discovery).await?)
                .map_err(|e| provider_failed(format!("discovery document: {e}")))?;
        metadata.check(provider)?;
        let jwks = self.get_json(&metadata.jwks_uri).await?;
        let known = Known {
            metadata,
            jwks,
            fetched: Instant::now(),
        };
        self.known
            .lock()
            .expect("federation cache lock")
            .insert(provider.name.clone(), known.clone());
        Ok(known)
    }

    /// The provider's tokens for `code` (the ID token is what keel reads).
    async fn exchange(
        &self,
        provider: &Provider,
        metadata: &ProviderMetadata,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<String, FederationError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let mut request = self.http.post(&metadata.token_endpoint);
        match &provider.client_secret {
            // client_secret_basic, the method every provider supports.
            Some(secret) => {
                request = request.basic_auth(
                    keel_credentials::percent_encode(&provider.client_id),
                    Some(keel_credentials::percent_encode(secret)),
                );
            }
            None => form.push(("client_id", &provider.client_id)),
        }
        let res = request.form(&form).send().await.map_err(provider_failed)?;
        let status = res.status();
        let body: Value = res.json().await.map_err(provider_failed)?;
        if !status.is_success() {
            return Err(provider_failed(format!(
                "the token endpoint answered {status}: {}",
                body.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no error code")
            )));
        }
        body.get("id_token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| provider_failed("the token endpoint sent no id_token"))
    }
}

fn provider<'a>(idp: &'a Idp, name: &str) -> Result<&'a Provider, FederationError> {
    idp.settings()
        .providers
        .iter()
        .find(|p| p.name == name)
        .ok_or(FederationError::UnknownProvider)
}

fn redirect_uri(idp: &Idp, provider: &Provider) -> String {
    format!(
        "{}/federation/{}/callback",
        idp.settings().issuer.trim_end_matches('/'),
        provider.name
    )
}

/// A federated sign-in that did not complete: a page saying why, with a way back.
fn refused(e: &FederationError) -> Response {
    let status = match e {
        FederationError::UnknownProvider => StatusCode::NOT_FOUND,
        FederationError::Expired | FederationError::IdToken(_) => StatusCode::BAD_REQUEST,
        FederationError::NoAccount(_) | FederationError::LinkedElsewhere => StatusCode::FORBIDDEN,
        FederationError::Provider(_) => StatusCode::BAD_GATEWAY,
        FederationError::Auth(_) => StatusCode::UNAUTHORIZED,
    };
    if matches!(
        e,
        FederationError::Provider(_) | FederationError::IdToken(_)
    ) {
        tracing::warn!(error = %e, "federated sign-in failed at the provider");
    }
    let mut res = (
        status,
        page(
            "Sign-in not completed",
            &format!(
                "<h1>Sign-in not completed</h1><p class=\"error\" role=\"alert\">{}</p>\
                 <p><a href=\"/signin\">Back to sign-in</a></p>",
                escape(&e.to_string())
            ),
        ),
    )
        .into_response();
    no_store(&mut res);
    res
}

#[derive(Debug, Deserialize)]
struct StartParams {
    return_to: Option<String>,
    link: Option<String>,
}

async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(params): Query<StartParams>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    let provider = match provider(idp, &name) {
        Ok(provider) => provider,
        Err(e) => return Ok(refused(&e)),
    };
    let link_to = if params.link.as_deref() == Some("1") {
        let session = match cookie(&headers, SESSION_COOKIE) {
            Some(value) => idp.browser().session_caller(value, now()).await?,
            None => None,
        };
        match session {
            Some(caller) => Some(caller.user),
            None => {
                return Ok(refused(&FederationError::NoAccount(
                    "sign in to keel first to link an identity to your account",
                )));
            }
        }
    } else {
        None
    };
    let known = match state.federation.known(provider, false).await {
        Ok(known) => known,
        Err(e) => return Ok(refused(&e)),
    };
    let return_to = crate::pages::local_path(params.return_to.as_deref());
    let (url, value) = idp.federation().federation_start(
        provider,
        &known.metadata,
        &redirect_uri(idp, provider),
        return_to,
        link_to,
        now(),
    );
    let mut res = Redirect::to(&url).into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            idp,
            FEDERATION_COOKIE,
            &value,
            keel_identity::federation::PENDING_TTL_SECS,
            "Lax",
        ),
    );
    no_store(&mut res);
    Ok(res)
}

#[derive(Debug, Deserialize)]
struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Query(params): Query<CallbackParams>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    let now = now();
    let outcome = async {
        let provider = provider(idp, &name)?;
        let pending = idp.federation().federation_pending(
            cookie(&headers, FEDERATION_COOKIE).unwrap_or_default(),
            params.state.as_deref().unwrap_or_default(),
            now,
        )?;
        if pending.provider != provider.name {
            return Err(FederationError::Expired);
        }
        if let Some(error) = &params.error {
            return Err(FederationError::Provider(format!(
                "{error}: {}",
                params
                    .error_description
                    .as_deref()
                    .unwrap_or("no description")
            )));
        }
        let code = params
            .code
            .as_deref()
            .ok_or_else(|| provider_failed("the provider sent no code"))?;
        let known = state.federation.known(provider, false).await?;
        let id_token = state
            .federation
            .exchange(
                provider,
                &known.metadata,
                code,
                &redirect_uri(idp, provider),
                &pending.verifier,
            )
            .await?;
        let external = match idp.federation().check_id_token(
            provider,
            &known.jwks,
            &id_token,
            &pending.nonce,
            now,
        ) {
            Err(FederationError::IdToken(keel_credentials::token::TokenError::UnknownKey)) => {
                // The provider rotated its keys since they were fetched.
                let fresh = state.federation.known(provider, true).await?;
                idp.federation().check_id_token(
                    provider,
                    &fresh.jwks,
                    &id_token,
                    &pending.nonce,
                    now,
                )?
            }
            other => other?,
        };
        let user = idp
            .federation()
            .federated_account(provider, &external, pending.link_to, &client, now)
            .await?;
        Ok((user, pending.return_to))
    }
    .await;
    let mut res = match outcome {
        Ok((user, return_to)) => {
            let generation = idp.tokens().token_generation(user.id).await?;
            let (session, value) =
                idp.browser()
                    .browser_session(user.id, generation, &["fed"], now);
            let mut res = Redirect::to(&return_to).into_response();
            res.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(idp, SESSION_COOKIE, &value, session.expires_at - now, "Lax"),
            );
            res
        }
        Err(FederationError::Auth(e))
            if !matches!(e, keel_identity::service::AuthError::InvalidCredentials) =>
        {
            return Err(e.into());
        }
        Err(e) => refused(&e),
    };
    // The sign-in is over either way: its state works once.
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(idp, FEDERATION_COOKIE, "", 0, "Lax"),
    );
    no_store(&mut res);
    Ok(res)
}
