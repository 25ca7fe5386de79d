//! One AMQP connection and what lives on it: the publishing channel (publisher confirms) and a
//! consumer channel per group this process fetches from (a "link").
//!
//! A session is replaced, never repaired: once its connection or publishing channel fails, the
//! next call opens a new one, and every delivery held on the old one is forgotten (RabbitMQ has
//! returned them to their queues).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_domain::BrokerError;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ErrorKind};

use crate::codec::Slot;
use crate::topology::{Shape, passive};

/// Ids of links, unique in the process, so a held delivery knows which channel it came on.
static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// Maps a client error to the port's: a refusal by the server (a missing queue, arguments that
/// differ from the existing queue's) is a fault to look at; anything about the connection is
/// `Unavailable`, worth retrying.
pub(crate) fn classify(e: lapin::Error) -> BrokerError {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED) => {
                BrokerError::Unavailable(Box::new(e))
            }
            _ => BrokerError::Internal(Box::new(e)),
        },
        _ => BrokerError::Unavailable(Box::new(e)),
    }
}

pub(crate) fn unavailable(what: &'static str) -> BrokerError {
    BrokerError::Unavailable(what.into())
}

/// Bounds one round trip to the server: a hung connection must not hang the caller.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &'static str,
    call: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(classify),
        Err(_) => Err(too_slow(what, limit)),
    }
}

/// The server did not answer `what` within `limit`.
pub(crate) fn too_slow(what: &'static str, limit: Duration) -> BrokerError {
    BrokerError::Unavailable(format!("rabbitmq did not answer {what} within {limit:?}").into())
}

pub(crate) struct Session {
    /// Publishing has a connection of its own: RabbitMQ's flow control blocks a publishing
    /// connection whole, and acknowledgements must still flow meanwhile.
    publishing: Connection,
    publisher: Channel,
    /// Consumer channels and declarations.
    consuming: Connection,
    /// Set when a call on this session timed out: the connection may be hung, so the next call
    /// replaces it.
    poisoned: AtomicBool,
    /// Groups whose exchange and queues this session declared, so each is declared once.
    declared: Mutex<HashSet<String>>,
    /// The consumer channel of each group this process fetches from.
    pub links: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Link>>>>,
}

impl Session {
    /// Connects, declares the namespace, and opens the publishing channel in confirm mode.
    pub(crate) async fn open(
        url: &str,
        shape: &Shape,
        timeout: Duration,
    ) -> Result<Self, BrokerError> {
        let connect = |role: &str| {
            let properties = ConnectionProperties::default()
                .with_connection_name(format!("keel {} {role}", shape.namespace).into());
            within(timeout, "connect", Connection::connect(url, properties))
        };
        let publishing = connect("publishing").await?;
        let consuming = connect("consuming").await?;
        let publisher = within(timeout, "channel.open", publishing.create_channel()).await?;
        within(
            timeout,
            "confirm.select",
            publisher.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        let admin = within(timeout, "channel.open", consuming.create_channel()).await?;
        tokio::time::timeout(timeout, shape.declare_namespace(&admin))
            .await
            .map_err(|_| too_slow("the namespace's declarations", timeout))??;
        Ok(Self {
            publishing,
            publisher,
            consuming,
            poisoned: AtomicBool::new(false),
            declared: Mutex::new(HashSet::new()),
            links: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn alive(&self) -> bool {
        !self.poisoned.load(Ordering::Relaxed)
            && self.publishing.status().connected()
            && self.consuming.status().connected()
            && self.publisher.status().connected()
    }

    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::Relaxed);
    }

    pub(crate) fn publisher(&self) -> &Channel {
        &self.publisher
    }

    /// A fresh channel for declarations and passive declares: the server closes a channel on
    /// a refused declaration, which must not take the publishing channel with it.
    pub(crate) async fn scratch_channel(&self, timeout: Duration) -> Result<Channel, BrokerError> {
        within(timeout, "channel.open", self.consuming.create_channel()).await
    }

    pub(crate) fn is_declared(&self, group: &str) -> bool {
        self.declared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(group)
    }

    pub(crate) fn mark_declared(&self, group: &str) {
        self.declared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(group.to_owned());
    }

    pub(crate) async fn close(&self) {
        let _ = self.publishing.close(200, "bye".into()).await;
        let _ = self.consuming.close(200, "bye".into()).await;
    }
}

/// Whether this process receives a partition's messages. RabbitMQ gives a single-active-consumer
/// queue to one consumer at a time and tells an AMQP 0-9-1 client nothing about it, so the
/// adapter learns it from what arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activity {
    /// Not known yet.
    Unknown,
    /// Messages arrived from it: this process is its consumer.
    Active,
    /// It had ready messages but none came: another process is probably its consumer.
    Passive,
}

/// The consumer channel of one group: a consumer on each of its queues, all with the same
/// prefetch window.
pub(crate) struct Link {
    pub id: u64,
    pub channel: Channel,
    pub consumers: Vec<(Slot, Consumer)>,
    pub activity: HashMap<Slot, Activity>,
    pub prefetch: u16,
    /// Set once a consumer of this link failed or was cancelled.
    pub dead: bool,
}

impl Link {
    /// Opens a channel and consumes every queue of `group` (declared before) with manual acks.
    pub(crate) async fn open(
        session: &Session,
        shape: &Shape,
        group: &str,
        prefetch: u16,
        timeout: Duration,
    ) -> Result<Self, BrokerError> {
        let channel = session.scratch_channel(timeout).await?;
        // Per consumer (RabbitMQ's reading of `global: false`): each queue gets its own window.
        within(
            timeout,
            "basic.qos",
            channel.basic_qos(prefetch, BasicQosOptions { global: false }),
        )
        .await?;
        let mut consumers = Vec::new();
        let mut activity = HashMap::new();
        for slot in Slot::all(shape.partitions) {
            let consumer = within(
                timeout,
                "basic.consume",
                channel.basic_consume(
                    shape.queue(group, slot),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
            consumers.push((slot, consumer));
            // The unkeyed queue has no single active consumer: every process receives from it.
            let known = match slot {
                Slot::Unkeyed => Activity::Active,
                Slot::Partition(_) => Activity::Unknown,
            };
            activity.insert(slot, known);
        }
        Ok(Self {
            id: NEXT_LINK.fetch_add(1, Ordering::Relaxed),
            channel,
            consumers,
            activity,
            prefetch,
            dead: false,
        })
    }

    pub(crate) fn alive(&self) -> bool {
        !self.dead && self.channel.status().connected()
    }

    /// The ready count of each of the link's queues (but those another process consumes), read
    /// so that every delivery the server sent before answering has reached this client: a
    /// passive declare makes each queue answer after the deliveries it already dispatched to
    /// this channel, and the `basic.qos` that follows is answered only after the channel wrote
    /// those deliveries out.
    pub(crate) async fn probe(
        &self,
        shape: &Shape,
        group: &str,
        timeout: Duration,
    ) -> Result<HashMap<Slot, u32>, BrokerError> {
        let mut ready = HashMap::new();
        for (slot, _) in &self.consumers {
            if self.activity.get(slot) == Some(&Activity::Passive) {
                continue; // another process consumes it: nothing of it is on its way here
            }
            let queue = within(
                timeout,
                "a passive queue.declare",
                self.channel.queue_declare(
                    shape.queue(group, *slot),
                    passive(),
                    FieldTable::default(),
                ),
            )
            .await?;
            ready.insert(*slot, queue.message_count());
        }
        within(
            timeout,
            "basic.qos",
            self.channel
                .basic_qos(self.prefetch, BasicQosOptions { global: false }),
        )
        .await?;
        Ok(ready)
    }
}
