//! Who may call which route (issue 4 §6): every route of the API declares its [`Access`] in
//! [`RULES`], and one guard around every matched route enforces it before the handler runs.
//!
//! - A route missing from the table is refused (403, logged as an error): deny by default. The
//!   API tests enumerate the real router's routes and fail if one has no rule.
//! - Callers prove who they are with `Authorization: Bearer <access token>`; on the server-rendered
//!   console (`/admin/…`) the IdP's browser session cookie works too. The cookie is not accepted on
//!   the JSON routes: they have no CSRF defence, the console's forms do.
//! - A bearer token's roles are those it was signed with (up to `identity.access_ttl_secs` old);
//!   a browser session's roles are read from the store on every request.
//! - The guard leaves the [`Caller`] in the request's extensions for handlers that decide more
//!   (a user may read itself; `POST /users` depends on the sign-up mode and the caller).

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use keel_domain::{Caller, Permission, UserId};

use std::sync::Arc;

use keel_credentials::token::Claims;
use keel_identity::service::Idp;

use crate::ApiError;
use crate::auth::now;

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone; the handler authenticates by its own protocol if it must (OAuth client
    /// credentials, the sign-in form). A valid bearer token still names the caller.
    Public,
    /// Any signed-in account.
    SignedIn,
    /// Accounts whose roles grant the permission.
    Need(Permission),
    /// The account named by the path's `{id}`, or accounts whose roles grant the permission.
    SelfOr(Permission),
}

use Access::{Need, Public, SelfOr, SignedIn};
use Permission::*;

/// Every route of keel's API: method, path as routed, access. `HEAD` follows `GET`.
pub const RULES: &[(&str, &str, Access)] = &[
    // operations: probes, metrics (no personal data; keep it off the public edge, issue 5) and
    // the API description
    ("GET", "/healthz", Public),
    ("GET", "/readyz", Public),
    ("GET", "/metrics", Public),
    ("GET", "/openapi.json", Public),
    ("GET", "/docs", Public),
    // the users resource: sign-up (by mode), self-service, admins for the rest
    ("GET", "/users", Need(UsersList)),
    ("POST", "/users", Public),
    ("GET", "/users/{id}", SelfOr(UsersRead)),
    ("PUT", "/users/{id}", SelfOr(UsersWrite)),
    ("DELETE", "/users/{id}", SelfOr(UsersWrite)),
    ("POST", "/users/{id}/export", SelfOr(UsersRead)),
    ("GET", "/users/{id}/data", SelfOr(UsersRead)),
    ("POST", "/users/{id}/invitation", Need(UsersWrite)),
    ("GET", "/jobs/{id}", SignedIn),
    // the identity provider
    ("POST", "/auth/signup", Public),
    ("POST", "/auth/login", Public),
    ("POST", "/auth/refresh", Public),
    ("POST", "/auth/logout", Public),
    ("GET", "/auth/verify-email", Public),
    ("POST", "/auth/verify-email", Public),
    ("POST", "/auth/password/forgot", Public),
    ("POST", "/auth/password/reset", Public),
    ("POST", "/auth/invitation/accept", Public),
    ("GET", "/auth/me", SignedIn),
    ("POST", "/auth/totp", SignedIn),
    ("POST", "/auth/totp/confirm", SignedIn),
    ("POST", "/auth/password", SignedIn),
    ("POST", "/auth/logout-all", SignedIn),
    ("POST", "/auth/verify-email/resend", SignedIn),
    ("GET", "/auth/audit", Need(AuditRead)),
    ("POST", "/auth/accounts/{id}/disable", Need(AccountsManage)),
    ("POST", "/auth/accounts/{id}/enable", Need(AccountsManage)),
    ("GET", "/auth/dev/mailbox", Need(UsersRead)),
    ("GET", "/.well-known/jwks.json", Public),
    // the sign-in page of browsers (consoles, OpenID Connect)
    ("GET", "/signin", Public),
    ("POST", "/signin", Public),
    ("POST", "/signout", Public),
    ("GET", "/account/mfa", Public),
    ("POST", "/account/mfa", Public),
    ("GET", "/account/consents", Public),
    ("POST", "/account/consents", Public),
    // OpenID Connect: each endpoint authenticates by the protocol (client secret, PKCE,
    // the access token at userinfo)
    ("GET", "/.well-known/openid-configuration", Public),
    ("GET", "/oauth/authorize", Public),
    ("POST", "/oauth/authorize", Public),
    ("POST", "/oauth/token", Public),
    ("GET", "/oauth/userinfo", Public),
    ("POST", "/oauth/userinfo", Public),
    ("GET", "/oauth/logout", Public),
    ("POST", "/oauth/clients", Need(ClientsManage)),
    // federation: the browser's way through an external provider (state, nonce and PKCE bind
    // the callback to the browser that started it)
    ("GET", "/federation/{provider}/start", Public),
    ("GET", "/federation/{provider}/callback", Public),
    // the error hospital's console
    ("GET", "/admin/hospital", Need(HospitalRead)),
    ("GET", "/admin/hospital/causes", Need(HospitalRead)),
    ("GET", "/admin/hospital/patients/{id}", Need(HospitalRead)),
    ("GET", "/admin/hospital/replay", Need(HospitalRead)),
    ("GET", "/admin/hospital/audit", Need(HospitalRead)),
    (
        "POST",
        "/admin/hospital/patients/{id}/edit",
        Need(HospitalWrite),
    ),
    (
        "POST",
        "/admin/hospital/patients/{id}/discard",
        Need(HospitalWrite),
    ),
    ("POST", "/admin/hospital/replay", Need(HospitalWrite)),
];

/// The rule of a routed path, if declared.
pub fn rule(method: &Method, path: &str) -> Option<Access> {
    // Looked up on every request: a map, not a scan of the table.
    static BY_ROUTE: std::sync::LazyLock<
        std::collections::HashMap<(&'static str, &'static str), Access>,
    > = std::sync::LazyLock::new(|| RULES.iter().map(|(m, p, a)| ((*m, *p), *a)).collect());
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    BY_ROUTE.get(&(method, path)).copied()
}

/// The bearer token of a request, if it sends one.
pub(crate) fn bearer_token(request: &axum::http::request::Parts) -> Option<&str> {
    request
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| keel_domain::identity::auth_scheme::credentials(v, "Bearer"))
}

/// The value of `{id}` in `path` routed as `pattern`.
fn path_id(pattern: &str, path: &str) -> Option<UserId> {
    let at = pattern.split('/').position(|segment| segment == "{id}")?;
    path.split('/').nth(at)?.parse().ok()
}

/// Who sent the request, if anyone: a valid bearer token (with its claims), or on the console
/// a browser session. `Err` for a bearer token that is not valid (a client sending a bad token
/// learns so).
async fn caller(
    idp: Option<&Idp>,
    parts: &axum::http::request::Parts,
    console: bool,
) -> Result<Option<(Caller, Option<Arc<Claims>>)>, ApiError> {
    let Some(idp) = idp else {
        return Ok(None);
    };
    if let Some(token) = bearer_token(parts) {
        let claims = idp.tokens().verify_access(token, now()).await?;
        let caller = keel_identity::service::caller_of(&claims)?;
        return Ok(Some((caller, Some(claims))));
    }
    if console && let Some(value) = crate::oidc::session_cookie(&parts.headers) {
        return Ok(idp
            .browser()
            .session_caller(value, now())
            .await?
            .map(|c| (c, None)));
    }
    Ok(None)
}

/// What the guard needs: the IdP alone (cloned per request by axum, so one `Arc`, not the
/// whole `AppState`).
#[derive(Clone)]
pub struct GuardState(pub Option<Arc<Idp>>);

/// The guard: runs around every matched route (a `route_layer`), before its handler. It leaves
/// the [`Caller`] in the request's extensions, and the access token's claims when there was
/// one, so no handler verifies the token again.
pub async fn guard(State(state): State<GuardState>, request: Request, next: Next) -> Response {
    let Some(route) = request.extensions().get::<MatchedPath>().cloned() else {
        return next.run(request).await;
    };
    let Some(access) = rule(request.method(), route.as_str()) else {
        tracing::error!(method = %request.method(), route = route.as_str(), "route has no declared access rule: refused");
        return ApiError::Forbidden.into_response();
    };
    let console = route.as_str().starts_with("/admin/");
    let (mut parts, body) = request.into_parts();
    let caller = match caller(state.0.as_deref(), &parts, console).await {
        Ok(caller) => caller,
        Err(e) if access == Public => {
            // A public route serves anyone; a bad token there only names no one, unless the
            // handler acts on who calls (see `MaybeSigned`).
            tracing::debug!(error = %e, "public route: bearer token ignored");
            parts.extensions.insert(UnverifiedBearer);
            None
        }
        Err(e) => return e.into_response(),
    };
    let (caller, claims) = caller.unzip();
    let allowed = match (access, &caller) {
        (Public, _) => true,
        (_, None) => {
            return if console && wants_html(&parts) {
                sign_in_first(&parts)
            } else {
                ApiError::Unauthenticated.into_response()
            };
        }
        (SignedIn, Some(_)) => true,
        (Need(permission), Some(caller)) => caller.can(permission),
        (SelfOr(permission), Some(caller)) => match path_id(route.as_str(), parts.uri.path()) {
            Some(id) => caller.can_on(id, permission),
            // Not an id: no account to act on; only those allowed on every account go on
            // (and get the handler's 404).
            None => caller.can(permission),
        },
    };
    if !allowed {
        return ApiError::Forbidden.into_response();
    }
    if let Some(caller) = caller {
        parts.extensions.insert(caller);
    }
    if let Some(claims) = claims.flatten() {
        parts.extensions.insert(claims);
    }
    next.run(Request::from_parts(parts, body)).await
}

fn wants_html(parts: &axum::http::request::Parts) -> bool {
    parts.method == Method::GET
        && parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"))
}

/// A browser on the console without a session: to the sign-in page, and back after.
fn sign_in_first(parts: &axum::http::request::Parts) -> Response {
    let back = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut res = Redirect::to(&format!(
        "/signin?return_to={}",
        keel_credentials::percent_encode(&back)
    ))
    .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The signed-in caller a guarded handler runs for (set by [`guard`]).
pub struct Signed(pub Caller);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Signed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .map(Self)
            .ok_or(ApiError::Unauthenticated)
    }
}

/// Left by the guard on a public route whose request sent a bearer token that did not verify
/// (expired, revoked, forged).
#[derive(Clone, Copy)]
struct UnverifiedBearer;

/// The caller of a public route, if it named one. A request whose bearer token did not verify
/// is refused (401) rather than served as anonymous: a route that acts on who calls
/// (`POST /users`: an admin creates accounts with roles) must not guess, and a client whose
/// token was revoked learns so.
pub struct MaybeSigned(pub Option<Caller>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for MaybeSigned {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        if parts.extensions.get::<UnverifiedBearer>().is_some() {
            return Err(ApiError::Unauthenticated);
        }
        Ok(Self(parts.extensions.get::<Caller>().cloned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_is_declared_once() {
        let mut seen = std::collections::HashSet::new();
        for (method, path, _) in RULES {
            assert!(
                seen.insert((method, path)),
                "{method} {path} declared twice"
            );
        }
    }

    #[test]
    fn head_follows_get_and_unknown_routes_have_no_rule() {
        assert_eq!(rule(&Method::HEAD, "/users"), Some(Need(UsersList)));
        assert_eq!(rule(&Method::PATCH, "/users"), None);
        assert_eq!(rule(&Method::GET, "/nowhere"), None);
    }

    #[test]
    fn the_id_is_read_where_the_pattern_has_it() {
        let id = UserId::generate();
        assert_eq!(path_id("/users/{id}", &format!("/users/{id}")), Some(id));
        assert_eq!(
            path_id("/users/{id}/export", &format!("/users/{id}/export")),
            Some(id)
        );
        assert_eq!(path_id("/users/{id}", "/users/not-a-uuid"), None);
        assert_eq!(path_id("/users", "/users"), None);
    }
}
