//! The worker role: the outbox relay, one or more workers per subscriber group, and the sampler
//! of queue metrics. `keel worker` runs it alone; `keel up` runs it beside the API. Several
//! processes may run it at once: workers compete for each group's messages, and one relay leads.

use std::sync::Arc;
use std::time::Duration;

use keel_config::Settings;
use keel_domain::{Broker, EventStore, Hospital, UserRepo};
use keel_hospital::{Notifier, NotifierConfig};
use keel_messaging::topology::{self, Subscription};
use keel_messaging::worker::{RetryPolicy, Worker};
use keel_messaging::{Relay, RelaySettings};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The running worker role.
pub struct Workers {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Workers {
    /// Declares the topology (binds every group), then starts the relay, the workers and the
    /// sampler.
    pub async fn start(
        settings: &Settings,
        broker: Arc<dyn Broker>,
        hospital: Arc<dyn Hospital>,
        events: Arc<dyn EventStore>,
        users: Arc<dyn UserRepo>,
    ) -> anyhow::Result<Self> {
        let subscriptions = topology::subscriptions(events.clone(), users);
        topology::declare(&*broker, &subscriptions)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind the subscriber groups: {e}"))?;
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let q = &settings.queue;

        let relay = Relay::new(
            events,
            broker.clone(),
            RelaySettings {
                batch: q.relay_batch,
                ..RelaySettings::default()
            },
        );
        let shutdown = signal(stopped.clone());
        tasks.spawn(async move { relay.run(shutdown).await });

        let policy = RetryPolicy {
            max_attempts: q.max_attempts,
            base: Duration::from_millis(q.backoff_base_ms),
            max: Duration::from_millis(q.backoff_max_ms),
            jitter: 0.2,
        };
        for Subscription { group, handler, .. } in &subscriptions {
            for _ in 0..q.workers_per_group {
                let worker = Worker {
                    broker: broker.clone(),
                    hospital: hospital.clone(),
                    group: (*group).to_owned(),
                    handler: handler.clone(),
                    policy,
                    lease: Duration::from_millis(q.lease_ms),
                    batch: q.batch,
                    idle: Duration::from_millis(20),
                };
                let shutdown = signal(stopped.clone());
                tasks.spawn(async move { worker.run(shutdown).await });
            }
        }

        if let Some(url) = &settings.hospital.webhook_url {
            let mut config = NotifierConfig::new(url.expose());
            config.digest_interval = Duration::from_secs(settings.hospital.digest_interval_secs);
            let notifier = Notifier::new(hospital.clone(), config)
                .map_err(|e| anyhow::anyhow!("hospital.webhook_url: {e}"))?;
            let shutdown = signal(stopped.clone());
            tasks.spawn(async move { notifier.run(shutdown).await });
        }

        let groups: Vec<&'static str> = subscriptions.iter().map(|s| s.group).collect();
        tasks.spawn(sample(broker, groups, signal(stopped)));
        tracing::info!(
            groups = subscriptions.len(),
            workers_per_group = q.workers_per_group,
            "workers started"
        );
        Ok(Self { stop, tasks })
    }

    /// Stops taking work and waits for the rounds in progress to settle their deliveries.
    pub async fn shutdown(mut self, deadline: Duration) {
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(
                "workers did not stop in time; their leases will expire and the messages come back"
            );
            self.tasks.abort_all();
        } else {
            tracing::info!("workers stopped");
        }
    }
}

/// Resolves when `stopped` turns true (or its sender is gone).
async fn signal(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Publishes each group's depth, in-flight count and oldest message age as gauges.
async fn sample(
    broker: Arc<dyn Broker>,
    groups: Vec<&'static str>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        for group in &groups {
            match broker.depth(group).await {
                Ok(depth) => {
                    metrics::gauge!("keel_queue_depth", "group" => *group).set(depth.ready as f64);
                    metrics::gauge!("keel_queue_in_flight", "group" => *group)
                        .set(depth.in_flight as f64);
                    metrics::gauge!("keel_queue_oldest_age_seconds", "group" => *group)
                        .set(depth.oldest.map_or(0.0, |d| d.as_secs_f64()));
                }
                Err(e) => tracing::debug!(group, error = %e, "queue depth unavailable"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            () = &mut shutdown => return,
        }
    }
}
