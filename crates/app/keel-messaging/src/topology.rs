//! The subscriber groups keel runs, each bound to the topics it needs. Every process declares the
//! same topology at start (binding is idempotent), so a group exists on the broker before the
//! first message for it is relayed.

use std::sync::Arc;

use crate::worker::Handler;
use keel_domain::{Broker, BrokerError, EventStore, UserRepo};

use crate::handlers::{AuditHandler, JobHandler, NotifierHandler};

/// Every group and the patterns it is bound to: the topology every keel process declares.
pub const GROUPS: &[(&str, &[&str])] = &[
    ("audit", &["user.#"]),
    ("notifier", &["user.created", "mail.#"]),
    ("jobs", &["job.#"]),
];

/// The topology as `(group, pattern)` pairs.
pub fn bindings() -> Vec<(String, String)> {
    GROUPS
        .iter()
        .flat_map(|(group, patterns)| {
            patterns
                .iter()
                .map(|p| ((*group).to_owned(), (*p).to_owned()))
        })
        .collect()
}

/// The patterns of `group` in [`GROUPS`].
fn patterns(group: &str) -> &'static [&'static str] {
    GROUPS
        .iter()
        .find(|(name, _)| *name == group)
        .map_or(&[], |(_, patterns)| patterns)
}

/// One group: its name, the patterns it is bound to, and its handler.
pub struct Subscription {
    pub group: &'static str,
    pub patterns: &'static [&'static str],
    pub handler: Arc<dyn Handler>,
}

/// keel's groups:
/// - `audit` (publish/subscribe): every `user.*` event becomes an audit log entry;
/// - `notifier` (publish/subscribe): each `user.created` sends the new user a welcome message,
///   each `mail.*` the identity provider's mail (verification, invitation, reset);
/// - `jobs` (routing by type): `job.<kind>` messages run fire-and-forget jobs.
pub fn subscriptions(events: Arc<dyn EventStore>, users: Arc<dyn UserRepo>) -> Vec<Subscription> {
    vec![
        Subscription {
            group: "audit",
            patterns: patterns("audit"),
            handler: Arc::new(AuditHandler {
                events: events.clone(),
            }),
        },
        Subscription {
            group: "notifier",
            patterns: patterns("notifier"),
            handler: Arc::new(NotifierHandler {
                events: events.clone(),
                users: users.clone(),
            }),
        },
        Subscription {
            group: "jobs",
            patterns: patterns("jobs"),
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
