//! keel's identity provider (DESIGN.md C8), over ports only: what the IdP's storage and HTTP
//! layers build on. The credential primitives it uses (passwords, TOTP, recovery codes, tokens,
//! envelope encryption, PKCE) are keel-credentials'.
//!
//! The [`service::Idp`] is a shared core (the storage ports, the keys, the settings; private to
//! the crate) and the duties over it, each handed out by the `Idp` (`idp.sessions().sign_in(..)`):
//! - [`accounts`]: making accounts, their roles, disabling them, the audit log;
//! - [`sessions`]: sign-in with throttling and MFA, refresh, sign-out, password change;
//! - [`mfa`]: TOTP enrolment;
//! - [`tokens`]: the signing keys, the JWKS, access-token verification;
//! - [`oidc`]: the OpenID Connect provider (clients, authorization codes, the token grants, ID
//!   tokens, userinfo, discovery), and in [`oidc::browser`] the browser session and CSRF tokens
//!   of its pages;
//! - [`federation`]: signing in through external OpenID Connect providers (the relying
//!   party's code flow with PKCE, the state cookie, ID token checks, account linking);
//! - [`lifecycle`]: mailed links (email verification, invitations, password resets), export
//!   and the erasure tombstone.
//!
//! Beside them:
//! - [`refresh`]: refresh tokens that rotate on every use, a reused one revoking its family;
//! - [`revocation`]: an account's token generation, cached per instance and dropped across
//!   instances, that refuses every token issued before its sign-ins were ended;
//! - [`lockout`]: brute-force slow-down per client, per account, and per trusted device, never
//!   a lockout without end;
//! - [`sealed`]: `SealedNames`, the users repository with names encrypted at rest (envelope
//!   encryption from keel-credentials).
//!
//! **Invariant:** nothing here reads a clock, a file or the network; callers pass the time in,
//! so every rule is tested at exact instants.

pub mod accounts;
pub mod federation;
pub mod lifecycle;
pub mod lockout;
pub mod mfa;
pub mod oidc;
mod qr;
pub mod refresh;
pub mod revocation;
pub mod sealed;
pub mod service;
pub mod sessions;
mod shared;
pub mod tokens;
