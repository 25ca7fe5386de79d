//! Operations endpoints: liveness, readiness (with draining for graceful shutdown), Prometheus
//! metrics, the OpenAPI document and its offline docs page.

use std::sync::Arc;
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
pub(crate) async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Ready: not draining, and every dependency (database, Redis when configured) reachable.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "ready"),
    (status = 503, description = "draining or a dependency is unreachable"),
))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
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
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state
        .metrics
        .as_ref()
        .map(metrics_exporter_prometheus::PrometheusHandle::render)
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

/// The OpenAPI document, with the password limits this server enforces.
async fn openapi(State(state): State<AppState>) -> Response {
    let policy = state
        .identity
        .as_ref()
        .map(|idp| idp.settings().policy.clone())
        .unwrap_or_default();
    let doc = crate::openapi::document(&policy)
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}

/// API docs rendered from `/openapi.json` by a page with no outside assets: it works offline.
async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
