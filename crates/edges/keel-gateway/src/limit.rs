//! Per-client rate limiting with GCRA (the generic cell rate algorithm).
//!
//! GCRA is a token bucket kept as one number per client: the theoretical arrival time (TAT), the
//! instant at which the client's bucket would be full again. A request is allowed when admitting
//! it would not push the TAT further than `burst` emission intervals past now. One `Instant` per
//! key and no background refill task keep the hot path to a hash, a lock and a comparison.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Shards spread lock contention; more would only dilute the per-shard capacity.
const MAX_SHARDS: usize = 16;

/// Longest window (`burst` emission intervals) accepted, so that `Instant` arithmetic on the hot
/// path cannot overflow; a longer window is a configuration mistake, not a rate limit.
const MAX_WINDOW: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Key to theoretical arrival time.
type Shard = HashMap<Box<str>, Instant>;

/// Admits at most `burst` requests at once per key, refilled at `per_second`.
///
/// Memory is bounded by `max_clients` keys. A key whose TAT has passed carries no state (it is
/// indistinguishable from a key never seen), so a full shard first sweeps those out. If every
/// tracked key is still in debt, the shard evicts the keys closest to being forgotten anyway (the
/// earliest TATs) rather than grow or refuse newcomers: the evicted clients get a fresh burst
/// early, which under a flood of distinct keys is the least harmful way to fail, while refusing
/// new keys would lock out every legitimate client that arrives during the flood.
#[derive(Debug)]
pub struct RateLimiter {
    /// Time one request "costs": the reciprocal of the rate.
    interval: Duration,
    /// `burst * interval`: how far past now a TAT may run.
    window: Duration,
    /// Keys per shard; `shards.len() * shard_capacity <= max_clients`.
    shard_capacity: usize,
    hasher: RandomState,
    /// Each shard maps a key to its TAT, under its own lock; a key always lands in the same shard.
    shards: Box<[Mutex<Shard>]>,
}

impl RateLimiter {
    /// Rates above one per nanosecond are clamped to one per nanosecond (`Instant` resolution).
    pub fn new(per_second: f64, burst: u32, max_clients: usize) -> Result<Self, String> {
        if !per_second.is_finite() || per_second <= 0.0 {
            return Err(format!(
                "rate limit per_second must be a positive number, got {per_second}"
            ));
        }
        if burst == 0 {
            return Err("rate limit burst must be at least 1".to_owned());
        }
        if max_clients == 0 {
            return Err("rate limit max_clients must be at least 1".to_owned());
        }
        let interval = Duration::try_from_secs_f64(per_second.recip())
            .map_err(|_| format!("rate limit per_second {per_second} is too small"))?
            .max(Duration::from_nanos(1));
        let window = interval
            .checked_mul(burst)
            .filter(|window| *window <= MAX_WINDOW)
            .ok_or_else(|| {
                format!(
                    "rate limit window (burst {burst} at {per_second}/s) is longer than ten years"
                )
            })?;
        let n_shards = max_clients.min(MAX_SHARDS);
        let shard_capacity = max_clients / n_shards;
        let shards = (0..n_shards)
            .map(|_| Mutex::new(HashMap::with_capacity(shard_capacity.min(1024))))
            .collect();
        Ok(Self {
            interval,
            window,
            shard_capacity,
            hasher: RandomState::new(),
            shards,
        })
    }

    /// Admits one request for `key` at `now`, or says how long until it would be admitted.
    ///
    /// A refused request does not consume anything, so clients that retry too early are not
    /// pushed further back.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let shard = &self.shards[self.shard_of(key)];
        // A panic while holding the lock cannot leave a map half-updated in a way that matters:
        // the worst case is one stale TAT, so keep limiting rather than propagate the poison.
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tat) = map.get_mut(key) {
            return self.admit(tat, now);
        }
        if map.len() >= self.shard_capacity {
            Self::make_room(&mut map, self.shard_capacity, now);
        }
        // A new key is in no debt: its TAT is now, and one request always fits since burst >= 1.
        let mut tat = now;
        let res = self.admit(&mut tat, now);
        map.insert(key.into(), tat);
        res
    }

    /// Number of keys currently holding state (for metrics and tests).
    pub fn tracked_keys(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    fn shard_of(&self, key: &str) -> usize {
        // Truncating the hash is fine: only its low bits pick the shard.
        self.hasher.hash_one(key) as usize % self.shards.len()
    }

    fn admit(&self, tat: &mut Instant, now: Instant) -> Result<(), Duration> {
        let new_tat = (*tat).max(now) + self.interval;
        let ahead = new_tat - now;
        if ahead > self.window {
            return Err(ahead - self.window);
        }
        *tat = new_tat;
        Ok(())
    }

    /// Frees at least an eighth of a full shard, so the O(n) pass runs at most once per
    /// `capacity / 8` insertions and new keys stay O(1) amortised even under a key flood.
    fn make_room(map: &mut Shard, capacity: usize, now: Instant) {
        map.retain(|_, tat| *tat > now);
        let target = capacity - capacity.div_ceil(8);
        if map.len() <= target {
            return;
        }
        let n_evict = map.len() - target;
        let mut tats: Vec<Instant> = map.values().copied().collect();
        let (_, threshold, _) = tats.select_nth_unstable(n_evict - 1);
        let threshold = *threshold;
        // Exactly `n_evict` go: everything below the threshold, then as many ties as needed
        // (many keys can share a TAT when they arrived in the same clock tick).
        let n_below = tats.iter().filter(|tat| **tat < threshold).count();
        let mut n_ties = n_evict - n_below;
        map.retain(|_, tat| {
            if *tat < threshold {
                return false;
            }
            if *tat == threshold && n_ties > 0 {
                n_ties -= 1;
                return false;
            }
            true
        });
    }
}

/// The Retry-After header value for a refusal: whole seconds rounded up, at least 1, since a
/// client told "0" would retry at once and be refused again.
pub fn retry_after_secs(delay: Duration) -> u64 {
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_full_burst_is_allowed_then_refused() {
        let limiter = RateLimiter::new(1.0, 3, 100).unwrap();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check("a", now), Ok(()));
        }
        assert_eq!(limiter.check("a", now), Err(SEC));
    }

    #[test]
    fn refused_requests_do_not_push_the_client_further_back() {
        let limiter = RateLimiter::new(1.0, 1, 100).unwrap();
        let now = Instant::now();
        limiter.check("a", now).unwrap();
        for _ in 0..10 {
            assert_eq!(limiter.check("a", now), Err(SEC));
        }
        assert_eq!(limiter.check("a", now + SEC), Ok(()));
    }

    #[test]
    fn tokens_refill_at_the_configured_rate() {
        let limiter = RateLimiter::new(10.0, 2, 100).unwrap();
        let start = Instant::now();
        limiter.check("a", start).unwrap();
        limiter.check("a", start).unwrap();
        assert!(limiter.check("a", start).is_err());
        // One token back every 100 ms: not yet at 99 ms, exactly one at 100 ms.
        assert!(
            limiter
                .check("a", start + Duration::from_millis(99))
                .is_err()
        );
        assert_eq!(
            limiter.check("a", start + Duration::from_millis(100)),
            Ok(())
        );
        assert!(
            limiter
                .check("a", start + Duration::from_millis(100))
                .is_err()
        );
        // After a long pause the bucket is full again, but holds no more than burst.
        let later = start + Duration::from_secs(60);
        assert_eq!(limiter.check("a", later), Ok(()));
        assert_eq!(limiter.check("a", later), Ok(()));
        assert!(limiter.check("a", later).is_err());
    }

    #[test]
    fn sustained_traffic_at_the_rate_is_always_allowed() {
        let limiter = RateLimiter::new(5.0, 1, 100).unwrap();
        let start = Instant::now();
        for i in 0..50 {
            let now = start + Duration::from_millis(200 * i);
            assert_eq!(limiter.check("a", now), Ok(()), "request {i}");
        }
    }

    #[test]
    fn the_refusal_says_exactly_when_to_retry() {
        let limiter = RateLimiter::new(0.5, 2, 100).unwrap();
        let start = Instant::now();
        limiter.check("a", start).unwrap();
        limiter.check("a", start).unwrap();
        let wait = limiter.check("a", start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(2));
        let wait = limiter
            .check("a", start + Duration::from_millis(500))
            .unwrap_err();
        assert_eq!(wait, Duration::from_millis(1500));
        assert_eq!(retry_after_secs(wait), 2);
        assert_eq!(
            limiter.check("a", start + wait + Duration::from_millis(500)),
            Ok(())
        );
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(999)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }

    #[test]
    fn keys_have_independent_budgets() {
        let limiter = RateLimiter::new(1.0, 1, 100).unwrap();
        let now = Instant::now();
        assert_eq!(limiter.check("a", now), Ok(()));
        assert!(limiter.check("a", now).is_err());
        assert_eq!(limiter.check("b", now), Ok(()));
        assert!(limiter.check("b", now).is_err());
    }

    #[test]
    fn memory_stays_bounded_with_many_active_keys() {
        let limiter = RateLimiter::new(1.0, 5, 1000).unwrap();
        let now = Instant::now();
        for i in 0..50_000 {
            limiter.check(&format!("client-{i}"), now).unwrap();
            if i % 997 == 0 {
                assert!(limiter.tracked_keys() <= 1000, "after {i} keys");
            }
        }
        assert!(limiter.tracked_keys() <= 1000);
        assert!(limiter.tracked_keys() > 500);
    }

    #[test]
    fn memory_bound_holds_for_tiny_capacities() {
        for max_clients in 1..40 {
            let limiter = RateLimiter::new(1.0, 1, max_clients).unwrap();
            let now = Instant::now();
            for i in 0..200 {
                limiter.check(&i.to_string(), now).unwrap();
            }
            assert!(limiter.tracked_keys() <= max_clients, "{max_clients}");
        }
    }

    #[test]
    fn idle_keys_are_swept_before_any_active_key_is_evicted() {
        // One shard of capacity 8 makes the test deterministic.
        let limiter = RateLimiter::new(1.0, 1, 8).unwrap();
        assert_eq!(limiter.shards.len(), 8);
        let limiter = RateLimiter {
            shard_capacity: 8,
            shards: vec![Mutex::new(HashMap::new())].into_boxed_slice(),
            ..limiter
        };
        let start = Instant::now();
        for i in 0..7 {
            limiter.check(&format!("idle-{i}"), start).unwrap();
        }
        let later = start + Duration::from_secs(10);
        limiter.check("busy", later).unwrap();
        assert_eq!(limiter.tracked_keys(), 8);
        // The shard is full: the new key sweeps the idle ones, and "busy" keeps its debt.
        limiter.check("new", later).unwrap();
        assert_eq!(limiter.tracked_keys(), 2);
        assert!(limiter.check("busy", later).is_err());
    }

    #[test]
    fn when_every_key_is_in_debt_the_earliest_are_evicted() {
        let limiter = RateLimiter::new(1.0, 1, 8).unwrap();
        let limiter = RateLimiter {
            shard_capacity: 8,
            shards: vec![Mutex::new(HashMap::new())].into_boxed_slice(),
            ..limiter
        };
        let start = Instant::now();
        for i in 0..8 {
            limiter
                .check(&format!("k{i}"), start + Duration::from_millis(i))
                .unwrap();
        }
        limiter
            .check("new", start + Duration::from_millis(8))
            .unwrap();
        assert_eq!(limiter.tracked_keys(), 8);
        let now = start + Duration::from_millis(8);
        // k0 had the earliest TAT, so it was the one forgotten; k7 is still limited.
        assert_eq!(limiter.check("k0", now), Ok(()));
        assert!(limiter.check("k7", now).is_err());
    }

    #[test]
    fn the_limiter_is_shared_across_threads() {
        let limiter = std::sync::Arc::new(RateLimiter::new(1.0, 100, 100).unwrap());
        let now = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .filter(|_| limiter.check("shared", now).is_ok())
                        .count()
                })
            })
            .collect();
        let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(admitted, 100);
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        for per_second in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = RateLimiter::new(per_second, 1, 10).unwrap_err();
            assert!(err.contains("per_second"), "{err}");
        }
        assert!(RateLimiter::new(1.0, 0, 10).unwrap_err().contains("burst"));
        assert!(
            RateLimiter::new(1.0, 1, 0)
                .unwrap_err()
                .contains("max_clients")
        );
        assert!(RateLimiter::new(f64::MIN_POSITIVE, 1, 10).is_err());
        assert!(RateLimiter::new(1e-9, 1, 10).is_err());
    }

    #[test]
    fn extreme_but_valid_rates_work() {
        let now = Instant::now();
        let fast = RateLimiter::new(1e12, 1, 10).unwrap();
        assert_eq!(fast.check("a", now), Ok(()));
        assert_eq!(fast.check("a", now + Duration::from_nanos(1)), Ok(()));
        let slow = RateLimiter::new(1.0 / 86_400.0, 1, 10).unwrap();
        assert_eq!(slow.check("a", now), Ok(()));
        assert_eq!(retry_after_secs(slow.check("a", now).unwrap_err()), 86_400);
    }
}
