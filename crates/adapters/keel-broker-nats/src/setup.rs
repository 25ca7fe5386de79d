//! Setting up: connecting, the namespace's streams (bindings, partition ownerships), the
//! options' checks, and opening a group's stream and consumers once per process.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{
    Config as StreamConfig, DiscardPolicy, RetentionPolicy, StorageType, Stream,
};
use async_nats::jetstream::{self};
use keel_domain::BrokerError;
use uuid::Uuid;

use crate::claim::sweep_until_dropped;
use crate::error::{classify, internal};
use crate::names::{GroupNames, Slot};
use crate::own::Own;
use crate::{Group, Inner, NatsBroker, NatsOptions, Partition, error, lock, names};

impl NatsBroker {
    /// Connects to the server at `url` (e.g. `nats://127.0.0.1:4222`) and opens the namespace's
    /// bindings stream (creating it if needed).
    pub async fn connect(url: &str, options: NatsOptions) -> Result<NatsBroker, BrokerError> {
        check_options(&options)?;
        let disconnections = Arc::new(AtomicU64::new(0));
        let counter = disconnections.clone();
        let client = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let counter = counter.clone();
                async move {
                    if matches!(event, async_nats::Event::Disconnected) {
                        counter.fetch_add(1, Ordering::AcqRel);
                    }
                }
            })
            .connection_timeout(options.request_timeout)
            .request_timeout(Some(options.request_timeout))
            .connect(url)
            .await
            .map_err(|err| BrokerError::Unavailable(Box::new(err)))?;
        let max_payload = client.server_info().max_payload;
        // Room for keel's headers and a few application headers.
        if options.max_body_bytes + 8 * 1024 > max_payload {
            return Err(BrokerError::Invalid {
                what: "max_body_bytes",
                why: format!(
                    "{} bytes leaves no room for headers under the server's max_payload of {max_payload}",
                    options.max_body_bytes
                ),
            });
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(options.request_timeout)
            .ack_timeout(options.request_timeout)
            .build(client);
        let bindings_stream = open_register(
            &js,
            names::bindings_stream(&options.namespace),
            names::bindings_filter(&options.namespace),
            "keel bindings: group -> topic pattern",
        )
        .await?;
        let owners_stream = open_register(
            &js,
            names::owners_stream(&options.namespace),
            names::owners_filter(&options.namespace),
            "keel partition ownership: one record per partition",
        )
        .await?;
        let inner = Arc::new(Inner {
            js,
            options,
            bindings_stream,
            owners_stream,
            process: Uuid::new_v4(),
            bindings: RwLock::default(),
            refresh: tokio::sync::Mutex::new(()),
            tickets: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            groups: Mutex::default(),
            ledger: Arc::default(),
            arrived: Arc::default(),
            links: AtomicU64::new(0),
            disconnections,
            disconnections_seen: AtomicU64::new(0),
        });
        let sweeper = tokio::spawn(sweep_until_dropped(Arc::downgrade(&inner))).abort_handle();
        Ok(NatsBroker { inner, sweeper })
    }
}

/// A stream that keeps the last message of each subject (bindings, ownership records).
async fn open_register(
    js: &jetstream::Context,
    name: String,
    filter: String,
    description: &str,
) -> Result<Stream, BrokerError> {
    open_stream(
        js,
        StreamConfig {
            name,
            subjects: vec![filter],
            description: Some(description.to_owned()),
            max_messages_per_subject: 1,
            storage: StorageType::File,
            ..Default::default()
        },
    )
    .await
}

/// Gets a stream, creating it if missing. A create that fails with "error creating store" is
/// tried again: nats-server 2.9 removes the account's `streams` directory when its last stream
/// is deleted, and a create racing with that fails (seen with tests deleting their streams while
/// others create theirs).
async fn open_stream(js: &jetstream::Context, config: StreamConfig) -> Result<Stream, BrokerError> {
    let mut attempt = 1;
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(err) if attempt < 3 && error::code(&err) == Some(error::STREAM_STORE_FAILED) => {
                tracing::warn!(stream = config.name, %err, "stream create failed; trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => return Err(classify(err)),
        }
    }
}

fn check_options(options: &NatsOptions) -> Result<(), BrokerError> {
    let invalid = |what: &'static str, why: &str| {
        Err(BrokerError::Invalid {
            what,
            why: why.to_owned(),
        })
    };
    let ns = &options.namespace;
    if ns.is_empty()
        || ns.len() > 64
        || !ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return invalid("namespace", "must be 1-64 characters of [A-Za-z0-9_-]");
    }
    if options.partitions == 0 || options.partitions > 1024 {
        return invalid("partitions", "must be 1 to 1024");
    }
    if options.max_depth == 0 || options.max_depth > i64::MAX as u64 {
        return invalid("max_depth", "must be at least 1");
    }
    if options.ack_wait < Duration::from_millis(100) {
        return invalid("ack_wait", "must be at least 100 ms");
    }
    if options.max_deliver == 0 || options.max_deliver < -1 {
        return invalid("max_deliver", "must be positive, or -1 for no limit");
    }
    Ok(())
}

impl Inner {
    /// The group's stream and consumers, opened once per process. With `create`, the stream is
    /// created if missing; without, a missing stream is `None` (nothing was ever stored).
    pub(crate) async fn group(
        &self,
        name: &str,
        create: bool,
    ) -> Result<Option<Arc<Group>>, BrokerError> {
        if let Some(group) = lock(&self.groups).get(name) {
            return Ok(Some(group.clone()));
        }
        let options = &self.options;
        let names = GroupNames::new(&options.namespace, name);
        // "layout 2": partitions owned by one process at a time, many deliveries outstanding per
        // partition (layout 1 had one outstanding delivery per partition and no owners).
        let description = format!(
            "keel group {name}; partitions {}; layout 2",
            options.partitions
        );
        let stream = if create {
            open_stream(
                &self.js,
                StreamConfig {
                    name: names.stream.clone(),
                    subjects: vec![format!("{}.*", names.subject_prefix)],
                    description: Some(description.clone()),
                    retention: RetentionPolicy::WorkQueue,
                    max_messages: options.max_depth as i64,
                    discard: DiscardPolicy::New,
                    storage: StorageType::File,
                    duplicate_window: options.duplicate_window,
                    ..Default::default()
                },
            )
            .await?
        } else {
            match self.js.get_stream(&names.stream).await {
                Ok(stream) => stream,
                Err(err) if error::code(&err) == Some(error::STREAM_NOT_FOUND) => return Ok(None),
                Err(err) => return Err(classify(err)),
            }
        };
        if stream.cached_info().config.description.as_deref() != Some(description.as_str()) {
            return Err(internal(format!(
                "stream {} was not made for group {name:?} with {} partitions: {:?}",
                names.stream,
                options.partitions,
                stream.cached_info().config.description
            )));
        }
        let slots = (0..options.partitions)
            .map(Slot::Partition)
            .chain([Slot::Unkeyed]);
        let consumers = futures_util::future::try_join_all(slots.map(|slot| {
            let config = PullConfig {
                durable_name: Some(slot.name()),
                filter_subject: names.subject(slot),
                ack_policy: AckPolicy::Explicit,
                ack_wait: options.ack_wait,
                max_deliver: options.max_deliver,
                max_ack_pending: match slot {
                    Slot::Partition(_) => i64::from(options.window),
                    Slot::Unkeyed => options.max_depth as i64,
                },
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            };
            let stream = &stream;
            async move { stream.get_or_create_consumer(&slot.name(), config).await }
        }))
        .await
        .map_err(classify)?;
        let mut consumers = consumers;
        let unkeyed = consumers
            .pop()
            .ok_or_else(|| internal("no consumers".into()))?;
        let now = Instant::now();
        let partitions = consumers
            .into_iter()
            .zip(0..)
            .map(|(consumer, index)| Partition {
                index,
                consumer,
                own: Mutex::new(Own::new(now)),
                feed: Mutex::default(),
            })
            .collect();
        let subjects = (0..options.partitions)
            .map(Slot::Partition)
            .chain([Slot::Unkeyed])
            .map(|slot| async_nats::Subject::from(names.subject(slot)))
            .collect();
        let group = Arc::new(Group {
            name: name.to_owned(),
            names,
            subjects,
            stream,
            partitions,
            unkeyed,
            unkeyed_feed: Mutex::default(),
            consuming: AtomicBool::new(false),
            tending: tokio::sync::Mutex::new(()),
        });
        Ok(Some(
            lock(&self.groups)
                .entry(name.to_owned())
                .or_insert(group)
                .clone(),
        ))
    }
}
