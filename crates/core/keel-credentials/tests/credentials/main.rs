//! keel-credentials' integration tests, one binary (STYLE.md: each binary links the whole
//! dependency tree again): one module per primitive.

mod envelope;
#[cfg(feature = "password")]
mod password;
mod pkce;
mod recovery;
mod token;
mod totp;
