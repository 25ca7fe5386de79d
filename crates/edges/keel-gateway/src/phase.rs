//! The phases of a request through the gateway, in the manner of pingora's `ProxyHttp`: one
//! trait, [`Phase`], with a defaulted hook per phase and a per-request context
//! ([`Phase::Ctx`], made by [`Phase::new_ctx`]). The proxy walks an ordered list of phases:
//! today's duties (the address lists, routing, CORS, edge JWT, rate limits, the response cache,
//! compression, in `builtin`) and whatever the binary plugs in ([`Gateway::new`]'s `phases`,
//! e.g. the WAF), which sit after CORS preflights and before edge JWT, where the inspection
//! seam was.
//!
//! Hooks, in the order the proxy calls them (each over the whole list before the next):
//! [`request_head`](Phase::request_head), [`request_body`](Phase::request_body) (the body read
//! whole, within the limits), [`upstream_request`](Phase::upstream_request),
//! [`upstream`](Phase::upstream) (a phase may answer in the upstream's place: the cache),
//! [`upstream_response_head`](Phase::upstream_response_head),
//! [`upstream_response_body`](Phase::upstream_response_body), then
//! [`refusal`](Phase::refusal) on the gateway's own refusals and [`logging`](Phase::logging)
//! on every request.
//!
//! [`Gateway::new`]: crate::Gateway::new

pub(crate) mod builtin;
mod erased;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Response, StatusCode, response};

pub use erased::ErasedPhase;

use crate::Edge;
use crate::proxy::Outcome;
use crate::route::Route;

/// What a hook decided.
#[derive(Debug)]
pub enum Step {
    /// On to the next phase.
    Continue,
    /// The gateway refuses the request with this answer (the upstream is not asked, or its
    /// answer is dropped): later phases are skipped, and [`Phase::refusal`] still runs, so the
    /// refusal carries the CORS grants a browser needs to read it.
    Refuse(Response<Body>),
    /// This is the answer, sent as it is (a CORS preflight).
    Answer(Response<Body>),
}

/// One duty on the request path. Every hook has a default that does nothing, so an implementor
/// writes only the phases it takes part in. Hooks get the [`Session`] (what the gateway knows
/// of the request) and the implementor's own context for this request.
pub trait Phase: Send + Sync + 'static {
    /// What the phase carries from one hook to the next within one request (zero-sized types
    /// cost nothing).
    type Ctx: Send + 'static;

    /// The phase's name in logs.
    fn name(&self) -> &'static str;

    /// A fresh context, once per request.
    fn new_ctx(&self) -> Self::Ctx;

    /// The request head, before its body is read (after the protocol checks).
    fn request_head(
        &self,
        _session: &mut Session<'_>,
        _head: &mut Parts,
        _ctx: &mut Self::Ctx,
    ) -> Step {
        Step::Continue
    }

    /// The request with its whole body (read within `max_body_bytes`), exactly the bytes the
    /// upstream would get.
    fn request_body(
        &self,
        _session: &mut Session<'_>,
        _head: &Parts,
        _body: &Bytes,
        _ctx: &mut Self::Ctx,
    ) -> impl Future<Output = Step> + Send {
        std::future::ready(Step::Continue)
    }

    /// The head as it goes upstream (hop-by-hop headers gone, forwarding headers set).
    fn upstream_request(&self, _session: &mut Session<'_>, _head: &Parts, _ctx: &mut Self::Ctx) {}

    /// The upstream exchange itself: a phase may produce the response in the upstream's place
    /// (the response cache does); `Err` hands the request back for the next phase, and in the
    /// end to the route's pool.
    fn upstream(
        &self,
        _session: &mut Session<'_>,
        head: Parts,
        body: Bytes,
        _ctx: &mut Self::Ctx,
    ) -> impl Future<Output = Result<Response<Body>, (Parts, Bytes)>> + Send {
        std::future::ready(Err((head, body)))
    }

    /// The upstream's response head (hop-by-hop headers already gone); the body still streams.
    fn upstream_response_head(
        &self,
        _session: &mut Session<'_>,
        _res: &mut response::Parts,
        _ctx: &mut Self::Ctx,
    ) -> Step {
        Step::Continue
    }

    /// The upstream's response, body and all: returns the response to send on (the same one,
    /// or another, e.g. compressed). Reading the body is the implementor's choice and cost.
    fn upstream_response_body(
        &self,
        _session: &mut Session<'_>,
        res: Response<Body>,
        _ctx: &mut Self::Ctx,
    ) -> impl Future<Output = Response<Body>> + Send {
        std::future::ready(res)
    }

    /// A refusal by the gateway (any phase's, or the protocol checks'), about to be sent.
    fn refusal(&self, _session: &Session<'_>, _res: &mut Response<Body>, _ctx: &mut Self::Ctx) {}

    /// The request is answered: `status` is what the client got.
    fn logging(&self, _session: &Session<'_>, _status: StatusCode, _ctx: &mut Self::Ctx) {}
}

/// What the gateway knows of one request, shared by its phases.
pub struct Session<'e> {
    pub(crate) edge: &'e Edge,
    pub(crate) peer: SocketAddr,
    pub(crate) client: IpAddr,
    pub(crate) tls: bool,
    pub(crate) request_id: HeaderValue,
    /// The matched route (set by routing); the cache needs the `Arc` to refresh in background.
    pub(crate) route: Option<&'e Arc<Route>>,
    /// The edge JWT's subject, for rate limits by subject.
    pub(crate) subject: Option<String>,
    /// The client's `Origin`, taken before anything else so refusals carry CORS grants too.
    pub(crate) origin: Option<HeaderValue>,
    /// What the way out needs of the request (Origin, Accept-Encoding), kept before the request
    /// moves upstream.
    pub(crate) asked: HeaderMap,
    /// Whether the response is to be compressed (the client's encodings are in `asked`).
    pub(crate) compress: bool,
    pub(crate) outcome: Outcome<'e>,
}

impl Session<'_> {
    /// The client's address (IPv4-mapped IPv6 as IPv4).
    pub fn client(&self) -> IpAddr {
        self.client
    }

    /// The connection's peer address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the client came over TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The request id sent upstream and back to the client.
    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    /// The matched route's name (`host/prefix` or `*/prefix`), once routing has run.
    pub fn route_name(&self) -> Option<&str> {
        self.route.map(|r| r.name.as_str())
    }

    /// The subject of the request's verified edge JWT, if its route checks one.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
}
