//! The HTTP stack ceiling: axum 0.8 on a multi-thread tokio runtime, one route answering a
//! constant ~100-byte JSON user, no database, no cache, no middleware.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// A constant user, about 100 bytes of JSON, shaped like keel's answer.
const USER_JSON: &str = r#"{"id":"0190f3a2-7c4e-7b1a-9d2e-3f4a5b6c7d8e","name":"Ada Lovelace","email":"ada@example.com","version":1}"#;

async fn user() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], USER_JSON)
}

async fn healthz() -> &'static str {
    "ok"
}

pub(crate) fn serve(listen: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let app = Router::new()
            .route("/users/{id}", get(user))
            .route("/healthz", get(healthz));
        let listener = tokio::net::TcpListener::bind(listen).await?;
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
