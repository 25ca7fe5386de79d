//! The HTTP vocabulary keel's edges (keel-api and keel-gateway) share, so that both answer alike
//! and each defence exists once.
//!
//! - [`error`]: [`ErrorBody`], the JSON body of every refusal, its stable [`codes`] and the
//!   code for a bare status.
//! - [`html`]: [`html::escape`], the one escaper of server-rendered pages.
//! - [`csrf`]: the one CSRF scheme of browser forms (a signed double-submit token, and the
//!   same-origin check), and [`constant_time_eq`].
//! - [`request_id`]: keeping a caller's `x-request-id` or making one.
//! - [`Cidr`]: IP networks, for allow and deny lists and trusted proxies.
//!
//! **Invariant:** no server, no router, no I/O: types and functions over `http`'s.

pub mod csrf;
pub mod error;
pub mod html;
pub mod request_id;

pub use csrf::{CsrfKey, constant_time_eq, cookie, same_origin};
pub use error::{ErrorBody, codes};
/// IP networks. The type still lives in keel-domain while keel-gateway names it there; it
/// moves here once the gateway imports it from this crate (docs/decisions/0100).
pub use keel_domain::net::Cidr;
pub use request_id::{REQUEST_ID, RequestIds};
