//! The keel binary's library half: [`Application`] wires configuration, the database, the cache
//! tiers and the API into one server, so that tests can start the real thing in process.
//!
//! - [`database`]: opening the configured engine and migrating it.
//! - [`hospital`]: `keel hospital …`, the error hospital from a terminal.
//! - [`identity`]: the identity provider: its secrets, settings and signing keys.
//! - [`queue`]: opening the configured broker and its hospital.
//! - [`workers`]: the worker role (outbox relay, subscriber groups, queue metrics).
//! - [`Application`]: build (binds the listener, port 0 allowed), then run until a shutdown
//!   signal, draining as DESIGN.md C1 requires.

pub mod database;
pub mod gateway;
pub mod hospital;
pub mod identity;
pub mod queue;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use keel_api::jobs::JobsState;
use keel_api::{AppState, HttpSettings, Probe, Readiness};
use keel_cache::{CachePolicy, CachedUsers, ResourceCache, SharedTier, WriteBackOptions};
use keel_cache_redis::RedisTier;
use keel_config::Settings;
use keel_domain::{EventStore, UserRepo};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;
use workers::Workers;

/// How long a Redis command may take before the cache gives up on it and uses the database.
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_millis(250);
/// Longest the write-back flush may take at shutdown; what remains stays in the journal.
const FLUSH_ON_SHUTDOWN: Duration = Duration::from_secs(30);

/// The API role, built and bound, ready to run.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    users: Arc<CachedUsers>,
    readiness: Arc<Readiness>,
    settings: Settings,
    repo: Arc<dyn UserRepo>,
    events: Arc<dyn EventStore>,
    /// Keeps the API's view of the outbox backlog fresh (whichever process relays).
    poller: tokio::task::JoinHandle<()>,
    workers: Option<Workers>,
    /// The broker and hospital, when opened for the console before the worker role starts.
    queue: Option<queue::Queue>,
    identity: Option<Arc<keel_identity::service::Idp>>,
    /// Serve through the in-process gateway (`keel up`) rather than the bare API (`keel serve`).
    gateway: bool,
}

impl Application {
    /// Opens the database (migrating it if so configured), connects Redis when configured,
    /// replays any write-back journal, and binds the listener.
    pub async fn build(
        settings: Settings,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Self> {
        // Loading checks too; settings built in code (tests, embedders) are checked here.
        settings.validate().map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(&settings.data_dir).with_context(|| {
            format!(
                "cannot create data directory {}",
                settings.data_dir.display()
            )
        })?;
        let database = database::Database::open(&settings).await?;
        if settings.database.migrate_on_start {
            database
                .migrate()
                .await
                .context("cannot apply database migrations")?;
        }
        let repo = database.repo();
        let events = database.events();

        let l2 = match &settings.cache.redis_url {
            Some(url) => Some(
                RedisTier::connect(url.expose(), REDIS_RESPONSE_TIMEOUT)
                    .await
                    .with_context(|| format!("cannot reach Redis at {}", url.redacted()))?,
            ),
            None => None,
        };
        let shared = l2.clone().map(|l2| l2 as Arc<dyn SharedTier>);
        let users = build_users(&settings, repo.clone(), shared).await?;

        let mut probes: Vec<Arc<dyn Probe>> = vec![Arc::new(DatabaseProbe(repo.clone()))];
        if let Some(l2) = &l2 {
            probes.push(Arc::new(RedisProbe(l2.clone())));
        }
        let readiness = Arc::new(Readiness::new(probes));
        let backlog = Arc::new(AtomicU64::new(0));
        let listener = keel_gateway::server::bind(settings.server.listen)
            .with_context(|| format!("cannot listen on {}", settings.server.listen))?;
        let identity = identity::build(
            &settings,
            users.clone(),
            database.identity(),
            events.clone(),
            listener.local_addr()?,
            l2,
        )
        .await?;
        let state = AppState::new(keel_api::Shared {
            users: users.clone(),
            readiness: readiness.clone(),
            metrics,
            http: HttpSettings {
                body_limit_bytes: settings.server.body_limit_bytes,
                request_timeout: settings.request_timeout(),
                max_in_flight: settings.server.max_in_flight,
                access_log: settings.telemetry.access_log,
                trusted_proxies: settings.trusted_proxies().map_err(anyhow::Error::msg)?,
            },
            jobs: JobsState {
                events: events.clone(),
                outbox_backlog: backlog.clone(),
                max_outbox: settings.queue.max_outbox,
                job_ttl: (settings.queue.job_ttl_secs > 0)
                    .then(|| Duration::from_secs(settings.queue.job_ttl_secs)),
            },
            identity: identity.clone(),
            federation: Arc::default(),
        });
        // The hospital console needs the queue; it is opened here only when the console is on,
        // and shared with the worker role if this process runs it too.
        let console_on = settings.hospital.console && state.identity.is_some();
        let queue = if console_on {
            Some(queue::Queue::open(&settings).await?)
        } else {
            None
        };
        let console = match (&queue, &state.identity) {
            (Some(queue), Some(idp)) => keel_api::console::router(
                keel_hospital::HospitalService::new(queue.hospital.clone(), queue.broker.clone()),
                keel_http::CsrfKey::new(&idp.browser().csrf_key()),
            ),
            _ => axum::Router::new(),
        };
        let router = keel_api::router_with(state, console);
        let poller = tokio::spawn(poll_backlog(events.clone(), backlog.clone()));
        Ok(Self {
            listener,
            router,
            users,
            readiness,
            settings,
            repo,
            events,
            poller,
            workers: None,
            queue,
            identity,
            gateway: false,
        })
    }

    /// Puts the gateway in front of the API in this process (`keel up`): requests pass its
    /// duties (limits, CORS, compression, cache, TLS when configured) and reach the router as a
    /// function call, with no second socket.
    pub fn with_gateway(mut self) -> Self {
        self.gateway = true;
        self
    }

    /// Also runs the worker role in this process (`keel up`): the relay, the subscriber groups'
    /// workers and the queue metrics, on the configured broker.
    pub async fn with_workers(mut self) -> anyhow::Result<Self> {
        let queue = match self.queue.take() {
            Some(queue) => queue,
            None => queue::Queue::open(&self.settings).await?,
        };
        let workers = Workers::start(
            &self.settings,
            queue.broker,
            queue.hospital,
            self.events.clone(),
            self.repo.clone(),
        )
        .await?;
        self.workers = Some(workers);
        Ok(self)
    }

    /// The identity provider, when `identity.enabled`.
    pub fn identity(&self) -> Option<&Arc<keel_identity::service::Idp>> {
        self.identity.as_ref()
    }

    /// The whole router (the API tests enumerate its routes against the access rules).
    pub fn router(&self) -> &axum::Router {
        &self.router
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` turns 503 for the readiness grace
    /// period while requests are still served, then the listener closes and in-flight requests
    /// get until the drain deadline, then the write-back backlog is flushed.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            users,
            readiness,
            settings,
            workers,
            poller,
            gateway,
            ..
        } = self;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let drain = Duration::from_millis(settings.shutdown.drain_deadline_ms);
        let mut server = if gateway {
            let front = keel_gateway::Gateway::new(&settings.gateway, Some(router), Vec::new())
                .map_err(anyhow::Error::msg)?;
            let tls = match &settings.gateway.tls {
                Some(tls) => Some(
                    keel_gateway::tls::Terminator::start(tls)
                        .map_err(anyhow::Error::msg)?
                        .acceptor(),
                ),
                None => None,
            };
            tokio::spawn(async move {
                keel_gateway::server::serve(
                    front,
                    listener,
                    tls,
                    async move {
                        let _ = stop_rx.await;
                    },
                    drain,
                )
                .await
            })
        } else {
            // With the peer's address in each request (the IdP throttles and audits by it).
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            let server = axum::serve(listener, service).with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            });
            tokio::spawn(server.into_future())
        };

        tokio::select! {
            res = &mut server => {
                // The server stopped on its own: that is a failure, but the backlog still flushes.
                poller.abort();
                users.shutdown(FLUSH_ON_SHUTDOWN).await;
                if let Some(workers) = workers {
                    workers.shutdown(FLUSH_ON_SHUTDOWN).await;
                }
                return res.context("server task failed")?.context("server failed");
            }
            () = shutdown => {}
        }
        tracing::info!("shutdown requested: readiness is now false");
        readiness.start_draining();
        tokio::time::sleep(Duration::from_millis(settings.shutdown.readiness_grace_ms)).await;
        let _ = stop_tx.send(());
        // The gateway keeps its own drain deadline; this one is the backstop for both.
        match tokio::time::timeout(drain + Duration::from_millis(500), &mut server).await {
            Ok(res) => {
                res.context("server task failed")?
                    .context("server failed")?;
                tracing::info!("in-flight requests drained");
            }
            Err(_) => {
                server.abort();
                tracing::warn!(
                    deadline_ms = settings.shutdown.drain_deadline_ms,
                    "drain deadline passed; remaining connections closed"
                );
            }
        }
        users.shutdown(FLUSH_ON_SHUTDOWN).await;
        poller.abort();
        // After the flush, so the relay may still publish what the flush wrote; what remains in
        // the outbox is published by the next relay.
        if let Some(workers) = workers {
            workers.shutdown(FLUSH_ON_SHUTDOWN).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

async fn build_users(
    settings: &Settings,
    repo: Arc<dyn UserRepo>,
    l2: Option<Arc<dyn SharedTier>>,
) -> anyhow::Result<Arc<CachedUsers>> {
    let resource = &settings.cache.users;
    let policy = CachePolicy {
        ttl: Duration::from_secs(resource.ttl_secs),
        negative_ttl: Duration::from_secs(resource.negative_ttl_secs),
        jitter_ratio: resource.jitter_ratio,
        l1_max_entries: settings.cache.l1_max_entries,
    };
    let wb = &settings.cache.write_back;
    let write_back = WriteBackOptions {
        dir: settings.data_dir.join("writeback"),
        flush_interval: Duration::from_millis(wb.flush_interval_ms),
        max_batch: wb.max_batch,
        max_backlog: wb.max_backlog,
        backpressure_timeout: settings.request_timeout(),
    };
    let cache = ResourceCache::new("users", policy, l2);
    CachedUsers::new(repo, cache, resource.strategy, Some(write_back))
        .await
        .context("cannot start the users cache (write-back journal replay)")
}

/// Keeps the API's view of the outbox backlog fresh: one count a second, in every process that
/// serves the API, whichever process leads the relay.
async fn poll_backlog(events: Arc<dyn EventStore>, backlog: Arc<AtomicU64>) {
    loop {
        match events.outbox_backlog().await {
            Ok(n) => backlog.store(n, Ordering::Relaxed),
            Err(e) => tracing::debug!(error = %e, "outbox backlog unavailable"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

struct DatabaseProbe(Arc<dyn UserRepo>);

#[async_trait]
impl Probe for DatabaseProbe {
    fn name(&self) -> &'static str {
        "database"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|e| e.to_string())
    }
}

struct RedisProbe(Arc<RedisTier>);

#[async_trait]
impl Probe for RedisProbe {
    fn name(&self) -> &'static str {
        "redis"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|e| e.to_string())
    }
}
