//! One middleware around every request, doing in one pass what a stack of layers would do in
//! several: request id (kept from `x-request-id` when sane, else made), load shedding beyond
//! `max_in_flight`, the request timeout, the request span every log line of the request carries,
//! logging of internal errors under their error id, HTTP metrics and the access log.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_http::RequestIds;
use metrics::{Counter, Histogram};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::error::InternalCause;
use crate::{ApiError, HttpSettings};

pub use keel_http::REQUEST_ID;

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
        keel_http::request_id::keep_or_make(&self.ids, req.headers())
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

    let mut res = match (
        unsupported_coding(&req),
        limiter.in_flight.clone().try_acquire_owned(),
    ) {
        (Some(coding), _) => ApiError::UnsupportedTransferCoding(coding).into_response(),
        (None, Ok(permit)) => {
            let handled = keel_domain::messaging::trace::scope(traceparent, next.run(req));
            let res = tokio::time::timeout(limiter.timeout, handled.instrument(span.clone())).await;
            drop(permit);
            res.unwrap_or_else(|_| ApiError::Timeout.into_response())
        }
        (None, Err(_)) => ApiError::Overloaded.into_response(),
    };
    if is_plain_text_refusal(&res) {
        res = as_json_refusal(res).await;
    }

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
            );
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
            );
        });
    }
    res.headers_mut().insert(REQUEST_ID.clone(), request_id);
    res
}

/// The transfer codings of a request whose codings are not `chunked` alone. hyper's parser
/// refuses (400) a request whose final coding is not `chunked` (RFC 9112 §6.3) and undoes a
/// final `chunked`, but passes on what precedes it (`gzip, chunked`): the handler would read
/// the still-encoded bytes as the content. RFC 9112 §6.1: 501, as the gateway answers.
fn unsupported_coding(req: &Request) -> Option<String> {
    let mut codings = req
        .headers()
        .get_all(axum::http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
        .peekable();
    codings.peek()?;
    let codings: Vec<&[u8]> = codings.collect();
    match codings.as_slice() {
        [only] if only.eq_ignore_ascii_case(b"chunked") => None,
        _ => Some(
            codings
                .iter()
                .map(|c| String::from_utf8_lossy(c))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    }
}

/// Whether `res` is a refusal in the framework's plain text: keel's handlers answer JSON (or
/// HTML pages), so such a response comes from an axum extractor that no handler wrapped (the
/// hospital console's, for example).
fn is_plain_text_refusal(res: &Response) -> bool {
    (res.status().is_client_error() || res.status().is_server_error())
        && res
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain"))
}

/// A plain-text refusal as keel's JSON error: same status, its text as `error`, a code from the
/// status. The safety net behind the extractors of [`crate::extract`], so that every refusal a
/// client gets from keel has the one shape.
async fn as_json_refusal(res: Response) -> Response {
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let code = keel_http::error::code_for_status(parts.status);
    let body = crate::error::ErrorBody::new(
        code,
        if text.is_empty() {
            parts
                .status
                .canonical_reason()
                .unwrap_or("error")
                .to_lowercase()
        } else {
            text
        },
    );
    parts.headers.remove(axum::http::header::CONTENT_TYPE);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let json = axum::Json(body).into_response();
    let (json_parts, json_body) = json.into_parts();
    parts.headers.extend(json_parts.headers);
    Response::from_parts(parts, json_body)
}
