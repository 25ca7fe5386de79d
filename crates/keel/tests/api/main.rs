//! API tests: the real application on a real port, against every database backend.

mod auth;
mod federation;
mod helpers;
mod hospital;
mod jobs;
mod lifecycle;
mod oidc;
mod openapi;
mod ops;
mod policy;
mod users;
