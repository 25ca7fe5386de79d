//! The users routes: the seed's example (`GET /users/{id}` through the cache, 404
//! `{"error": "User not found"}`) and the rest of the resource.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_cache::Cached;
use keel_domain::{
    NewUser, PageRequest, Permission, SignupMode, User, UserEmail, UserId, UserName, UserPatch,
    ValidationError,
};
use serde::{Deserialize, Serialize};

use crate::error::ErrorBody;
use crate::extract::{JsonBody, Path, Query, from_json};
use crate::input::{AdminAccountInput, SignUpInput, UserInput};
use crate::policy::{MaybeSigned, Signed};
use crate::{ApiError, AppState};

/// Default and largest page size of `GET /users`.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route(
            "/users/{id}",
            get(get_user).put(update_user).delete(delete_user),
        )
        .route("/users/{id}/data", get(user_data))
        .route("/users/{id}/invitation", axum::routing::post(reinvite))
}

/// A page of users and the cursor of the next page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserPage {
    users: Vec<User>,
    /// Pass as `cursor` to get the next page; null on the last page.
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Page size, 1 to 200 (default 50).
    limit: Option<String>,
    /// Opaque cursor from the previous page's `next_cursor`.
    cursor: Option<String>,
}

fn parse_input(body: &UserInput) -> Result<NewUser, ApiError> {
    let name = UserName::parse(&body.name)?;
    let email = UserEmail::parse(&body.email)?;
    Ok(NewUser { name, email })
}

/// A path id that is not a UUID cannot name a user: it is simply not found.
fn parse_id(raw: &str) -> Result<UserId, ApiError> {
    raw.parse().map_err(|_| ApiError::UserNotFound)
}

fn user_response(status: StatusCode, user: &Cached<User>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        user.json.clone(),
    )
        .into_response()
}

/// Create an account: self-service sign-up (as `identity.signup` allows) or, by an admin, an
/// account with roles, or an invitation when no password is given.
#[utoipa::path(post, path = "/users", tag = "users", request_body = crate::input::NewAccountInput, responses(
    (status = 201, description = "created (a verification or invitation mail is on its way)", body = User),
    (status = 400, description = "malformed JSON", body = ErrorBody),
    (status = 403, description = "sign-up is by invitation or closed (`signup_closed`)", body = ErrorBody),
    (status = 409, description = "email already exists", body = ErrorBody),
    (status = 413, description = "body too large", body = ErrorBody),
    (status = 415, description = "not JSON", body = ErrorBody),
    (status = 422, description = "invalid or unknown field (named in `field`), or a weak password", body = ErrorBody),
))]
pub async fn create_user(
    State(state): State<AppState>,
    MaybeSigned(caller): MaybeSigned,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    state.jobs.check_backpressure()?;
    let idp = state.identity.as_ref().ok_or(ApiError::Unauthenticated)?;
    let now = crate::auth::now();
    let admin = caller.as_ref().filter(|c| c.can(Permission::UsersWrite));
    let user = if let Some(admin) = admin {
        let input: AdminAccountInput = from_json(body)?;
        let roles = input.roles.unwrap_or_default();
        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
        let actor = admin.user.to_string();
        let (name, email) = (input.name.as_str(), input.email.as_str());
        match input.password.as_deref() {
            Some(password) => {
                idp.accounts()
                    .register(name, email, password, &roles, &actor, now)
                    .await?
            }
            None => {
                idp.lifecycle()
                    .invite(name, email, &roles, &actor, now)
                    .await?
            }
        }
    } else {
        match idp.settings().signup {
            SignupMode::Open => {}
            SignupMode::Invite => return Err(ApiError::SignupClosed("by invitation only")),
            SignupMode::Closed => return Err(ApiError::SignupClosed("closed")),
        }
        // The caller decides the shape: `roles` from anyone but an admin is an unknown field.
        let input: SignUpInput = from_json(body)?;
        idp.accounts()
            .register(
                &input.name,
                &input.email,
                &input.password,
                &[],
                "anonymous",
                now,
            )
            .await?
    };
    let location = format!("/users/{}", user.id);
    let mut res = (StatusCode::CREATED, Json(user)).into_response();
    res.headers_mut().insert(
        header::LOCATION,
        location.parse().expect("a path is a valid header"),
    );
    Ok(res)
}

/// Read a user through the cache (the seed's lazy-loading example).
#[utoipa::path(get, path = "/users/{id}", tag = "users", params(("id" = String, Path, description = "user id (UUID)")), responses(
    (status = 200, description = "the user", body = User),
    (status = 404, description = "`{\"error\": \"User not found\"}`", body = ErrorBody),
))]
pub async fn get_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match state.users.get(id).await? {
        Some(user) => Ok(user_response(StatusCode::OK, &user)),
        None => Err(ApiError::UserNotFound),
    }
}

/// Replace a user's name and email.
#[utoipa::path(put, path = "/users/{id}", tag = "users", request_body = crate::input::UserInput, params(("id" = String, Path, description = "user id (UUID)")), responses(
    (status = 200, description = "the updated user", body = User),
    (status = 404, description = "no such user", body = ErrorBody),
    (status = 409, description = "email already exists, or a concurrent update won", body = ErrorBody),
    (status = 422, description = "invalid or unknown field", body = ErrorBody),
))]
pub async fn update_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UserInput>,
) -> Result<Response, ApiError> {
    state.jobs.check_backpressure()?;
    let id = parse_id(&id)?;
    let input = parse_input(&body)?;
    let before = state.users.get(id).await?.ok_or(ApiError::UserNotFound)?;
    let email_changed = before.value.email != input.email;
    let patch = UserPatch {
        name: Some(input.name),
        email: Some(input.email),
    };
    let Some(user) = state.users.update(id, patch).await? else {
        return Err(ApiError::UserNotFound);
    };
    // A new address is unverified until its owner follows the link mailed to it.
    if let (true, Some(idp)) = (email_changed, &state.identity) {
        idp.lifecycle()
            .email_changed(&user.value, crate::auth::now())
            .await?;
    }
    Ok(user_response(StatusCode::OK, &user))
}

/// Erase an account (its owner or an admin): the user, its credentials and sign-ins, its
/// cached copies, its mails, jobs and unsent events go; an `account_erased` audit entry (the
/// id, when, by whom) stays as the tombstone.
#[utoipa::path(delete, path = "/users/{id}", tag = "users", params(("id" = String, Path, description = "user id (UUID)")), responses(
    (status = 204, description = "erased"),
    (status = 404, description = "no such user", body = ErrorBody),
))]
pub async fn delete_user(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.jobs.check_backpressure()?;
    let id = parse_id(&id)?;
    // The copies first, the user last: if a step fails, the account is still there and a
    // retry erases again (every step is idempotent); the other way round, a failure after
    // the delete would leave copies no request could reach any more.
    let erased = state.jobs.events.erase_user_data(id).await?;
    if !state.users.delete(id).await? {
        return Err(ApiError::UserNotFound);
    }
    tracing::info!(user_id = %id, ?erased, "account erased");
    if let Some(idp) = &state.identity {
        idp.lifecycle()
            .record_erasure(id, &caller.user.to_string(), crate::auth::now())
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Everything keel keeps about an account, for its owner (GDPR access and portability):
/// the user, roles, verification and MFA state, sign-in history, mails sent.
#[utoipa::path(get, path = "/users/{id}/data", tag = "users", params(("id" = String, Path, description = "user id (UUID)")), responses(
    (status = 200, description = "the account's data as JSON"),
    (status = 404, description = "no such user", body = ErrorBody),
))]
pub async fn user_data(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let idp = crate::auth::idp(&state)?;
    let account = idp
        .lifecycle()
        .export_account(id)
        .await?
        .ok_or(ApiError::UserNotFound)?;
    let mails: Vec<serde_json::Value> = state
        .jobs
        .events
        .notifications_of(id)
        .await?
        .into_iter()
        .map(|n| serde_json::json!({ "to": n.recipient, "text": n.text, "sent_at": n.sent_at }))
        .collect();
    let mut res = Json(serde_json::json!({ "account": account, "mails": mails })).into_response();
    res.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        axum::http::HeaderValue::from_static("attachment; filename=\"keel-account.json\""),
    );
    Ok(res)
}

/// Mails an invited account its invitation again (admins).
#[utoipa::path(post, path = "/users/{id}/invitation", tag = "users", params(("id" = String, Path, description = "user id (UUID)")), responses(
    (status = 202, description = "the invitation is mailed again"),
    (status = 404, description = "no such user", body = ErrorBody),
    (status = 409, description = "the account has already accepted its invitation", body = ErrorBody),
))]
pub async fn reinvite(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let idp = crate::auth::idp(&state)?;
    if idp
        .lifecycle()
        .reinvite(id, &caller.user.to_string(), crate::auth::now())
        .await?
    {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(ApiError::UserNotFound)
    }
}

/// List users in creation order, a page at a time.
#[utoipa::path(get, path = "/users", tag = "users", params(ListQuery), responses(
    (status = 200, description = "a page of users", body = UserPage),
    (status = 422, description = "bad `limit` or `cursor`", body = ErrorBody),
))]
pub async fn list_users(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<UserPage>, ApiError> {
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ValidationError::new("limit", format!("must be an integer from 1 to {MAX_LIMIT}"))
            })?,
    };
    let after = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(
            raw.parse::<UserId>()
                .map_err(|_| ValidationError::new("cursor", "is not a cursor from this API"))?,
        ),
    };
    let page = state.users.list(PageRequest { after, limit }).await?;
    Ok(Json(UserPage {
        users: page.items,
        next_cursor: page.next_after.map(|id| id.to_string()),
    }))
}
