//! What every row of the queue benchmark shares: the messages, the publishers' batches and pace,
//! the handler's idempotent effect record, and the figures taken from it.
//!
//! A body is `body_bytes` long and starts with three little-endian `u64`s: the message number,
//! the nanoseconds since the run's origin when its publish was called (for the
//! publish-to-handle latency), and a checksum of the two (a handler that reads a foreign or
//! damaged body fails loudly instead of skewing the figures).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// What one run sends, the same for every system.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub messages: u64,
    pub body_bytes: usize,
    /// Distinct keys (message `n` has key `n % keys`); 0: no keys.
    pub keys: u64,
    pub workers: usize,
    pub publishers: usize,
    pub publish_batch: usize,
    pub fetch_batch: usize,
    /// Offered load across all publishers, messages/s; 0: as fast as they can.
    pub rate: u64,
    pub timeout: Duration,
}

impl Plan {
    /// The key index of message `n`.
    pub(crate) fn key(&self, n: u64) -> Option<u64> {
        (self.keys > 0).then(|| n % self.keys)
    }

    pub(crate) fn key_name(&self, n: u64) -> Option<String> {
        self.key(n).map(|k| format!("k{k}"))
    }

    /// The batches publisher `p` sends, in order. A key belongs to one publisher, so each key's
    /// messages are published in ascending number, which the ordering check relies on.
    pub(crate) fn batches(&self, p: usize) -> Vec<Vec<u64>> {
        let publishers = self.publishers as u64;
        let mine: Vec<u64> = (0..self.messages)
            .filter(|&n| self.key(n).unwrap_or(n) % publishers == p as u64)
            .collect();
        mine.chunks(self.publish_batch.max(1))
            .map(<[u64]>::to_vec)
            .collect()
    }
}

const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// The body of message `n`, stamped now.
pub(super) fn body(plan: &Plan, n: u64, origin: Instant) -> Vec<u8> {
    let sent = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let mut b = Vec::with_capacity(plan.body_bytes.max(24));
    b.extend_from_slice(&n.to_le_bytes());
    b.extend_from_slice(&sent.to_le_bytes());
    b.extend_from_slice(&((n ^ sent).wrapping_mul(MIX)).to_le_bytes());
    // Filler that does not compress to nothing, in case a broker compresses.
    let mut x = n.wrapping_mul(MIX) | 1;
    while b.len() < plan.body_bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.push(x as u8);
    }
    b
}

/// The message number and publish stamp of a body.
pub(super) fn parse(body: &[u8]) -> Option<(u64, u64)> {
    let word = |i: usize| {
        body.get(i * 8..i * 8 + 8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
    };
    let (n, sent, check) = (word(0)?, word(1)?, word(2)?);
    ((n ^ sent).wrapping_mul(MIX) == check).then_some((n, sent))
}

/// The handler's effect store: it records each message id with its effect (a count, a latency
/// sample, the key's last number) in one critical section, so a redelivered message has no
/// second effect — what keel asks of every consumer, done here by raw and keel rows alike.
pub(super) struct Effects {
    inner: Mutex<Inner>,
    target: u64,
    origin: Instant,
    check_order: bool,
    plan: Plan,
    done: watch::Sender<bool>,
}

#[derive(Default)]
struct Inner {
    seen: HashSet<u128>,
    last_of_key: HashMap<u64, u64>,
    latencies_ns: Vec<u64>,
    duplicates: u64,
    order_violations: u64,
    foreign: u64,
}

/// The effect store's counts once a run is over.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    pub handled: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    pub foreign: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Effects {
    /// `check_order`: the system promises per-key order, so a violation is a failure.
    pub(super) fn new(plan: Plan, origin: Instant, check_order: bool) -> Self {
        let inner = Inner {
            latencies_ns: Vec::with_capacity(usize::try_from(plan.messages).unwrap_or(0)),
            ..Inner::default()
        };
        Self {
            inner: Mutex::new(inner),
            target: plan.messages,
            origin,
            check_order,
            plan,
            done: watch::channel(false).0,
        }
    }

    /// Resolves to `true` once every message has had its effect.
    pub(super) fn done(&self) -> watch::Receiver<bool> {
        self.done.subscribe()
    }

    /// Records message `id` (its broker-independent identity) with its effect, once. Returns
    /// whether this delivery had the effect (false: a duplicate, absorbed).
    pub(super) fn record(&self, id: u128, body: &[u8]) -> bool {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut inner = self.inner.lock().expect("effects lock");
        let Some((n, sent)) = parse(body) else {
            inner.foreign += 1;
            return false;
        };
        if !inner.seen.insert(id) {
            inner.duplicates += 1;
            return false;
        }
        inner.latencies_ns.push(now.saturating_sub(sent));
        if self.check_order
            && let Some(k) = self.plan.key(n)
            && let Some(last) = inner.last_of_key.insert(k, n)
            && last > n
        {
            inner.order_violations += 1;
        }
        if inner.seen.len() as u64 == self.target {
            self.done.send_replace(true);
        }
        true
    }

    pub(super) fn tally(&self) -> Tally {
        let mut inner = self.inner.lock().expect("effects lock");
        inner.latencies_ns.sort_unstable();
        let at = |q: f64| {
            let v = &inner.latencies_ns;
            if v.is_empty() {
                return Duration::ZERO;
            }
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            Duration::from_nanos(v[i])
        };
        Tally {
            handled: inner.seen.len() as u64,
            duplicates: inner.duplicates,
            order_violations: inner.order_violations,
            foreign: inner.foreign,
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// Spaces a publisher's batches so that all publishers together offer `plan.rate` messages/s.
pub(super) struct Pace {
    start: Instant,
    per_publisher: f64,
    sent: u64,
}

impl Pace {
    pub(super) fn new(plan: &Plan) -> Self {
        Self {
            start: Instant::now(),
            per_publisher: plan.rate as f64 / plan.publishers.max(1) as f64,
            sent: 0,
        }
    }

    /// Waits until `n` more messages may go.
    pub(super) async fn wait(&mut self, n: usize) {
        if self.per_publisher > 0.0 {
            let due = self.start + Duration::from_secs_f64(self.sent as f64 / self.per_publisher);
            tokio::time::sleep_until(due.into()).await;
        }
        self.sent += n as u64;
    }
}

/// Waits until every message has had its effect, or fails after the plan's timeout.
pub(super) async fn wait_done(effects: &Effects, plan: &Plan) -> anyhow::Result<()> {
    let mut done = effects.done();
    match tokio::time::timeout(plan.timeout, done.wait_for(|d| *d)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => anyhow::bail!("the effect store closed"),
        Err(_) => {
            let t = effects.tally();
            anyhow::bail!(
                "timed out after {:?}: {} of {} messages handled",
                plan.timeout,
                t.handled,
                plan.messages
            )
        }
    }
}

/// One row's measurements.
#[derive(Debug, Clone)]
pub(crate) struct Figures {
    pub messages: u64,
    /// From the first publish to the last acknowledgement.
    pub elapsed: Duration,
    /// From the first publish to the last publish confirmed.
    pub publish_elapsed: Duration,
    pub tally: Tally,
    pub notes: Vec<String>,
}

impl Figures {
    pub(crate) fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn publish_rate(&self) -> f64 {
        self.messages as f64 / self.publish_elapsed.as_secs_f64().max(1e-9)
    }
}

/// Checks a finished run's tally: every message had its effect once, none foreign, and, where
/// the system promises it, per-key order held.
pub(super) fn verify(plan: &Plan, tally: &Tally, check_order: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        tally.handled == plan.messages,
        "{} of {} messages handled",
        tally.handled,
        plan.messages
    );
    anyhow::ensure!(tally.foreign == 0, "{} foreign bodies", tally.foreign);
    if check_order {
        anyhow::ensure!(
            tally.order_violations == 0,
            "{} per-key order violations",
            tally.order_violations
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            messages: 1000,
            body_bytes: 1024,
            keys: 10,
            workers: 4,
            publishers: 3,
            publish_batch: 7,
            fetch_batch: 10,
            rate: 0,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn bodies_carry_their_number_and_stamp_and_have_the_planned_size() {
        let origin = Instant::now();
        let b = body(&plan(), 42, origin);
        assert_eq!(b.len(), 1024);
        let (n, _) = parse(&b).unwrap();
        assert_eq!(n, 42);
        let mut damaged = b.clone();
        damaged[3] ^= 1;
        assert_eq!(parse(&damaged), None);
    }

    #[test]
    fn publishers_share_every_message_once_and_own_whole_keys() {
        let plan = plan();
        let mut all: Vec<u64> = Vec::new();
        for p in 0..plan.publishers {
            let mine: Vec<u64> = plan.batches(p).concat();
            assert!(mine.windows(2).all(|w| w[0] < w[1]));
            for n in &mine {
                assert_eq!(plan.key(*n).unwrap() % 3, p as u64);
            }
            all.extend(mine);
        }
        all.sort_unstable();
        assert_eq!(all, (0..plan.messages).collect::<Vec<_>>());
    }

    #[test]
    fn effects_absorb_duplicates_and_count_order_violations() {
        let origin = Instant::now();
        let plan = Plan {
            messages: 3,
            ..plan()
        };
        let effects = Effects::new(plan, origin, true);
        assert!(effects.record(1, &body(&plan, 0, origin)));
        assert!(!effects.record(1, &body(&plan, 0, origin)));
        assert!(effects.record(2, &body(&plan, 10, origin)));
        assert!(effects.record(3, &body(&plan, 20, origin)));
        assert!(*effects.done().borrow(), "three distinct messages: done");
        let t = effects.tally();
        assert_eq!((t.handled, t.duplicates, t.order_violations), (3, 1, 0));
        let effects = Effects::new(plan, origin, true);
        effects.record(1, &body(&plan, 10, origin));
        effects.record(2, &body(&plan, 0, origin));
        assert_eq!(effects.tally().order_violations, 1);
        assert!(verify(&plan, &effects.tally(), true).is_err());
    }
}
