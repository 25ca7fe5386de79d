//! The request path through the gateway: the proxy's own steps, and the [phases](crate::phase)
//! walked in order between them:
//!
//! 1. protocol checks (ambiguous framing), hidden paths;
//! 2. the request-head phases: the address allow/deny lists, routing (host, longest prefix),
//!    CORS preflight, plugged-in phases;
//! 3. the body, read whole within the size and time limits (so an upstream never sees a slow or
//!    partial request, and a retry can send it again), then the request-body phases:
//!    plugged-in phases (the WAF's place), edge JWT, the rate limit;
//! 4. hop-by-hop headers dropped, forwarding headers and request id set; the response cache in
//!    the upstream's place, or the upstream: a server from the pool, retries of what may be
//!    retried, within the route's timeout and the pool's retry budget;
//! 5. on the way out: hop-by-hop headers dropped, the response phases (CORS, compression),
//!    metrics, the access log and the logging phases; the request id.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use keel_http::request_id::keep_or_make;
use keel_http::{ErrorBody, codes};

use crate::Edge;
use crate::phase::builtin::{Contexts, Duty};
use crate::phase::{Session, Step};
use crate::pool::Pool;
use crate::route::Route;
use crate::upstream::UpstreamError;

pub use keel_http::REQUEST_ID;
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, not the message: never passed on (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// What one request carried through the pipeline, for the access log and metrics.
pub(crate) struct Outcome<'a> {
    pub(crate) route: Option<&'a Route>,
    pub(crate) upstream: Option<Arc<crate::pool::Server>>,
    pub(crate) tries: u32,
    pub(crate) cache: Option<&'static str>,
}

pub async fn handle(
    edge: Arc<Edge>,
    req: Request<Body>,
    peer: SocketAddr,
    tls: bool,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = edge
        .settings
        .access_log
        .then(|| req.uri().path().to_owned());
    let mut session = Session {
        edge: &edge,
        peer,
        client: canonical(peer.ip()),
        tls,
        request_id: keep_or_make(&edge.ids, req.headers()),
        route: None,
        subject: None,
        // The gateway's own refusals (401, 429, 413, ...) carry the CORS grants too: a browser
        // app could not read them otherwise, and would see a network error instead.
        origin: edge
            .cors
            .as_ref()
            .and_then(|_| req.headers().get(header::ORIGIN).cloned()),
        asked: HeaderMap::new(),
        compress: false,
        outcome: Outcome {
            route: None,
            upstream: None,
            tries: 0,
            cache: None,
        },
    };
    let mut ctxs = Duty::new_ctxs(&edge.duties);
    let mut res = match pipeline(&edge, &mut session, &mut ctxs, req).await {
        Ok(res) => res,
        Err(mut res) => {
            for duty in &edge.duties {
                duty.refusal(&session, &mut res, &mut ctxs);
            }
            res
        }
    };
    let status = res.status();
    let elapsed = started.elapsed();
    let outcome = &session.outcome;
    match outcome.route {
        Some(route) => route.metrics.record(status.as_u16(), elapsed.as_secs_f64()),
        None => edge.unrouted.record(status.as_u16(), elapsed.as_secs_f64()),
    }
    if edge.settings.access_log {
        tracing::info!(
            target: "keel_gateway::access",
            request_id = session.request_id.to_str().unwrap_or_default(),
            client = %peer.ip(),
            method = %method,
            path = path.as_deref().unwrap_or_default(),
            status = status.as_u16(),
            route = outcome.route.map_or("-", |r| r.name.as_str()),
            upstream = outcome.upstream.as_ref().map_or("-", |s| s.addr.as_str()),
            tries = outcome.tries,
            cache = outcome.cache.unwrap_or("-"),
            latency_us = elapsed.as_micros() as u64,
            "request"
        );
    }
    for duty in &edge.duties {
        duty.logging(&session, status, &mut ctxs);
    }
    res.headers_mut()
        .insert(REQUEST_ID.clone(), session.request_id);
    res
}

type Answer = Result<Response<Body>, Response<Body>>;

/// What a phase decided, as the pipeline's answer: `None` goes on.
fn decided(duty: &Duty, session: &Session<'_>, step: Step) -> Option<Answer> {
    match step {
        Step::Continue => None,
        Step::Answer(res) => Some(Ok(res)),
        Step::Refuse(res) => {
            if let Some(phase) = duty.plugged_name() {
                tracing::warn!(
                    phase,
                    request_id = session.request_id.to_str().unwrap_or_default(),
                    client = %session.client,
                    status = res.status().as_u16(),
                    "request rejected"
                );
            }
            Some(Err(res))
        }
    }
}

async fn pipeline<'e>(
    edge: &'e Edge,
    session: &mut Session<'e>,
    ctxs: &mut Contexts,
    req: Request<Body>,
) -> Answer {
    let (mut head, body) = req.into_parts();

    // 1. Framing. hyper's HTTP/1 parser already refuses bad lengths, and re-frames a request
    // with both Content-Length and Transfer-Encoding (it drops the length, reads the body as
    // chunked and closes the connection after the answer, as RFC 9112 §6.1 allows), so no
    // ambiguous request gets this far. But it undoes only a final `chunked`: what another
    // coding (`gzip, chunked`) left would reach the upstream, and the phases, as if it were
    // the content (§6.1: 501).
    if head.headers.contains_key(header::TRANSFER_ENCODING) && !chunked_only(&head.headers) {
        return Err(closing(error(
            StatusCode::NOT_IMPLEMENTED,
            codes::UNSUPPORTED_TRANSFER_CODING,
            "only the chunked transfer coding is supported",
        )));
    }
    let path = head.uri.path();
    if edge.hidden.iter().any(|hidden| {
        path.strip_prefix(hidden.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }) {
        return Err(error(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            "no such route",
        ));
    }

    // 2. The request head: address lists, routing, CORS preflight, plugged-in phases.
    for duty in &edge.duties {
        let step = duty.request_head(session, &mut head, ctxs);
        if let Some(answer) = decided(duty, session, step) {
            return answer;
        }
    }
    let Some(route) = session.route else {
        // Routing is always on the list; this is only the type system's doubt.
        return Err(error(
            StatusCode::NOT_FOUND,
            codes::NO_ROUTE,
            "no route for this host and path",
        ));
    };

    // 3. The body, whole, within limits; then the phases that need it (plugged-in ones, edge
    // JWT, the rate limit).
    let body = read_body(edge, &head.headers, body).await?;
    for duty in &edge.duties {
        let step = duty.request_body(session, &head, &body, ctxs).await;
        if let Some(answer) = decided(duty, session, step) {
            return answer;
        }
    }

    // Headers for the upstream: hop-by-hop ones out, the forwarding ones in (the in-process API
    // reads the client's address from the connection, as if it had accepted it).
    let in_process = route.pool.is_in_process();
    if in_process {
        head.headers
            .insert(REQUEST_ID.clone(), session.request_id.clone());
    } else {
        strip_hop_by_hop(&mut head.headers);
        forwarding_headers(&mut head, session.client, session.tls, &session.request_id);
    }
    // What the way out needs of the request, kept before the request moves on.
    for duty in &edge.duties {
        duty.upstream_request(session, &head, ctxs);
    }

    // 4. The upstream, or a phase in its place (the cache).
    let mut exchange = Err((head, body));
    for duty in &edge.duties {
        let Err((head, body)) = exchange else {
            break;
        };
        exchange = duty.upstream(session, head, body, ctxs).await;
    }
    let mut res = match exchange {
        Ok(res) => res,
        Err((head, body)) => {
            forward_owned(route, head, body, session.peer, &mut session.outcome).await
        }
    };

    // 5. On the way out (the in-process API's responses carry no connection headers).
    if !in_process {
        strip_hop_by_hop(res.headers_mut());
    }
    let (mut parts, res_body) = res.into_parts();
    for duty in &edge.duties {
        let step = duty.upstream_response_head(session, &mut parts, ctxs);
        if let Some(answer) = decided(duty, session, step) {
            return answer;
        }
    }
    let mut res = Response::from_parts(parts, res_body);
    for duty in &edge.duties {
        res = duty.upstream_response_body(session, res, ctxs).await;
    }
    Ok(res)
}

/// The request body, read whole: 413 past `max_body_bytes` (announced or sent), 408 when the
/// client is slower than `body_read_timeout_ms`.
async fn read_body(edge: &Edge, headers: &HeaderMap, body: Body) -> Result<Bytes, Response<Body>> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let limit = edge.settings.max_body_bytes;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let timeout = Duration::from_millis(edge.settings.body_read_timeout_ms.max(1));
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(closing(error(
            StatusCode::BAD_REQUEST,
            codes::BAD_REQUEST,
            "the request body could not be read",
        ))),
        Err(_) => Err(closing(error(
            StatusCode::REQUEST_TIMEOUT,
            codes::REQUEST_TIMEOUT,
            "the request body was not sent in time",
        ))),
    }
}

/// Whether the request's transfer codings are `chunked` alone, once.
fn chunked_only(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    codings
        .next()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
        && codings.next().is_none()
}

fn too_large() -> Response<Body> {
    closing(error(
        StatusCode::PAYLOAD_TOO_LARGE,
        codes::PAYLOAD_TOO_LARGE,
        "the request body is too large",
    ))
}

fn closing(mut res: Response<Body>) -> Response<Body> {
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// Whether a request may be sent twice without changing the outcome (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// [`forward`], but a request that can have only one try (no retries, or one server) moves to
/// the upstream as it is, with no copy of its head kept for a second try: among others the
/// `keel up` path to the in-process API.
pub(crate) async fn forward_owned(
    route: &Route,
    head: http::request::Parts,
    body: Bytes,
    peer: SocketAddr,
    outcome: &mut Outcome<'_>,
) -> Response<Body> {
    let pool: &Pool = &route.pool;
    // A second try needs a second server: with one, nothing is kept for it.
    if route.retries > 0 && pool.len() > 1 {
        return forward(route, &head, body, peer, outcome).await;
    }
    let Some(lease) = pool.pick(head.uri.path(), &head.headers, &[]) else {
        return no_server(pool, None);
    };
    let server = lease.server.clone();
    outcome.tries = 1;
    outcome.upstream = Some(server.clone());
    server.metrics.requests.increment(1);
    let sent = Instant::now();
    let req = Request::from_parts(
        head,
        if body.is_empty() {
            Body::empty()
        } else {
            Body::from(body)
        },
    );
    let send = pool.transport.send(&server.addr, req, peer);
    // The in-process API keeps its own request timeout (`server.request_timeout_ms`): a second
    // timer per request here would only cost.
    let result = if pool.is_in_process() {
        send.await
    } else {
        tokio::time::timeout(route.timeout, send)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    };
    server.metrics.latency.record(sent.elapsed().as_secs_f64());
    match result {
        Ok(res) => {
            let failed = res.status().is_server_error();
            pool.report(&server, !failed);
            if failed {
                server.metrics.error("status");
            }
            res
        }
        Err(e) => {
            server.metrics.error(e.kind());
            pool.report(&server, false);
            tracing::warn!(pool = %pool.name, upstream = server.addr.as_str(), error = %e, "upstream request failed");
            no_server(pool, Some(e))
        }
    }
}

/// Sends the request to the route's pool: a server the request has not tried, again after a
/// failure when the request may be repeated, the route allows more tries, the pool's retry
/// budget has room and the route's timeout has not run out.
pub(crate) async fn forward(
    route: &Route,
    head: &http::request::Parts,
    body: Bytes,
    peer: SocketAddr,
    outcome: &mut Outcome<'_>,
) -> Response<Body> {
    let pool: &Pool = &route.pool;
    let deadline = Instant::now() + route.timeout;
    let repeatable = idempotent(&head.method);
    let path = head.uri.path();
    pool.count_request();
    let mut tried = Vec::new();
    let mut last: Option<Response<Body>> = None;
    let mut failure: Option<UpstreamError> = None;
    loop {
        let Some(lease) = pool.pick(path, &head.headers, &tried) else {
            break;
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            failure = Some(UpstreamError::Timeout);
            break;
        }
        outcome.tries += 1;
        outcome.upstream = Some(lease.server.clone());
        let mut req = Request::new(if body.is_empty() {
            Body::empty()
        } else {
            Body::from(body.clone())
        });
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = head.uri.clone();
        *req.headers_mut() = head.headers.clone();
        let server = lease.server.clone();
        server.metrics.requests.increment(1);
        let sent = Instant::now();
        let result = tokio::time::timeout(remaining, pool.transport.send(&server.addr, req, peer))
            .await
            .unwrap_or(Err(UpstreamError::Timeout));
        server.metrics.latency.record(sent.elapsed().as_secs_f64());
        let retry_ok = |unsent: bool| {
            outcome.tries <= route.retries && (unsent || repeatable) && pool.allow_retry()
        };
        match result {
            Ok(res) if is_retryable_status(res.status()) => {
                server.metrics.error("status");
                pool.report(&server, false);
                if !retry_ok(false) {
                    return res;
                }
                last = Some(res);
            }
            Ok(res) => {
                pool.report(&server, !res.status().is_server_error());
                if res.status().is_server_error() {
                    server.metrics.error("status");
                }
                return res;
            }
            Err(e) => {
                server.metrics.error(e.kind());
                pool.report(&server, false);
                tracing::warn!(
                    pool = %pool.name,
                    upstream = server.addr.as_str(),
                    error = %e,
                    "upstream request failed"
                );
                let retry = retry_ok(e.unsent());
                failure = Some(e);
                if !retry {
                    break;
                }
            }
        }
        route.metrics.retries.increment(1);
        tried.push(server);
        drop(lease);
    }
    if let Some(res) = last {
        return res;
    }
    no_server(pool, failure)
}

/// The answer when no upstream answered: why, as far as the gateway knows.
fn no_server(pool: &Pool, failure: Option<UpstreamError>) -> Response<Body> {
    match failure {
        Some(UpstreamError::Timeout) => error(
            StatusCode::GATEWAY_TIMEOUT,
            codes::UPSTREAM_TIMEOUT,
            "the upstream did not answer in time",
        ),
        Some(_) => error(
            StatusCode::BAD_GATEWAY,
            codes::UPSTREAM_FAILED,
            "the upstream failed to answer",
        ),
        None if pool.saturated() => error(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::UPSTREAM_BUSY,
            "every upstream is at its limit",
        ),
        None => error(
            StatusCode::BAD_GATEWAY,
            codes::NO_UPSTREAM,
            "no healthy upstream for this route",
        ),
    }
}

fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
    if headers.get(header::UPGRADE).is_some() {
        headers.remove(header::UPGRADE);
    }
}

fn forwarding_headers(
    head: &mut http::request::Parts,
    client: IpAddr,
    tls: bool,
    request_id: &HeaderValue,
) {
    let headers = &mut head.headers;
    // Several field lines are one comma-separated list (RFC 9110 §5.3): all of them are kept.
    let earlier: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let forwarded_for = if earlier.is_empty() {
        client.to_string()
    } else {
        format!("{}, {client}", earlier.join(", "))
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    // HTTP/2 clients name the host in the URI; the upstream speaks HTTP/1.1 and reads Host.
    let host = head
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    if let Some(host) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        headers.entry(header::HOST).or_insert(host);
    }
    headers.insert(REQUEST_ID.clone(), request_id.clone());
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// gzip when the client takes it and the response is worth it (`Vary: Accept-Encoding` either
/// way); responses of unknown or large size stream through as they are.
pub(crate) async fn compress_body(
    edge: &Edge,
    request: &HeaderMap,
    mut res: Response<Body>,
) -> Response<Body> {
    if !crate::compress::compressible(res.headers()) {
        return res;
    }
    let Some(len) = content_length(res.headers()) else {
        return res;
    };
    if len < edge.settings.compression.min_bytes as u64
        || len > edge.settings.max_buffered_response_bytes as u64
    {
        return res;
    }
    if !crate::compress::accepts_gzip(request) {
        // Sent plain, but another client gets it gzipped: caches must keep the two apart.
        crate::compress::add_vary(res.headers_mut(), "accept-encoding");
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let Ok(collected) = body.collect().await else {
        return error(
            StatusCode::BAD_GATEWAY,
            codes::UPSTREAM_FAILED,
            "the upstream response broke off",
        );
    };
    let body = crate::compress::compress_response(
        request,
        &mut parts.headers,
        collected.to_bytes(),
        edge.settings.compression.min_bytes,
    );
    Response::from_parts(parts, Body::from(body))
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The gateway's own answers, in the API's error shape.
pub fn error(status: StatusCode, code: &'static str, message: &str) -> Response<Body> {
    ErrorBody::new(code, message).into_response(status)
}
