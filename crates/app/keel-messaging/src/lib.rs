//! keel's asynchronous flows (DESIGN.md C5), on whichever broker is configured:
//!
//! - [`relay::Relay`]: publishes the transactional outbox to the broker, in order, one relay
//!   at a time (a lease in the database), removing rows only after the broker confirmed them.
//! - [`topology`]: the subscriber groups and what they are bound to — publish/subscribe
//!   (`user.*` events fan out to `audit` and `notifier`) and routing (`job.*` to `jobs`).
//! - [`handlers`]: what each group does; every effect is recorded with the message id, so a
//!   redelivered message has no second effect.
//! - [`worker`]: the worker runtime every broker's consumers run: fetch, handle, ack; retries
//!   with backoff; admission to the error hospital.
//! - [`offload`]: large bodies moved to the file store, the message carrying a reference.

pub mod handlers;
pub mod offload;
pub mod relay;
pub mod topology;
pub mod worker;

pub use relay::{Relay, RelaySettings};
pub use topology::{Subscription, subscriptions};
