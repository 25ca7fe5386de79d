//! keel's domain: the types the system is about and the ports (traits) through which it reaches
//! every outside system.
//!
//! - [`user`]: the user resource, its parsed newtypes ([`UserName`], [`UserEmail`], [`UserId`]).
//! - [`repo`]: the [`UserRepo`] port every relational backend implements, and [`StoreError`].
//! - [`queue`]: the [`Broker`] port every message queue backend implements.
//! - [`caching`]: [`CacheStrategy`], the seed's four caching techniques.
//! - [`events`]: user events (outbox), jobs and subscriber effects: the [`EventStore`] port.
//! - [`trace`]: the request's trace context, carried into message headers.
//! - [`hospital`]: the [`Hospital`] port, where messages whose handling failed for good wait.
//! - [`identity`]: the [`IdentityStore`] port: credentials, sign-in failures, refresh-token
//!   families, signing keys and the authentication audit log of the built-in IdP.
//! - [`rbac`]: roles, the [`Permission`]s they grant and the [`Caller`] a request comes from.
//! - [`ledger`]: the deliveries a broker adapter holds in its process and the rules that hand
//!   them out (per-key order, leases, retry delays), for brokers that do not keep them.
//!
//! - [`auth_scheme`]: the `Authorization` header's scheme, case-insensitive (RFC 7235).
//! - [`error_chain`]: an error and its sources on one line, for logs and messages.
//!
//! **Invariant:** this crate does no I/O and knows no HTTP status codes.

pub mod auth_scheme;
pub mod caching;
pub mod events;
pub mod hospital;
pub mod identity;
pub mod ledger;
pub mod queue;
pub mod rbac;
pub mod repo;
pub mod trace;
pub mod user;

pub use caching::CacheStrategy;
pub use events::{AuditEntry, Erased, EventStore, Job, JobState, Notification, OutboxRecord};
pub use hospital::{
    AdmissionReason, AttemptRecord, CauseCount, Edit, Hospital, HospitalError, NoticeClaim,
    Patient, PatientFilter, PatientPage, PatientQuery, PatientState, ReplayClaim, Settlement,
    Transition,
};
pub use identity::{
    Accounts, AuthEvent, AuthEventQuery, AuthorizationCode, Consent, Credentials, Failures,
    FederatedLink, IdentityStore, NewAccount, OidcClient, RefreshFamily,
};
pub use queue::{
    Broker, BrokerError, Capabilities, Delivery, DeliveryTag, MessageId, Outgoing, QueueDepth,
};
pub use rbac::{Caller, Permission, SignupMode};
pub use repo::{Page, PageRequest, StoreError, Uncached, UserRepo};
pub use user::{
    EmailCollision, NewUser, User, UserEmail, UserId, UserName, UserPatch, ValidationError,
};

/// An error and its sources, one line: `error: cause: cause…`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
