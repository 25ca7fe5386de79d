//! keel-messaging's integration tests, one binary: the flows end to end, the worker runtime and
//! the large-body offload, each on the embedded SQLite queue.

mod flows;
mod offload;
mod worker;
