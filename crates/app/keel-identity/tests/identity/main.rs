//! keel-identity's integration tests, one binary (STYLE.md: each binary links the whole
//! dependency tree again): the IdP service end to end, sessions and slow-down, names sealed at
//! rest.

mod sealed;
mod service;
mod sessions;
