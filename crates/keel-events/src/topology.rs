//! The subscriber groups keel runs, each bound to the topics it needs. Every process declares the
//! same topology at start (binding is idempotent), so a group exists on the broker before the
//! first message for it is relayed.

use std::sync::Arc;

use keel_domain::{Broker, BrokerError, EventStore, UserRepo};
use keel_queue::worker::Handler;

use crate::handlers::{AuditHandler, JobHandler, NotifierHandler};

/// One group: its name, the patterns it is bound to, and its handler.
pub struct Subscription {
    pub group: &'static str,
    pub patterns: &'static [&'static str],
    pub handler: Arc<dyn Handler>,
}

/// keel's groups:
/// - `audit` (publish/subscribe): every `user.*` event becomes an audit log entry;
/// - `notifier` (publish/subscribe): each `user.created` sends the new user a welcome message;
/// - `jobs` (routing by type): `job.<kind>` messages run fire-and-forget jobs.
pub fn subscriptions(events: Arc<dyn EventStore>, users: Arc<dyn UserRepo>) -> Vec<Subscription> {
    vec![
        Subscription {
            group: "audit",
            patterns: &["user.#"],
            handler: Arc::new(AuditHandler {
                events: events.clone(),
            }),
        },
        Subscription {
            group: "notifier",
            patterns: &["user.created"],
            handler: Arc::new(NotifierHandler {
                events: events.clone(),
            }),
        },
        Subscription {
            group: "jobs",
            patterns: &["job.#"],
            handler: Arc::new(JobHandler { events, users }),
        },
    ]
}

/// Binds every group to its patterns.
pub async fn declare(
    broker: &dyn Broker,
    subscriptions: &[Subscription],
) -> Result<(), BrokerError> {
    for sub in subscriptions {
        for pattern in sub.patterns {
            broker.bind(sub.group, pattern).await?;
        }
    }
    Ok(())
}
