//! `keel gateway`: the gateway alone in front of `keel serve` instances, with its operations
//! listener, TLS, and SIGHUP reloads of the configuration and the certificate.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use keel_config::Settings;
use keel_gateway::Gateway;
use metrics_exporter_prometheus::PrometheusHandle;

/// Runs until `shutdown` resolves, then drains: readiness turns false for
/// `shutdown.readiness_grace_ms`, the listener closes, open requests get until
/// `shutdown.drain_deadline_ms`. `reload` loads the settings again (on SIGHUP).
pub async fn run(
    settings: Settings,
    metrics: PrometheusHandle,
    started: Instant,
    shutdown: impl Future<Output = ()>,
    reload: impl Fn() -> anyhow::Result<Settings> + Send + 'static,
) -> anyhow::Result<()> {
    let gateway = Gateway::new(&settings.gateway, None, Vec::new()).map_err(anyhow::Error::msg)?;
    let workers = settings.gateway.worker_threads();
    let listeners = keel_gateway::server::bind_workers(settings.gateway.listen, workers)
        .with_context(|| format!("cannot listen on {}", settings.gateway.listen))?;
    let addr = listeners[0].local_addr()?;
    let tls = match &settings.gateway.tls {
        Some(tls) => Some(keel_gateway::tls::Terminator::start(tls).map_err(anyhow::Error::msg)?),
        None => None,
    };
    if let Some(admin) = settings.gateway.admin_listen {
        let listener = tokio::net::TcpListener::bind(admin)
            .await
            .with_context(|| format!("cannot listen on {admin} (gateway.admin_listen)"))?;
        let render: keel_gateway::admin::RenderMetrics = Arc::new(move || metrics.render());
        let router = keel_gateway::admin::router(gateway.clone(), Some(render));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "gateway operations listener failed");
            }
        });
    }
    #[cfg(unix)]
    {
        let gateway = gateway.clone();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot watch SIGHUP")?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                // The certificate reloads itself on SIGHUP too (`tls::Terminator`).
                tracing::info!(signal = "SIGHUP", "reloading the configuration");
                match reload().map(|s| gateway.reload(&s.gateway)) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "new configuration refused; the old one stays");
                    }
                    Err(e) => tracing::error!(
                        error = format!("{e:#}"),
                        "new configuration refused; the old one stays"
                    ),
                }
            }
        });
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let edge = gateway.edge();
    tracing::info!(
        role = "gateway",
        listen = %addr,
        routes = edge.routes.iter().count(),
        pools = edge.pools.len(),
        workers,
        startup_ms = started.elapsed().as_millis() as u64,
        "keel is ready"
    );
    println!(
        "keel gateway: on {scheme}://{addr}, {} route(s) to {} pool(s){} (Ctrl-C to stop)",
        edge.routes.iter().count(),
        edge.pools.len(),
        settings
            .gateway
            .admin_listen
            .map(|a| format!("; operations on http://{a}"))
            .unwrap_or_default()
    );
    drop(edge);
    let grace = Duration::from_millis(settings.shutdown.readiness_grace_ms);
    let draining = gateway.clone();
    let stop = async move {
        shutdown.await;
        tracing::info!("shutdown requested: readiness is now false");
        draining.start_draining();
        tokio::time::sleep(grace).await;
    };
    keel_gateway::server::serve_workers(
        gateway,
        listeners,
        tls.map(|t| t.acceptor()),
        stop,
        Duration::from_millis(settings.shutdown.drain_deadline_ms),
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}
