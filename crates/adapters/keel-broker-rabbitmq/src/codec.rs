//! How a keel message travels in AMQP: the body as the payload, everything else in the basic
//! properties and headers, and the partition a keyed message goes to.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use keel_domain::{BrokerError, MessageId, Outgoing};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use uuid::Uuid;

/// Which of a group's queues a message belongs in: the routing header's value.
pub(crate) const PART: &str = "keel-part";
const KEY: &str = "keel-key";
const PUBLISHED_AT: &str = "keel-published-at";
const EXPIRES_AT: &str = "keel-expires-at";
const HEADERS: &str = "keel-headers";
/// Set by quorum queues on a redelivery: how many times the message was returned before.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// AMQP persistent delivery mode: the message is written to disk before it is confirmed.
const PERSISTENT: u8 = 2;

/// One of a group's queues: a partition for keyed messages, or the queue of unkeyed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    Partition(u16),
    Unkeyed,
}

impl Slot {
    /// The partition of `key` among `partitions` (the domain's FNV-1a, the same in every
    /// process and build, and the same as the NATS broker's), or the unkeyed queue.
    pub(crate) fn of(key: Option<&str>, partitions: u16) -> Self {
        match key {
            Some(key) => {
                Self::Partition(keel_domain::messaging::queue::partition_of(key, partitions))
            }
            None => Self::Unkeyed,
        }
    }

    /// The value of the routing header, also the last segment of the queue's name.
    pub(crate) fn label(self) -> String {
        match self {
            Self::Partition(i) => i.to_string(),
            Self::Unkeyed => "u".to_owned(),
        }
    }

    /// Every slot of a group, partitions first.
    pub(crate) fn all(partitions: u16) -> Vec<Self> {
        (0..partitions)
            .map(Self::Partition)
            .chain([Self::Unkeyed])
            .collect()
    }
}

/// The properties a message is published with.
pub(crate) fn properties(
    message: &Outgoing,
    slot: Slot,
    now: DateTime<Utc>,
) -> Result<BasicProperties, BrokerError> {
    let mut user = FieldTable::default();
    for (name, value) in &message.headers {
        let name = ShortString::try_new(name.as_str()).map_err(|e| BrokerError::Invalid {
            what: "header",
            why: e.to_string(),
        })?;
        user.insert(name, AMQPValue::LongString(value.as_str().into()));
    }
    let mut headers = FieldTable::default();
    headers.insert(PART.into(), AMQPValue::LongString(slot.label().into()));
    headers.insert(
        PUBLISHED_AT.into(),
        AMQPValue::LongLongInt(now.timestamp_micros()),
    );
    headers.insert(HEADERS.into(), AMQPValue::FieldTable(user));
    if let Some(key) = &message.key {
        headers.insert(KEY.into(), AMQPValue::LongString(key.as_str().into()));
    }
    if let Some(at) = message.expires_at {
        // Not the AMQP `expiration` property: RabbitMQ would drop an expired message, while keel
        // sends it to the hospital marked expired.
        headers.insert(
            EXPIRES_AT.into(),
            AMQPValue::LongLongInt(at.timestamp_micros()),
        );
    }
    Ok(BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(message.id.to_string().into())
        .with_timestamp(u64::try_from(now.timestamp()).unwrap_or(0))
        .with_headers(headers))
}

pub(crate) use keel_domain::messaging::ledger::Incoming;

/// Reads a delivery; `Err` names what makes it no keel message.
pub(crate) fn decode(
    routing_key: &str,
    properties: &BasicProperties,
    body: Vec<u8>,
    redelivered: bool,
) -> Result<Incoming, String> {
    let id = properties
        .message_id()
        .as_ref()
        .ok_or("no message id")
        .and_then(|id| Uuid::parse_str(id.as_str()).map_err(|_| "a message id that is no UUID"))?;
    let empty = FieldTable::default();
    let headers = properties.headers().as_ref().unwrap_or(&empty).inner();
    let text = |name: &str| match headers.get(name) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
        _ => None,
    };
    let instant = |name: &str| integer(headers.get(name)).and_then(DateTime::from_timestamp_micros);
    let mut user = BTreeMap::new();
    if let Some(AMQPValue::FieldTable(table)) = headers.get(HEADERS) {
        for (name, value) in table.inner() {
            let value = match value {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_owned(),
                _ => continue, // keel writes strings only
            };
            user.insert(name.as_str().to_owned(), value);
        }
    }
    let first_attempt = match integer(headers.get(DELIVERY_COUNT)) {
        Some(count) => u32::try_from(count.saturating_add(1)).unwrap_or(u32::MAX),
        None if redelivered => 2,
        None => 1,
    };
    Ok(Incoming {
        id: MessageId(id),
        topic: routing_key.to_owned(),
        key: text(KEY),
        headers: user,
        body,
        published_at: instant(PUBLISHED_AT)
            .or_else(|| {
                properties
                    .timestamp()
                    .and_then(|s| DateTime::from_timestamp(i64::try_from(s).ok()?, 0))
            })
            .unwrap_or_else(Utc::now),
        expires_at: instant(EXPIRES_AT),
        first_attempt,
    })
}

fn integer(value: Option<&AMQPValue>) -> Option<i64> {
    match value? {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_trip_through_amqp_properties() {
        let mut sent = Outgoing::new(b"body".to_vec()).with_key("user-7");
        sent.headers
            .insert("traceparent".into(), "00-abc-def-01".into());
        sent.expires_at = DateTime::from_timestamp_micros(2_000_000_000_000_000);
        let now = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let props = properties(&sent, Slot::of(sent.key.as_deref(), 8), now).unwrap();
        assert_eq!(props.delivery_mode(), &Some(PERSISTENT));
        let got = decode("user.created", &props, sent.body.clone(), false).unwrap();
        assert_eq!(
            got,
            Incoming {
                id: sent.id,
                topic: "user.created".into(),
                key: Some("user-7".into()),
                headers: sent.headers.clone(),
                body: sent.body.clone(),
                published_at: now,
                expires_at: sent.expires_at,
                first_attempt: 1,
            }
        );
    }

    #[test]
    fn the_attempt_of_a_redelivery_comes_from_the_delivery_count_or_the_flag() {
        let sent = Outgoing::new(vec![]);
        let props = properties(&sent, Slot::Unkeyed, Utc::now()).unwrap();
        assert_eq!(decode("t", &props, vec![], true).unwrap().first_attempt, 2);
        let mut headers = props.headers().clone().unwrap();
        headers.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(3));
        let props = props.with_headers(headers);
        assert_eq!(decode("t", &props, vec![], true).unwrap().first_attempt, 4);
    }

    #[test]
    fn a_message_without_a_uuid_id_is_no_keel_message() {
        let props = BasicProperties::default().with_message_id("order-1".into());
        assert!(decode("t", &props, vec![], false).is_err());
        assert!(decode("t", &BasicProperties::default(), vec![], false).is_err());
    }

    #[test]
    fn a_header_name_longer_than_amqp_allows_is_refused() {
        let mut sent = Outgoing::new(vec![]);
        sent.headers.insert("h".repeat(256), "v".into());
        assert!(matches!(
            properties(&sent, Slot::Unkeyed, Utc::now()),
            Err(BrokerError::Invalid { what: "header", .. })
        ));
    }

    #[test]
    fn partitions_are_stable_and_spread_keys() {
        // Fixed values: a change of hash would send a key's messages to two partitions across
        // a rolling upgrade, breaking its order.
        assert_eq!(Slot::of(Some("a"), 8), Slot::Partition(4));
        assert_eq!(Slot::of(Some("user-42"), 8), Slot::of(Some("user-42"), 8));
        assert_eq!(Slot::of(None, 8), Slot::Unkeyed);
        let used: std::collections::HashSet<_> = (0..100)
            .map(|n| Slot::of(Some(&format!("key-{n}")), 8))
            .collect();
        assert_eq!(used.len(), 8, "100 keys reach every partition");
        assert_eq!(
            Slot::all(2),
            [Slot::Partition(0), Slot::Partition(1), Slot::Unkeyed]
        );
    }
}
