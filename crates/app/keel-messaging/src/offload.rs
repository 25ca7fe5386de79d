//! Large message bodies (the seed's "message size" concern): a body over the inline limit is
//! written to the shared file store and the message carries only a reference, so brokers only
//! ever hold small messages. [`Offloading`] wraps any [`Broker`] to do it transparently.
//!
//! The file store is a directory (under the data dir for now; a shared volume or S3 later). A
//! large message gets one hard link per receiving group, `<dir>/<group>/<message id>`, so each
//! group's acknowledgement removes its own link and the data goes when the last group is done.
//! The receiving groups come from the declared topology (every keel process declares the same),
//! not from the broker, because RabbitMQ routes inside the server and cannot tell.
//! A message handed to the hospital carries its whole body there (the worker admits the
//! delivery as fetched, body included), so a discard leaves no file behind and a replay offloads
//! the body again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keel_domain::{
    Broker, BrokerError, Capabilities, Delivery, DeliveryTag, MessageId, Outgoing, QueueDepth,
};

/// The header naming an offloaded body (its value is the message id).
pub const BODY_REF: &str = "keel-body-ref";
/// The header carrying an offloaded body's size in bytes.
pub const BODY_BYTES: &str = "keel-body-bytes";

/// A broker that moves bodies over `inline_limit` into files.
pub struct Offloading {
    inner: Arc<dyn Broker>,
    dir: PathBuf,
    inline_limit: usize,
    max_body: usize,
    /// `(group, pattern)` of the declared topology.
    bindings: Vec<(String, String)>,
    /// Offloaded deliveries handed out and not yet settled: their files go on ack.
    held: Mutex<HashMap<DeliveryTag, (String, MessageId, Instant)>>,
}

impl Offloading {
    /// `inline_limit`: largest body sent through the broker; `max_body`: largest accepted at all.
    pub fn new(
        inner: Arc<dyn Broker>,
        dir: impl Into<PathBuf>,
        inline_limit: usize,
        max_body: usize,
        bindings: Vec<(String, String)>,
    ) -> Self {
        Self {
            inner,
            dir: dir.into(),
            inline_limit,
            max_body,
            bindings,
            held: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, group: &str, id: MessageId) -> PathBuf {
        self.dir.join(group).join(id.to_string())
    }

    /// Writes the body once and links it for each group; returns the message to send instead.
    async fn offload(&self, groups: &[&str], message: Outgoing) -> Result<Outgoing, BrokerError> {
        if message.body.len() <= self.inline_limit {
            return Ok(message);
        }
        if message.body.len() > self.max_body {
            return Err(BrokerError::Invalid {
                what: "body",
                why: format!(
                    "{} bytes is over the {} byte limit",
                    message.body.len(),
                    self.max_body
                ),
            });
        }
        for group in groups {
            keel_domain::messaging::queue::check_name("group", group, false)?;
        }
        let staging = self.dir.join(".staging").join(message.id.to_string());
        let links: Vec<PathBuf> = groups.iter().map(|g| self.path(g, message.id)).collect();
        let body = message.body.clone();
        tokio::task::spawn_blocking(move || write_linked(&staging, &body, &links))
            .await
            .map_err(|e| BrokerError::Internal(Box::new(e)))?
            .map_err(|e| BrokerError::Unavailable(Box::new(e)))?;
        let mut slim = message;
        slim.headers.insert(BODY_REF.into(), slim.id.to_string());
        slim.headers
            .insert(BODY_BYTES.into(), slim.body.len().to_string());
        slim.body = Vec::new();
        Ok(slim)
    }

    /// Puts the body back into an offloaded delivery (an empty body if the file is gone: the
    /// handler then fails it, and it goes to the hospital rather than vanishing).
    async fn restore(&self, mut delivery: Delivery) -> Delivery {
        if !delivery.headers.contains_key(BODY_REF) {
            return delivery;
        }
        let path = self.path(&delivery.group, delivery.id);
        match tokio::fs::read(&path).await {
            Ok(body) => {
                delivery.body = body;
                delivery.headers.remove(BODY_REF);
                delivery.headers.remove(BODY_BYTES);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "offloaded body missing");
            }
        }
        self.held.lock().expect("held map").insert(
            delivery.tag,
            (delivery.group.clone(), delivery.id, Instant::now()),
        );
        delivery
    }
}

impl Offloading {
    /// After an acknowledgement: removes this group's link to an offloaded body, if any.
    async fn forget(&self, tag: DeliveryTag) {
        let held = self.held.lock().expect("held map").remove(&tag);
        if let Some((group, id, _)) = held {
            let path = self.path(&group, id);
            if let Err(e) = tokio::fs::remove_file(&path).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "offloaded body not removed");
            }
        }
    }
}

/// Writes `body` to `staging` (fsynced), hard-links it at every path of `links`, then removes the
/// staging name: the data exists once, however many groups receive it.
fn write_linked(staging: &Path, body: &[u8], links: &[PathBuf]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = staging.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::File::create(staging)?;
    file.write_all(body)?;
    file.sync_all()?;
    for link in links {
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::hard_link(staging, link) {
            // A republished message: its link is already there.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            other => other?,
        }
    }
    std::fs::remove_file(staging)
}

#[async_trait]
impl Broker for Offloading {
    async fn bind(&self, group: &str, pattern: &str) -> Result<(), BrokerError> {
        self.inner.bind(group, pattern).await
    }

    async fn publish(&self, topic: &str, message: Outgoing) -> Result<bool, BrokerError> {
        let groups = keel_domain::messaging::queue::matching_groups(&self.bindings, topic);
        let message = self.offload(&groups, message).await?;
        self.inner.publish(topic, message).await
    }

    async fn publish_many(&self, batch: &[(String, Outgoing)]) -> Result<Vec<bool>, BrokerError> {
        let mut slim = Vec::with_capacity(batch.len());
        for (topic, message) in batch {
            let groups = keel_domain::messaging::queue::matching_groups(&self.bindings, topic);
            slim.push((topic.clone(), self.offload(&groups, message.clone()).await?));
        }
        self.inner.publish_many(&slim).await
    }

    async fn redeliver(
        &self,
        group: &str,
        topic: &str,
        message: Outgoing,
    ) -> Result<(), BrokerError> {
        let message = self.offload(&[group], message).await?;
        self.inner.redeliver(group, topic, message).await
    }

    async fn fetch(
        &self,
        group: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let deliveries = self.inner.fetch(group, max, lease).await?;
        {
            // Forget handed-out deliveries whose lease is long gone (their worker died).
            let mut held = self.held.lock().expect("held map");
            held.retain(|_, (_, _, at)| {
                at.elapsed() < lease.saturating_mul(4).max(Duration::from_secs(60))
            });
        }
        let mut restored = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            restored.push(self.restore(delivery).await);
        }
        Ok(restored)
    }

    async fn ack(&self, tag: DeliveryTag) -> Result<(), BrokerError> {
        self.inner.ack(tag).await?;
        self.forget(tag).await;
        Ok(())
    }

    async fn ack_many(&self, tags: &[DeliveryTag]) -> Vec<Result<(), BrokerError>> {
        let results = self.inner.ack_many(tags).await;
        for (tag, result) in tags.iter().zip(&results) {
            if result.is_ok() {
                self.forget(*tag).await;
            }
        }
        results
    }

    async fn retry(&self, tag: DeliveryTag, delay: Duration) -> Result<(), BrokerError> {
        self.held.lock().expect("held map").remove(&tag);
        self.inner.retry(tag, delay).await
    }

    async fn depth(&self, group: &str) -> Result<QueueDepth, BrokerError> {
        self.inner.depth(group).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
