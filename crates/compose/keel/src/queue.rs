//! Opening the broker the queue URL names, and the hospital beside it. Like `database`, the one
//! place that knows every broker; past it only the `Broker` and `Hospital` ports are seen.

use std::sync::Arc;

use anyhow::Context;
use keel_broker_nats::{NatsBroker, NatsOptions};
use keel_broker_rabbitmq::{RabbitBroker, RabbitOptions};
use keel_config::{BrokerKind, Settings};
use keel_domain::{Broker, Hospital};
use keel_messaging::offload::Offloading;
use keel_sql_postgres::PostgresQueue;
use keel_sql_sqlite::{QueueLimits, SqliteQueue, SqliteSync};

/// The configured broker and its hospital.
#[derive(Clone)]
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
                let sync = match settings.queue.sqlite_synchronous {
                    keel_config::SqliteSynchronous::Full => SqliteSync::Full,
                    keel_config::SqliteSynchronous::Normal => SqliteSync::Normal,
                };
                let queue = SqliteQueue::open_with(url.expose(), limits, sync)
                    .await
                    .with_context(|| format!("cannot open the queue {shown}"))?;
                let hospital = queue.hospital(max_patients);
                Self {
                    broker: Arc::new(queue),
                    hospital: Arc::new(hospital),
                }
            }
            BrokerKind::Postgres => {
                let queue = PostgresQueue::open(url.expose(), limits)
                    .await
                    .with_context(|| format!("cannot open the queue {shown}"))?;
                let hospital = queue.hospital(max_patients);
                Self {
                    broker: Arc::new(queue),
                    hospital: Arc::new(hospital),
                }
            }
            BrokerKind::Nats => {
                let options = NatsOptions {
                    namespace: settings.queue.namespace.clone(),
                    partitions: u16::try_from(settings.queue.partitions).unwrap_or(u16::MAX),
                    max_depth: settings.queue.max_depth,
                    max_body_bytes: settings.queue.max_body_bytes,
                    ack_wait: std::time::Duration::from_millis(settings.queue.lease_ms),
                    ..NatsOptions::default()
                };
                let broker = NatsBroker::connect(url.expose(), options)
                    .await
                    .with_context(|| format!("cannot reach NATS at {shown}"))?;
                Self {
                    broker: Arc::new(broker),
                    hospital: database_hospital(settings).await?,
                }
            }
            BrokerKind::RabbitMq => {
                let options = RabbitOptions {
                    namespace: settings.queue.namespace.clone(),
                    partitions: u16::try_from(settings.queue.partitions).unwrap_or(u16::MAX),
                    max_depth: settings.queue.max_depth,
                    max_body_bytes: settings.queue.max_body_bytes,
                    ..RabbitOptions::default()
                };
                let broker = RabbitBroker::connect(url.expose(), options)
                    .await
                    .with_context(|| format!("cannot reach RabbitMQ at {shown}"))?;
                Self {
                    broker: Arc::new(broker),
                    hospital: database_hospital(settings).await?,
                }
            }
        };
        // Large bodies go to the file store whatever the broker (the seed's message-size concern).
        let broker = Arc::new(Offloading::new(
            queue.broker,
            settings.data_dir.join("blobs"),
            settings.queue.max_body_bytes,
            settings.queue.max_message_bytes,
            keel_messaging::topology::bindings(),
        ));
        Ok(Self {
            broker,
            hospital: queue.hospital,
        })
    }
}

/// The hospital for a broker that has no SQL beside it (RabbitMQ, NATS): in keel's database, so
/// every process of a deployment shares it (on SQLite, a file under the data dir).
async fn database_hospital(settings: &Settings) -> anyhow::Result<Arc<dyn Hospital>> {
    let max_patients = settings.hospital.max_patients;
    let limits = QueueLimits::default();
    let hospital: Arc<dyn Hospital> = match settings.database_kind() {
        Some(keel_config::DatabaseKind::Postgres) => {
            let url = settings.driver_database_url();
            let queue = PostgresQueue::open(url.expose(), limits)
                .await
                .with_context(|| format!("cannot open the hospital in {}", url.redacted()))?;
            Arc::new(queue.hospital(max_patients))
        }
        Some(keel_config::DatabaseKind::MariaDb) => {
            let url = settings.driver_database_url();
            let pool = keel_sql_mariadb::PoolSettings {
                max_connections: settings.database.max_connections,
                acquire_timeout: std::time::Duration::from_millis(
                    settings.database.acquire_timeout_ms,
                ),
            };
            Arc::new(
                keel_sql_mariadb::connect_hospital(url.expose(), &pool, max_patients)
                    .with_context(|| format!("bad hospital URL {}", url.redacted()))?,
            )
        }
        _ => {
            let url = format!(
                "sqlite://{}",
                settings.data_dir.join("hospital.db").display()
            );
            let queue = SqliteQueue::open(&url, limits)
                .await
                .with_context(|| format!("cannot open the hospital in {url}"))?;
            Arc::new(queue.hospital(max_patients))
        }
    };
    Ok(hospital)
}
