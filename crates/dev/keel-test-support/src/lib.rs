//! keel's shared test harness.
//!
//! - [`browser`]: running a real-browser script of `tests/browser`.
//! - [`broker_suite`]: the behavioural suite of the [`keel_domain::Broker`] port.
//! - [`event_suite`]: the behavioural suite of the [`keel_domain::EventStore`] port (outbox, jobs,
//!   subscriber effects) and of the events every user write enqueues.
//! - [`identity_suite`]: the behavioural suite of the [`keel_domain::IdentityStore`] port
//!   (credentials, roles, sign-in failures, refresh families, signing keys, the audit log).
//! - [`hospital_suite`]: the behavioural suite of the [`keel_domain::Hospital`] port.
//! - [`process`]: processes a test starts (free ports, [`process::Running`]).
//! - [`repo_suite`]: the behavioural suite of the [`keel_domain::UserRepo`] port; each store
//!   crate runs it against its real engine, so every backend is held to the same behaviour.
//! - `ward` (feature `ward`): a real error hospital with workers that fail messages on purpose.
//! - [`services`]: addresses of the real servers on a developer or CI machine, and helpers that
//!   give each test its own database so tests can run in parallel.
//!
//! Each suite has a macro (`repo_suite!`, `broker_suite!`, …) that an adapter's tests invoke
//! with the function opening a fresh subject on that adapter; it generates one test per
//! behaviour through [`behaviours!`], so a failure names the behaviour and the adapter, and
//! `cargo test <behaviour>` runs one behaviour on every adapter.

pub mod broker_suite;
pub mod browser;
pub mod event_suite;
pub mod hospital_suite;
pub mod identity_suite;
pub mod process;
pub mod repo_suite;
pub mod services;
#[cfg(feature = "ward")]
pub mod ward;

/// One `#[tokio::test]` per listed behaviour of `$suite`, each on a fresh subject: `$open` is an
/// async fn returning `(guard, subject)` (the guard — a temporary directory, say — lives until
/// the test ends), and each behaviour is called with `&subject`.
#[macro_export]
macro_rules! behaviours {
    ($suite:path, $open:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                use $suite as suite;
                let (_guard, subject) = $open().await;
                suite::$case(&subject).await;
            }
        )*
    };
}
