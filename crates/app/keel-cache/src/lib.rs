//! keel's cache: the seed's four caching techniques made safe for production.
//!
//! - [`ResourceCache`]: one resource's cache: in-process L1 (moka) with per-entry TTL and jitter,
//!   negative entries, single-flight loading, version-guarded inserts, and an optional shared L2
//!   that also carries invalidations between instances ([`tier::SharedTier`], the port; Redis
//!   is the adapter crate `keel-cache-redis`).
//! - [`journal`]: the write-back journal: group-committed, checksummed, segmented, replayed on start.
//! - [`users`]: [`CachedUsers`], the users resource under the configured [`Strategy`].
//! - [`stats`]: per-resource counters rendered as Prometheus text.
//!
//! **Invariant:** a cached value never replaces a newer one: every entry carries its row
//! version, and invalidations leave a versioned tombstone instead of a hole a slow loader could
//! refill with stale data.

pub mod journal;
mod resource;
pub mod stats;
pub mod tier;
pub mod users;

pub use keel_domain::CacheStrategy as Strategy;
pub use resource::{CachePolicy, Cached, ResourceCache, Versioned};
pub use stats::Stats;
pub use tier::{SharedTier, TierError};
pub use users::{CachedUsers, WriteBackOptions};

/// A version that outranks every real one: a deleted key's tombstone. It stays exact in doubles
/// (2^53 - 1), since a shared tier may compare versions as such (the Redis one does, in Lua).
pub const DELETED_VERSION: i64 = (1 << 53) - 1;
