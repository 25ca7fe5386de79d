//! A pool of interchangeable upstream servers and what the gateway knows of each: health (active
//! checks), ejection (passive outlier detection), requests in flight (the circuit breaker's
//! limit), and the pool's retry budget.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::settings::PoolSettings;
use arc_swap::ArcSwap;
use http::HeaderMap;

use crate::balance::{Algorithm, Ring};
use crate::metrics::ServerMetrics;
use crate::upstream::{SocketOrName, Transport};

/// Ejections multiply the base ejection time up to this factor.
const MAX_EJECTION_FACTOR: u32 = 10;

#[derive(Debug)]
pub struct Server {
    pub addr: SocketOrName,
    in_flight: AtomicU32,
    /// The active health check's verdict (true until a check says otherwise).
    healthy: AtomicBool,
    passes: AtomicU32,
    fails: AtomicU32,
    /// Consecutive failed requests (passive).
    failures: AtomicU32,
    /// Milliseconds since the pool's epoch until which the server is ejected; 0: not ejected.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    pub metrics: ServerMetrics,
}

impl Server {
    fn new(pool: &str, addr: SocketOrName) -> Self {
        let metrics = ServerMetrics::new(pool, addr.as_str());
        metrics.healthy.set(1.0);
        Self {
            addr,
            in_flight: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            passes: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            metrics,
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn ejected(&self, now_ms: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms < until
    }
}

/// A request's hold on a server: counts it in flight until dropped.
#[derive(Debug)]
pub struct Lease {
    pub server: Arc<Server>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.server.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The servers as of the last configuration or discovery change, with their hash ring.
#[derive(Debug, Default)]
struct Members {
    servers: Vec<Arc<Server>>,
    ring: Ring,
}

#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub settings: PoolSettings,
    pub transport: Transport,
    algorithm: Algorithm,
    members: ArcSwap<Members>,
    epoch: Instant,
    budget: RetryBudget,
}

impl Pool {
    /// A pool over the configured servers (the discovery file, if any, is read by the caller).
    pub fn new(
        settings: PoolSettings,
        transport: Transport,
        budget_ratio: f64,
        budget_min_per_sec: u32,
    ) -> Result<Self, String> {
        let algorithm = Algorithm::parse(&settings.algorithm, settings.hash_key.as_deref())
            .map_err(|e| format!("pool {:?}: {e}", settings.name))?;
        let pool = Self {
            name: settings.name.clone(),
            algorithm,
            members: ArcSwap::from_pointee(Members::default()),
            epoch: Instant::now(),
            budget: RetryBudget::new(budget_ratio, budget_min_per_sec),
            transport,
            settings,
        };
        let mut addrs = pool.settings.servers.clone();
        if let Some(file) = &pool.settings.discovery_file {
            addrs.extend(read_discovery(file)?);
        }
        pool.set_servers(&addrs)
            .map_err(|e| format!("pool {:?}: {e}", pool.name))?;
        Ok(pool)
    }

    /// Replaces the member list; servers still listed keep their state (health, ejection, load).
    pub fn set_servers(&self, addrs: &[String]) -> Result<bool, String> {
        let current = self.members.load();
        let mut servers = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let addr = SocketOrName::parse(addr.trim())?;
            if servers.iter().any(|s: &Arc<Server>| s.addr == addr) {
                continue;
            }
            let kept = current.servers.iter().find(|s| s.addr == addr).cloned();
            servers.push(kept.unwrap_or_else(|| Arc::new(Server::new(&self.name, addr))));
        }
        let same = servers.len() == current.servers.len()
            && servers
                .iter()
                .zip(&current.servers)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if same {
            return Ok(false);
        }
        tracing::info!(
            pool = %self.name,
            servers = ?servers.iter().map(|s| s.addr.as_str()).collect::<Vec<_>>(),
            "pool members changed"
        );
        let ring = Ring::new(servers.iter().map(|s| s.addr.as_str()));
        self.members.store(Arc::new(Members { servers, ring }));
        Ok(true)
    }

    pub fn len(&self) -> usize {
        self.members.load().servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether requests go to the in-process API (no copies kept, no network headers).
    pub fn is_in_process(&self) -> bool {
        matches!(self.transport, Transport::InProcess(_))
    }

    pub fn servers(&self) -> Vec<Arc<Server>> {
        self.members.load().servers.clone()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// A server for this request, other than those it already tried: healthy, not ejected and
    /// under its in-flight limit. When every healthy server is ejected, ejection is ignored
    /// (better a struggling server than none). `None`: the pool has nothing to offer.
    pub fn pick(&self, path: &str, headers: &HeaderMap, tried: &[Arc<Server>]) -> Option<Lease> {
        let members = self.members.load();
        let servers = &members.servers;
        let now = self.now_ms();
        let limit = self.settings.max_in_flight;
        let key = self
            .algorithm
            .hash_key()
            .and_then(|key| key.of(path, headers));
        let open = |i: usize| {
            let s: &Arc<Server> = &servers[i];
            s.is_healthy() && s.in_flight() < limit && !tried.iter().any(|t| Arc::ptr_eq(t, s))
        };
        let load = |i: usize| servers[i].in_flight();
        let chosen = self
            .algorithm
            .pick(
                servers.len(),
                &members.ring,
                key,
                |i| open(i) && !servers[i].ejected(now),
                load,
            )
            .or_else(|| {
                self.algorithm
                    .pick(servers.len(), &members.ring, key, open, load)
            })?;
        let server = servers[chosen].clone();
        server.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Lease { server })
    }

    /// Whether any server could take a request if it were not at its in-flight limit: tells a
    /// full pool (503, circuit open) from an empty or dead one (502).
    pub fn saturated(&self) -> bool {
        let members = self.members.load();
        members.servers.iter().any(|s| s.is_healthy())
            && members
                .servers
                .iter()
                .filter(|s| s.is_healthy())
                .all(|s| s.in_flight() >= self.settings.max_in_flight)
    }

    /// A request's outcome on a server, for passive outlier ejection.
    pub fn report(&self, server: &Server, ok: bool) {
        if ok {
            if server.failures.load(Ordering::Relaxed) != 0 {
                server.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let failures = server.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < self.settings.eject_after_failures.max(1) {
            return;
        }
        let now = self.now_ms();
        if server.ejected(now) {
            return;
        }
        let members = self.members.load();
        let ejected = members.servers.iter().filter(|s| s.ejected(now)).count();
        let total = members.servers.len().max(1);
        if (ejected + 1) * 100 > total * self.settings.max_ejected_percent as usize {
            return;
        }
        let times = (server.ejections.fetch_add(1, Ordering::Relaxed) + 1).min(MAX_EJECTION_FACTOR);
        let duration = self.settings.eject_base_ms * u64::from(times);
        server
            .ejected_until
            .store(now + duration, Ordering::Relaxed);
        server.failures.store(0, Ordering::Relaxed);
        server.metrics.ejections.increment(1);
        tracing::warn!(
            pool = %self.name,
            server = server.addr.as_str(),
            failures,
            ejected_ms = duration,
            "upstream ejected after consecutive failures"
        );
    }

    /// The active health check's result for a server; returns whether its state flipped.
    pub fn check_result(&self, server: &Server, passed: bool, detail: &str) -> bool {
        let (mine, other, threshold) = if passed {
            (
                &server.passes,
                &server.fails,
                self.settings.healthy_threshold,
            )
        } else {
            (
                &server.fails,
                &server.passes,
                self.settings.unhealthy_threshold,
            )
        };
        other.store(0, Ordering::Relaxed);
        let count = mine.fetch_add(1, Ordering::Relaxed) + 1;
        if count < threshold.max(1) || server.is_healthy() == passed {
            return false;
        }
        server.healthy.store(passed, Ordering::Relaxed);
        server.metrics.healthy.set(if passed { 1.0 } else { 0.0 });
        if passed {
            // Back in service: its past ejections are forgiven, it starts with a clean slate.
            server.ejected_until.store(0, Ordering::Relaxed);
            server.ejections.store(0, Ordering::Relaxed);
            server.failures.store(0, Ordering::Relaxed);
            tracing::info!(pool = %self.name, server = server.addr.as_str(), "upstream healthy");
        } else {
            tracing::warn!(pool = %self.name, server = server.addr.as_str(), detail, "upstream unhealthy");
        }
        true
    }

    /// Counts a first try against the retry budget.
    pub fn count_request(&self) {
        self.budget.request();
    }

    /// Whether a retry may go out now (and counts it if so).
    pub fn allow_retry(&self) -> bool {
        self.budget.retry()
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.settings.health_interval_ms.max(50))
    }
}

/// Reads a discovery file: one `host:port` per line, `#` comments, blank lines ignored.
pub fn read_discovery(path: &PathBuf) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("discovery file {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Retries allowed per second: `ratio` of the requests in the current and previous second plus
/// a floor, so a trickle of traffic can still retry, and an outage cannot multiply the load.
#[derive(Debug)]
struct RetryBudget {
    ratio: f64,
    min_per_sec: u32,
    epoch: Instant,
    /// (second, requests, retries) packed: second in the high 24 bits.
    window: std::sync::Mutex<Window>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    second: u64,
    requests: u64,
    retries: u64,
    previous_requests: u64,
}

impl RetryBudget {
    fn new(ratio: f64, min_per_sec: u32) -> Self {
        Self {
            ratio: ratio.max(0.0),
            min_per_sec,
            epoch: Instant::now(),
            window: std::sync::Mutex::new(Window::default()),
        }
    }

    fn roll(&self) -> std::sync::MutexGuard<'_, Window> {
        let second = self.epoch.elapsed().as_secs();
        let mut w = self.window.lock().expect("retry budget lock");
        if w.second != second {
            w.previous_requests = if w.second + 1 == second {
                w.requests
            } else {
                0
            };
            w.second = second;
            w.requests = 0;
            w.retries = 0;
        }
        w
    }

    fn request(&self) {
        self.roll().requests += 1;
    }

    fn retry(&self) -> bool {
        let mut w = self.roll();
        let basis = w.requests.max(w.previous_requests) as f64;
        let allowed = u64::from(self.min_per_sec) + (basis * self.ratio) as u64;
        if w.retries < allowed {
            w.retries += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(servers: &[&str], tweak: impl FnOnce(&mut PoolSettings)) -> Pool {
        let mut settings = PoolSettings {
            name: "api".to_owned(),
            servers: servers.iter().map(|s| (*s).to_owned()).collect(),
            ..PoolSettings::default()
        };
        tweak(&mut settings);
        Pool::new(
            settings,
            Transport::http(Duration::from_secs(1), 4, 0),
            0.2,
            2,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn consecutive_failures_eject_and_time_readmits() {
        let p = pool(&["a:1", "b:1", "c:1", "d:1"], |s| {
            s.eject_after_failures = 3;
            s.eject_base_ms = 150;
        });
        let a = p.servers()[0].clone();
        for _ in 0..2 {
            p.report(&a, false);
        }
        p.report(&a, true);
        p.report(&a, false);
        p.report(&a, false);
        assert!(!a.ejected(p.now_ms()), "a success resets the count");
        p.report(&a, false);
        assert!(a.ejected(p.now_ms()));
        for _ in 0..50 {
            let lease = p.pick("/", &HeaderMap::new(), &[]).unwrap();
            assert!(!Arc::ptr_eq(&lease.server, &a));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !a.ejected(p.now_ms()),
            "re-admitted after its ejection time"
        );
        // A second ejection lasts twice as long.
        for _ in 0..3 {
            p.report(&a, false);
        }
        let until = a.ejected_until.load(Ordering::Relaxed) - p.now_ms();
        assert!(until > 150, "{until}");
    }

    #[test]
    fn never_ejects_more_than_the_allowed_share() {
        let p = pool(&["a:1", "b:1"], |s| s.eject_after_failures = 1);
        let [a, b] = [p.servers()[0].clone(), p.servers()[1].clone()];
        p.report(&a, false);
        p.report(&b, false);
        let now = p.now_ms();
        assert!(a.ejected(now));
        assert!(!b.ejected(now), "50% of two servers is one");
    }

    #[test]
    fn in_flight_limit_opens_the_circuit() {
        let p = pool(&["a:1", "b:1"], |s| s.max_in_flight = 2);
        let leases: Vec<_> = (0..4)
            .map(|_| p.pick("/", &HeaderMap::new(), &[]).unwrap())
            .collect();
        assert!(p.pick("/", &HeaderMap::new(), &[]).is_none());
        assert!(p.saturated());
        drop(leases);
        assert!(p.pick("/", &HeaderMap::new(), &[]).is_some());
    }

    #[test]
    fn health_thresholds_and_exclusions() {
        let p = pool(&["a:1", "b:1"], |s| {
            s.unhealthy_threshold = 2;
            s.healthy_threshold = 2;
        });
        let a = p.servers()[0].clone();
        assert!(!p.check_result(&a, false, "503"));
        assert!(p.check_result(&a, false, "503"));
        assert!(!a.is_healthy());
        let b = p.servers()[1].clone();
        assert!(
            p.pick("/", &HeaderMap::new(), std::slice::from_ref(&b))
                .is_none()
        );
        assert!(!p.check_result(&a, true, ""));
        assert!(p.check_result(&a, true, ""));
        assert!(a.is_healthy());
    }

    #[test]
    fn membership_changes_keep_state() {
        let p = pool(&["a:1", "b:1"], |_| {});
        let a = p.servers()[0].clone();
        p.check_result(&a, false, "down");
        assert!(
            p.set_servers(&["b:1".into(), "a:1".into(), "c:1".into()])
                .unwrap()
        );
        let kept = p.servers().into_iter().find(|s| s.addr == a.addr).unwrap();
        assert!(Arc::ptr_eq(&kept, &a) && !kept.is_healthy());
        assert!(
            !p.set_servers(&["b:1".into(), "a:1".into(), "c:1".into()])
                .unwrap()
        );
        assert!(p.set_servers(&["not an address".into()]).is_err());
    }

    #[test]
    fn the_retry_budget_bounds_retries() {
        let p = pool(&["a:1"], |_| {});
        for _ in 0..100 {
            p.count_request();
        }
        let allowed = (0..100).filter(|_| p.allow_retry()).count();
        assert_eq!(allowed, 2 + 20);
    }

    #[test]
    fn discovery_files_list_servers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("servers");
        std::fs::write(&path, "# api\n127.0.0.1:1 \n\n127.0.0.1:2 # second\n").unwrap();
        assert_eq!(
            read_discovery(&path).unwrap(),
            ["127.0.0.1:1", "127.0.0.1:2"]
        );
        assert!(read_discovery(&dir.path().join("missing")).is_err());
    }
}
