//! One middleware around every request, doing in one pass what a stack of layers would do in
//! several: request id (kept from `x-request-id` when sane, else made), load shedding beyond
//! `max_in_flight`, the request timeout, the request span every log line of the request carries,
//! logging of internal errors under their error id, HTTP metrics and the access log.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_domain::trace::RequestIds;
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
    ids: Arc<RequestIds>,
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

impl Limiter {
    pub fn new(http: &HttpSettings) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(http.max_in_flight)),
            timeout: http.request_timeout,
            access_log: http.access_log,
            metrics: Arc::default(),
            ids: Arc::default(),
        }
    }

    /// The caller's id when sane, else a new one.
    fn request_id(&self, req: &Request) -> HeaderValue {
        if let Some(given) = req.headers().get(&REQUEST_ID)
            && RequestIds::sane(given.as_bytes())
        {
            return given.clone();
        }
        HeaderValue::from_bytes(&self.ids.next()).expect("hex is a valid header value")
    }
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
