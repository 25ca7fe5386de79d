//! The operations listener: the gateway's own health, readiness, metrics, upstream states and
//! the cache purge API. It is meant for a private address (default: none; `127.0.0.1:9901` in
//! the examples): it has no authentication of its own.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::Gateway;

/// Renders the Prometheus exposition (the process's recorder).
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct Ops {
    gateway: Arc<Gateway>,
    metrics: Option<RenderMetrics>,
}

pub fn router(gateway: Arc<Gateway>, metrics: Option<RenderMetrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render))
        .route("/upstreams", get(upstreams))
        .route("/cache/purge", post(purge))
        .with_state(Ops { gateway, metrics })
}

/// Ready while not draining and while every pool has a healthy server.
async fn readyz(State(ops): State<Ops>) -> Response {
    if ops.gateway.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    let edge = ops.gateway.edge();
    let empty: Vec<&str> = edge
        .pools
        .iter()
        .filter(|p| !p.servers().iter().any(|s| s.is_healthy()))
        .map(|p| p.name.as_str())
        .collect();
    if empty.is_empty() {
        "ready".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no healthy upstream in {}", empty.join(", ")),
        )
            .into_response()
    }
}

async fn render(State(ops): State<Ops>) -> Response {
    match &ops.metrics {
        Some(render) => ([("content-type", "text/plain; version=0.0.4")], render()).into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

async fn upstreams(State(ops): State<Ops>) -> Response {
    let edge = ops.gateway.edge();
    let pools: Vec<_> = edge
        .pools
        .iter()
        .map(|p| {
            serde_json::json!({
                "pool": p.name,
                "servers": p.servers().iter().map(|s| serde_json::json!({
                    "addr": s.addr.as_str(),
                    "healthy": s.is_healthy(),
                    "in_flight": s.in_flight(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "pools": pools })).into_response()
}

#[derive(Deserialize)]
struct PurgeQuery {
    /// Path prefix of the entries to remove (`/` for all).
    prefix: String,
    host: Option<String>,
}

async fn purge(State(ops): State<Ops>, Query(q): Query<PurgeQuery>) -> Response {
    if !q.prefix.starts_with('/') {
        return (StatusCode::BAD_REQUEST, "prefix must start with /").into_response();
    }
    let purged = ops
        .gateway
        .cache()
        .map_or(0, |c| c.purge(&q.prefix, q.host.as_deref()));
    axum::Json(serde_json::json!({ "purged": purged })).into_response()
}
