//! Opening the broker the queue URL names, and the hospital beside it. Like `database`, the one
//! place that knows every broker; past it only the `Broker` and `Hospital` ports are seen.

use std::sync::Arc;

use anyhow::Context;
use keel_config::{BrokerKind, Settings};
use keel_domain::{Broker, Hospital};
use keel_queue::offload::Offloading;
use keel_queue::{PostgresHospital, PostgresQueue, QueueLimits, SqliteHospital, SqliteQueue};

/// The configured broker and its hospital.
pub struct Queue {
    pub broker: Arc<dyn Broker>,
    pub hospital: Arc<dyn Hospital>,
}

impl Queue {
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let url = settings.queue_url();
        let shown = url.redacted();
        let limits = QueueLimits {
            max_depth: settings.queue.max_depth,
            max_body_bytes: settings.queue.max_body_bytes,
        };
        let max_patients = settings.hospital.max_patients;
        let kind = settings.broker_kind().context("unsupported queue URL")?;
        let queue = match kind {
            BrokerKind::Sqlite => {
                let queue = SqliteQueue::open(url.expose(), limits)
                    .await
                    .with_context(|| format!("cannot open the queue {shown}"))?;
                let hospital = SqliteHospital::beside(&queue, max_patients);
                Self {
                    broker: Arc::new(queue),
                    hospital: Arc::new(hospital),
                }
            }
            BrokerKind::Postgres => {
                let queue = PostgresQueue::open(url.expose(), limits)
                    .await
                    .with_context(|| format!("cannot open the queue {shown}"))?;
                let hospital = PostgresHospital::beside(&queue, max_patients);
                Self {
                    broker: Arc::new(queue),
                    hospital: Arc::new(hospital),
                }
            }
            BrokerKind::RabbitMq | BrokerKind::Nats => {
                anyhow::bail!("queue.url {shown}: this build has no {kind:?} adapter yet")
            }
        };
        // Large bodies go to the file store whatever the broker (the seed's message-size concern).
        let broker = Arc::new(Offloading::new(
            queue.broker,
            settings.data_dir.join("blobs"),
            settings.queue.max_body_bytes,
            settings.queue.max_message_bytes,
            keel_events::topology::bindings(),
        ));
        Ok(Self {
            broker,
            hospital: queue.hospital,
        })
    }
}
