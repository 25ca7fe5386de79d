//! keel's front door: an L7 reverse proxy, load balancer and API gateway (DESIGN.md C9).
//!
//! - [`Gateway`]: built from `[gateway]` settings; [`Gateway::reload`] swaps in new settings
//!   without dropping a connection; [`server::serve`] runs a listener.
//! - [`proxy`]: the request path; [`phase`]: its phases, where today's duties run and the WAF
//!   plugs in ([`phase::Phase`], a per-request context, a hook per phase).
//! - [`pool`], [`balance`], [`health`]: upstream servers, load balancing, health and ejection.
//! - [`upstream`]: pooled HTTP/1.1 to `keel serve`, or the in-process API for `keel up`.
//! - [`cache`], [`limit`], [`acl`], [`cors`], [`compress`], [`edge_jwt`], [`tls`]: the duties.
//! - [`settings`]: the `[gateway]` settings (keys, defaults), which keel-config composes.
//! - [`admin`]: the operations listener (`/healthz`, `/readyz`, `/metrics`, cache purge).

pub mod acl;
pub mod admin;
pub mod balance;
pub mod cache;
pub mod compress;
pub mod cors;
pub mod edge_jwt;
pub mod health;
pub mod limit;
pub mod metrics;
pub mod phase;
pub mod pool;
pub mod proxy;
pub mod route;
pub mod server;
pub mod settings;
pub mod tls;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::settings::{GatewaySettings, PoolSettings, RouteSettings};
use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use crate::phase::ErasedPhase;
use crate::phase::builtin::Duty;
use crate::pool::Pool;
use crate::route::{LimitKey, Route, Routes};
use crate::upstream::{IN_PROCESS, InProcess, Transport};

/// One consistent set of settings and what was built from them; a reload builds a new one and
/// swaps it in, so a request sees either the old or the new configuration, never a mix.
pub struct Edge {
    pub settings: GatewaySettings,
    /// Paths answered 404 on the public listener (`hidden_paths` or the role's default).
    pub hidden: Vec<String>,
    pub routes: Routes,
    pub pools: Vec<Arc<Pool>>,
    pub acl: Option<acl::IpAcl>,
    pub cors: Option<cors::Cors>,
    /// The response cache outlives reloads (it belongs to the gateway, not to one configuration).
    pub cache: Option<Arc<cache::WebCache>>,
    /// The phases the proxy walks, in order: the built-in duties and the plugged-in ones.
    pub(crate) duties: Vec<Duty>,
    pub ids: Arc<keel_http::RequestIds>,
    /// Metrics of requests no route matched.
    pub unrouted: metrics::RouteMetrics,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Edge {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("routes", &self.routes)
            .field("pools", &self.pools.len())
            .finish_non_exhaustive()
    }
}

/// The gateway: the current [`Edge`], swapped whole on reload.
pub struct Gateway {
    edge: ArcSwap<Edge>,
    in_process: Option<InProcess>,
    cache: Option<Arc<cache::WebCache>>,
    ids: Arc<keel_http::RequestIds>,
    phases: Vec<Arc<dyn ErasedPhase>>,
    draining: AtomicBool,
    http: reqwest::Client,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("edge", &self.edge.load())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds the gateway and starts its health checkers. `in_process` is the API when the
    /// gateway runs inside `keel up`: it is the upstream `in-process`, and with no routes
    /// configured every request goes to it. `phases` are plugged into the request path after
    /// CORS preflights and before edge JWT (the WAF's place). Must run inside a tokio runtime.
    pub fn new(
        settings: &GatewaySettings,
        in_process: Option<InProcess>,
        phases: Vec<Arc<dyn ErasedPhase>>,
    ) -> Result<Arc<Self>, String> {
        let cache = settings.routes.iter().any(|r| r.cache).then(|| {
            Arc::new(cache::WebCache::new(
                settings.cache.max_bytes,
                settings.cache.max_object_bytes,
            ))
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let gateway = Self {
            edge: ArcSwap::from_pointee(Edge::empty()),
            in_process,
            cache,
            ids: Arc::default(),
            phases,
            draining: AtomicBool::new(false),
            http,
        };
        let edge = gateway.build(settings)?;
        gateway.edge.store(Arc::new(edge));
        Ok(Arc::new(gateway))
    }

    /// Checks new settings and, if they hold, makes them current: requests already in flight
    /// finish under the old ones, new requests take the new ones, no connection is dropped.
    /// Servers keep no state across a reload (health is checked again at once).
    pub fn reload(&self, settings: &GatewaySettings) -> Result<(), String> {
        let edge = self.build(settings)?;
        self.edge.store(Arc::new(edge));
        tracing::info!(
            routes = settings.routes.len(),
            pools = settings.pools.len(),
            "gateway configuration reloaded"
        );
        Ok(())
    }

    pub fn edge(&self) -> Arc<Edge> {
        self.edge.load_full()
    }

    /// Readiness turns false: whoever balances in front of this gateway stops sending to it.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn cache(&self) -> Option<&Arc<cache::WebCache>> {
        self.cache.as_ref()
    }

    fn build(&self, settings: &GatewaySettings) -> Result<Edge, String> {
        let mut settings = settings.clone();
        if settings.routes.is_empty() && self.in_process.is_some() {
            // `keel up`: everything to the in-process API, which has no second copy to retry on.
            settings.pools.push(PoolSettings {
                name: "api".to_owned(),
                servers: vec![IN_PROCESS.to_owned()],
                health_path: String::new(),
                ..PoolSettings::default()
            });
            settings.routes.push(RouteSettings {
                pool: "api".to_owned(),
                retries: 0,
                ..RouteSettings::default()
            });
        }
        if settings.routes.is_empty() {
            return Err(
                "gateway.routes: none configured; add a [[gateway.routes]] with a pool".to_owned(),
            );
        }
        if settings.retry_budget_ratio.is_nan() || settings.retry_budget_ratio < 0.0 {
            return Err("gateway.retry_budget_ratio must be 0 or more".to_owned());
        }

        let mut pools: HashMap<String, Arc<Pool>> = HashMap::new();
        for p in &settings.pools {
            if p.name.is_empty() {
                return Err("gateway.pools: a pool needs a name".to_owned());
            }
            if pools.contains_key(&p.name) {
                return Err(format!("gateway.pools: {:?} is defined twice", p.name));
            }
            let in_process = p.servers.iter().any(|s| s == IN_PROCESS);
            let transport = match (&self.in_process, in_process) {
                (Some(api), true) => Transport::InProcess(api.clone()),
                (None, true) => {
                    return Err(format!(
                        "pool {:?}: `in-process` exists only under `keel up`",
                        p.name
                    ));
                }
                (_, false) => Transport::http(
                    Duration::from_millis(p.connect_timeout_ms.max(1)),
                    p.max_idle_per_server,
                    // `keel up` serves on its one runtime: no worker threads.
                    if self.in_process.is_some() {
                        0
                    } else {
                        settings.worker_threads()
                    },
                ),
            };
            if p.servers.is_empty() && p.discovery_file.is_none() {
                return Err(format!(
                    "pool {:?}: list servers or a discovery_file",
                    p.name
                ));
            }
            let pool = Pool::new(
                p.clone(),
                transport,
                settings.retry_budget_ratio,
                settings.retry_budget_min_per_sec,
            )?;
            pools.insert(p.name.clone(), Arc::new(pool));
        }

        let mut limits = HashMap::new();
        for l in &settings.rate_limits {
            let key = match l.key.as_str() {
                "ip" => LimitKey::Ip,
                "subject" => LimitKey::Subject,
                other => {
                    return Err(format!(
                        "rate limit {:?}: key {other:?}; use ip or subject",
                        l.name
                    ));
                }
            };
            let limiter = limit::RateLimiter::new(l.per_second, l.burst, l.max_clients)
                .map_err(|e| format!("rate limit {:?}: {e}", l.name))?;
            limits.insert(l.name.clone(), (Arc::new(limiter), key));
        }
        let mut jwts = HashMap::new();
        for j in &settings.jwt {
            jwts.insert(
                j.name.clone(),
                Arc::new(edge_jwt::EdgeJwt::new(j, self.http.clone())),
            );
        }

        let mut routes = Vec::new();
        for r in &settings.routes {
            let pool = pools
                .get(&r.pool)
                .cloned()
                .ok_or_else(|| format!("route {:?}: no pool named {:?}", r.prefix, r.pool))?;
            let limit = match &r.rate_limit {
                Some(name) => Some(limits.get(name).cloned().ok_or_else(|| {
                    format!("route {:?}: no rate limit named {name:?}", r.prefix)
                })?),
                None => None,
            };
            let jwt =
                match &r.jwt {
                    Some(name) => Some(jwts.get(name).cloned().ok_or_else(|| {
                        format!("route {:?}: no jwt check named {name:?}", r.prefix)
                    })?),
                    None => None,
                };
            routes.push(Route::new(r, pool, limit, jwt)?);
        }

        let acl = if settings.allow.is_empty() && settings.deny.is_empty() {
            None
        } else {
            Some(
                acl::IpAcl::new(&settings.allow, &settings.deny)
                    .map_err(|e| format!("gateway.allow/deny: {e}"))?,
            )
        };
        let cors = match &settings.cors {
            Some(c) => Some(cors::Cors::new(c).map_err(|e| format!("gateway.cors: {e}"))?),
            None => None,
        };
        let hidden = settings.hidden_paths.clone().unwrap_or_else(|| {
            if self.in_process.is_some() {
                Vec::new()
            } else {
                vec!["/metrics".to_owned()]
            }
        });
        let pools: Vec<Arc<Pool>> = pools.into_values().collect();
        let tasks = pools
            .iter()
            .flat_map(|p| health::spawn(p.clone()))
            .collect();
        Ok(Edge {
            hidden,
            routes: Routes::new(routes),
            pools,
            acl,
            cors,
            cache: self.cache.clone(),
            duties: Duty::list(&self.phases),
            ids: self.ids.clone(),
            unrouted: metrics::RouteMetrics::new("unrouted"),
            tasks,
            settings,
        })
    }
}

impl Edge {
    fn empty() -> Self {
        Self {
            settings: GatewaySettings::default(),
            hidden: Vec::new(),
            routes: Routes::default(),
            pools: Vec::new(),
            acl: None,
            cors: None,
            cache: None,
            duties: Duty::list(&[]),
            ids: Arc::default(),
            unrouted: metrics::RouteMetrics::new("unrouted"),
            tasks: Vec::new(),
        }
    }
}
