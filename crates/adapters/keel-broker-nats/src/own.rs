//! Who consumes a group's partition: one process at a time, by a lease kept in the server.
//!
//! A partition's ownership record is the one message on `<ns>.own.<group>.p<i>` in the stream
//! `<ns>_owners` (one message kept per subject). Every write is a compare-and-set on that
//! subject's last sequence (`Nats-Expected-Last-Subject-Sequence`), so of two processes racing
//! for a partition one wins, and an owner learns at its next renewal that it was replaced.
//!
//! Time is never compared across machines: an owner renews every `ttl / 3`; it gives the
//! partition up by itself once `ttl` has passed since it *sent* its last successful renewal; a
//! challenger takes the partition over only after it has seen the same record, unchanged, for
//! `ttl` on its own clock, which starts no earlier than that renewal was written. So an owner
//! has always stopped before another process takes over.
//!
//! Deliveries the old owner held (delivered, not acknowledged) stay outstanding on the server
//! until their `ack_wait` passes; the old owner sends no keep-alive after it stopped. The new
//! owner therefore pulls only after `ack_wait` (and a margin) has passed since its takeover:
//! by then the server has put every one of them back, and JetStream hands out redeliveries
//! before newer messages, in sequence order, so a key's order survives the change of owner.
//! A partition never owned before is pulled at once.

use std::time::{Duration, Instant};

/// This process's view of one partition's ownership.
#[derive(Debug)]
pub(crate) enum Own {
    /// Someone else's, or nobody's yet: the record last read and since when it is unchanged.
    Watching {
        /// The record's subject sequence; `None` before the first read.
        seen: Option<u64>,
        since: Instant,
        checked: Option<Instant>,
    },
    /// Ours: `seq` is our record's subject sequence, `renewed` when its write was sent.
    Owned { seq: u64, renewed: Instant },
}

impl Own {
    pub(crate) fn new(now: Instant) -> Self {
        Own::Watching {
            seen: None,
            since: now,
            checked: None,
        }
    }
}

/// What to do next for a partition.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing now.
    Wait,
    /// Write our record again (compare-and-set on `seq`).
    Renew { seq: u64 },
    /// Our tenure has run out without a renewal: stop at once.
    GiveUp,
    /// Read the record.
    Read,
}

pub(crate) fn step(own: &Own, now: Instant, ttl: Duration) -> Step {
    match *own {
        Own::Owned { seq, renewed, .. } => {
            if now >= renewed + ttl {
                Step::GiveUp
            } else if now >= renewed + ttl / 3 {
                Step::Renew { seq }
            } else {
                Step::Wait
            }
        }
        Own::Watching { checked, .. } => match checked {
            Some(at) if now < at + ttl / 4 => Step::Wait,
            _ => Step::Read,
        },
    }
}

/// What a read of the record leads to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Try to take it: compare-and-set on `expected` (0: no record yet). `wait`: pull only
    /// after the previous owner's deliveries have come back (there was an owner).
    Claim { expected: u64, wait: bool },
    /// Keep watching (the state to keep).
    Watch { seen: u64, since: Instant },
}

/// `record`: the record's subject sequence, `None` if the subject has none.
pub(crate) fn judge(own: &Own, record: Option<u64>, now: Instant, ttl: Duration) -> Verdict {
    let Some(seq) = record else {
        return Verdict::Claim {
            expected: 0,
            wait: false,
        };
    };
    match *own {
        Own::Watching {
            seen: Some(seen),
            since,
            ..
        } if seen == seq => {
            if now >= since + ttl {
                Verdict::Claim {
                    expected: seq,
                    wait: true,
                }
            } else {
                Verdict::Watch { seen, since }
            }
        }
        // A new record (an owner renewing), or the first read: the clock starts now.
        _ => Verdict::Watch {
            seen: seq,
            since: now,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    #[test]
    fn a_partition_never_owned_is_claimed_at_once_and_pulled_at_once() {
        let now = Instant::now();
        let own = Own::new(now);
        assert_eq!(step(&own, now, TTL), Step::Read);
        assert_eq!(
            judge(&own, None, now, TTL),
            Verdict::Claim {
                expected: 0,
                wait: false
            }
        );
    }

    #[test]
    fn a_record_is_taken_over_only_after_it_stayed_unchanged_for_the_ttl() {
        let t0 = Instant::now();
        let own = Own::new(t0);
        let Verdict::Watch { seen, since } = judge(&own, Some(7), t0, TTL) else {
            panic!("the first read only starts the clock");
        };
        let own = Own::Watching {
            seen: Some(seen),
            since,
            checked: Some(t0),
        };
        assert_eq!(step(&own, t0 + Duration::from_millis(100), TTL), Step::Wait);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            judge(&own, Some(7), t1, TTL),
            Verdict::Watch { seen: 7, since: t0 }
        );
        // The owner renewed: the clock starts again.
        assert_eq!(
            judge(&own, Some(9), t1, TTL),
            Verdict::Watch { seen: 9, since: t1 }
        );
        assert_eq!(
            judge(&own, Some(7), t0 + TTL, TTL),
            Verdict::Claim {
                expected: 7,
                wait: true
            }
        );
    }

    #[test]
    fn an_owner_renews_after_a_third_and_gives_up_at_the_ttl() {
        let t0 = Instant::now();
        let own = Own::Owned {
            seq: 4,
            renewed: t0,
        };
        assert_eq!(step(&own, t0 + Duration::from_millis(500), TTL), Step::Wait);
        assert_eq!(step(&own, t0 + TTL / 3, TTL), Step::Renew { seq: 4 });
        assert_eq!(step(&own, t0 + TTL, TTL), Step::GiveUp);
    }

    #[test]
    fn the_owner_stops_before_a_challenger_can_take_over() {
        // The challenger's clock for a record starts no earlier than the record was written,
        // which is no earlier than the owner sent it; both wait the same ttl.
        let sent = Instant::now();
        let owner = Own::Owned {
            seq: 4,
            renewed: sent,
        };
        let first_seen = sent + Duration::from_millis(1);
        let challenger = Own::Watching {
            seen: Some(4),
            since: first_seen,
            checked: Some(first_seen),
        };
        let mut t = sent;
        while !matches!(judge(&challenger, Some(4), t, TTL), Verdict::Claim { .. }) {
            t += Duration::from_millis(10);
        }
        assert_eq!(step(&owner, t, TTL), Step::GiveUp);
    }
}
