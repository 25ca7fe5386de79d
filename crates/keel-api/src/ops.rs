//! Operations endpoints: liveness, readiness (with draining for graceful shutdown), Prometheus
//! metrics, the OpenAPI document and its offline docs page.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use utoipa::OpenApi;

use crate::AppState;

/// A dependency `/readyz` checks.
#[async_trait]
pub trait Probe: Send + Sync {
    fn name(&self) -> &'static str;
    async fn check(&self) -> Result<(), String>;
}

/// Readiness: the dependency probes, and the draining flag graceful shutdown raises first.
pub struct Readiness {
    draining: AtomicBool,
    probes: Vec<Arc<dyn Probe>>,
}

/// Longest a single probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Readiness {
    pub fn new(probes: Vec<Arc<dyn Probe>>) -> Self {
        Self {
            draining: AtomicBool::new(false),
            probes,
        }
    }

    /// From now on `/readyz` answers 503, so load balancers stop sending new requests.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
}

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive")))]
async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Ready: not draining, and every dependency (database, Redis when configured) reachable.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "ready"),
    (status = 503, description = "draining or a dependency is unreachable"),
))]
async fn readyz(State(state): State<AppState>) -> Response {
    if state.readiness.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response();
    }
    let checks = state.readiness.probes.iter().map(|probe| async move {
        let res = match tokio::time::timeout(PROBE_TIMEOUT, probe.check()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("timed out".to_owned()),
        };
        (probe.name(), res)
    });
    let results = futures_util::future::join_all(checks).await;
    let ready = results.iter().all(|(_, res)| res.is_ok());
    let detail: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|(name, res)| {
            (
                name.to_owned(),
                json!(res.err().map_or("ok".to_owned(), |e| format!("error: {e}"))),
            )
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"status": if ready { "ready" } else { "unready" }, "checks": detail})),
    )
        .into_response()
}

/// Prometheus text: HTTP metrics and each cache's counters.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    state
        .users
        .stats()
        .render_prometheus("users", now_ms, &mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "keel", description = "keel's API: the seed's cached user read, made real."),
    paths(
        crate::users::create_user,
        crate::users::list_users,
        crate::users::get_user,
        crate::users::update_user,
        crate::users::delete_user,
        crate::users::user_data,
        crate::jobs::export_user,
        crate::jobs::get_job,
        healthz,
        readyz,
        metrics,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(keel_domain::User, crate::users::UserInput, crate::users::NewAccountInput, crate::users::UserPage, crate::error::ErrorBody, crate::jobs::JobAccepted, crate::jobs::JobView, keel_domain::JobState)),
    tags((name = "users", description = "Users, read through the cache"), (name = "jobs", description = "Fire-and-forget jobs: 202 at once, then poll"), (name = "operations", description = "Health, readiness, metrics")),
)]
struct ApiDoc;

/// Every route but the public ones wants `Authorization: Bearer <access token>` from
/// `POST /auth/login` (the access rule of each is in `policy::RULES`).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// API docs rendered from `/openapi.json` by a page with no outside assets: it works offline.
async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
