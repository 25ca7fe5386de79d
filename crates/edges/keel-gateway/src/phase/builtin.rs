//! Today's duties as [`Phase`]s, and [`Duty`]: the list the proxy walks. Built-in duties keep
//! their state in the [`Edge`](crate::Edge) and share what they learn through the
//! [`Session`], so their contexts are `()`; the list dispatches to them directly (no boxed
//! future per hook), and to plugged-in phases through [`ErasedPhase`].

use keel_http::codes;
use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, response};

use super::{ErasedPhase, Phase, Session, Step};
use crate::proxy::error;
use crate::route::{LimitKey, host_of};

/// One entry of the proxy's ordered list of phases.
pub(crate) enum Duty {
    Acl(Acl),
    Routing(Routing),
    Cors(Cors),
    /// A plugged-in phase and the index of its context among the request's contexts.
    Plugged(usize, Arc<dyn ErasedPhase>),
    EdgeJwt(EdgeJwt),
    RateLimit(RateLimit),
    Cache(crate::cache::phase::ResponseCache),
    Compression(Compression),
}

impl Duty {
    /// Today's order: the address lists, routing and CORS preflights, then the plugged-in
    /// phases (where the inspectors ran), edge JWT, the rate limit, the cache, compression.
    pub(crate) fn list(plugged: &[Arc<dyn ErasedPhase>]) -> Vec<Duty> {
        let mut list = vec![Duty::Acl(Acl), Duty::Routing(Routing), Duty::Cors(Cors)];
        list.extend(
            plugged
                .iter()
                .enumerate()
                .map(|(i, p)| Duty::Plugged(i, p.clone())),
        );
        list.extend([
            Duty::EdgeJwt(EdgeJwt),
            Duty::RateLimit(RateLimit),
            Duty::Cache(crate::cache::phase::ResponseCache),
            Duty::Compression(Compression),
        ]);
        list
    }
}

/// Calls one hook on a duty: `$typed` for the built-in ones (context `()`), `$erased` for a
/// plugged-in one (its context from `$ctxs`).
macro_rules! on_duty {
    ($duty:expr, $ctxs:expr, |$phase:ident, $ctx:ident| $typed:expr, $erased:expr) => {
        match $duty {
            Duty::Acl($phase) => {
                let $ctx = &mut ();
                $typed
            }
            Duty::Routing($phase) => {
                let $ctx = &mut ();
                $typed
            }
            Duty::Cors($phase) => {
                let $ctx = &mut ();
                $typed
            }
            Duty::EdgeJwt($phase) => {
                let $ctx = &mut ();
                $typed
            }
            Duty::RateLimit($phase) => {
                let $ctx = &mut ();
                $typed
            }
            Duty::Cache($phase) => {
                let $ctx = &mut ();
                $typed
            }
            Duty::Compression($phase) => {
                let $ctx = &mut ();
                $typed
            }
            Duty::Plugged(index, $phase) => {
                let $ctx = &mut *$ctxs[*index];
                $erased
            }
        }
    };
}

/// The per-request contexts of the plugged-in phases (none, and no allocation, without any).
pub(crate) type Contexts = Vec<Box<dyn Any + Send>>;

impl Duty {
    pub(crate) fn new_ctxs(list: &[Duty]) -> Contexts {
        list.iter()
            .filter_map(|d| match d {
                Duty::Plugged(_, p) => Some(p.erased_new_ctx()),
                _ => None,
            })
            .collect()
    }

    /// A plugged-in phase's name (its refusals are logged, as the inspectors' were).
    pub(crate) fn plugged_name(&self) -> Option<&'static str> {
        match self {
            Duty::Plugged(_, p) => Some(p.erased_name()),
            _ => None,
        }
    }

    pub(crate) fn request_head(
        &self,
        s: &mut Session<'_>,
        head: &mut Parts,
        ctxs: &mut Contexts,
    ) -> Step {
        on_duty!(
            self,
            ctxs,
            |p, c| p.request_head(s, head, c),
            p.erased_request_head(s, head, c)
        )
    }

    pub(crate) async fn request_body(
        &self,
        s: &mut Session<'_>,
        head: &Parts,
        body: &Bytes,
        ctxs: &mut Contexts,
    ) -> Step {
        on_duty!(
            self,
            ctxs,
            |p, c| p.request_body(s, head, body, c).await,
            p.erased_request_body(s, head, body, c).await
        )
    }

    pub(crate) fn upstream_request(&self, s: &mut Session<'_>, head: &Parts, ctxs: &mut Contexts) {
        on_duty!(
            self,
            ctxs,
            |p, c| p.upstream_request(s, head, c),
            p.erased_upstream_request(s, head, c)
        );
    }

    pub(crate) async fn upstream(
        &self,
        s: &mut Session<'_>,
        head: Parts,
        body: Bytes,
        ctxs: &mut Contexts,
    ) -> Result<Response<Body>, (Parts, Bytes)> {
        on_duty!(
            self,
            ctxs,
            |p, c| p.upstream(s, head, body, c).await,
            p.erased_upstream(s, head, body, c).await
        )
    }

    pub(crate) fn upstream_response_head(
        &self,
        s: &mut Session<'_>,
        res: &mut response::Parts,
        ctxs: &mut Contexts,
    ) -> Step {
        on_duty!(
            self,
            ctxs,
            |p, c| p.upstream_response_head(s, res, c),
            p.erased_upstream_response_head(s, res, c)
        )
    }

    pub(crate) async fn upstream_response_body(
        &self,
        s: &mut Session<'_>,
        res: Response<Body>,
        ctxs: &mut Contexts,
    ) -> Response<Body> {
        on_duty!(
            self,
            ctxs,
            |p, c| p.upstream_response_body(s, res, c).await,
            p.erased_upstream_response_body(s, res, c).await
        )
    }

    pub(crate) fn refusal(&self, s: &Session<'_>, res: &mut Response<Body>, ctxs: &mut Contexts) {
        on_duty!(
            self,
            ctxs,
            |p, c| p.refusal(s, res, c),
            p.erased_refusal(s, res, c)
        );
    }

    pub(crate) fn logging(&self, s: &Session<'_>, status: StatusCode, ctxs: &mut Contexts) {
        on_duty!(
            self,
            ctxs,
            |p, c| p.logging(s, status, c),
            p.erased_logging(s, status, c)
        );
    }
}

/// The address allow/deny lists (`gateway.allow`, `gateway.deny`).
pub(crate) struct Acl;

impl Phase for Acl {
    type Ctx = ();

    fn name(&self) -> &'static str {
        "acl"
    }

    fn new_ctx(&self) {}

    fn request_head(&self, s: &mut Session<'_>, _head: &mut Parts, _ctx: &mut ()) -> Step {
        if let Some(acl) = &s.edge.acl
            && !acl.permits(s.client)
        {
            return Step::Refuse(error(
                StatusCode::FORBIDDEN,
                codes::FORBIDDEN,
                "address not allowed",
            ));
        }
        Step::Continue
    }
}

/// Routing: host, then the longest prefix.
pub(crate) struct Routing;

impl Phase for Routing {
    type Ctx = ();

    fn name(&self) -> &'static str {
        "routing"
    }

    fn new_ctx(&self) {}

    fn request_head(&self, s: &mut Session<'_>, head: &mut Parts, _ctx: &mut ()) -> Step {
        let edge = s.edge;
        // Only read (and lower-case) the host when some route asks for one.
        let host = if edge.routes.by_host() {
            host_of(&head.uri, &head.headers)
        } else {
            None
        };
        let Some(route) = edge.routes.find(host.as_deref(), head.uri.path()) else {
            return Step::Refuse(error(
                StatusCode::NOT_FOUND,
                codes::NO_ROUTE,
                "no route for this host and path",
            ));
        };
        s.route = Some(route);
        s.outcome.route = Some(&**route);
        Step::Continue
    }
}

/// CORS: preflights answered here, grants on every answer (refusals too, or a browser app
/// would see a network error instead of them).
pub(crate) struct Cors;

impl Phase for Cors {
    type Ctx = ();

    fn name(&self) -> &'static str {
        "cors"
    }

    fn new_ctx(&self) {}

    fn request_head(&self, s: &mut Session<'_>, head: &mut Parts, _ctx: &mut ()) -> Step {
        if let Some(cors) = &s.edge.cors
            && let Some(preflight) = cors.preflight(&head.method, &head.headers)
        {
            return Step::Answer(preflight.map(|()| Body::empty()));
        }
        Step::Continue
    }

    fn upstream_request(&self, s: &mut Session<'_>, head: &Parts, _ctx: &mut ()) {
        if s.edge.cors.is_some() {
            copy_header(&head.headers, &mut s.asked, header::ORIGIN);
        }
    }

    fn upstream_response_head(
        &self,
        s: &mut Session<'_>,
        res: &mut response::Parts,
        _ctx: &mut (),
    ) -> Step {
        if let Some(cors) = &s.edge.cors {
            cors.apply(&s.asked, &mut res.headers);
        }
        Step::Continue
    }

    fn refusal(&self, s: &Session<'_>, res: &mut Response<Body>, _ctx: &mut ()) {
        if let Some(cors) = &s.edge.cors {
            let mut asked = HeaderMap::new();
            if let Some(origin) = s.origin.clone() {
                asked.insert(header::ORIGIN, origin);
            }
            cors.apply(&asked, res.headers_mut());
        }
    }
}

/// The route's edge JWT check.
pub(crate) struct EdgeJwt;

impl Phase for EdgeJwt {
    type Ctx = ();

    fn name(&self) -> &'static str {
        "edge_jwt"
    }

    fn new_ctx(&self) {}

    async fn request_body(
        &self,
        s: &mut Session<'_>,
        head: &Parts,
        _body: &Bytes,
        _ctx: &mut (),
    ) -> Step {
        let Some(jwt) = s.route.and_then(|r| r.jwt.as_ref()) else {
            return Step::Continue;
        };
        match jwt.verify(head.headers.get(header::AUTHORIZATION)).await {
            Ok(claims) => {
                s.subject = Some(claims.sub.clone());
                Step::Continue
            }
            Err(e) => {
                let mut res = error(e.status(), codes::UNAUTHENTICATED, e.message());
                if e.status() == StatusCode::UNAUTHORIZED {
                    res.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                Step::Refuse(res)
            }
        }
    }
}

/// The route's rate limit, by address or by the edge JWT's subject.
pub(crate) struct RateLimit;

impl Phase for RateLimit {
    type Ctx = ();

    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn new_ctx(&self) {}

    async fn request_body(
        &self,
        s: &mut Session<'_>,
        _head: &Parts,
        _body: &Bytes,
        _ctx: &mut (),
    ) -> Step {
        let Some(route) = s.route else {
            return Step::Continue;
        };
        let Some((limiter, key)) = &route.limit else {
            return Step::Continue;
        };
        let ip;
        let key = match (key, &s.subject) {
            (LimitKey::Subject, Some(sub)) => sub.as_str(),
            _ => {
                ip = s.client.to_string();
                ip.as_str()
            }
        };
        if let Err(wait) = limiter.check(key, Instant::now()) {
            route.metrics.rate_limited.increment(1);
            let mut res = error(
                StatusCode::TOO_MANY_REQUESTS,
                codes::RATE_LIMITED,
                "too many requests; retry later",
            );
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::limit::retry_after_secs(wait)),
            );
            return Step::Refuse(res);
        }
        Step::Continue
    }
}

/// gzip on the way out, per client (`gateway.compression`).
pub(crate) struct Compression;

impl Phase for Compression {
    type Ctx = ();

    fn name(&self) -> &'static str {
        "compression"
    }

    fn new_ctx(&self) {}

    fn upstream_request(&self, s: &mut Session<'_>, head: &Parts, _ctx: &mut ()) {
        // Clients that do not take gzip pass too: their copy still needs
        // `Vary: Accept-Encoding`.
        s.compress = s.edge.settings.compression.enabled && head.method != Method::HEAD;
        if s.compress {
            copy_header(&head.headers, &mut s.asked, header::ACCEPT_ENCODING);
        }
    }

    async fn upstream_response_body(
        &self,
        s: &mut Session<'_>,
        res: Response<Body>,
        _ctx: &mut (),
    ) -> Response<Body> {
        if s.compress {
            crate::proxy::compress_body(s.edge, &s.asked, res).await
        } else {
            res
        }
    }
}

fn copy_header(from: &HeaderMap, to: &mut HeaderMap, name: HeaderName) {
    for value in from.get_all(&name) {
        to.append(name.clone(), value.clone());
    }
}
