//! The messaging context: brokers and what travels through them.
//!
//! - [`queue`]: the [`Broker`](queue::Broker) port, topics and bindings, and the checks and
//!   partitioning every broker shares.
//! - [`events`]: user events (the outbox), jobs and subscriber effects: the
//!   [`EventStore`](events::EventStore) port.
//! - [`ledger`]: the deliveries a broker adapter holds in its process and the rules that hand
//!   them out (per-key order, leases, retry delays), for brokers that do not keep them.
//! - [`trace`]: the request's trace context, carried into message headers.

pub mod events;
pub mod ledger;
pub mod queue;
pub mod trace;
