//! The gateway's integration tests, one binary (each test binary links the whole dependency
//! tree again):
//!
//! - [`behaviour`]: the gateway as a black box in front of small recording upstreams;
//! - [`bad_input`]: broken and hostile clients, and TLS termination;
//! - [`phases`]: a rule engine plugged in as one more phase, scoring across request and
//!   response;
//! - [`common`]: the gateway under test and the recording upstreams.

mod bad_input;
mod behaviour;
mod common;
mod phases;
