//! keel-api's integration tests: the error hospital's console, in process ([`pages`]: who is let
//! in, escaping, CSRF and origin checks, each page and action) and in a real browser
//! ([`browser`]), on a real SQLite hospital and queue. The API's own routes are tested from the
//! binary crate (`crates/compose/keel/tests/api`), which builds the whole application.

mod browser;
mod pages;
