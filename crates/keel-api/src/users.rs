//! The users routes: the seed's example (`GET /users/{id}` through the cache, 404
//! `{"error": "User not found"}`) and the rest of the resource.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_cache::Cached;
use keel_domain::{
    NewUser, PageRequest, User, UserEmail, UserId, UserName, UserPatch, ValidationError,
};
use serde::{Deserialize, Serialize};

use crate::error::ErrorBody;
use crate::extract::JsonObject;
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
}

/// The body of `POST /users` and `PUT /users/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code)] // parsed by hand (see `parse_input`); this type documents the shape
pub struct UserInput {
    /// 1 to 100 characters, trimmed.
    name: String,
    /// An email address; stored lower-cased, unique.
    email: String,
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

fn parse_input(body: &JsonObject) -> Result<NewUser, ApiError> {
    body.deny_unknown(&["name", "email"])?;
    let name = UserName::parse(body.required_str("name")?)?;
    let email = UserEmail::parse(body.required_str("email")?)?;
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

/// Create a user.
#[utoipa::path(post, path = "/users", tag = "users", request_body = UserInput, responses(
    (status = 201, description = "created", body = User),
    (status = 400, description = "malformed JSON", body = ErrorBody),
    (status = 409, description = "email already exists", body = ErrorBody),
    (status = 413, description = "body too large", body = ErrorBody),
    (status = 415, description = "not JSON", body = ErrorBody),
    (status = 422, description = "invalid or unknown field (named in `field`)", body = ErrorBody),
))]
pub async fn create_user(
    State(state): State<AppState>,
    body: JsonObject,
) -> Result<Response, ApiError> {
    state.jobs.check_backpressure()?;
    let new = parse_input(&body)?;
    let user = state.users.create(new).await?;
    let mut res = user_response(StatusCode::CREATED, &user);
    let location = format!("/users/{}", user.value.id);
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
#[utoipa::path(put, path = "/users/{id}", tag = "users", request_body = UserInput, params(("id" = String, Path, description = "user id (UUID)")), responses(
    (status = 200, description = "the updated user", body = User),
    (status = 404, description = "no such user", body = ErrorBody),
    (status = 409, description = "email already exists, or a concurrent update won", body = ErrorBody),
    (status = 422, description = "invalid or unknown field", body = ErrorBody),
))]
pub async fn update_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: JsonObject,
) -> Result<Response, ApiError> {
    state.jobs.check_backpressure()?;
    let id = parse_id(&id)?;
    let input = parse_input(&body)?;
    let patch = UserPatch {
        name: Some(input.name),
        email: Some(input.email),
    };
    match state.users.update(id, patch).await? {
        Some(user) => Ok(user_response(StatusCode::OK, &user)),
        None => Err(ApiError::UserNotFound),
    }
}

/// Delete a user.
#[utoipa::path(delete, path = "/users/{id}", tag = "users", params(("id" = String, Path, description = "user id (UUID)")), responses(
    (status = 204, description = "deleted"),
    (status = 404, description = "no such user", body = ErrorBody),
))]
pub async fn delete_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.jobs.check_backpressure()?;
    let id = parse_id(&id)?;
    if state.users.delete(id).await? {
        Ok(StatusCode::NO_CONTENT)
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
