//! Background work per pool: active health checks against each server's health path, and the
//! discovery file, read again when it changes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use tokio::task::JoinHandle;

use crate::pool::{Pool, read_discovery};
use crate::upstream::{SocketOrName, Transport};

/// Starts the pool's checker (and discovery watcher); abort the handles to stop them.
pub fn spawn(pool: Arc<Pool>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let in_process = matches!(pool.transport, Transport::InProcess(_));
    if !pool.settings.health_path.is_empty() && !in_process {
        tasks.push(tokio::spawn(check_loop(pool.clone())));
    }
    if pool.settings.discovery_file.is_some() {
        tasks.push(tokio::spawn(watch_discovery(pool)));
    }
    tasks
}

async fn check_loop(pool: Arc<Pool>) {
    let mut tick = tokio::time::interval(pool.health_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let checks = pool.servers().into_iter().map(|server| {
            let pool = pool.clone();
            async move {
                let (passed, detail) = check(&pool, &server.addr).await;
                pool.check_result(&server, passed, &detail);
            }
        });
        futures_util::future::join_all(checks).await;
    }
}

/// One check: a GET of the health path; any 2xx within the timeout passes.
async fn check(pool: &Pool, addr: &SocketOrName) -> (bool, String) {
    let req = http::Request::get(pool.settings.health_path.as_str())
        .header(http::header::USER_AGENT, "keel-gateway-health")
        .body(Body::empty())
        .expect("a valid health request");
    let timeout = Duration::from_millis(pool.settings.health_timeout_ms.max(1));
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    match tokio::time::timeout(timeout, pool.transport.send(addr, req, peer)).await {
        Ok(Ok(res)) if res.status().is_success() => (true, String::new()),
        Ok(Ok(res)) => (false, format!("status {}", res.status().as_u16())),
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (false, "timed out".to_owned()),
    }
}

/// Polls the discovery file's modification time; a file that cannot be read or parsed leaves
/// the members as they are (a half-written file must not empty the pool).
async fn watch_discovery(pool: Arc<Pool>) {
    let Some(path) = pool.settings.discovery_file.clone() else {
        return;
    };
    let mut seen: Option<(SystemTime, u64)> = stamp(&path);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let mut addrs = pool.settings.servers.clone();
        match read_discovery(&path) {
            Ok(found) => addrs.extend(found),
            Err(e) => {
                tracing::warn!(pool = %pool.name, error = %e, "discovery file unreadable; members kept");
                continue;
            }
        }
        if let Err(e) = pool.set_servers(&addrs) {
            tracing::warn!(pool = %pool.name, error = %e, "discovery file has a bad entry; members kept");
        }
    }
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
