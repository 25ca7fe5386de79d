//! The response cache as a phase of the request path, [`ResponseCache`]: a cached route's way
//! through the cache (RFC 9111): fresh hits answered here, stale-while-revalidate refreshed in
//! the background, revalidation with the stored validators, misses stored when the response
//! allows it. Bodies are stored as the upstream sent them; compression happens after, per
//! client (with `Vary: Accept-Encoding`).

use keel_http::codes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use bytes::Bytes;
use http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::request::Parts as RequestParts;
use http::response::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;

use crate::Edge;
use crate::cache::{CacheRequest, CacheStatus, CachedResponse, Lookup, Revalidation, WebCache};
use crate::phase::{Phase, Session};
use crate::proxy::{Outcome, content_length, forward};
use crate::route::Route;

/// The response cache as a phase: on a cached route it answers in the upstream's place (from
/// the store, or asking the upstream itself when it must).
pub(crate) struct ResponseCache;

impl Phase for ResponseCache {
    type Ctx = ();

    fn name(&self) -> &'static str {
        "cache"
    }

    fn new_ctx(&self) {}

    async fn upstream(
        &self,
        s: &mut Session<'_>,
        head: RequestParts,
        body: Bytes,
        _ctx: &mut (),
    ) -> Result<Response<Body>, (RequestParts, Bytes)> {
        match s.route {
            Some(route) if route.cache && s.edge.cache.is_some() => {
                Ok(serve(s.edge, route, head, body, s.peer, &mut s.outcome).await)
            }
            _ => Err((head, body)),
        }
    }
}

pub(crate) async fn serve<'e>(
    edge: &'e Edge,
    route: &Arc<Route>,
    head: RequestParts,
    body: Bytes,
    peer: SocketAddr,
    outcome: &mut Outcome<'e>,
) -> Response<Body> {
    let cache = edge.cache.clone().expect("a cached route has a cache");
    let lookup = cache.lookup(
        &CacheRequest::new(&head.method, &head.uri, &head.headers),
        SystemTime::now(),
    );
    let metrics = &route.metrics;
    match lookup {
        Lookup::Fresh(stored) => {
            metrics.cache_hit.increment(1);
            outcome.cache = Some(CacheStatus::Hit.as_str());
            answer(stored, &head)
        }
        Lookup::Stale { response, refresh } => {
            metrics.cache_stale.increment(1);
            outcome.cache = Some(CacheStatus::Stale.as_str());
            if let Some(revalidation) = refresh {
                tokio::spawn(refresh_in_background(
                    cache.clone(),
                    route.clone(),
                    head.clone(),
                    peer,
                    revalidation,
                ));
            }
            answer(response, &head)
        }
        Lookup::Revalidate(revalidation) => {
            let mut conditional = head.clone();
            with_validators(&mut conditional, &revalidation);
            let sent = SystemTime::now();
            let res = forward(route, &conditional, Bytes::new(), peer, outcome).await;
            let received = SystemTime::now();
            let (parts, res_body) = res.into_parts();
            if parts.status == StatusCode::NOT_MODIFIED {
                if let Some(fresh) = cache.revalidated(&revalidation, &parts, sent, received) {
                    metrics.cache_revalidated.increment(1);
                    outcome.cache = Some(CacheStatus::Revalidated.as_str());
                    return answer(fresh, &head);
                }
                // The 304 named another representation: ask again without validators.
                return miss(&cache, route, head, peer, outcome).await;
            }
            if parts.status.is_server_error()
                && let Some(stale) = revalidation.stale_if_error(received)
            {
                metrics.cache_stale.increment(1);
                outcome.cache = Some(CacheStatus::Stale.as_str());
                return answer(stale, &head);
            }
            metrics.cache_miss.increment(1);
            store(&cache, &head, parts, res_body, sent, received, outcome).await
        }
        Lookup::Miss => miss(&cache, route, head, peer, outcome).await,
        Lookup::Bypass => {
            let res = forward(route, &head, body, peer, outcome).await;
            outcome.cache = Some(CacheStatus::Bypass.as_str());
            let (mut parts, res_body) = res.into_parts();
            if !matches!(head.method, Method::GET | Method::HEAD) {
                let creq = CacheRequest::new(&head.method, &head.uri, &head.headers);
                cache.invalidate_after_unsafe(&creq, &parts);
            }
            CacheStatus::Bypass.mark(&mut parts.headers);
            Response::from_parts(parts, res_body)
        }
    }
}

/// Nothing usable stored: the upstream's answer, without the client's conditions (so that it
/// is a storable 200), stored if it may be; the client's condition is then answered here.
async fn miss<'e>(
    cache: &Arc<WebCache>,
    route: &Arc<Route>,
    head: RequestParts,
    peer: SocketAddr,
    outcome: &mut Outcome<'e>,
) -> Response<Body> {
    route.metrics.cache_miss.increment(1);
    let mut plain = head.clone();
    plain.headers.remove(IF_NONE_MATCH);
    plain.headers.remove(IF_MODIFIED_SINCE);
    let sent = SystemTime::now();
    let res = forward(route, &plain, Bytes::new(), peer, outcome).await;
    let received = SystemTime::now();
    let (parts, body) = res.into_parts();
    store(cache, &head, parts, body, sent, received, outcome).await
}

/// Stores a storable response (when its size is known and within the per-object limit: a body
/// of unknown length streams through instead of being held) and sends it.
async fn store(
    cache: &WebCache,
    head: &RequestParts,
    mut parts: Parts,
    body: Body,
    sent: SystemTime,
    received: SystemTime,
    outcome: &mut Outcome<'_>,
) -> Response<Body> {
    outcome.cache = Some(CacheStatus::Miss.as_str());
    let creq = CacheRequest::new(&head.method, &head.uri, &head.headers);
    let known =
        content_length(&parts.headers).is_some_and(|n| n <= cache.max_object_bytes() as u64);
    if !known || cache.storable(&creq, &parts, received).is_err() {
        CacheStatus::Miss.mark(&mut parts.headers);
        return Response::from_parts(parts, body);
    }
    let Ok(collected) = body.collect().await else {
        return crate::proxy::error(
            StatusCode::BAD_GATEWAY,
            codes::UPSTREAM_FAILED,
            "the upstream response broke off",
        );
    };
    let bytes = collected.to_bytes();
    let _ = cache.store(&creq, &parts, bytes.clone(), sent, received);
    CacheStatus::Miss.mark(&mut parts.headers);
    answer(
        CachedResponse {
            status: parts.status,
            headers: parts.headers,
            body: bytes,
        },
        head,
    )
}

/// A stored response, or the gateway's own 304 when the client already holds it.
fn answer(stored: CachedResponse, head: &RequestParts) -> Response<Body> {
    let chosen = stored.not_modified(&head.headers).unwrap_or(stored);
    let (parts, body) = chosen.into_response().into_parts();
    let body = if head.method == Method::HEAD || body.is_empty() {
        Body::empty()
    } else {
        Body::from(body)
    };
    Response::from_parts(parts, body)
}

fn with_validators(head: &mut RequestParts, revalidation: &Revalidation) {
    head.headers.remove(IF_NONE_MATCH);
    head.headers.remove(IF_MODIFIED_SINCE);
    for (name, value) in revalidation.conditional_headers() {
        head.headers.append(name.clone(), value.clone());
    }
    // A HEAD would refresh the headers but could not replace the body on a 200.
    head.method = Method::GET;
}

/// `stale-while-revalidate`: the client got the stale copy; this brings the entry up to date.
async fn refresh_in_background(
    cache: Arc<WebCache>,
    route: Arc<Route>,
    mut head: RequestParts,
    peer: SocketAddr,
    revalidation: Revalidation,
) {
    with_validators(&mut head, &revalidation);
    let mut outcome = Outcome {
        route: None,
        upstream: None,
        tries: 0,
        cache: None,
    };
    let sent = SystemTime::now();
    let res = forward(&route, &head, Bytes::new(), peer, &mut outcome).await;
    let received = SystemTime::now();
    let (parts, body) = res.into_parts();
    if parts.status == StatusCode::NOT_MODIFIED {
        cache.revalidated(&revalidation, &parts, sent, received);
        route.metrics.cache_revalidated.increment(1);
        return;
    }
    if parts.status.is_success() {
        store(&cache, &head, parts, body, sent, received, &mut outcome).await;
    }
}
