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

pub mod cidr;
pub mod csrf;
pub mod error;
pub mod html;
pub mod request_id;

pub use cidr::Cidr;
pub use csrf::{CsrfKey, constant_time_eq, cookie, same_origin};
pub use error::{ErrorBody, codes};
pub use request_id::{REQUEST_ID, RequestIds};
