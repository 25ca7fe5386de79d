//! keel's domain: the types the system is about and the ports (traits) through which it reaches
//! every outside system.
//!
//! One module per context, so each next one (orders, payments, transactions, blobs, placement)
//! has its place beside them:
//!
//! - [`users`]: the user resource, its parsed newtypes ([`UserName`], [`UserEmail`],
//!   [`UserId`]), and in [`users::repo`] the [`UserRepo`] port every relational backend
//!   implements, and [`StoreError`].
//! - [`identity`]: the [`IdentityStore`] port (credentials, sign-in failures, refresh-token
//!   families, signing keys, the authentication audit log of the built-in IdP) and
//!   [`Accounts`]; [`identity::rbac`]: roles, the [`Permission`]s they grant and the [`Caller`]
//!   a request comes from; [`identity::auth_scheme`]: the `Authorization` header's scheme.
//! - [`messaging`]: the [`Broker`] port every message queue backend implements
//!   ([`messaging::queue`]), user events, jobs and subscriber effects behind the [`EventStore`]
//!   port ([`messaging::events`]), the deliveries a broker adapter holds in its process
//!   ([`messaging::ledger`]), and the trace context carried in message headers
//!   ([`messaging::trace`]).
//! - [`hospital`]: the [`Hospital`] port, where messages whose handling failed for good wait.
//! - [`caching`]: [`CacheStrategy`], the seed's four caching techniques.
//! - [`error_chain`]: an error and its sources on one line, for logs and messages.
//!
//! **Invariant:** this crate does no I/O and knows no HTTP status codes.

pub mod caching;
pub mod hospital;
pub mod identity;
pub mod messaging;
pub mod users;

pub use caching::CacheStrategy;
pub use hospital::{
    AdmissionReason, AttemptRecord, CauseCount, Edit, Hospital, HospitalError, NoticeClaim,
    Patient, PatientFilter, PatientPage, PatientQuery, PatientState, ReplayClaim, Settlement,
    Transition,
};
pub use identity::rbac::{Caller, Permission, SignupMode};
pub use identity::{
    Accounts, AuthEvent, AuthEventQuery, AuthorizationCode, Consent, Credentials, Failures,
    FederatedLink, IdentityStore, NewAccount, OidcClient, RefreshFamily,
};
pub use messaging::events::{
    AuditEntry, Erased, EventStore, Job, JobState, Notification, OutboxRecord,
};
pub use messaging::queue::{
    Broker, BrokerError, Capabilities, Delivery, DeliveryTag, MessageId, Outgoing, QueueDepth,
};
pub use users::repo::{Page, PageRequest, StoreError, Uncached, UserRepo};
pub use users::{
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
