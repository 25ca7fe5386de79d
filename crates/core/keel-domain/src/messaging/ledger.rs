//! The deliveries a process holds from a broker, unacknowledged there, and the rules that hand
//! them to workers: oldest first, at most one in flight per key, leases and retry delays kept in
//! the process. Brokers that know none of these rules (RabbitMQ, NATS JetStream with many
//! messages outstanding per consumer) keep each delivery here until it is acknowledged: to the
//! server each message is simply delivered and not yet acknowledged, so a crash of the process
//! returns every one of them.
//!
//! Pure bookkeeping, no I/O: `S` names where a message came from (a partition), `A` is what
//! settles it on the server (an acker), and every call takes the time it runs at.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::messaging::queue::{Delivery, DeliveryTag, MessageId};

/// A message as it arrived from a broker, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub id: MessageId,
    pub topic: String,
    pub key: Option<String>,
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub published_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The attempt of its first hand-out in this process: 1 on a first delivery; after a
    /// redelivery by the server, the server's count of earlier deliveries plus one (or 2 when
    /// the server only flags a redelivery).
    pub first_attempt: u32,
}

/// `now + by`, saturating far in the future instead of overflowing.
pub fn later(now: Instant, by: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(by.min(CENTURY)).unwrap_or(now)
}

/// Where a held message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting to be handed out.
    Ready,
    /// Handed out under `lease` until `until`; after it, it is ready again.
    Leased { lease: Uuid, until: Instant },
    /// A retry: ready again at `until`, its key blocked meanwhile.
    Delayed { until: Instant },
}

/// A message held from a queue, with what settles it there (`A`: the channel's acker).
#[derive(Debug)]
struct Entry<S, A> {
    /// What it came through (a consumer channel, an ownership of a partition): it is
    /// forgotten with it.
    link: u64,
    slot: S,
    message: Incoming,
    acker: A,
    /// Hand-outs so far in this process.
    handed: u32,
    state: State,
    /// When the server last heard about it (arrival, or a keep-alive).
    touched: Instant,
}

impl<S, A> Entry<S, A> {
    /// Whether it blocks its key and cannot be handed out now.
    fn busy(&self, now: Instant) -> bool {
        match self.state {
            State::Ready => false,
            State::Leased { until, .. } | State::Delayed { until } => until > now,
        }
    }
}

/// One group's held messages by sequence number (arrival order).
type Entries<S, A> = BTreeMap<i64, Box<Entry<S, A>>>;

/// The held deliveries of every group, in arrival order per group.
#[derive(Debug)]
pub struct Ledger<S, A> {
    next_seq: i64,
    /// Entries boxed: an entry (the message and its acker) is hundreds of bytes, and a B-tree
    /// node shifts its neighbours on every insert and removal (measured: 7% of the NATS
    /// benchmark's client CPU in memmove before).
    groups: HashMap<String, Entries<S, A>>,
    /// Which group a sequence number belongs to, for `ack` and `retry`.
    group_of: HashMap<i64, String>,
}

impl<S, A> Default for Ledger<S, A> {
    fn default() -> Self {
        Self {
            next_seq: 1,
            groups: HashMap::new(),
            group_of: HashMap::new(),
        }
    }
}

/// Why a tag cannot be settled: it is unknown, settled, or its lease was handed to another.
#[derive(Debug, PartialEq, Eq)]
pub struct LeaseLost;

/// Counts of one group's held messages.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub waiting: u64,
    pub in_flight: u64,
    pub oldest: Option<DateTime<Utc>>,
}

impl<S: Copy + Eq + Hash, A: Clone> Ledger<S, A> {
    /// Takes a message that arrived on `link` from `slot` of `group` at `now`.
    pub fn insert(
        &mut self,
        group: &str,
        link: u64,
        slot: S,
        message: Incoming,
        acker: A,
        now: Instant,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.group_of.insert(seq, group.to_owned());
        let entry = Box::new(Entry {
            link,
            slot,
            message,
            acker,
            handed: 0,
            state: State::Ready,
            touched: now,
        });
        // Looked up first: `entry(group.to_owned())` would allocate the name for every message.
        match self.groups.get_mut(group) {
            Some(entries) => {
                entries.insert(seq, entry);
            }
            None => {
                self.groups
                    .insert(group.to_owned(), BTreeMap::from([(seq, entry)]));
            }
        }
    }

    /// Hands out up to `max` messages of `group`, oldest first, skipping every key that has a
    /// message in flight or waiting for its retry (so a key's later messages wait behind it).
    pub fn take(
        &mut self,
        group: &str,
        max: usize,
        lease: Duration,
        now: Instant,
    ) -> Vec<Delivery> {
        let Some(entries) = self.groups.get_mut(group) else {
            return Vec::new();
        };
        // One pass in arrival order picks what to hand out: a key seen once (busy, or picked
        // now) blocks its later messages. A busy entry never follows a ready one of its key,
        // since a key's later message is handed out only when no earlier one is held.
        let mut picked: Vec<i64> = Vec::new();
        {
            let mut blocked: HashSet<&str> = HashSet::new();
            for (&seq, entry) in entries.iter() {
                if picked.len() >= max {
                    break;
                }
                let fresh = match entry.message.key.as_deref() {
                    Some(key) => blocked.insert(key),
                    None => true,
                };
                if fresh && !entry.busy(now) {
                    picked.push(seq);
                }
            }
        }
        let mut out = Vec::with_capacity(picked.len());
        for seq in picked {
            let Some(entry) = entries.get_mut(&seq) else {
                continue;
            };
            let lease_token = Uuid::new_v4();
            entry.handed += 1;
            entry.state = State::Leased {
                lease: lease_token,
                until: later(now, lease),
            };
            let m = &entry.message;
            out.push(Delivery {
                tag: DeliveryTag {
                    seq,
                    lease: lease_token,
                },
                id: m.id,
                group: group.to_owned(),
                topic: m.topic.clone(),
                key: m.key.clone(),
                headers: m.headers.clone(),
                body: m.body.clone(),
                published_at: m.published_at,
                expires_at: m.expires_at,
                attempt: m.first_attempt.saturating_add(entry.handed - 1),
            });
        }
        out
    }

    /// Settles `tag` for good: returns the acker that removes the message from its queue.
    pub fn ack(&mut self, tag: DeliveryTag) -> Result<A, LeaseLost> {
        let entries = self.holding(tag)?;
        let entry = entries.remove(&tag.seq).ok_or(LeaseLost)?;
        self.group_of.remove(&tag.seq);
        Ok(entry.acker)
    }

    /// Keeps the message held and hands it out again at `until`.
    pub fn retry(&mut self, tag: DeliveryTag, until: Instant) -> Result<(), LeaseLost> {
        let entry = self.holding(tag)?.get_mut(&tag.seq).ok_or(LeaseLost)?;
        entry.state = State::Delayed { until };
        Ok(())
    }

    /// The group's entries, if `tag` is the lease of a message in it. A lease that ran out but
    /// was not handed to anyone else yet still settles, as with the SQL queue.
    fn holding(&mut self, tag: DeliveryTag) -> Result<&mut Entries<S, A>, LeaseLost> {
        let group = self.group_of.get(&tag.seq).ok_or(LeaseLost)?;
        let entries = self.groups.get_mut(group).ok_or(LeaseLost)?;
        match entries.get(&tag.seq).map(|e| e.state) {
            Some(State::Leased { lease, .. }) if lease == tag.lease => Ok(entries),
            _ => Err(LeaseLost),
        }
    }

    /// Forgets every message that came on `link`: its channel is gone, so RabbitMQ has
    /// returned them to their queues and their tags can settle nothing.
    pub fn forget_link(&mut self, link: u64) {
        for entries in self.groups.values_mut() {
            entries.retain(|_, e| e.link != link);
        }
        let groups = &self.groups;
        self.group_of
            .retain(|seq, group| groups.get(group).is_some_and(|e| e.contains_key(seq)));
    }

    /// Forgets everything (the connection is gone).
    pub fn forget_all(&mut self) {
        self.groups.clear();
        self.group_of.clear();
    }

    /// How many messages of `group` this process holds from each slot on `link`: the share
    /// of RabbitMQ's prefetch window they use.
    pub fn held_from(&self, group: &str, link: u64) -> HashMap<S, usize> {
        let mut counts = HashMap::new();
        for entry in self.groups.get(group).into_iter().flat_map(|e| e.values()) {
            if entry.link == link {
                *counts.entry(entry.slot).or_default() += 1;
            }
        }
        counts
    }

    /// The ackers of every message the server last heard about before `before`, marked as
    /// heard about at `now`: the caller tells the server they are still being worked on, so that
    /// its redelivery timer does not run out under a message held here (a long retry delay, a
    /// key waiting behind a slow one).
    pub fn stale(&mut self, before: Instant, now: Instant) -> Vec<A> {
        let mut out = Vec::new();
        for entry in self.groups.values_mut().flat_map(|e| e.values_mut()) {
            if entry.touched < before {
                entry.touched = now;
                out.push(entry.acker.clone());
            }
        }
        out
    }

    /// Whether this process holds any message of `group`.
    pub fn holds(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|e| !e.is_empty())
    }

    /// How many messages of `group` each link holds.
    pub fn held_by_link(&self, group: &str) -> HashMap<u64, usize> {
        let mut counts = HashMap::new();
        for entry in self.groups.get(group).into_iter().flat_map(|e| e.values()) {
            *counts.entry(entry.link).or_default() += 1;
        }
        counts
    }

    /// What this process holds of `group`: waiting (ready, delayed, or with a lapsed lease),
    /// in flight, and the oldest publish time.
    pub fn held(&self, group: &str, now: Instant) -> Held {
        let mut held = Held::default();
        for entry in self.groups.get(group).into_iter().flat_map(|e| e.values()) {
            match entry.state {
                State::Leased { until, .. } if until > now => held.in_flight += 1,
                _ => held.waiting += 1,
            }
            let at = entry.message.published_at;
            held.oldest = Some(held.oldest.map_or(at, |o| o.min(at)));
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(key: Option<&str>, body: &str) -> Incoming {
        Incoming {
            id: MessageId::generate(),
            topic: "t".into(),
            key: key.map(str::to_owned),
            headers: Default::default(),
            body: body.as_bytes().to_vec(),
            published_at: Utc::now(),
            expires_at: None,
            first_attempt: 1,
        }
    }

    /// A slot per key's first letter; unkeyed messages in slot 0.
    fn slot(key: Option<&str>) -> u8 {
        key.map_or(0, |k| k.as_bytes()[0])
    }

    fn ledger(messages: &[(Option<&str>, &str)]) -> Ledger<u8, ()> {
        let mut ledger = Ledger::default();
        for (key, body) in messages {
            ledger.insert("g", 1, slot(*key), message(*key, body), (), Instant::now());
        }
        ledger
    }

    fn bodies(out: &[Delivery]) -> Vec<&str> {
        out.iter()
            .map(|d| std::str::from_utf8(&d.body).unwrap())
            .collect()
    }

    const LEASE: Duration = Duration::from_secs(30);

    #[test]
    fn one_message_per_key_is_handed_out_and_the_next_follows_its_ack() {
        let mut ledger = ledger(&[
            (Some("a"), "a1"),
            (Some("a"), "a2"),
            (Some("b"), "b1"),
            (None, "u1"),
            (None, "u2"),
        ]);
        let now = Instant::now();
        let first = ledger.take("g", 10, LEASE, now);
        assert_eq!(bodies(&first), ["a1", "b1", "u1", "u2"]);
        assert!(ledger.take("g", 10, LEASE, now).is_empty());
        ledger.ack(first[0].tag).unwrap();
        assert_eq!(bodies(&ledger.take("g", 10, LEASE, now)), ["a2"]);
        assert_eq!(ledger.ack(first[0].tag), Err(LeaseLost), "settled once");
    }

    #[test]
    fn a_lapsed_lease_hands_the_message_out_again_and_the_old_tag_is_refused() {
        let mut ledger = ledger(&[(Some("a"), "a1"), (Some("a"), "a2")]);
        let now = Instant::now();
        let first = ledger.take("g", 10, Duration::from_millis(50), now);
        let later = now + Duration::from_millis(60);
        let held = ledger.held("g", later);
        assert_eq!((held.waiting, held.in_flight), (2, 0));
        let again = ledger.take("g", 10, LEASE, later);
        assert_eq!(
            bodies(&again),
            ["a1"],
            "the first of the key, not its successor"
        );
        assert_eq!(again[0].attempt, 2);
        assert_eq!(ledger.ack(first[0].tag), Err(LeaseLost));
        ledger.ack(again[0].tag).unwrap();
    }

    #[test]
    fn a_retry_keeps_its_key_blocked_until_its_delay_ends() {
        let mut ledger = ledger(&[(Some("r"), "first"), (Some("r"), "second")]);
        let now = Instant::now();
        let first = ledger.take("g", 10, LEASE, now);
        ledger
            .retry(first[0].tag, now + Duration::from_millis(150))
            .unwrap();
        assert_eq!(ledger.retry(first[0].tag, now), Err(LeaseLost));
        assert!(
            ledger
                .take("g", 10, LEASE, now + Duration::from_millis(100))
                .is_empty()
        );
        let again = ledger.take("g", 10, LEASE, now + Duration::from_millis(150));
        assert_eq!((bodies(&again), again[0].attempt), (vec!["first"], 2));
    }

    #[test]
    fn a_dead_link_takes_its_messages_and_their_tags_with_it() {
        let mut ledger = ledger(&[(None, "x")]);
        ledger.insert("g", 2, 0, message(None, "y"), (), Instant::now());
        let out = ledger.take("g", 10, LEASE, Instant::now());
        assert_eq!(ledger.held_from("g", 1).get(&0), Some(&1));
        ledger.forget_link(1);
        assert_eq!(ledger.ack(out[0].tag), Err(LeaseLost));
        ledger.ack(out[1].tag).unwrap();
    }

    #[test]
    fn stale_entries_are_returned_once_per_keep_alive() {
        let start = Instant::now();
        let mut ledger = ledger(&[(Some("a"), "a1"), (None, "u1")]);
        assert!(
            ledger
                .stale(start - Duration::from_secs(1), start)
                .is_empty()
        );
        let later = start + Duration::from_secs(10);
        assert_eq!(ledger.stale(later, later).len(), 2);
        assert!(
            ledger.stale(later, later).is_empty(),
            "touched by the keep-alive"
        );
    }
}
