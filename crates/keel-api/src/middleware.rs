//! One middleware around every request, doing in one pass what a stack of layers would do in
//! several: request id (kept from `x-request-id` when sane, else made), load shedding beyond
//! `max_in_flight`, the request timeout, the request span every log line of the request carries,
//! logging of internal errors under their error id, HTTP metrics and the access log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::error::InternalCause;
use crate::{ApiError, HttpSettings};

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id, also available to handlers as an extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// Shared state of the middleware.
#[derive(Clone)]
pub struct Limiter {
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    access_log: bool,
    ids: Arc<IdSource>,
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
        let n = self.ids.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::try_from(format!("{:08x}{n:012x}", self.ids.prefix))
            .expect("hex is a valid header value")
    }
}

fn fastrand_u32() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

pub async fn around_request(
    State(limiter): State<Limiter>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = limiter.request_id(&req);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        request_id = request_id.to_str().unwrap_or_default(),
        method = %method,
        route = %route,
    );
    req.extensions_mut().insert(RequestId(request_id.clone()));

    let mut res = match limiter.in_flight.clone().try_acquire_owned() {
        Ok(permit) => {
            let res =
                tokio::time::timeout(limiter.timeout, next.run(req).instrument(span.clone())).await;
            drop(permit);
            res.unwrap_or_else(|_| ApiError::Timeout.into_response())
        }
        Err(_) => ApiError::Overloaded.into_response(),
    };

    let status = res.status();
    let elapsed = started.elapsed();
    if let Some(cause) = res.extensions().get::<InternalCause>() {
        span.in_scope(
            || tracing::error!(error_id = %cause.error_id, cause = %cause.cause, "request failed"),
        );
    }
    let labels = [
        ("method", method.as_str().to_owned()),
        ("route", route),
        ("status", status.as_str().to_owned()),
    ];
    metrics::counter!("keel_http_requests_total", &labels).increment(1);
    metrics::histogram!("keel_http_request_duration_seconds", &labels[..2])
        .record(elapsed.as_secs_f64());
    if limiter.access_log {
        span.in_scope(|| {
            tracing::info!(
                target: "keel::access",
                status = status.as_u16(),
                latency_us = elapsed.as_micros() as u64,
                "request"
            )
        });
    }
    res.headers_mut().insert(REQUEST_ID.clone(), request_id);
    res
}
