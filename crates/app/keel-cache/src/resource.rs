//! One resource's cache: L1 in process, a shared L2 when configured, single-flight loading.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_domain::StoreError;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use crate::DELETED_VERSION;
use crate::stats::Stats;
use crate::tier::{Event, L2Entry, SharedTier, TierError};

/// What can key a cache: cheap to hash and compare in process, written as text for the L2.
pub trait CacheKey: Hash + Eq + Clone + Display + FromStr + Send + Sync + 'static {}

impl<K: Hash + Eq + Clone + Display + FromStr + Send + Sync + 'static> CacheKey for K {}

/// A value that knows its row version.
pub trait Versioned {
    fn version(&self) -> i64;
}

/// A cached value with its JSON encoding, made once so that a cache hit only copies bytes.
#[derive(Debug)]
pub struct Cached<V> {
    pub value: V,
    pub json: Bytes,
}

impl<V: Serialize> Cached<V> {
    pub fn new(value: V) -> Arc<Self> {
        let json = Bytes::from(serde_json::to_vec(&value).expect("cache values serialize"));
        Arc::new(Self { value, json })
    }
}

/// Lifetimes of entries.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    pub ttl: Duration,
    /// Zero turns negative caching off.
    pub negative_ttl: Duration,
    /// Each lifetime is shortened by a random fraction up to this, so that entries filled together
    /// do not expire together.
    pub jitter_ratio: f64,
    pub l1_max_entries: u64,
}

impl CachePolicy {
    fn jittered(&self, ttl: Duration) -> Duration {
        ttl.mul_f64(1.0 - self.jitter_ratio * fastrand::f64())
    }
}

/// What L1 holds for a key.
#[derive(Debug)]
enum Slot<V> {
    Present(Arc<Cached<V>>),
    /// Loaded and not found: a cached 404.
    Absent,
    /// Invalidated at this version: reads miss, and only a value at least this new may refill it.
    Tomb(i64),
}

/// An L1 entry: its slot and the lifetime chosen when it was written.
#[derive(Debug)]
struct Entry<V> {
    slot: Slot<V>,
    ttl: Duration,
}

struct PerEntryTtl;

impl<K, V> moka::Expiry<K, Arc<Entry<V>>> for PerEntryTtl {
    fn expire_after_create(&self, _: &K, entry: &Arc<Entry<V>>, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &K,
        entry: &Arc<Entry<V>>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

type Shared<V> = Result<Option<Arc<Cached<V>>>, Arc<StoreError>>;

/// The cache of one resource (for example `users`), keyed by `K`. Share it behind an `Arc`.
pub struct ResourceCache<K, V> {
    name: &'static str,
    policy: CachePolicy,
    l1: Cache<K, Arc<Entry<V>>>,
    l2: Option<Arc<dyn SharedTier>>,
    /// One cell per key being loaded: concurrent misses on a key await the same load.
    inflight: Mutex<HashMap<K, Arc<OnceCell<Shared<V>>>>>,
    stats: Arc<Stats>,
}

impl<K, V> ResourceCache<K, V>
where
    K: CacheKey,
    V: Versioned + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A cache for resource `name`. With an L2, a task subscribes to invalidations from other
    /// instances; it ends when the cache is dropped.
    pub fn new(
        name: &'static str,
        policy: CachePolicy,
        l2: Option<Arc<dyn SharedTier>>,
    ) -> Arc<Self> {
        let stats = Arc::new(Stats::default());
        let evictions = stats.clone();
        let l1 = Cache::builder()
            .max_capacity(policy.l1_max_entries)
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    Stats::inc(&evictions.evictions);
                }
            })
            .build();
        let cache = Arc::new(Self {
            name,
            policy,
            l1,
            l2,
            inflight: Mutex::default(),
            stats,
        });
        if let Some(l2) = &cache.l2 {
            let weak: Weak<Self> = Arc::downgrade(&cache);
            l2.clone().subscribe(
                name,
                Box::new(move |event| {
                    let Some(cache) = weak.upgrade() else {
                        return false;
                    };
                    match event {
                        Event::Resubscribed => cache.l1.invalidate_all(),
                        Event::Invalidated { key, version } => {
                            Stats::inc(&cache.stats.invalidations_received);
                            let Ok(key) = key.parse::<K>() else {
                                return true;
                            };
                            let cache = cache.clone();
                            tokio::spawn(async move { cache.tomb_l1(key, version).await });
                        }
                    }
                    true
                }),
            );
        }
        cache
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// L1 may be used only while it is coherent: always without an L2, and with one only while
    /// the invalidation subscription is up (a lost subscription could have missed updates).
    pub fn l1_usable(&self) -> bool {
        self.l2.as_ref().is_none_or(|l2| l2.is_coherent())
    }

    /// The value under `key`: from L1, else from L2, else from `load` (the database), filling the
    /// tiers on the way back. Concurrent misses on one key share one load.
    pub async fn get_or_load<F, Fut>(
        &self,
        key: &K,
        load: F,
    ) -> Result<Option<Arc<Cached<V>>>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, StoreError>>,
    {
        if self.l1_usable()
            && let Some(entry) = self.l1.get(key).await
        {
            match &entry.slot {
                Slot::Present(value) => {
                    Stats::inc(&self.stats.hits);
                    return Ok(Some(value.clone()));
                }
                Slot::Absent => {
                    Stats::inc(&self.stats.hits);
                    return Ok(None);
                }
                Slot::Tomb(_) => {}
            }
        }
        Stats::inc(&self.stats.misses);
        self.load_single_flight(key, load).await
    }

    async fn load_single_flight<F, Fut>(
        &self,
        key: &K,
        load: F,
    ) -> Result<Option<Arc<Cached<V>>>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, StoreError>>,
    {
        let cell = {
            let mut inflight = self.inflight.lock().expect("inflight lock");
            inflight.entry(key.clone()).or_default().clone()
        };
        let _leave = LeaveFlight {
            inflight: &self.inflight,
            key,
            cell: &cell,
        };
        // Every caller offers its own loader; OnceCell runs one, and if that caller is cancelled
        // another caller's loader takes over, so a dropped request never strands the others.
        let res = cell.get_or_init(|| self.fill(key, load)).await.clone();
        res.map_err(|e| share_error(&e))
    }

    async fn fill<F, Fut>(&self, key: &K, load: F) -> Shared<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, StoreError>>,
    {
        if let Some(l2) = &self.l2 {
            match l2.get(self.name, &key.to_string()).await {
                Ok(Some(L2Entry::Data(bytes))) => match serde_json::from_slice::<V>(&bytes) {
                    Ok(value) => {
                        Stats::inc(&self.stats.l2_hits);
                        let cached = Arc::new(Cached { value, json: bytes });
                        self.offer_l1(key, &cached).await;
                        return Ok(Some(cached));
                    }
                    Err(e) => {
                        tracing::warn!(resource = self.name, error = %e, "undecodable L2 entry ignored");
                    }
                },
                Ok(_) => {}
                Err(e) => self.l2_failed("read", &e),
            }
        }
        Stats::inc(&self.stats.loads);
        match load().await {
            Ok(Some(value)) => {
                let cached = Cached::new(value);
                if let Some(l2) = &self.l2 {
                    self.write_l2(l2, key, cached.value.version(), Some(&cached.json))
                        .await;
                }
                self.offer_l1(key, &cached).await;
                Ok(Some(cached))
            }
            Ok(None) => {
                self.offer_absent(key).await;
                Ok(None)
            }
            Err(e) => {
                Stats::inc(&self.stats.load_errors);
                Err(Arc::new(e))
            }
        }
    }

    /// Puts `value` in L1 unless L1 already knows a newer state of the key.
    async fn offer_l1(&self, key: &K, value: &Arc<Cached<V>>) {
        if !self.l1_usable() {
            return;
        }
        let version = value.value.version();
        let entry = Arc::new(Entry {
            slot: Slot::Present(value.clone()),
            ttl: self.policy.jittered(self.policy.ttl),
        });
        self.l1
            .entry(key.clone())
            .and_compute_with(|current| {
                let newer = match current.as_ref().map(|e| &e.value().slot) {
                    None | Some(Slot::Absent) => true,
                    Some(Slot::Present(held)) => version > held.value.version(),
                    Some(Slot::Tomb(floor)) => version >= *floor,
                };
                std::future::ready(if newer { Op::Put(entry) } else { Op::Nop })
            })
            .await;
    }

    /// Caches a "not found" unless L1 knows the key exists.
    async fn offer_absent(&self, key: &K) {
        if self.policy.negative_ttl.is_zero() || !self.l1_usable() {
            return;
        }
        let entry = Arc::new(Entry {
            slot: Slot::Absent,
            ttl: self.policy.jittered(self.policy.negative_ttl),
        });
        self.l1
            .entry(key.clone())
            .and_compute_with(|current| {
                let allowed = match current.as_ref().map(|e| &e.value().slot) {
                    None | Some(Slot::Absent) => true,
                    Some(Slot::Tomb(floor)) => *floor == DELETED_VERSION,
                    Some(Slot::Present(_)) => false,
                };
                std::future::ready(if allowed { Op::Put(entry) } else { Op::Nop })
            })
            .await;
    }

    async fn tomb_l1(&self, key: K, version: i64) {
        let entry = Arc::new(Entry {
            slot: Slot::Tomb(version),
            ttl: self.policy.ttl,
        });
        self.l1
            .entry(key)
            .and_compute_with(|current| {
                let keep = matches!(current.as_ref().map(|e| &e.value().slot), Some(Slot::Present(held)) if held.value.version() > version);
                std::future::ready(if keep { Op::Nop } else { Op::Put(entry) })
            })
            .await;
    }

    /// Write-through / write-back: `value` becomes the cached state here and in L2, and other
    /// instances drop their older copies.
    pub async fn put(&self, key: &K, value: Arc<Cached<V>>) {
        let version = value.value.version();
        self.offer_l1(key, &value).await;
        if let Some(l2) = &self.l2 {
            self.write_l2(l2, key, version, Some(&value.json)).await;
            self.broadcast(l2, key, version).await;
        }
    }

    /// Cache-aside: the key's cached state at or below `version` is dropped here, in L2 and in
    /// every other instance's L1. Use [`DELETED_VERSION`] for a deleted key.
    pub async fn invalidate(&self, key: &K, version: i64) {
        self.tomb_l1(key.to_owned(), version).await;
        if let Some(l2) = &self.l2 {
            self.write_l2(l2, key, version, None).await;
            self.broadcast(l2, key, version).await;
        }
    }

    /// Drops the key from L1 and L2 whatever its version: for a value the database refused, which
    /// must not be served although it is newer than the stored row.
    pub async fn evict(&self, key: &K) {
        self.l1.invalidate(key).await;
        if let Some(l2) = &self.l2
            && let Err(e) = l2.delete(self.name, &key.to_string()).await
        {
            self.l2_failed("delete", &e);
        }
    }

    /// Writes the key's state to L2 (`None`: a tombstone) unless L2 holds a newer one.
    async fn write_l2(
        &self,
        l2: &Arc<dyn SharedTier>,
        key: &K,
        version: i64,
        json: Option<&Bytes>,
    ) {
        let ttl = self.policy.jittered(self.policy.ttl);
        if let Err(e) = l2
            .set_if_newer(self.name, &key.to_string(), version, json, ttl)
            .await
        {
            self.l2_failed("write", &e);
        }
    }

    /// A failed L2 operation is counted and logged, and the caller carries on: the database
    /// stays the source of truth, so L2 trouble slows keel down but never fails a request.
    fn l2_failed(&self, operation: &'static str, e: &TierError) {
        Stats::inc(&self.stats.l2_errors);
        tracing::warn!(resource = self.name, operation, error = %e, "redis operation failed");
    }

    async fn broadcast(&self, l2: &Arc<dyn SharedTier>, key: &K, version: i64) {
        Stats::inc(&self.stats.invalidations_sent);
        if let Err(e) = l2
            .publish_and_wait(self.name, &key.to_string(), version)
            .await
        {
            self.l2_failed("publish", &e);
        }
    }

    /// Number of L1 entries, after moka's pending maintenance (evictions) has run; for tests.
    pub async fn l1_len(&self) -> u64 {
        self.l1.run_pending_tasks().await;
        self.l1.entry_count()
    }
}

/// Removes a key's single-flight cell when its caller leaves, finished or cancelled, once the cell
/// is settled or nobody else waits on it, so that abandoned loads do not accumulate.
struct LeaveFlight<'a, K: Hash + Eq, T> {
    inflight: &'a Mutex<HashMap<K, Arc<OnceCell<T>>>>,
    key: &'a K,
    cell: &'a Arc<OnceCell<T>>,
}

impl<K: Hash + Eq, T> Drop for LeaveFlight<'_, K, T> {
    fn drop(&mut self) {
        let mut inflight = self.inflight.lock().expect("inflight lock");
        let ours = inflight
            .get(self.key)
            .is_some_and(|c| Arc::ptr_eq(c, self.cell));
        // Two holders: the map and this caller; any more means others still wait on it.
        if ours && (self.cell.initialized() || Arc::strong_count(self.cell) == 2) {
            inflight.remove(self.key);
        }
    }
}

/// A loader error handed to every caller of a shared load, keeping its class.
fn share_error(e: &Arc<StoreError>) -> StoreError {
    match &**e {
        StoreError::Conflict { field } => StoreError::Conflict { field },
        StoreError::StaleVersion => StoreError::StaleVersion,
        StoreError::Unavailable(_) => StoreError::Unavailable(Box::new(SharedError(e.clone()))),
        StoreError::Internal(_) => StoreError::Internal(Box::new(SharedError(e.clone()))),
    }
}

#[derive(Debug)]
struct SharedError(Arc<StoreError>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shared load failed: {}", self.0)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}
