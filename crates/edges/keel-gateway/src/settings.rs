//! The gateway's settings, the `[gateway]` section of `keel.toml`: keel's front door (L7 load
//! balancer and API gateway). `keel up` runs it in process in front of the API; `keel gateway`
//! runs it alone in front of `keel serve` instances. The gateway owns these types (keys,
//! defaults and their documentation); keel-config composes them into its settings tree.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The gateway: listeners, limits, pools of upstreams and the routes to them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// Address `keel gateway` listens on (`keel up` listens on `server.listen`).
    pub listen: SocketAddr,
    /// The gateway's own operations listener: `/healthz`, `/readyz`, `/metrics` and the cache
    /// purge API. Kept off the public listener so that metrics and purges are not on the edge.
    /// Unset: no operations listener.
    pub admin_listen: Option<SocketAddr>,
    /// Threads `keel gateway` serves on, each with its own listener on the same port
    /// (`SO_REUSEPORT`), event loop and upstream connections, as nginx's worker processes;
    /// 0: one per CPU. (`keel up` serves on the API's runtime.)
    pub workers: usize,
    /// TLS termination; unset serves plain HTTP (HTTP/1.1, and HTTP/2 with prior knowledge).
    pub tls: Option<TlsSettings>,
    /// Longest time a client may take to send a request's headers (slow clients are closed).
    pub header_read_timeout_ms: u64,
    /// Longest time a client may take to send a request's body once its headers are in.
    pub body_read_timeout_ms: u64,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body; larger (announced or sent) gets 413.
    pub max_body_bytes: u64,
    /// Largest upstream response the gateway reads whole to compress or cache; larger ones stream.
    pub max_buffered_response_bytes: usize,
    /// Paths (prefixes) the public listener answers 404 for, whatever the routes say. Unset:
    /// `["/metrics"]` for `keel gateway` (the API's metrics belong to operators, not to the
    /// internet) and none for `keel up` (its one port is where a laptop reads them).
    pub hidden_paths: Option<Vec<String>>,
    /// Log one JSON line per request (target `keel_gateway::access`).
    pub access_log: bool,
    /// Retries may add at most this fraction of the requests (plus `retry_budget_min_per_sec`):
    /// retrying everything during an outage only doubles the load on what is left.
    pub retry_budget_ratio: f64,
    pub retry_budget_min_per_sec: u32,
    /// Source addresses (CIDR) allowed / denied; deny wins; an empty allow list allows all.
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub cors: Option<CorsSettings>,
    pub compression: CompressionSettings,
    pub cache: WebCacheSettings,
    /// Named rate limits, chosen per route.
    pub rate_limits: Vec<RateLimitSettings>,
    /// Named JWT checks at the edge, chosen per route.
    pub jwt: Vec<EdgeJwtSettings>,
    pub pools: Vec<PoolSettings>,
    /// Matched by host (if given) then longest path prefix. `keel up` with no routes sends
    /// everything to the in-process API.
    pub routes: Vec<RouteSettings>,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            admin_listen: None,
            workers: 0,
            tls: None,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            max_buffered_response_bytes: 1024 * 1024,
            hidden_paths: None,
            access_log: false,
            retry_budget_ratio: 0.2,
            retry_budget_min_per_sec: 10,
            allow: Vec::new(),
            deny: Vec::new(),
            cors: None,
            compression: CompressionSettings::default(),
            cache: WebCacheSettings::default(),
            rate_limits: Vec::new(),
            jwt: Vec::new(),
            pools: Vec::new(),
            routes: Vec::new(),
        }
    }
}

impl GatewaySettings {
    /// `workers`, with 0 resolved to the number of CPUs.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }
}

/// Certificate and key files (PEM). They are read again when they change, without a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// How often the files are checked for a change (milliseconds).
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
}

fn default_reload_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsSettings {
    /// Origins allowed (`https://app.example.com`), or `*`.
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age_secs: u64,
}

impl Default for CorsSettings {
    fn default() -> Self {
        Self {
            allow_origins: Vec::new(),
            allow_methods: ["GET", "POST", "PUT", "PATCH", "DELETE"]
                .map(str::to_owned)
                .to_vec(),
            allow_headers: ["authorization", "content-type", "x-request-id"]
                .map(str::to_owned)
                .to_vec(),
            expose_headers: vec!["x-request-id".to_owned()],
            allow_credentials: false,
            max_age_secs: 600,
        }
    }
}

/// gzip of compressible responses for clients that accept it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionSettings {
    pub enabled: bool,
    /// Smaller bodies are sent as they are (compression would not pay).
    pub min_bytes: usize,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            min_bytes: 1024,
        }
    }
}

/// The shared response cache (RFC 9111 semantics), used by routes with `cache = true`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebCacheSettings {
    /// Memory the cached responses may take, bodies and headers (bytes).
    pub max_bytes: u64,
    /// Largest single response stored.
    pub max_object_bytes: usize,
}

impl Default for WebCacheSettings {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            max_object_bytes: 1024 * 1024,
        }
    }
}

/// A token bucket per client (GCRA): `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub name: String,
    /// `ip` (the client's address) or `subject` (the `sub` of the token the edge verified; the
    /// address when the route verifies none).
    #[serde(default = "default_limit_key")]
    pub key: String,
    pub per_second: f64,
    pub burst: u32,
    /// Most clients tracked at once (memory bound).
    #[serde(default = "default_limit_keys")]
    pub max_clients: usize,
}

fn default_limit_key() -> String {
    "ip".to_owned()
}

fn default_limit_keys() -> usize {
    100_000
}

/// A JWT check at the edge: bearer tokens verified against a JWKS URL before the upstream sees
/// the request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeJwtSettings {
    pub name: String,
    pub jwks_url: String,
    pub issuer: String,
    pub audience: String,
    /// How long fetched keys are used before they are fetched again (an unknown `kid` fetches
    /// at once, at most every 30 s).
    #[serde(default = "default_jwks_ttl")]
    pub jwks_ttl_secs: u64,
}

fn default_jwks_ttl() -> u64 {
    3_600
}

/// A pool of interchangeable upstream servers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    pub name: String,
    /// `host:port` of each server.
    pub servers: Vec<String>,
    /// A file listing servers, one `host:port` per line (`#` comments); watched, so servers join
    /// and leave without a restart. Added to `servers`.
    pub discovery_file: Option<PathBuf>,
    /// `round-robin`, `least-outstanding` (power of two choices) or `hash`.
    pub algorithm: String,
    /// For `hash`: `header:NAME`, `cookie:NAME` or `path`. Requests without the key are
    /// balanced round robin.
    pub hash_key: Option<String>,
    /// Active health check: GET this path; any 2xx is healthy. Empty turns it off.
    pub health_path: String,
    pub health_interval_ms: u64,
    pub health_timeout_ms: u64,
    /// Consecutive failed checks before a server is marked down, and passed checks before up.
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// Passive outlier ejection: consecutive failures (connect errors, timeouts, 5xx) after which a
    /// server is ejected for `eject_base_ms` times the number of its ejections (capped at 10x).
    pub eject_after_failures: u32,
    pub eject_base_ms: u64,
    /// Never eject more than this share of the pool.
    pub max_ejected_percent: u32,
    /// Circuit breaker: most requests in flight to one server; beyond it the request goes to
    /// another server or fails fast with 503 instead of queueing.
    pub max_in_flight: u32,
    pub connect_timeout_ms: u64,
    /// Idle connections kept per server.
    pub max_idle_per_server: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            name: String::new(),
            servers: Vec::new(),
            discovery_file: None,
            algorithm: "round-robin".to_owned(),
            hash_key: None,
            health_path: "/readyz".to_owned(),
            health_interval_ms: 500,
            health_timeout_ms: 1_000,
            unhealthy_threshold: 1,
            healthy_threshold: 2,
            eject_after_failures: 5,
            eject_base_ms: 5_000,
            max_ejected_percent: 50,
            max_in_flight: 1_000,
            connect_timeout_ms: 1_000,
            max_idle_per_server: 256,
        }
    }
}

/// Where requests for a host and path prefix go, and what the gateway does on the way.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteSettings {
    /// Host to match (without port); unset matches any host.
    pub host: Option<String>,
    pub prefix: String,
    pub pool: String,
    /// Longest time for the upstream's response head, retries included.
    pub timeout_ms: u64,
    /// Further tries, on another server, of idempotent requests (GET, HEAD, OPTIONS, PUT,
    /// DELETE) after a connect error, a timeout or a 502/503/504; any request is retried when
    /// the connection failed before it was sent.
    pub retries: u32,
    /// Name of a `[[gateway.rate_limits]]` entry.
    pub rate_limit: Option<String>,
    /// Name of a `[[gateway.jwt]]` entry: requests without a valid bearer token get 401 here.
    pub jwt: Option<String>,
    /// Use the response cache for this route.
    pub cache: bool,
}

impl Default for RouteSettings {
    fn default() -> Self {
        Self {
            host: None,
            prefix: "/".to_owned(),
            pool: String::new(),
            timeout_ms: 30_000,
            retries: 2,
            rate_limit: None,
            jwt: None,
            cache: false,
        }
    }
}
