//! The seed's four caching techniques, named once for the configuration and the cache alike.

use serde::{Deserialize, Serialize};

/// The seed's four caching techniques.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheStrategy {
    /// Reads load on a miss and keep the value for the TTL; writes do not touch the cache, so a
    /// reader may see the old value until it expires (the seed's stated trade-off of TTL).
    Ttl,
    /// Cache-aside (the seed's example): reads load on a miss; writes go to the database, then
    /// invalidate the cached value everywhere.
    Lazy,
    /// Writes go to the database and then replace the cached value, so the next read hits.
    WriteThrough,
    /// Writes are acknowledged once durable in a local journal and in the cache, and reach the
    /// database in batches; the journal is replayed on start, so no acknowledged write is lost.
    WriteBack,
}
