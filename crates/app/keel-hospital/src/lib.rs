//! The error hospital's human side (DESIGN.md C6): what people use to learn about failed
//! messages and to deal with them.
//!
//! - [`service`]: [`HospitalService`], the operator actions — replay (one, several, or a
//!   filtered set, with a dry run), discard with a reason, edit a payload — over the `Hospital`
//!   and `Broker` ports.
//! - [`notifier`]: [`Notifier`], a background task posting a JSON notice per admission and a
//!   periodic digest to a webhook, each admission notified once across processes.
//!
//! The same actions are served by keel-api's web console and the binary's `keel hospital …`.
//!
//! **Invariant:** every action goes through the `Hospital` port, which writes its audit entry in
//! the transaction of its effect; this crate keeps no state of its own.

pub mod notifier;
pub mod service;

pub use notifier::{Notifier, NotifierConfig};
pub use service::{HospitalService, ReplayOutcome, ReplayReport, ReplayTarget};
