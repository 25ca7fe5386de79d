//! The identity provider's routes (issue 4), mounted when `identity.enabled`: sign-up, sign-in
//! with an optional second factor, refresh, sign-out, the signed-in account, TOTP enrolment, the
//! authentication audit log (admins), and the JWKS. Bearer tokens are checked by [`Bearer`].
//!
//! Every sign-in failure a client can cause answers 401 `invalid_credentials`, whether the
//! account exists or not; throttled attempts answer 429 with `Retry-After`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel_credentials::token::Claims;
use keel_domain::{AuthEventQuery, Caller, UserId};
use keel_identity::service::{AuthError, Idp, SignIn};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::extract::{JsonBody, Path, Query};
use crate::input::{
    CodeInput, EmailInput, PasswordChangeInput, RefreshInput, SignInInput, TokenInput,
    TokenPasswordInput,
};
use crate::policy::Signed;
use crate::{ApiError, AppState};

/// The OAuth client id of keel's own first-party clients (the JSON sign-in routes).
const FIRST_PARTY: &str = "keel";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/signup", post(crate::users::create_user))
        .route(
            "/auth/verify-email",
            get(verify_email_page).post(verify_email),
        )
        .route("/auth/verify-email/resend", post(resend_verification))
        .route("/auth/password/forgot", post(forgot_password))
        .route("/auth/password/reset", post(reset_password))
        .route("/auth/invitation/accept", post(accept_invitation))
        .route("/auth/dev/mailbox", get(dev_mailbox))
        .route("/auth/login", post(sign_in))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(sign_out))
        .route("/auth/me", get(me))
        .route("/auth/totp", post(enroll_totp))
        .route("/auth/totp/confirm", post(confirm_totp))
        .route("/auth/audit", get(audit))
        .route("/auth/password", post(change_password))
        .route("/auth/logout-all", post(sign_out_everywhere))
        .route("/auth/accounts/{id}/disable", post(disable))
        .route("/auth/accounts/{id}/enable", post(enable))
        .route("/.well-known/jwks.json", get(jwks))
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The IdP, or 404 when identity is off (its routes are not mounted then; this is for extractors).
pub(crate) fn idp(state: &AppState) -> Result<&Arc<Idp>, ApiError> {
    state.identity.as_ref().ok_or(ApiError::RouteNotFound)
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidCredentials
            | AuthError::InvalidRefresh(_)
            | AuthError::NothingToConfirm => Self::InvalidCredentials,
            AuthError::MfaRequired => Self::MfaRequired,
            AuthError::Locked { retry_after_secs } => Self::TooManyAttempts { retry_after_secs },
            AuthError::InvalidToken(_) => Self::Unauthenticated,
            AuthError::Policy(violation) => Self::WeakPassword(violation.to_string()),
            AuthError::Invalid(e) => Self::Validation(e),
            AuthError::EmailTaken => Self::Conflict { field: "email" },
            AuthError::AlreadyEnrolled => Self::Conflict { field: "totp" },
            AuthError::AlreadyActive => Self::Conflict { field: "password" },
            AuthError::InvalidLink => Self::InvalidLink,
            AuthError::PasswordExpired => Self::PasswordExpired,
            AuthError::NotReady => Self::Unavailable("identity provider starting".into()),
            AuthError::Store(e) => e.into(),
            AuthError::Sealed(e) => Self::Internal(Box::new(e)),
        }
    }
}

/// The client's address: the connection's peer, or, when the peer is a trusted proxy
/// (`server.trusted_proxies`), the last address in `X-Forwarded-For` that is not itself a
/// trusted proxy. Entries left of it were written by the client and prove nothing.
pub struct ClientAddr(pub String);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(peer) = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_canonical())
        else {
            return Ok(Self("unknown".to_owned()));
        };
        let trusted = &state.http.trusted_proxies;
        let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
        if !is_trusted(peer) {
            return Ok(Self(peer.to_string()));
        }
        let forwarded: Vec<std::net::IpAddr> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse::<std::net::IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .collect();
        let client = forwarded
            .iter()
            .rev()
            .find(|ip| !is_trusted(**ip))
            .or(forwarded.first())
            .copied()
            .unwrap_or(peer);
        Ok(Self(client.to_string()))
    }
}

/// A request signed in with an access token: its account and the token's claims, as the
/// guard verified them (`policy::guard`). Without one, 401 with `WWW-Authenticate: Bearer`.
pub struct Bearer {
    pub user: UserId,
    pub claims: Arc<Claims>,
}

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let claims = parts
            .extensions
            .get::<Arc<Claims>>()
            .cloned()
            .ok_or(ApiError::Unauthenticated)?;
        let user = claims.sub.parse().map_err(|_| ApiError::Unauthenticated)?;
        Ok(Self { user, claims })
    }
}

/// Verifies an address with the token mailed to it.
async fn verify_email(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<TokenInput>,
) -> Result<Response, ApiError> {
    let user = idp(&state)?
        .lifecycle()
        .verify_email(&body.token, now())
        .await?;
    Ok(Json(json!({ "verified": true, "user": user })).into_response())
}

#[derive(Debug, Deserialize)]
struct TokenParam {
    token: Option<String>,
}

/// The link of the verification mail, opened in a browser: a small page saying how it went.
async fn verify_email_page(
    State(state): State<AppState>,
    Query(params): Query<TokenParam>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    let (status, text) = match idp
        .lifecycle()
        .verify_email(params.token.as_deref().unwrap_or_default(), now())
        .await
    {
        Ok(_) => (
            StatusCode::OK,
            "Your email address is verified. You can close this page.",
        ),
        Err(AuthError::InvalidLink) => (
            StatusCode::BAD_REQUEST,
            "This link is not valid: it is malformed, expired or already used.",
        ),
        Err(e) => return Err(e.into()),
    };
    Ok((
        status,
        axum::response::Html(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Email verification</title></head><body><p>{text}</p></body></html>"
        )),
    )
        .into_response())
}

/// Mails the signed-in account a new verification link (202; nothing when already verified).
async fn resend_verification(
    State(state): State<AppState>,
    Signed(caller): Signed,
) -> Result<Response, ApiError> {
    idp(&state)?
        .lifecycle()
        .send_verification(caller.user, now())
        .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// Starts a password reset: 202 whether or not the address has an account (no enumeration).
async fn forgot_password(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    JsonBody(body): JsonBody<EmailInput>,
) -> Result<Response, ApiError> {
    idp(&state)?
        .lifecycle()
        .forgot_password(&body.email, &client, now())
        .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// Sets a new password with the mailed reset token; every sign-in of the account ends.
async fn reset_password(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    JsonBody(body): JsonBody<TokenPasswordInput>,
) -> Result<Response, ApiError> {
    idp(&state)?
        .lifecycle()
        .reset_password(&body.token, &body.password, &client, now())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Accepts an invitation: the invited account chooses its password (then signs in).
async fn accept_invitation(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    JsonBody(body): JsonBody<TokenPasswordInput>,
) -> Result<Response, ApiError> {
    let user = idp(&state)?
        .lifecycle()
        .accept_invitation(&body.token, &body.password, &client, now())
        .await?;
    Ok(Json(user).into_response())
}

#[derive(Debug, Deserialize)]
struct MailboxParams {
    user: Option<String>,
}

/// The dev mailbox (admins): the mails the notifier sent to an account, oldest first. keel
/// sends no real mail yet; this is where its links can be read (README, Identity).
async fn dev_mailbox(
    State(state): State<AppState>,
    Query(params): Query<MailboxParams>,
) -> Result<Response, ApiError> {
    let user: UserId = params
        .user
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(|_| keel_domain::ValidationError::new("user", "must be a user id"))?;
    let mails: Vec<Value> = state
        .jobs
        .events
        .notifications_of(user)
        .await?
        .into_iter()
        .map(|n| json!({ "to": n.recipient, "text": n.text, "sent_at": n.sent_at }))
        .collect();
    Ok(Json(json!({ "mails": mails })).into_response())
}

/// Sign in: tokens, or 401 `mfa_required` when a second factor must be sent too.
async fn sign_in(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    JsonBody(body): JsonBody<SignInInput>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    let attempt = SignIn {
        email: &body.email,
        password: &body.password,
        second_factor: body.second_factor.as_deref(),
        device_token: body.device_token.as_deref(),
        client: &client,
        client_id: FIRST_PARTY,
    };
    let tokens = idp.sessions().sign_in(&attempt, now()).await?;
    Ok(Json(tokens).into_response())
}

async fn refresh(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    JsonBody(body): JsonBody<RefreshInput>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    let tokens = idp
        .sessions()
        .refresh(&body.refresh_token, FIRST_PARTY, &client, now())
        .await?;
    Ok(Json(tokens).into_response())
}

async fn sign_out(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    JsonBody(body): JsonBody<RefreshInput>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    // An unknown or forged token signs nothing out, and says so no differently.
    match idp
        .sessions()
        .sign_out(&body.refresh_token, &client, now())
        .await
    {
        Ok(()) | Err(AuthError::InvalidRefresh(_)) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => Err(e.into()),
    }
}

/// The signed-in account's user (401 if it no longer exists).
async fn signed_in(
    state: &AppState,
    bearer: &Bearer,
) -> Result<Arc<keel_cache::Cached<keel_domain::User>>, ApiError> {
    state
        .users
        .get(bearer.user)
        .await?
        .ok_or(ApiError::Unauthenticated)
}

/// The signed-in account: the user, its roles, how it signed in.
async fn me(State(state): State<AppState>, bearer: Bearer) -> Result<Response, ApiError> {
    let user = signed_in(&state, &bearer).await?;
    let mfa_setup_required = idp(&state)?
        .accounts()
        .mfa_setup_required(bearer.user)
        .await?;
    let user: Value =
        serde_json::from_slice(&user.json).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Json(json!({
        "user": user,
        "roles": keel_identity::service::caller_of(&bearer.claims)?.roles,
        "amr": bearer.claims.extra.get("amr"),
        // The account holds a role that needs a second factor and has none: its roles apply
        // once it enrols (POST /auth/totp) and signs in again.
        "mfa_setup_required": mfa_setup_required,
    }))
    .into_response())
}

async fn enroll_totp(State(state): State<AppState>, bearer: Bearer) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    let user = signed_in(&state, &bearer).await?;
    let enrolment = idp.mfa().enroll_totp(&user.value, now()).await?;
    Ok(Json(enrolment).into_response())
}

async fn confirm_totp(
    State(state): State<AppState>,
    bearer: Bearer,
    JsonBody(body): JsonBody<CodeInput>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    let user = signed_in(&state, &bearer).await?;
    let codes = idp
        .mfa()
        .confirm_totp(&user.value, &body.code, now())
        .await?;
    Ok(Json(json!({ "recovery_codes": codes })).into_response())
}

#[derive(Debug, Deserialize)]
struct AuditParams {
    subject: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

/// The authentication audit log, newest first (admins only).
async fn audit(
    State(state): State<AppState>,
    Query(params): Query<AuditParams>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    let events = idp
        .accounts()
        .audit(&AuthEventQuery {
            subject: params.subject,
            actor: params.actor,
            action: params.action,
            before: params.before,
            limit: params.limit.unwrap_or(100).clamp(1, 1000),
        })
        .await?;
    Ok(Json(json!({ "events": events })).into_response())
}

/// Changes the signed-in account's password; every sign-in of it ends (sign in again).
async fn change_password(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    bearer: Bearer,
    JsonBody(body): JsonBody<PasswordChangeInput>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    idp.sessions()
        .change_password(
            bearer.user,
            &body.current_password,
            &body.new_password,
            &client,
            now(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Ends every sign-in of the signed-in account.
async fn sign_out_everywhere(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    bearer: Bearer,
) -> Result<Response, ApiError> {
    idp(&state)?
        .sessions()
        .sign_out_everywhere(bearer.user, &client, now())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn set_disabled(
    state: &AppState,
    caller: &Caller,
    id: &str,
    disabled: bool,
) -> Result<Response, ApiError> {
    let user: UserId = id.parse().map_err(|_| ApiError::UserNotFound)?;
    if idp(state)?
        .accounts()
        .set_disabled(&caller.user.to_string(), user, disabled, now())
        .await?
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::UserNotFound)
    }
}

/// Disables an account (admins): it cannot sign in, and its sign-ins end.
async fn disable(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_disabled(&state, &caller, &id, true).await
}

/// Enables a disabled account again (admins).
async fn enable(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_disabled(&state, &caller, &id, false).await
}

async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let keys = idp(&state)?.tokens().jwks()?;
    Ok((
        [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
        Json(keys),
    )
        .into_response())
}
