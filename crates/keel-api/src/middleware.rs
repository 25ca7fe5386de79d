//! One middleware around every request, doing in one pass what a stack of layers would do in
//! several: request id (kept from `x-request-id` when sane, else made), load shedding beyond
//! `max_in_flight`, the request timeout, the request span every log line of the request carries,
//! logging of internal errors under their error id, HTTP metrics and the access log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::error::InternalCause;
use crate::{ApiError, HttpSettings};

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Shared state of the middleware.
#[derive(Clone)]
pub struct Limiter {
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    access_log: bool,
    ids: Arc<IdSource>,
    metrics: Arc<HttpMetrics>,
}

/// The HTTP metric handles, resolved once per (route, method, status) and then reused, so that a
/// request costs two atomic updates instead of building labels and a registry lookup.
#[derive(Default)]
struct HttpMetrics {
    by_route: RwLock<HashMap<String, Arc<RouteMetrics>>>,
}

#[derive(Default)]
struct RouteMetrics {
    by_outcome: RwLock<HashMap<(Method, u16), (Counter, Histogram)>>,
}

impl HttpMetrics {
    fn record(&self, method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
        let per_route = self
            .by_route
            .read()
            .expect("metrics lock")
            .get(route)
            .cloned();
        let per_route = per_route.unwrap_or_else(|| {
            let mut map = self.by_route.write().expect("metrics lock");
            map.entry(route.to_owned()).or_default().clone()
        });
        let key = (method.clone(), status.as_u16());
        let handles = per_route
            .by_outcome
            .read()
            .expect("metrics lock")
            .get(&key)
            .cloned();
        let (counter, histogram) = handles.unwrap_or_else(|| {
            let labels = [
                ("method", method.as_str().to_owned()),
                ("route", route.to_owned()),
                ("status", status.as_str().to_owned()),
            ];
            let handles = (
                metrics::counter!("keel_http_requests_total", &labels),
                metrics::histogram!("keel_http_request_duration_seconds", &labels[..2]),
            );
            per_route
                .by_outcome
                .write()
                .expect("metrics lock")
                .insert(key, handles.clone());
            handles
        });
        counter.increment(1);
        histogram.record(elapsed.as_secs_f64());
    }
}

/// Request ids: a random per-process prefix and a counter, unique without a syscall per request.
struct IdSource {
    prefix: u32,
    next: AtomicU64,
}

impl Limiter {
    pub fn new(http: &HttpSettings) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(http.max_in_flight)),
            timeout: http.request_timeout,
            access_log: http.access_log,
            metrics: Arc::default(),
            ids: Arc::new(IdSource {
                prefix: fastrand_u32(),
                next: AtomicU64::new(1),
            }),
        }
    }

    fn request_id(&self, req: &Request) -> HeaderValue {
        if let Some(given) = req.headers().get(&REQUEST_ID) {
            let sane = given.len() <= 128
                && !given.is_empty()
                && given
                    .as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
            if sane {
                return given.clone();
            }
        }
        // 8 hex digits of process prefix, 12 of counter, written without a format call.
        let n = self.ids.next.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 20];
        let digits = (u64::from(self.ids.prefix) << 48) | (n & 0xffff_ffff_ffff);
        let high = u64::from(self.ids.prefix) >> 16;
        for (i, slot) in id.iter_mut().enumerate() {
            let nibble = if i < 4 {
                (high >> (4 * (3 - i))) & 0xf
            } else {
                (digits >> (4 * (19 - i))) & 0xf
            };
            *slot = b"0123456789abcdef"[nibble as usize];
        }
        HeaderValue::from_bytes(&id).expect("hex is a valid header value")
    }
}

fn fastrand_u32() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

pub async fn around_request(State(limiter): State<Limiter>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = limiter.request_id(&req);
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    let method = req.method().clone();
    // Only the request id goes into the span: every line logged inside the request carries it,
    // and span fields are formatted on every request, so they are kept to the one that matters.
    let span = tracing::info_span!(
        "request",
        request_id = request_id.to_str().unwrap_or_default()
    );

    // The caller's trace context; messages this request causes continue its trace.
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);

    let mut res = match limiter.in_flight.clone().try_acquire_owned() {
        Ok(permit) => {
            let handled = keel_domain::trace::scope(traceparent, next.run(req));
            let res = tokio::time::timeout(limiter.timeout, handled.instrument(span.clone())).await;
            drop(permit);
            res.unwrap_or_else(|_| ApiError::Timeout.into_response())
        }
        Err(_) => ApiError::Overloaded.into_response(),
    };

    let status = res.status();
    let elapsed = started.elapsed();
    if let Some(cause) = res.extensions().get::<InternalCause>() {
        span.in_scope(|| {
            tracing::error!(
                error_id = %cause.error_id,
                cause = %cause.cause,
                method = %method,
                route,
                "request failed"
            )
        });
    }
    limiter.metrics.record(&method, route, status, elapsed);
    if limiter.access_log {
        span.in_scope(|| {
            tracing::info!(
                target: "keel::access",
                method = %method,
                route,
                status = status.as_u16(),
                latency_us = elapsed.as_micros() as u64,
                "request"
            )
        });
    }
    res.headers_mut().insert(REQUEST_ID.clone(), request_id);
    res
}
