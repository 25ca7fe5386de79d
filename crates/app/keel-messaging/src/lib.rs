//! keel's asynchronous flows (DESIGN.md C5), on whichever broker is configured:
//!
//! - [`relay::Relay`]: publishes the transactional outbox to the broker, in order, one relay
//!   at a time (a lease in the database), removing rows only after the broker confirmed them.
//! - [`topology`]: the subscriber groups and what they are bound to — publish/subscribe
//!   (`user.*` events fan out to `audit` and `notifier`) and routing (`job.*` to `jobs`).
//! - [`handlers`]: what each group does; every effect is recorded with the message id, so a
//!   redelivered message has no second effect.

pub mod handlers;
pub mod relay;
pub mod topology;

pub use relay::{Relay, RelaySettings};
pub use topology::{Subscription, subscriptions};
