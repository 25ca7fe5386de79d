//! keel-hospital's integration tests, one binary on keel-test-support's ward (a real SQLite
//! queue and hospital with real workers): the replay, discard and edit service ([`service`])
//! and the webhook notifier ([`notifier`]).

mod notifier;
mod service;
