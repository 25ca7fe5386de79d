//! Brute-force protection: failed sign-ins slow the next ones down, temporarily.
//!
//! A [`Failures`] record counts consecutive failures for one key; the HTTP layer keeps three
//! kinds of keys and asks all that apply:
//!
//! - the **client** (its address): one source guessing many accounts;
//! - the **account from untrusted clients**: many sources guessing one account;
//! - the **account from a device it signed in from before** (a device cookie, as OWASP's
//!   "device cookies" scheme): its own record, so failures from elsewhere never lock the
//!   account's owner out on their own device.
//!
//! After [`LockoutPolicy::free_failures`] failures a key waits [`LockoutPolicy::first_wait_secs`],
//! doubling with each further failure up to [`LockoutPolicy::max_wait_secs`]: never forever, and
//! a success resets it. Attempts refused while waiting do not count (a flood cannot extend the
//! wait beyond the cap).

/// The slow-down rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures allowed before any wait.
    pub free_failures: u32,
    /// The first wait, in seconds.
    pub first_wait_secs: i64,
    /// The longest wait, in seconds.
    pub max_wait_secs: i64,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self {
            free_failures: 5,
            first_wait_secs: 30,
            max_wait_secs: 15 * 60,
        }
    }
}

pub use keel_domain::Failures;

/// An attempt refused until `until` (unix seconds); answered as 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many failed attempts; try again in {retry_after_secs} s")]
pub struct Locked {
    pub until: i64,
    pub retry_after_secs: i64,
}

impl LockoutPolicy {
    /// Whether an attempt may be made at `now`.
    pub fn check(&self, record: &Failures, now: i64) -> Result<(), Locked> {
        if now < record.wait_until {
            Err(Locked {
                until: record.wait_until,
                retry_after_secs: record.wait_until - now,
            })
        } else {
            Ok(())
        }
    }

    /// Records a failed attempt made at `now` (after [`Self::check`] allowed it).
    pub fn fail(&self, record: &mut Failures, now: i64) {
        record.count = record.count.saturating_add(1);
        if record.count > self.free_failures {
            let doublings = (record.count - self.free_failures - 1).min(30);
            let wait = self
                .first_wait_secs
                .saturating_mul(1i64 << doublings)
                .min(self.max_wait_secs);
            record.wait_until = now.saturating_add(wait);
        }
    }

    /// Records a success: the key starts afresh.
    pub fn succeed(&self, record: &mut Failures) {
        *record = Failures::default();
    }
}
