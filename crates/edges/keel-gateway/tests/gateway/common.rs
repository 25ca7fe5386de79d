//! The gateway under test, in process on 127.0.0.1:0, in front of small recording upstreams.
//!
//! - [`Upstream`]: an axum server that records every request it gets (health checks apart) and
//!   answers as told: a status, a delay, a readiness status, or a custom responder.
//! - [`Gw`]: the real gateway ([`keel_gateway::server::serve`]) and its admin router, each on
//!   their own port, with phases plugged in if the test wants.
//! - [`settings`], [`pool`], [`route`]: settings with short intervals so the suite is fast.
//! - [`eventually`]: wait-with-deadline instead of fixed sleeps.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, Response, StatusCode, Version};
use keel_gateway::Gateway;
use keel_gateway::phase::ErasedPhase;
use keel_gateway::settings::{GatewaySettings, PoolSettings, RouteSettings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One request as an upstream received it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub method: Method,
    /// Path and query.
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub(crate) fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub(crate) type Responder = Arc<dyn Fn(&Seen, usize) -> Response<Body> + Send + Sync>;

struct Inner {
    name: String,
    /// Status of answers to ordinary requests (default responder).
    status: AtomicU16,
    /// Status of answers to `/readyz`.
    ready: AtomicU16,
    /// Delay before answering ordinary requests.
    delay_ms: AtomicU64,
    health_checks: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    /// Custom answers: gets the request and how many requests came before it.
    responder: Option<Responder>,
}

/// A recording upstream HTTP/1.1 server.
pub(crate) struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Answers 200 with its name as the body (text/plain), and 200 on `/readyz`.
    pub(crate) async fn start(name: &str) -> Self {
        Self::spawn(name, None).await
    }

    /// Answers ordinary requests with `responder(request, index)`; `/readyz` still answers as
    /// told by [`Upstream::set_ready`].
    pub(crate) async fn with(
        name: &str,
        responder: impl Fn(&Seen, usize) -> Response<Body> + Send + Sync + 'static,
    ) -> Self {
        Self::spawn(name, Some(Arc::new(responder))).await
    }

    async fn spawn(name: &str, responder: Option<Responder>) -> Self {
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            status: AtomicU16::new(200),
            ready: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            health_checks: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            responder,
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            name: name.to_owned(),
            addr,
            inner,
            task,
        }
    }

    /// `127.0.0.1:PORT`, as a pool lists it.
    pub(crate) fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// Ordinary requests received (health checks not counted).
    pub(crate) fn hits(&self) -> usize {
        self.inner.seen.lock().unwrap().len()
    }

    pub(crate) fn health_checks(&self) -> usize {
        self.inner.health_checks.load(Ordering::Relaxed)
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().unwrap().clone()
    }

    pub(crate) fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream saw a request")
    }

    /// Ordinary requests whose path is `path`.
    pub(crate) fn hits_on(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path() == path).count()
    }

    pub(crate) fn set_status(&self, status: u16) {
        self.inner.status.store(status, Ordering::Relaxed);
    }

    pub(crate) fn set_ready(&self, status: u16) {
        self.inner.ready.store(status, Ordering::Relaxed);
    }

    pub(crate) fn set_delay(&self, delay: Duration) {
        self.inner
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}

async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response<Body> {
    if req.uri().path() == "/readyz" {
        inner.health_checks.fetch_add(1, Ordering::Relaxed);
        let status = StatusCode::from_u16(inner.ready.load(Ordering::Relaxed)).unwrap();
        let mut res = Response::new(Body::from("ready"));
        *res.status_mut() = status;
        return res;
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let seen = Seen {
        method: parts.method,
        uri: parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned(),
        version: parts.version,
        headers: parts.headers,
        body,
    };
    let index = {
        let mut all = inner.seen.lock().unwrap();
        all.push(seen.clone());
        all.len() - 1
    };
    let delay = inner.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(responder) = &inner.responder {
        return responder(&seen, index);
    }
    let status = StatusCode::from_u16(inner.status.load(Ordering::Relaxed)).unwrap();
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Body::from(inner.name.clone()))
        .unwrap()
}

/// An address nothing listens on.
pub(crate) fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

/// The gateway's public listener and its admin router, both on 127.0.0.1:0.
pub(crate) struct Gw {
    pub gateway: Arc<Gateway>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Gw {
    pub(crate) async fn start(settings: GatewaySettings) -> Self {
        Self::with_phases(settings, vec![]).await
    }

    /// [`Gw::start`] with `phases` plugged into the request path, as the binary would.
    pub(crate) async fn with_phases(
        settings: GatewaySettings,
        phases: Vec<Arc<dyn ErasedPhase>>,
    ) -> Self {
        let gateway = Gateway::new(&settings, None, phases).expect("valid gateway settings");
        let listener = keel_gateway::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(keel_gateway::server::serve(
            gateway.clone(),
            listener,
            None,
            async {
                let _ = stopped.await;
            },
            Duration::from_millis(200),
        ));
        let served = tokio::spawn(async move {
            serving.await.unwrap().unwrap();
        });
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let router = keel_gateway::admin::router(gateway.clone(), None);
        let admin_task = tokio::spawn(async move {
            axum::serve(admin_listener, router).await.unwrap();
        });
        Self {
            gateway,
            addr,
            admin,
            stop: Some(stop),
            tasks: vec![served, admin_task],
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// GET through the gateway: status and body text.
    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let res = client().get(self.url(path)).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.text().await.unwrap())
    }

    /// `healthy` of each server of `pool`, as the admin API's `/upstreams` reports it.
    pub(crate) async fn health(&self, pool: &str) -> Vec<(String, bool)> {
        let doc: serde_json::Value = client()
            .get(self.admin_url("/upstreams"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        doc["pools"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["pool"] == pool)
            .flat_map(|p| p["servers"].as_array().unwrap().iter())
            .map(|s| {
                (
                    s["addr"].as_str().unwrap().to_owned(),
                    s["healthy"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    /// Waits until the admin API reports `server` of `pool` as `healthy`.
    pub(crate) async fn wait_health(&self, pool: &str, server: &str, healthy: bool) {
        let reached = eventually(Duration::from_secs(3), async || {
            self.health(pool)
                .await
                .iter()
                .any(|(addr, h)| addr == server && *h == healthy)
        })
        .await;
        assert!(
            reached.is_some(),
            "{server} in {pool} never became healthy={healthy}"
        );
    }
}

/// A client with no proxy and no connection reuse surprises: one per call is cheap enough.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Settings with the given pools and routes; retries are not held back by the budget.
pub(crate) fn settings(pools: Vec<PoolSettings>, routes: Vec<RouteSettings>) -> GatewaySettings {
    GatewaySettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        retry_budget_min_per_sec: 10_000,
        pools,
        routes,
        ..GatewaySettings::default()
    }
}

/// A pool with fast health checks (every 50 ms, one check flips a state) and passive ejection
/// out of the way (tests of ejection turn it on).
pub(crate) fn pool(name: &str, servers: &[&Upstream]) -> PoolSettings {
    pool_of(name, servers.iter().map(|u| u.authority()).collect())
}

pub(crate) fn pool_of(name: &str, servers: Vec<String>) -> PoolSettings {
    PoolSettings {
        name: name.to_owned(),
        servers,
        health_interval_ms: 50,
        health_timeout_ms: 500,
        healthy_threshold: 1,
        unhealthy_threshold: 1,
        eject_after_failures: 1_000_000,
        eject_base_ms: 200,
        connect_timeout_ms: 500,
        ..PoolSettings::default()
    }
}

pub(crate) fn route(prefix: &str, pool: &str) -> RouteSettings {
    RouteSettings {
        prefix: prefix.to_owned(),
        pool: pool.to_owned(),
        timeout_ms: 5_000,
        ..RouteSettings::default()
    }
}

/// Polls `check` every 20 ms until it holds or `within` passes; how long it took, if it held.
pub(crate) async fn eventually(
    within: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if check().await {
            return Some(started.elapsed());
        }
        if started.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `n` GETs of `path` one after another; the statuses.
pub(crate) async fn get_n(gw: &Gw, path: &str, n: usize) -> Vec<u16> {
    let client = client();
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        let res = client.get(gw.url(path)).send().await.unwrap();
        statuses.push(res.status().as_u16());
        let _ = res.bytes().await;
    }
    statuses
}

/// The `code` of a gateway error body.
pub(crate) fn code(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("<not an error body: {body}>"))
}
