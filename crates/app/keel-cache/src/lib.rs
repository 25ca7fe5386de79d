//! keel's cache: the seed's four caching techniques made safe for production.
//!
//! - [`ResourceCache`]: one resource's cache: in-process L1 (moka) with per-entry TTL and jitter,
//!   negative entries, single-flight loading, version-guarded inserts, and an optional Redis L2
//!   that also carries invalidations between instances ([`redis_tier`]).
//! - [`journal`]: the write-back journal: group-committed, checksummed, segmented, replayed on start.
//! - [`users`]: [`CachedUsers`], the users resource under the configured [`Strategy`].
//! - [`stats`]: per-resource counters rendered as Prometheus text.
//!
//! **Invariant:** a cached value never replaces a newer one: every entry carries its row
//! version, and invalidations leave a versioned tombstone instead of a hole a slow loader could
//! refill with stale data.

pub mod journal;
pub mod redis_tier;
mod resource;
pub mod stats;
pub mod users;

pub use keel_domain::CacheStrategy as Strategy;
pub use redis_tier::RedisTier;
pub use resource::{CachePolicy, Cached, ResourceCache, Versioned};
pub use stats::Stats;
pub use users::{CachedUsers, WriteBackOptions};

/// A version that outranks every real one: a deleted key's tombstone. It stays exact in Lua's
/// doubles (2^53 - 1), since the Redis tier compares versions in a script.
pub const DELETED_VERSION: i64 = (1 << 53) - 1;
