//! The request-inspection phase: where the WAF plugs in. Inspectors run after the address
//! checks and before routing, rate limits and the upstream, on the request head and (when the
//! request has one) its whole body, which the gateway has already read within its limits; so
//! an inspector sees exactly the bytes the upstream would get.

use std::net::IpAddr;

use bytes::Bytes;
use http::StatusCode;
use http::request::Parts;

/// An inspector's decision about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Answer with this status and reason (logged, and the reason is the JSON error's message).
    Reject {
        status: StatusCode,
        reason: String,
    },
}

/// One check of the inspection phase (the WAF's rule sets, protocol checks, …).
pub trait Inspector: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn inspect(&self, head: &Parts, body: &Bytes, client: IpAddr) -> Verdict;
}
