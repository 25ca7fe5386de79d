//! The settings tree. Every field's doc comment is its documentation; defaults are those of
//! `keel up` on a laptop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use keel_domain::CacheStrategy as Strategy;
pub use keel_domain::SignupMode;

use crate::Secret;

/// All of keel's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Directory for keel's local state: the SQLite database (by default) and the write-back
    /// journal. Created if missing.
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub cache: CacheSettings,
    pub telemetry: TelemetrySettings,
    pub shutdown: ShutdownSettings,
    pub queue: QueueSettings,
    pub hospital: HospitalSettings,
    pub identity: IdentitySettings,
    pub gateway: crate::GatewaySettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("keel-data"),
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            cache: CacheSettings::default(),
            telemetry: TelemetrySettings::default(),
            shutdown: ShutdownSettings::default(),
            queue: QueueSettings::default(),
            hospital: HospitalSettings::default(),
            identity: IdentitySettings::default(),
            gateway: crate::GatewaySettings::default(),
        }
    }
}

/// The HTTP server of the API role.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Longest time a request may take before it is answered 503 (milliseconds).
    pub request_timeout_ms: u64,
    /// Largest accepted request body; larger bodies get 413 (bytes).
    pub body_limit_bytes: usize,
    /// Requests handled at once; beyond it requests are shed with 503 rather than queued without
    /// bound.
    pub max_in_flight: usize,
    /// Proxies (CIDR) whose `X-Forwarded-For` is believed: the client's address is then the
    /// last one in it not itself a trusted proxy. Empty (the default) trusts no header, so a
    /// client cannot pick its own address. `keel up`'s in-process gateway needs no entry.
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_timeout_ms: 30_000,
            body_limit_bytes: 64 * 1024,
            max_in_flight: 10_000,
            trusted_proxies: Vec::new(),
        }
    }
}

/// The relational database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// Database URL; its scheme picks the backend: `sqlite://PATH`, `postgres://…` or `mysql://…`
    /// (also `mariadb://…`). Unset means `sqlite://<data_dir>/keel.db`.
    pub url: Option<Secret>,
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// Longest wait for a free pooled connection before a request fails with 503 (milliseconds).
    pub acquire_timeout_ms: u64,
    /// Apply pending migrations when `up` or `serve` starts (concurrent starts are safe: the
    /// migrator takes a database lock). Turn off to migrate only with `keel migrate`.
    pub migrate_on_start: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
            acquire_timeout_ms: 5_000,
            migrate_on_start: true,
        }
    }
}

/// The cache tiers and each resource's caching technique.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Redis URL of the shared L2 tier (`redis://[:password@]host:port[/db]`). When set, every
    /// instance also keeps its L1 coherent through Redis invalidation messages. Unset: L1 only.
    pub redis_url: Option<Secret>,
    /// Entries the in-process L1 holds per resource before evicting the least useful ones.
    pub l1_max_entries: u64,
    /// Caching of `users`.
    pub users: ResourceCacheSettings,
    /// The write-back journal and flusher (used by resources whose strategy is `write-back`).
    pub write_back: WriteBackSettings,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            l1_max_entries: 100_000,
            users: ResourceCacheSettings::default(),
            write_back: WriteBackSettings::default(),
        }
    }
}

/// How one resource is cached.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceCacheSettings {
    /// `ttl`, `lazy`, `write-through` or `write-back`.
    pub strategy: Strategy,
    /// Lifetime of a cached value (seconds); the seed uses 180.
    pub ttl_secs: u64,
    /// Lifetime of a cached "not found", which shields the database from repeated lookups of a
    /// missing id (seconds; 0 turns negative caching off).
    pub negative_ttl_secs: u64,
    /// Each entry's lifetime is shortened by a random fraction up to this ratio, so entries written
    /// together do not all expire together (0 to 0.5).
    pub jitter_ratio: f64,
}

impl Default for ResourceCacheSettings {
    fn default() -> Self {
        Self {
            strategy: Strategy::Lazy,
            ttl_secs: 180,
            negative_ttl_secs: 5,
            jitter_ratio: 0.1,
        }
    }
}

/// The write-back journal and flusher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriteBackSettings {
    /// Time between flushes of the backlog to the database (milliseconds).
    pub flush_interval_ms: u64,
    /// Most journal entries written to the database in one transaction.
    pub max_batch: usize,
    /// Most unflushed entries; beyond it writes wait for the flusher (backpressure) instead of
    /// growing memory and the journal without bound.
    pub max_backlog: usize,
}

impl Default for WriteBackSettings {
    fn default() -> Self {
        Self {
            flush_interval_ms: 200,
            max_batch: 500,
            max_backlog: 100_000,
        }
    }
}

/// The message queue, its workers and the outbox relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// Broker URL; its scheme picks the backend: `sqlite://PATH` (the embedded queue),
    /// `postgres://…` (the SQL queue on PostgreSQL), `amqp://…` (RabbitMQ) or `nats://…`
    /// (NATS JetStream). Unset means `sqlite://<data_dir>/queue.db`.
    pub url: Option<Secret>,
    /// Prefix of every exchange, queue, stream and consumer keel makes on a shared broker.
    pub namespace: String,
    /// Messages a group may hold; beyond it publishing fails and the outbox holds the events
    /// (backpressure, never unbounded memory).
    pub max_depth: u64,
    /// Largest message body carried inline by the broker (bytes); a larger body is stored in the
    /// file store (`<data_dir>/blobs`) and the message carries a reference.
    pub max_body_bytes: usize,
    /// Largest message body accepted at all (bytes).
    pub max_message_bytes: usize,
    /// Partitions per group for keyed messages on RabbitMQ and NATS (the same in every process):
    /// the units of keyed work that move between processes; each is a queue or a consumer the
    /// server works for on every message, so few is cheaper.
    pub partitions: u32,
    /// Deliveries each worker of a group fetches and handles at once.
    pub batch: usize,
    /// Workers (concurrent fetch loops) per group in this process.
    pub workers_per_group: usize,
    /// How long a delivery is held by its worker before another may take it (milliseconds);
    /// longer than any handler runs.
    pub lease_ms: u64,
    /// Attempts in all, the first included; the last failure admits the message to the hospital.
    pub max_attempts: u32,
    /// First retry delay; each further retry doubles it, up to `backoff_max_ms` (milliseconds).
    pub backoff_base_ms: u64,
    /// Longest retry delay (milliseconds).
    pub backoff_max_ms: u64,
    /// Outbox rows the relay publishes per round.
    pub relay_batch: u32,
    /// Outbox rows waiting beyond which writes that emit events get 503 with Retry-After.
    pub max_outbox: u64,
    /// A job not started within this time expires (it goes to the hospital, marked expired)
    /// (seconds; 0: never).
    pub job_ttl_secs: u64,
    /// Durability of the embedded SQLite queue (WAL mode): `normal` (default, like the SQLite
    /// stores) or `full`. With `normal` an acknowledged publish survives a process crash, and an
    /// OS crash or power loss can lose the last commits (as it can for the store database whose
    /// outbox feeds the queue); `full` flushes every commit to disk first, at an fsync per
    /// commit. Ignored by the other brokers.
    pub sqlite_synchronous: SqliteSynchronous,
}

/// SQLite's `synchronous` setting for the embedded queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SqliteSynchronous {
    /// A commit is flushed to disk before it is acknowledged: survives power loss.
    Full,
    /// A commit is in the WAL file before it is acknowledged: survives a process crash.
    #[default]
    Normal,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            url: None,
            namespace: "keel".into(),
            max_depth: 1_000_000,
            max_body_bytes: 256 * 1024,
            max_message_bytes: 64 * 1024 * 1024,
            partitions: 4,
            batch: 32,
            workers_per_group: 2,
            lease_ms: 30_000,
            max_attempts: 5,
            backoff_base_ms: 500,
            backoff_max_ms: 300_000,
            relay_batch: 256,
            max_outbox: 100_000,
            job_ttl_secs: 3_600,
            sqlite_synchronous: SqliteSynchronous::Normal,
        }
    }
}

/// The error hospital: where messages go when handling them failed for good.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HospitalSettings {
    /// Patients it holds; beyond it admission is refused (the message stays in its queue and an
    /// alert is logged) instead of evicting anyone.
    pub max_patients: u64,
    /// A URL that receives a JSON notice per admission and a periodic digest. Unset: no notices.
    pub webhook_url: Option<Secret>,
    /// Time between digests (seconds).
    pub digest_interval_secs: u64,
    /// Serve the web console at `/admin/hospital` (to accounts with the operator or admin
    /// role; it needs `identity.enabled`).
    pub console: bool,
    /// Removed: the console uses the identity provider's roles. Kept only to say so when an
    /// old configuration sets it.
    #[serde(skip_serializing)]
    pub admin_password: Option<Secret>,
}

impl Default for HospitalSettings {
    fn default() -> Self {
        Self {
            max_patients: 100_000,
            webhook_url: None,
            digest_interval_secs: 3_600,
            console: true,
            admin_password: None,
        }
    }
}

/// The built-in identity provider (accounts, sign-in, tokens, MFA): served by the API role.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySettings {
    /// Serve the identity provider (`/auth/*`, `/.well-known/jwks.json`).
    pub enabled: bool,
    /// The `iss` of every token: the public base URL clients reach keel at. Unset:
    /// `http://` and `server.listen`.
    pub issuer: Option<String>,
    /// The `aud` of access tokens for keel's API.
    pub audience: String,
    /// At least 32 bytes, base64: the key refresh and device tokens are signed with. Every
    /// instance of a deployment needs the same one. Unset: made once and kept in
    /// `<data_dir>/identity.secret` (one instance only).
    pub secret: Option<Secret>,
    /// Master keys that seal stored secrets (TOTP secrets, signing keys), comma-separated
    /// `<id>:<32 bytes base64>`, the primary first (see README, key rotation). Unset: one key
    /// made once and kept in `<data_dir>/identity.keys` (one instance only).
    pub data_keys: Option<Secret>,
    /// Access-token lifetime (seconds).
    pub access_ttl_secs: u64,
    /// How long a sign-in lasts before signing in again (seconds).
    pub session_ttl_secs: u64,
    /// How often the token signing key rotates (seconds).
    pub key_rotation_secs: u64,
    /// How long an instance trusts what it read of an account's token generation (seconds):
    /// after a revocation (sign out everywhere, password change, disable, erasure), the
    /// longest another instance sharing the database keeps accepting the account's old
    /// tokens when no Redis (`cache.redis_url`) tells it at once. 0: read on every request.
    pub revocation_check_secs: u64,
    /// argon2id memory (KiB); at least OWASP's minimum, 19456.
    pub argon2_memory_kib: u32,
    /// argon2id passes; at least 2.
    pub argon2_iterations: u32,
    /// argon2id lanes; at least 1.
    pub argon2_parallelism: u32,
    /// Fewest characters of a new password (at least 8).
    pub password_min_chars: usize,
    /// Who may make an account through `POST /users`: `open` (anyone), `invite` (invited
    /// people only) or `closed` (admins only).
    pub signup: SignupMode,
    /// Days a password lasts before it must be reset (0: forever).
    pub password_max_age_days: u32,
    /// Days without a sign-in after which an account is disabled at its next attempt
    /// (0: never).
    pub dormant_after_days: u32,
    /// Roles that need a second factor (TOTP): an account holding one signs in without its
    /// roles until it enrols. Known roles: `admin`, `operator`.
    pub mfa_required_roles: Vec<String>,
    /// External OpenID Connect providers people may sign in through (`[[identity.providers]]`).
    pub providers: Vec<ProviderSettings>,
}

/// An external OpenID Connect provider (federation, "social login").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// `[a-z0-9-]`, 1 to 32 characters: in keel's URLs (`/federation/<name>/start`).
    pub name: String,
    /// The provider's issuer URL; its discovery document is read from under it.
    pub issuer: String,
    pub client_id: String,
    /// Unset: keel is a public client there (PKCE alone).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    #[serde(default = "default_scopes")]
    pub scopes: String,
    /// Link a first sign-in to the account with the same address when the provider says it
    /// verified the address. Turn off for providers that do not verify addresses.
    #[serde(default = "default_true")]
    pub link_by_verified_email: bool,
}

fn default_scopes() -> String {
    "openid email profile".into()
}

fn default_true() -> bool {
    true
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            issuer: None,
            audience: "keel".into(),
            secret: None,
            data_keys: None,
            access_ttl_secs: 15 * 60,
            session_ttl_secs: 30 * 24 * 3600,
            key_rotation_secs: 30 * 24 * 3600,
            revocation_check_secs: 5,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            password_min_chars: 12,
            signup: SignupMode::Open,
            password_max_age_days: 0,
            dormant_after_days: 0,
            mfa_required_roles: Vec::new(),
            providers: Vec::new(),
        }
    }
}

/// Which broker a queue URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Sqlite,
    Postgres,
    RabbitMq,
    Nats,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// One JSON object per line, for machines.
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

/// Logs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// `json` or `text`.
    pub log_format: LogFormat,
    /// A tracing filter: a level (`info`) or per-target directives (`info,keel_cache=debug`).
    pub log_level: String,
    /// One log line per HTTP request (method, route, status, latency, request id). Off by
    /// default: formatting a JSON line per request costs about a third of the cache-hit path's
    /// throughput (measured by `bench/run.sh`), and in keel's architecture the access log belongs
    /// to the gateway in front of the API servers. Errors are always logged.
    pub access_log: bool,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_level: "info".into(),
            access_log: false,
        }
    }
}

/// Graceful shutdown on SIGTERM or SIGINT (for example a reclaimed spot VM).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    /// After the signal, `/readyz` answers 503 for this long while requests are still accepted,
    /// so that a load balancer stops sending new ones first (milliseconds).
    pub readiness_grace_ms: u64,
    /// In-flight requests get this long to finish before the process exits anyway (milliseconds).
    pub drain_deadline_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            readiness_grace_ms: 0,
            drain_deadline_ms: 30_000,
        }
    }
}

/// Which relational engine a database URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
    MariaDb,
}

impl Settings {
    /// The database URL in force: the configured one, or the SQLite file under `data_dir`.
    pub fn database_url(&self) -> Secret {
        match &self.database.url {
            Some(url) => url.clone(),
            None => Secret::new(format!(
                "sqlite://{}",
                self.data_dir.join("keel.db").display()
            )),
        }
    }

    /// The engine the database URL selects (checked by `validate`, so callers may unwrap).
    pub fn database_kind(&self) -> Option<DatabaseKind> {
        let url = self.database_url();
        let scheme = url
            .expose()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(DatabaseKind::Sqlite),
            "postgres" | "postgresql" => Some(DatabaseKind::Postgres),
            "mysql" | "mariadb" => Some(DatabaseKind::MariaDb),
            _ => None,
        }
    }

    /// The database URL as the driver wants it (`mariadb://` is spelled `mysql://` for sqlx).
    pub fn driver_database_url(&self) -> Secret {
        let url = self.database_url();
        match url.expose().strip_prefix("mariadb://") {
            Some(rest) => Secret::new(format!("mysql://{rest}")),
            None => url,
        }
    }

    /// The queue URL in force: the configured one, or the SQLite file under `data_dir`.
    pub fn queue_url(&self) -> Secret {
        match &self.queue.url {
            Some(url) => url.clone(),
            None => Secret::new(format!(
                "sqlite://{}",
                self.data_dir.join("queue.db").display()
            )),
        }
    }

    /// The broker the queue URL selects (checked by `validate`).
    pub fn broker_kind(&self) -> Option<BrokerKind> {
        let url = self.queue_url();
        let scheme = url
            .expose()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(BrokerKind::Sqlite),
            "postgres" | "postgresql" => Some(BrokerKind::Postgres),
            "amqp" | "amqps" => Some(BrokerKind::RabbitMq),
            "nats" => Some(BrokerKind::Nats),
            _ => None,
        }
    }

    /// `server.trusted_proxies`, parsed.
    pub fn trusted_proxies(&self) -> Result<Vec<keel_http::Cidr>, String> {
        self.server
            .trusted_proxies
            .iter()
            .map(|entry| {
                keel_http::Cidr::parse(entry).map_err(|e| format!("server.trusted_proxies: {e}"))
            })
            .collect()
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.server.request_timeout_ms)
    }

    /// Cross-field checks that serde cannot express; each message names the key.
    pub fn validate(&self) -> Result<(), String> {
        self.trusted_proxies()?;
        if self.database_kind().is_none() {
            return Err(format!(
                "database.url: unsupported scheme in {:?}; use sqlite://, postgres:// or mysql://",
                self.database_url().redacted()
            ));
        }
        if self.broker_kind().is_none() {
            return Err(format!(
                "queue.url: unsupported scheme in {:?}; use sqlite://, postgres://, amqp:// or nats://",
                self.queue_url().redacted()
            ));
        }
        if self.queue.namespace.is_empty()
            || !self
                .queue
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "queue.namespace: must be letters, digits, _ or -, got {:?}",
                self.queue.namespace
            ));
        }
        if self.hospital.admin_password.is_some() {
            return Err("hospital.admin_password: removed; the console now signs people in with \
                        the identity provider: make an operator with \
                        `keel admin create --email <address> --role operator` and remove this setting"
                .to_owned());
        }
        let identity = &self.identity;
        if identity.argon2_memory_kib < 19 * 1024
            || identity.argon2_iterations < 2
            || identity.argon2_parallelism == 0
        {
            return Err(format!(
                "identity.argon2_*: m={} KiB, t={}, p={} is below the minimum of m=19456, t=2, p=1",
                identity.argon2_memory_kib, identity.argon2_iterations, identity.argon2_parallelism
            ));
        }
        if identity.password_min_chars < 8 {
            return Err(format!(
                "identity.password_min_chars: at least 8, got {}",
                identity.password_min_chars
            ));
        }
        if let Some(role) = identity
            .mfa_required_roles
            .iter()
            .find(|r| !keel_domain::identity::rbac::is_role(r))
        {
            return Err(format!(
                "identity.mfa_required_roles: unknown role {role:?}; known: {}",
                keel_domain::identity::rbac::ROLES.join(", ")
            ));
        }
        let mut names = std::collections::HashSet::new();
        for provider in &identity.providers {
            let name = &provider.name;
            if !((1..=32).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
            {
                return Err(format!(
                    "identity.providers: name {name:?} must be 1-32 characters of a-z, 0-9 and -"
                ));
            }
            if !names.insert(name) {
                return Err(format!("identity.providers: {name:?} is configured twice"));
            }
            if !(provider.issuer.starts_with("http://") || provider.issuer.starts_with("https://"))
            {
                return Err(format!(
                    "identity.providers.{name}.issuer: must start with http:// or https://, got {:?}",
                    provider.issuer
                ));
            }
            if provider.client_id.is_empty() {
                return Err(format!(
                    "identity.providers.{name}.client_id: must not be empty"
                ));
            }
        }
        if identity.access_ttl_secs == 0 || identity.access_ttl_secs > 24 * 3600 {
            return Err(format!(
                "identity.access_ttl_secs: 1 to 86400, got {}",
                identity.access_ttl_secs
            ));
        }
        if identity.key_rotation_secs < 2 * identity.access_ttl_secs {
            return Err(
                "identity.key_rotation_secs: must be at least twice identity.access_ttl_secs"
                    .to_owned(),
            );
        }
        if let Some(issuer) = &identity.issuer
            && !(issuer.starts_with("http://") || issuer.starts_with("https://"))
        {
            return Err(format!(
                "identity.issuer: must start with http:// or https://, got {issuer:?}"
            ));
        }
        if let Some(url) = &self.hospital.webhook_url {
            let raw = url.expose();
            if !(raw.starts_with("http://") || raw.starts_with("https://")) {
                return Err(format!(
                    "hospital.webhook_url: must start with http:// or https://, got {:?}",
                    url.redacted()
                ));
            }
        }
        if let Some(redis) = &self.cache.redis_url {
            let url = redis.expose();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(format!(
                    "cache.redis_url: must start with redis:// or rediss://, got {:?}",
                    redis.redacted()
                ));
            }
        }
        let positive = [
            ("server.request_timeout_ms", self.server.request_timeout_ms),
            (
                "server.body_limit_bytes",
                self.server.body_limit_bytes as u64,
            ),
            ("server.max_in_flight", self.server.max_in_flight as u64),
            (
                "database.max_connections",
                u64::from(self.database.max_connections),
            ),
            (
                "database.acquire_timeout_ms",
                self.database.acquire_timeout_ms,
            ),
            ("cache.l1_max_entries", self.cache.l1_max_entries),
            ("cache.users.ttl_secs", self.cache.users.ttl_secs),
            (
                "cache.write_back.flush_interval_ms",
                self.cache.write_back.flush_interval_ms,
            ),
            (
                "cache.write_back.max_batch",
                self.cache.write_back.max_batch as u64,
            ),
            (
                "cache.write_back.max_backlog",
                self.cache.write_back.max_backlog as u64,
            ),
            ("queue.max_depth", self.queue.max_depth),
            ("queue.max_body_bytes", self.queue.max_body_bytes as u64),
            (
                "queue.max_message_bytes",
                self.queue.max_message_bytes as u64,
            ),
            ("queue.partitions", u64::from(self.queue.partitions)),
            ("queue.batch", self.queue.batch as u64),
            (
                "queue.workers_per_group",
                self.queue.workers_per_group as u64,
            ),
            ("queue.lease_ms", self.queue.lease_ms),
            ("queue.max_attempts", u64::from(self.queue.max_attempts)),
            ("queue.backoff_base_ms", self.queue.backoff_base_ms),
            ("queue.backoff_max_ms", self.queue.backoff_max_ms),
            ("queue.relay_batch", u64::from(self.queue.relay_batch)),
            ("queue.max_outbox", self.queue.max_outbox),
            ("hospital.max_patients", self.hospital.max_patients),
            (
                "hospital.digest_interval_secs",
                self.hospital.digest_interval_secs,
            ),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{key}: must be greater than 0"));
        }
        let jitter = self.cache.users.jitter_ratio;
        if !(0.0..=0.5).contains(&jitter) {
            return Err(format!(
                "cache.users.jitter_ratio: must be between 0 and 0.5, got {jitter}"
            ));
        }
        if self.telemetry.log_level.trim().is_empty() {
            return Err("telemetry.log_level: must not be empty".into());
        }
        Ok(())
    }
}
