//! The gateway's Prometheus metrics, resolved to handles once per route and per upstream server,
//! so that a request costs a few atomic updates rather than label building and registry lookups.

use metrics::{Counter, Gauge, Histogram};

/// Per upstream server.
#[derive(Debug)]
pub struct ServerMetrics {
    pub requests: Counter,
    pub latency: Histogram,
    pub errors_connect: Counter,
    pub errors_timeout: Counter,
    pub errors_broken: Counter,
    /// Responses 5xx from the upstream.
    pub errors_status: Counter,
    pub ejections: Counter,
    pub healthy: Gauge,
}

impl ServerMetrics {
    pub fn new(pool: &str, server: &str) -> Self {
        let labels = [("pool", pool.to_owned()), ("upstream", server.to_owned())];
        let error = |kind: &'static str| metrics::counter!("keel_gateway_upstream_errors_total", "pool" => pool.to_owned(), "upstream" => server.to_owned(), "kind" => kind);
        Self {
            requests: metrics::counter!("keel_gateway_upstream_requests_total", &labels),
            latency: metrics::histogram!("keel_gateway_upstream_duration_seconds", &labels),
            errors_connect: error("connect"),
            errors_timeout: error("timeout"),
            errors_broken: error("broken"),
            errors_status: error("status"),
            ejections: metrics::counter!("keel_gateway_upstream_ejections_total", &labels),
            healthy: metrics::gauge!("keel_gateway_upstream_healthy", &labels),
        }
    }

    pub fn error(&self, kind: &str) {
        match kind {
            "connect" => self.errors_connect.increment(1),
            "timeout" => self.errors_timeout.increment(1),
            "broken" => self.errors_broken.increment(1),
            _ => self.errors_status.increment(1),
        }
    }
}

/// Per route (named by its host and prefix).
#[derive(Debug)]
pub struct RouteMetrics {
    /// By status class: 1xx … 5xx.
    by_class: [Counter; 5],
    pub latency: Histogram,
    pub retries: Counter,
    pub rate_limited: Counter,
    pub cache_hit: Counter,
    pub cache_miss: Counter,
    pub cache_stale: Counter,
    pub cache_revalidated: Counter,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        let class = |c: &'static str| metrics::counter!("keel_gateway_requests_total", "route" => route.to_owned(), "status" => c);
        let cache = |r: &'static str| metrics::counter!("keel_gateway_cache_total", "route" => route.to_owned(), "result" => r);
        Self {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            latency: metrics::histogram!("keel_gateway_request_duration_seconds", "route" => route.to_owned()),
            retries: metrics::counter!("keel_gateway_retries_total", "route" => route.to_owned()),
            rate_limited: metrics::counter!("keel_gateway_rate_limited_total", "route" => route.to_owned()),
            cache_hit: cache("hit"),
            cache_miss: cache("miss"),
            cache_stale: cache("stale"),
            cache_revalidated: cache("revalidated"),
        }
    }

    pub fn record(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].increment(1);
        self.latency.record(seconds);
    }
}
