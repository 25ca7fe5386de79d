//! The names and arguments of what keel declares in RabbitMQ, and the declarations.
//!
//! Within a namespace `ns`:
//! - `ns`: the topic exchange every message is published to, by its topic;
//! - `ns/<group>`: a headers exchange per group, bound to `ns` once per pattern (so a message
//!   matching two patterns reaches it once), routing on the `keel-part` header to
//! - `ns/<group>/<i>` (partitions `0..K`, single active consumer) and `ns/<group>/u` (unkeyed);
//! - `ns/~dead`: a fanout exchange and queue that receive what a group's queues dead-letter.
//!
//! `/` and `~` cannot occur in a group name, so no two groups' names collide.

use std::time::Duration;

use keel_domain::BrokerError;
use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::codec::{PART, Slot};
use crate::session::classify;

/// What shapes the declarations; every process of a namespace must agree on it, since
/// RabbitMQ refuses to redeclare a queue with other arguments.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    pub namespace: String,
    pub partitions: u16,
    pub max_depth: u64,
    pub quorum: bool,
    pub delivery_limit: Option<u32>,
    pub expire_unused_after: Option<Duration>,
}

impl Shape {
    pub(crate) fn topic_exchange(&self) -> ShortString {
        self.namespace.as_str().into()
    }

    pub(crate) fn group_exchange(&self, group: &str) -> ShortString {
        format!("{}/{group}", self.namespace).into()
    }

    pub(crate) fn queue(&self, group: &str, slot: Slot) -> ShortString {
        format!("{}/{group}/{}", self.namespace, slot.label()).into()
    }

    pub(crate) fn dead_letters(&self) -> ShortString {
        format!("{}/~dead", self.namespace).into()
    }

    fn exchange_options(&self) -> ExchangeDeclareOptions {
        ExchangeDeclareOptions {
            durable: true,
            // With expiring queues (tests), the exchanges go with them: an auto-deleted
            // exchange disappears once its last binding does.
            auto_delete: self.expire_unused_after.is_some(),
            ..ExchangeDeclareOptions::default()
        }
    }

    /// The arguments of a group's queue.
    fn queue_arguments(&self, slot: Slot) -> FieldTable {
        let mut args = self.bounded_arguments();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letters().as_str().into()),
        );
        if self.quorum {
            // The source keeps a message until the dead-letter queue confirms it.
            args.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
            if let Some(limit) = self.delivery_limit {
                args.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongLongInt(i64::from(limit)),
                );
            }
        }
        if matches!(slot, Slot::Partition(_)) {
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        args
    }

    /// Type, bound and expiry, shared by the groups' queues and the dead-letter queue.
    fn bounded_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(i64::try_from(self.max_depth).unwrap_or(i64::MAX)),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        if let Some(after) = self.expire_unused_after {
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(i64::try_from(after.as_millis()).unwrap_or(i64::MAX)),
            );
        }
        args
    }

    /// The namespace's topic exchange and dead-letter queue.
    pub(crate) async fn declare_namespace(&self, channel: &Channel) -> Result<(), BrokerError> {
        channel
            .exchange_declare(
                self.topic_exchange(),
                ExchangeKind::Topic,
                self.exchange_options(),
                FieldTable::default(),
            )
            .await
            .map_err(classify)?;
        let dead = self.dead_letters();
        channel
            .exchange_declare(
                dead.clone(),
                ExchangeKind::Fanout,
                self.exchange_options(),
                FieldTable::default(),
            )
            .await
            .map_err(classify)?;
        channel
            .queue_declare(dead.clone(), durable(), self.bounded_arguments())
            .await
            .map_err(classify)?;
        channel
            .queue_bind(
                dead.clone(),
                dead,
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(classify)
    }

    /// A group's exchange and queues, each queue bound for its `keel-part` value. Idempotent.
    pub(crate) async fn declare_group(
        &self,
        channel: &Channel,
        group: &str,
    ) -> Result<(), BrokerError> {
        let exchange = self.group_exchange(group);
        // What the group's exchange cannot route (a publisher configured with more partitions,
        // a queue deleted by hand) goes to the dead letters instead of vanishing.
        let mut alternate = FieldTable::default();
        alternate.insert(
            "alternate-exchange".into(),
            AMQPValue::LongString(self.dead_letters().as_str().into()),
        );
        channel
            .exchange_declare(
                exchange.clone(),
                ExchangeKind::Headers,
                self.exchange_options(),
                alternate,
            )
            .await
            .map_err(classify)?;
        for slot in Slot::all(self.partitions) {
            let queue = self.queue(group, slot);
            channel
                .queue_declare(queue.clone(), durable(), self.queue_arguments(slot))
                .await
                .map_err(classify)?;
            let mut matching = FieldTable::default();
            matching.insert("x-match".into(), AMQPValue::LongString("all".into()));
            matching.insert(PART.into(), AMQPValue::LongString(slot.label().into()));
            channel
                .queue_bind(
                    queue,
                    exchange.clone(),
                    "".into(),
                    QueueBindOptions::default(),
                    matching,
                )
                .await
                .map_err(classify)?;
        }
        Ok(())
    }

    /// Routes topics matching `pattern` to `group` (declared before).
    pub(crate) async fn bind(
        &self,
        channel: &Channel,
        group: &str,
        pattern: &str,
    ) -> Result<(), BrokerError> {
        channel
            .exchange_bind(
                self.group_exchange(group),
                self.topic_exchange(),
                pattern.into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(classify)
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Options of a passive declare: it only reads a queue's counts.
pub(crate) fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_names_fit_in_an_amqp_short_string() {
        let shape = Shape {
            namespace: "n".repeat(crate::MAX_NAMESPACE),
            partitions: crate::MAX_PARTITIONS,
            max_depth: 1,
            quorum: true,
            delivery_limit: None,
            expire_unused_after: None,
        };
        let group = "g".repeat(200);
        let longest = Slot::Partition(crate::MAX_PARTITIONS - 1);
        assert!(
            ShortString::try_new(format!("{}/{group}/{}", shape.namespace, longest.label()))
                .is_ok()
        );
        assert_eq!(
            shape.queue("audit", Slot::Unkeyed).as_str(),
            format!("{}/audit/u", shape.namespace)
        );
    }
}
