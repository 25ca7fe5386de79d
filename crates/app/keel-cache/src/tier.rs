//! The port of the shared second-level tier: what [`ResourceCache`](crate::ResourceCache) asks
//! of a store that every instance sees (values with a TTL, versioned writes, and a channel that
//! carries invalidations between instances). The cache names no engine; the Redis adapter is
//! `keel-cache-redis`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// What a shared-tier key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L2Entry {
    Data(Bytes),
    Tomb,
}

/// What a tier's subscription reports to the cache that owns it.
#[derive(Debug)]
pub enum Event {
    /// The subscription was (re)established: messages may have been missed, drop all of L1.
    Resubscribed,
    /// Another instance changed `key` to `version`.
    Invalidated { key: String, version: i64 },
}

/// A failed tier operation. The cache counts and logs it and carries on with the database, so
/// the engine's own error is kept only for its text.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct TierError(Box<dyn std::error::Error + Send + Sync>);

impl TierError {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(e))
    }
}

/// The callback a subscription reports to; it returns false when its owner is gone, which ends
/// the subscription.
pub type OnEvent = Box<dyn FnMut(Event) -> bool + Send>;

/// The shared second-level tier of the cache, keyed by resource (`users`) and key.
#[async_trait]
pub trait SharedTier: Send + Sync {
    /// True while the invalidation subscription is up; each instance's L1 is bypassed otherwise,
    /// since invalidations could have been missed.
    fn is_coherent(&self) -> bool;

    async fn get(&self, resource: &str, key: &str) -> Result<Option<L2Entry>, TierError>;

    /// Stores `json` (or a tombstone when `None`) at `version` for `ttl`, unless the tier holds
    /// a newer state of the key: a higher version, or (when writing data) data of the same
    /// version. True when written.
    async fn set_if_newer(
        &self,
        resource: &str,
        key: &str,
        version: i64,
        json: Option<&Bytes>,
        ttl: Duration,
    ) -> Result<bool, TierError>;

    /// Drops the key whatever its version.
    async fn delete(&self, resource: &str, key: &str) -> Result<(), TierError>;

    /// Tells every other subscribed instance that `key` of `resource` changed to `version`, and
    /// waits (bounded) until the tier has handed the message to all of them, so that another
    /// instance holds the invalidation before the client can ask it for the key.
    async fn publish_and_wait(
        &self,
        resource: &str,
        key: &str,
        version: i64,
    ) -> Result<(), TierError>;

    /// Subscribes to `resource`'s invalidations from other instances in a task that reconnects
    /// on its own, reporting to `on_event` until it returns false. An instance does not receive
    /// its own invalidations.
    fn subscribe(self: Arc<Self>, resource: &'static str, on_event: OnEvent);
}
