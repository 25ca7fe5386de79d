//! Revoking an account's tokens: the lowest token generation each account's tokens must carry
//! (its "floor"), cached in memory so that the guard's fast path stays a lookup, and dropped
//! here and on every other instance when an account's sign-ins end.
//!
//! An account's floor is its stored `token_generation` while it is active, and "nothing" once
//! it is disabled or erased. Every instance caches floors for [`Floors::new`]'s `ttl_secs` at
//! most; the instance that revokes drops its copy at once (so one instance is exact), and a
//! [`RevocationFeed`] (Redis in `keel serve`) tells the others before the revoking request
//! answers. The TTL bounds how long another instance may still accept a revoked token when
//! no feed is configured or the feed lost messages.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use keel_domain::{Credentials, UserId};

/// The lowest generation an account's tokens must carry, or none for an account whose tokens
/// all stop (disabled, or erased).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Floor {
    From(i64),
    Nothing,
}

impl Floor {
    /// The floor of an account as stored (`None`: no credentials, the account is gone).
    pub fn of(credentials: Option<&Credentials>) -> Self {
        match credentials {
            Some(c) if c.disabled_at.is_none() => Self::From(c.token_generation),
            _ => Self::Nothing,
        }
    }

    /// Whether a token issued under `generation` still holds.
    pub fn admits(self, generation: i64) -> bool {
        matches!(self, Self::From(floor) if generation >= floor)
    }
}

/// Tells the other instances that an account's tokens were revoked, so that they drop their
/// cached floor. `publish` returns once the others have the message (or a bounded wait ended).
#[async_trait]
pub trait RevocationFeed: Send + Sync + 'static {
    async fn publish(&self, user: UserId);
}

/// Floors kept at most; past it, the stale ones go, and if none were, all do.
const FLOORS_MAX: usize = 65_536;

/// The floors this instance knows, each with when it was read (unix seconds).
pub(crate) struct Floors {
    ttl_secs: i64,
    known: Mutex<HashMap<UserId, (Floor, i64)>>,
    /// Raised by every drop: a load that began before a drop does not cache what it read, which
    /// may predate the revocation.
    drops: AtomicU64,
}

impl Floors {
    pub(crate) fn new(ttl_secs: i64) -> Self {
        Self {
            ttl_secs,
            known: Mutex::default(),
            drops: AtomicU64::new(0),
        }
    }

    /// The floor cached for `user`, if it was read less than the TTL ago.
    pub(crate) fn cached(&self, user: UserId, now: i64) -> Option<Floor> {
        let known = self.known.lock().expect("floors lock");
        let &(floor, read_at) = known.get(&user)?;
        (now.saturating_sub(read_at) < self.ttl_secs).then_some(floor)
    }

    /// A ticket to take before reading a floor from the store, for [`Self::remember`].
    pub(crate) fn ticket(&self) -> u64 {
        self.drops.load(Ordering::Acquire)
    }

    /// Caches `floor`, read at `now` after taking `ticket`, unless a drop came in between.
    pub(crate) fn remember(&self, user: UserId, floor: Floor, now: i64, ticket: u64) {
        let mut known = self.known.lock().expect("floors lock");
        // Checked under the lock that drops take too: a drop is either seen here or comes after
        // the insert and removes it.
        if self.drops.load(Ordering::Acquire) != ticket {
            return;
        }
        if known.len() >= FLOORS_MAX {
            let ttl = self.ttl_secs;
            known.retain(|_, (_, read_at)| now.saturating_sub(*read_at) < ttl);
            if known.len() >= FLOORS_MAX {
                known.clear();
            }
        }
        known.insert(user, (floor, now));
    }

    /// Forgets `user`'s floor: the next check reads it again.
    pub(crate) fn drop_one(&self, user: UserId) {
        let mut known = self.known.lock().expect("floors lock");
        self.drops.fetch_add(1, Ordering::AcqRel);
        known.remove(&user);
    }

    /// Forgets every floor (the feed may have missed messages).
    pub(crate) fn drop_all(&self) {
        let mut known = self.known.lock().expect("floors lock");
        self.drops.fetch_add(1, Ordering::AcqRel);
        known.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_admits_its_generation_and_later_ones_only() {
        assert!(Floor::From(2).admits(2));
        assert!(Floor::From(2).admits(3));
        assert!(!Floor::From(2).admits(1));
        assert!(!Floor::Nothing.admits(i64::MAX));
    }

    #[test]
    fn a_cached_floor_lasts_the_ttl_and_a_drop_during_a_load_keeps_it_out() {
        let floors = Floors::new(5);
        let user = UserId::generate();
        let ticket = floors.ticket();
        floors.remember(user, Floor::From(0), 100, ticket);
        assert_eq!(floors.cached(user, 104), Some(Floor::From(0)));
        assert_eq!(floors.cached(user, 105), None, "past the TTL");

        let ticket = floors.ticket();
        floors.drop_one(UserId::generate());
        floors.remember(user, Floor::From(0), 106, ticket);
        assert_eq!(
            floors.cached(user, 106),
            None,
            "read before a drop: not kept"
        );
    }
}
