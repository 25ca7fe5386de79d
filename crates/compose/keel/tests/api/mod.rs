//! API tests: the real application on a real port, against every database backend.

mod accounts;
mod auth;
mod federation;
mod helpers;
mod hospital;
mod hostile;
mod jobs;
mod lifecycle;
mod oidc;
mod oidc_rp;
mod openapi;
mod ops;
mod policy;
mod revocation;
mod users;
