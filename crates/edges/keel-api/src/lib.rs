//! keel's HTTP API (the API server role, DESIGN.md C1).
//!
//! - [`router`]: the whole app: the users routes ([`users`]), the jobs routes ([`jobs`]:
//!   fire-and-forget exports, 202 then `GET /jobs/{id}`), the operations routes ([`ops`]:
//!   `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs`), one middleware ([`middleware`])
//!   for request ids, load shedding, timeouts, metrics and logs.
//! - [`auth`]: the identity provider's routes (`/auth/*`, `/.well-known/jwks.json`) and the
//!   [`auth::Bearer`] extractor for routes that need a signed-in account; [`oidc`]: the OpenID
//!   Connect provider (discovery, authorize page, token, userinfo, logout, client registration);
//!   [`federation`]: sign-in through external OpenID Connect providers;
//!   [`pages`]: the sign-in page of keel's consoles and the authenticator-app enrolment page;
//!   [`console`]: the error hospital's web console (`/admin/hospital`), mounted by the binary
//!   through [`router_with`] when there is an IdP and a hospital.
//! - [`policy`]: the access rule of every route and the guard that enforces it (RBAC).
//! - [`openapi`]: the OpenAPI document of every route, checked against the router by the tests.
//! - [`error`]: [`ApiError`], the only place where failures become status codes and JSON bodies.
//! - [`extract`]: the request extractors that turn every malformed input into a precise error;
//!   [`input`]: the JSON request bodies they parse, which are also the OpenAPI request schemas.
//!
//! **Invariant:** the API holds no state of its own between requests (stateless, so any number of
//! instances can serve behind a load balancer); everything lives in the database and the caches.

pub mod auth;
pub mod console;
pub mod error;
pub mod extract;
pub mod federation;
pub mod input;
pub mod jobs;
pub mod middleware;
pub mod oidc;
pub mod openapi;
pub mod ops;
pub mod pages;
pub mod policy;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use keel_cache::CachedUsers;
use metrics_exporter_prometheus::PrometheusHandle;

pub use error::ApiError;
pub use ops::{Probe, Readiness};

/// Limits and switches of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub body_limit_bytes: usize,
    pub request_timeout: Duration,
    pub max_in_flight: usize,
    pub access_log: bool,
    /// Proxies whose `X-Forwarded-For` names the client (`server.trusted_proxies`).
    pub trusted_proxies: Vec<keel_http::Cidr>,
}

/// What every handler can reach: one `Arc`, since axum clones the state for every request
/// (a clone of each of the fields' handles cost a few percent of the cached read's time).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub users: Arc<CachedUsers>,
    pub readiness: Arc<Readiness>,
    /// Renders the `metrics` recorder; `None` when the process installed none (some tests).
    pub metrics: Option<PrometheusHandle>,
    pub http: HttpSettings,
    pub jobs: jobs::JobsState,
    /// The built-in identity provider; `None` when `identity.enabled` is off (its routes are
    /// then not mounted).
    pub identity: Option<Arc<keel_identity::service::Idp>>,
    /// The HTTP side of federation with external OpenID Connect providers.
    pub federation: Arc<federation::Federation>,
}

/// The complete API router.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// The API router with `extra` routes (the hospital console) behind the same middleware.
pub fn router_with(state: AppState, extra: Router) -> Router {
    let limiter = middleware::Limiter::new(&state.http);
    let auth = if state.identity.is_some() {
        auth::router()
            .merge(oidc::router())
            .merge(pages::router())
            .merge(federation::router())
    } else {
        Router::new()
    };
    Router::new()
        .merge(extra.with_state(()))
        .merge(auth)
        .merge(users::router())
        .merge(jobs::router())
        .merge(ops::router())
        .route_layer(axum::middleware::from_fn_with_state(
            policy::GuardState(state.identity.clone()),
            policy::guard,
        ))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            limiter,
            middleware::around_request,
        ))
        .with_state(state)
}
