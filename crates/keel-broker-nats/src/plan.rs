//! Which of a group's consumers one `fetch` pulls from, and how long each pull may wait: a pure
//! function of what the server reports and what this process knows, so it is tested without a
//! server.
//!
//! The server's view (per consumer: messages never delivered, deliveries not yet acked) cannot
//! tell a partition blocked by a delivery held elsewhere from one whose delivery was released
//! (NAKed, or its `ack_wait` passed) and is deliverable again. Pulling a blocked consumer costs
//! the pull's whole wait, so:
//! - a consumer the server says has a deliverable message is pulled with a generous wait
//!   ([`Wait::Ready`]): the answer comes as soon as the message is sent, the wait only bounds a
//!   race lost to another process (and survives a loaded server, which may take milliseconds to
//!   serve a pull);
//! - so is one this process released itself (a lease it NAKed, a retry whose delay has passed);
//! - any other consumer with deliveries outstanding is probed with a short wait
//!   ([`Wait::Probe`]), at most once per [`PROBE_EVERY`]: that is how a delivery released by
//!   another process (or by the server after a crash) is found;
//! - a partition this process holds a delivery of, or retried with a delay not yet passed, is
//!   skipped: it is blocked by definition.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::names::Slot;

/// How often this process probes one consumer whose deliveries are all outstanding.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(200);

/// How long a pull may stay on the server. Every pull is `no_wait` with an expiry: a `no_wait`
/// pull without one that finds no deliverable message stays queued on a 2.9 server and would
/// take a later message to an inbox nobody reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    Ready,
    Probe,
}

impl Wait {
    pub(crate) fn duration(self) -> Duration {
        match self {
            Wait::Ready => Duration::from_millis(200),
            Wait::Probe => Duration::from_millis(20),
        }
    }
}

/// A consumer as the server reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Observed {
    /// Messages not yet delivered.
    pub(crate) pending: u64,
    /// Deliveries not yet acked (held, waiting for a retry delay, or released and due again).
    pub(crate) outstanding: u64,
}

/// What this process knows about one consumer beyond the server's counts.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hints {
    /// This process NAKed a delivery here: it is deliverable again.
    pub(crate) released: bool,
    /// When messages this process retried become deliverable again.
    pub(crate) retries: Vec<Instant>,
    pub(crate) last_probe: Option<Instant>,
}

/// One pull of a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pull {
    pub(crate) slot: Slot,
    pub(crate) batch: usize,
    pub(crate) wait: Wait,
}

/// The pulls of one fetch of at most `max` messages. `held`: partitions this process holds a
/// delivery of. `turn` rotates the partitions' order (and, with `max == 1`, alternates keyed and
/// unkeyed), so none waits forever behind the others.
pub(crate) fn plan(
    max: usize,
    partitions: u16,
    observed: &HashMap<Slot, Observed>,
    hints: &mut HashMap<Slot, Hints>,
    held: &HashSet<u16>,
    now: Instant,
    turn: usize,
) -> Vec<Pull> {
    let mut choose = |slot: Slot| -> Option<Wait> {
        let seen = observed.get(&slot).copied().unwrap_or_default();
        let hint = hints.entry(slot).or_default();
        let before = hint.retries.len();
        hint.retries.retain(|at| *at > now);
        if hint.retries.len() < before {
            hint.released = true;
        }
        if let Slot::Partition(i) = slot
            && (held.contains(&i) || !hint.retries.is_empty())
        {
            return None;
        }
        let deliverable = match slot {
            Slot::Partition(_) => seen.outstanding == 0 && seen.pending > 0,
            Slot::Unkeyed => seen.pending > 0,
        };
        if deliverable || hint.released {
            return Some(Wait::Ready);
        }
        let probe_due = hint
            .last_probe
            .is_none_or(|at| now.duration_since(at) >= PROBE_EVERY);
        if seen.outstanding > 0 && probe_due {
            hint.last_probe = Some(now);
            return Some(Wait::Probe);
        }
        None
    };
    let count = usize::from(partitions);
    let mut keyed: Vec<(Slot, Wait)> = (0..count)
        .map(|i| Slot::Partition(((i + turn) % count) as u16))
        .filter_map(|slot| choose(slot).map(|wait| (slot, wait)))
        .collect();
    // Partitions that surely have a message first.
    keyed.sort_by_key(|(_, wait)| *wait == Wait::Probe);
    let unkeyed = choose(Slot::Unkeyed);
    let unkeyed_wanted = match unkeyed {
        // The server's count of undelivered messages, or any number if released ones may wait.
        Some(Wait::Ready) if !hints.get(&Slot::Unkeyed).is_some_and(|h| h.released) => {
            usize::try_from(observed.get(&Slot::Unkeyed).map_or(0, |o| o.pending))
                .unwrap_or(usize::MAX)
        }
        Some(_) => max,
        None => 0,
    };
    let (from_partitions, unkeyed_batch) = split(max, keyed.len(), unkeyed_wanted, turn);
    let mut pulls: Vec<Pull> = keyed[..from_partitions]
        .iter()
        .map(|&(slot, wait)| Pull {
            slot,
            batch: 1,
            wait,
        })
        .collect();
    if let (Some(wait), true) = (unkeyed, unkeyed_batch > 0) {
        pulls.push(Pull {
            slot: Slot::Unkeyed,
            batch: unkeyed_batch,
            wait,
        });
    }
    pulls
}

/// How `max` splits between partitions (one message each) and the unkeyed consumer: when both
/// have messages, the unkeyed consumer is guaranteed up to half (with `max == 1`, every other
/// turn), so neither starves the other.
fn split(max: usize, partitions: usize, unkeyed: usize, turn: usize) -> (usize, usize) {
    let unkeyed = unkeyed.min(max);
    let reserved = if unkeyed == 0 {
        0
    } else if max == 1 {
        turn % 2
    } else {
        unkeyed.min(max / 2)
    };
    let from_partitions = partitions.min(max - reserved);
    (from_partitions, unkeyed.min(max - from_partitions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_between_keys_and_unkeyed_messages() {
        assert_eq!(split(10, 0, 200, 0), (0, 10), "unkeyed alone takes all");
        assert_eq!(split(10, 3, 0, 0), (3, 0), "keyed alone");
        assert_eq!(split(10, 16, 200, 0), (5, 5), "both: half each at least");
        assert_eq!(split(10, 2, 200, 0), (2, 8));
        assert_eq!(split(10, 16, 1, 0), (9, 1));
        assert_eq!(split(1, 4, 9, 0), (1, 0), "max 1: turns alternate");
        assert_eq!(split(1, 4, 9, 1), (0, 1));
        assert_eq!(split(1, 0, 9, 0), (0, 1));
    }

    fn observed(entries: &[(Slot, u64, u64)]) -> HashMap<Slot, Observed> {
        entries
            .iter()
            .map(|&(slot, pending, outstanding)| {
                (
                    slot,
                    Observed {
                        pending,
                        outstanding,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn deliverable_consumers_are_pulled_and_blocked_ones_probed_now_and_then() {
        let now = Instant::now();
        let seen = observed(&[
            (Slot::Partition(0), 2, 0), // ready
            (Slot::Partition(1), 3, 1), // held somewhere: probe
            (Slot::Partition(2), 1, 0), // ready, but this process holds it
            (Slot::Unkeyed, 5, 2),
        ]);
        let mut hints = HashMap::new();
        let held = HashSet::from([2]);
        let pulls = plan(10, 4, &seen, &mut hints, &held, now, 0);
        assert_eq!(
            pulls,
            [
                Pull {
                    slot: Slot::Partition(0),
                    batch: 1,
                    wait: Wait::Ready
                },
                Pull {
                    slot: Slot::Partition(1),
                    batch: 1,
                    wait: Wait::Probe
                },
                Pull {
                    slot: Slot::Unkeyed,
                    batch: 5,
                    wait: Wait::Ready
                },
            ]
        );
        // Right after, partition 1 is not probed again.
        let pulls = plan(10, 4, &seen, &mut hints, &held, now, 0);
        assert!(pulls.iter().all(|p| p.slot != Slot::Partition(1)));
        let later = now + PROBE_EVERY;
        let pulls = plan(10, 4, &seen, &mut hints, &held, later, 0);
        assert!(pulls.contains(&Pull {
            slot: Slot::Partition(1),
            batch: 1,
            wait: Wait::Probe
        }));
    }

    #[test]
    fn a_retried_partition_waits_for_its_delay_then_is_pulled_at_once() {
        let now = Instant::now();
        let seen = observed(&[(Slot::Partition(0), 1, 1)]);
        let mut hints = HashMap::new();
        hints.entry(Slot::Partition(0)).or_insert_with(|| Hints {
            retries: vec![now + Duration::from_millis(100)],
            ..Hints::default()
        });
        assert!(plan(10, 1, &seen, &mut hints, &HashSet::new(), now, 0).is_empty());
        let after = now + Duration::from_millis(100);
        assert_eq!(
            plan(10, 1, &seen, &mut hints, &HashSet::new(), after, 0),
            [Pull {
                slot: Slot::Partition(0),
                batch: 1,
                wait: Wait::Ready
            }]
        );
    }

    #[test]
    fn released_unkeyed_deliveries_are_pulled_though_none_is_pending() {
        let now = Instant::now();
        let seen = observed(&[(Slot::Unkeyed, 0, 3)]);
        let mut hints = HashMap::from([(
            Slot::Unkeyed,
            Hints {
                released: true,
                ..Hints::default()
            },
        )]);
        assert_eq!(
            plan(7, 4, &seen, &mut hints, &HashSet::new(), now, 0),
            [Pull {
                slot: Slot::Unkeyed,
                batch: 7,
                wait: Wait::Ready
            }]
        );
        assert!(
            plan(
                7,
                4,
                &observed(&[]),
                &mut HashMap::new(),
                &HashSet::new(),
                now,
                0
            )
            .is_empty(),
            "nothing stored, nothing pulled"
        );
    }
}
