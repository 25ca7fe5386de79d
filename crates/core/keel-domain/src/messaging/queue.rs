//! The message queue port (DESIGN.md C5): what keel needs from a broker, whichever it is.
//!
//! The model: a message is published to a **topic** (`user.created`); each **group** (an
//! independent subscriber, such as `audit` or `notifier`) bound to a pattern matching the topic
//! receives its own copy (publish/subscribe); within a group, workers compete for messages. A
//! message with a **key** is delivered after every earlier message of the same key in its group
//! has been acknowledged or discarded (ordering per key), while different keys run in parallel.
//! Deliveries are **leased**: a message not acknowledged before its lease ends is delivered
//! again (at-least-once), so consumers absorb duplicates by the message id.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A message id: UUIDv7, made by the publisher, stable across redeliveries. Consumers record it
/// with their effect to absorb duplicates.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

impl MessageId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub id: MessageId,
    /// Messages of one key are handled in publish order within a group.
    pub key: Option<String>,
    /// Trace context and other metadata; travels unchanged to every delivery.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// After this instant the message must not be handled (it goes to the hospital as expired).
    pub expires_at: Option<DateTime<Utc>>,
}

impl Outgoing {
    pub fn new(body: Vec<u8>) -> Self {
        Self {
            id: MessageId::generate(),
            key: None,
            headers: BTreeMap::new(),
            body,
            expires_at: None,
        }
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// A message handed to a worker of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Identifies this delivery to `ack` / `retry` / `discard`.
    pub tag: DeliveryTag,
    pub id: MessageId,
    pub group: String,
    pub topic: String,
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub published_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// 1 on the first delivery, then one more per redelivery (retry or expired lease).
    pub attempt: u32,
}

impl Delivery {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// The broker's handle on one delivery: the group's sequence number and the lease token, so that
/// a worker whose lease expired cannot acknowledge the message another worker now holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryTag {
    pub seq: i64,
    pub lease: Uuid,
}

/// Counts of one group's queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages waiting (including those scheduled for a later retry).
    pub ready: u64,
    /// Messages leased to a worker now.
    pub in_flight: u64,
    /// Age of the oldest message, if any.
    pub oldest: Option<Duration>,
}

/// Why a broker call failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The delivery's lease ended (or it was already settled): another worker may hold it now.
    #[error("lease lost")]
    LeaseLost,
    /// The queue is full: the producer must slow down (backpressure, never unbounded growth).
    #[error("queue full")]
    Full,
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    /// The broker could not be reached or timed out; retrying later may succeed.
    #[error("broker unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("broker fault")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A durable broker. Every backend (the embedded SQL queue, RabbitMQ, NATS JetStream) implements
/// it with the same behaviour, proven by one behavioural suite (`keel-test-support`).
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// From now on, `group` receives every message published to a topic matching `pattern`
    /// (`user.created`, `user.*` for one segment, `user.#` for any number). Idempotent.
    async fn bind(&self, group: &str, pattern: &str) -> Result<(), BrokerError>;
    /// Stores the message for every bound group; durable when it returns `Ok`. Returns whether
    /// any group received it (`false`: nothing is bound to the topic, the message went nowhere).
    async fn publish(&self, topic: &str, message: Outgoing) -> Result<bool, BrokerError>;
    /// Publishes a batch of `(topic, message)`, each as [`Broker::publish`] would, and returns
    /// whether each was routed; durable when it returns `Ok`. Backends override it to store a
    /// batch in one round trip (the SQL queue: one transaction). On error, some of the batch may
    /// have been stored (none on the SQL queue, which stores all or nothing; any subset on a
    /// broker that pipelines): retrying the whole batch is safe, as ids make the copies harmless
    /// (stored once where `dedupes_publish`, absorbed by consumers otherwise).
    async fn publish_many(&self, batch: &[(String, Outgoing)]) -> Result<Vec<bool>, BrokerError> {
        let mut routed = Vec::with_capacity(batch.len());
        for (topic, message) in batch {
            routed.push(self.publish(topic, message.clone()).await?);
        }
        Ok(routed)
    }
    /// Stores the message for `group` alone, whatever is bound: a hospital replay goes back to
    /// the group that failed it, not to every subscriber of its topic.
    async fn redeliver(
        &self,
        group: &str,
        topic: &str,
        message: Outgoing,
    ) -> Result<(), BrokerError>;
    /// Leases up to `max` messages of `group` for `lease`, oldest first, at most one in flight per
    /// key. An empty result means nothing is ready now.
    async fn fetch(
        &self,
        group: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, BrokerError>;
    /// The message was handled: it is removed.
    async fn ack(&self, tag: DeliveryTag) -> Result<(), BrokerError>;
    /// Acknowledges each delivery as [`Broker::ack`] would, returning one result per tag in order
    /// (a stale tag is `LeaseLost` without affecting the others). Backends override it to settle
    /// a batch in one round trip (the SQL queue: one transaction).
    async fn ack_many(&self, tags: &[DeliveryTag]) -> Vec<Result<(), BrokerError>> {
        let mut results = Vec::with_capacity(tags.len());
        for tag in tags {
            results.push(self.ack(*tag).await);
        }
        results
    }
    /// Handling failed: deliver it again no earlier than `delay` from now (its key stays blocked).
    async fn retry(&self, tag: DeliveryTag, delay: Duration) -> Result<(), BrokerError>;
    async fn depth(&self, group: &str) -> Result<QueueDepth, BrokerError>;
    /// What this backend guarantees beyond the common behaviour.
    fn capabilities(&self) -> Capabilities;
}

/// Differences between backends, declared so that the behavioural suite holds each to what it
/// promises and keel's guarantees never rest on a capability a backend lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// A message published twice with one id is stored once per group (SQL queue: a unique key;
    /// NATS: `Nats-Msg-Id` within the duplicate window). RabbitMQ has no such de-duplication;
    /// consumers absorb the copy by the message id either way.
    pub dedupes_publish: bool,
}

/// Splits a batch into chains that may be sent concurrently: the indices of one key's messages,
/// in batch order, form one chain (to be sent one after another, each once the previous one was
/// stored, so that a refused message never lets a later one of its key be stored first); each
/// unkeyed message is a chain of its own.
pub fn key_chains<'a>(keys: impl IntoIterator<Item = Option<&'a str>>) -> Vec<Vec<usize>> {
    let mut chains: Vec<Vec<usize>> = Vec::new();
    let mut of_key: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, key) in keys.into_iter().enumerate() {
        match key {
            None => chains.push(vec![i]),
            Some(key) => {
                let chain = *of_key.entry(key).or_insert_with(|| {
                    chains.push(Vec::new());
                    chains.len() - 1
                });
                chains[chain].push(i);
            }
        }
    }
    chains
}

/// The worst of several outcomes of one batch: `Full` first (the producer must slow down, and
/// retrying the batch is safe), then the first other error.
pub fn worst(
    results: impl IntoIterator<Item = Result<(), BrokerError>>,
) -> Result<(), BrokerError> {
    let mut worst = None;
    for result in results {
        match (result, &worst) {
            (Ok(()), _) => {}
            (Err(BrokerError::Full), _) => worst = Some(BrokerError::Full),
            (Err(err), None) => worst = Some(err),
            (Err(_), Some(_)) => {}
        }
    }
    worst.map_or(Ok(()), Err)
}

/// The groups that receive a message published to `topic` under `bindings` (`(group,
/// pattern)`), each once, sorted.
pub fn matching_groups<'a>(bindings: &'a [(String, String)], topic: &str) -> Vec<&'a str> {
    let mut groups: Vec<&str> = bindings
        .iter()
        .filter(|(_, pattern)| topic_matches(pattern, topic))
        .map(|(group, _)| group.as_str())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// Whether `topic` matches a binding `pattern`: segments split on `.`, `*` matches one segment,
/// `#` any number (including none), as in AMQP topic exchanges.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    fn go(p: &[&str], t: &[&str]) -> bool {
        match (p.split_first(), t.split_first()) {
            (None, None) => true,
            (Some((&"#", rest)), _) => go(rest, t) || (!t.is_empty() && go(p, &t[1..])),
            (Some((&"*", rest)), Some((_, trest))) => go(rest, trest),
            (Some((seg, rest)), Some((tseg, trest))) => seg == tseg && go(rest, trest),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let t: Vec<&str> = topic.split('.').collect();
    go(&p, &t)
}

/// A topic or group name: 1 to 200 characters of letters, digits, `.`, `_`, `-` (and, for a
/// pattern, `*` and `#`).
pub fn check_name(what: &'static str, name: &str, pattern: bool) -> Result<(), BrokerError> {
    let ok_char =
        |c: char| c.is_ascii_alphanumeric() || "._-".contains(c) || (pattern && "*#".contains(c));
    if name.is_empty() || name.len() > 200 || !name.chars().all(ok_char) {
        return Err(BrokerError::Invalid {
            what,
            why: format!("{name:?} must be 1-200 characters of [A-Za-z0-9._-]"),
        });
    }
    Ok(())
}

/// Refuses a message before it is sent: the topic must be a name ([`check_name`]) and the body
/// at most `max_body_bytes` long. Every broker checks the same way, so a message one broker
/// takes is not refused by another.
pub fn check_publish(topic: &str, body: &[u8], max_body_bytes: usize) -> Result<(), BrokerError> {
    check_name("topic", topic, false)?;
    if body.len() > max_body_bytes {
        return Err(BrokerError::Invalid {
            what: "body",
            why: format!(
                "{} bytes is over the {max_body_bytes} byte limit",
                body.len()
            ),
        });
    }
    Ok(())
}

/// 64-bit FNV-1a: tiny, stable forever, good enough to spread keys over partitions. Fixed here
/// rather than taken from the standard library, whose hasher may change between Rust releases:
/// every process, whatever its build, must put a key in the same partition.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The partition of `key` among `partitions` (at least one): FNV-1a of the key modulo the
/// count. A key's messages all go to its partition, which is how brokers keep their order.
pub fn partition_of(key: &str, partitions: u16) -> u16 {
    let index = fnv1a(key.as_bytes()) % u64::from(partitions.max(1));
    // The remainder is below a u16.
    u16::try_from(index).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_into_one_chain_per_key_and_one_per_unkeyed_message() {
        let chains = key_chains([Some("a"), None, Some("b"), Some("a"), None, Some("b")]);
        assert_eq!(chains, [vec![0, 3], vec![1], vec![2, 5], vec![4]]);
    }

    #[test]
    fn full_is_the_worst_outcome_of_a_batch() {
        let unavailable = || Err(BrokerError::Unavailable("down".into()));
        assert!(matches!(
            worst([Ok(()), unavailable(), Err(BrokerError::Full)]),
            Err(BrokerError::Full)
        ));
        assert!(matches!(
            worst([Ok(()), unavailable()]),
            Err(BrokerError::Unavailable(_))
        ));
        assert!(worst([Ok(()), Ok(())]).is_ok());
    }

    #[test]
    fn topic_patterns_match_like_amqp_topic_exchanges() {
        assert!(topic_matches("user.created", "user.created"));
        assert!(!topic_matches("user.created", "user.updated"));
        assert!(topic_matches("user.*", "user.created"));
        assert!(!topic_matches("user.*", "user.created.v2"));
        assert!(topic_matches("user.#", "user.created.v2"));
        assert!(topic_matches("user.#", "user"));
        assert!(topic_matches("#", "anything.at.all"));
        assert!(topic_matches("*.created", "order.created"));
        assert!(!topic_matches("*.created", "created"));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("topic", "user.created", false).is_ok());
        assert!(check_name("topic", "user.*", false).is_err());
        assert!(check_name("pattern", "user.*", true).is_ok());
        assert!(check_name("group", "", false).is_err());
        assert!(check_name("group", "a b", false).is_err());
    }

    #[test]
    fn the_partition_of_a_key_never_changes() {
        // Fixed values: processes built at different times must agree.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(partition_of("a", 16), 0xc);
        assert_eq!(partition_of("a", 8), 4);
        assert_eq!(partition_of("a", 0), 0, "no partitions is one");
        let spread: std::collections::HashSet<_> = (0..100)
            .map(|n| partition_of(&format!("user-{n}"), 8))
            .collect();
        assert_eq!(spread.len(), 8, "keys spread over every partition");
    }

    #[test]
    fn a_publish_is_checked_for_its_topic_and_size() {
        assert!(check_publish("user.created", b"abc", 3).is_ok());
        let too_big = check_publish("user.created", b"abcd", 3).unwrap_err();
        assert!(
            matches!(&too_big, BrokerError::Invalid { what: "body", why } if why == "4 bytes is over the 3 byte limit"),
            "{too_big:?}"
        );
        assert!(matches!(
            check_publish("user.*", b"", 3),
            Err(BrokerError::Invalid { what: "topic", .. })
        ));
    }
}
