//! The gateway's shared HTTP response cache, following RFC 9111 for a shared cache.
//!
//! The proxy drives it in this order for a GET or HEAD on a cached route:
//! [`WebCache::lookup`] first; on [`Lookup::Fresh`] or [`Lookup::Stale`] it answers from the
//! cache (a stale answer may carry a [`Revalidation`] to run in the background); on
//! [`Lookup::Revalidate`] it adds [`Revalidation::conditional_headers`] to the upstream request
//! and hands a 304 to [`WebCache::revalidated`]; on a miss or a 200 it calls
//! [`WebCache::storable`] before buffering the body and [`WebCache::store`] after. Every answer
//! from the cache goes through [`CachedResponse::not_modified`] so a client's own
//! `If-None-Match` gets a 304 from the gateway. Upstream responses are marked with
//! [`CacheStatus::Miss`] or [`CacheStatus::Bypass`].
//!
//! Layout: one moka entry per primary key (host + path-and-query; HEAD shares GET's key),
//! holding up to [`MAX_VARIANTS`] responses selected by their `Vary` fields, newest first.
//! Time is always a parameter, so the freshness rules are tested without sleeping.
//!
//! Parts: `key` (keys and variants), `directives` (`Cache-Control`), `freshness` (what may be
//! stored and for how long, HTTP dates), `store` ([`WebCache`]: storage, eviction, purges),
//! `revalidate` (answers, 304s, revalidation), `phase` (the cache on the request path).

use std::time::Duration;

use http::header::{AUTHORIZATION, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

mod directives;
mod freshness;
mod key;
pub(crate) mod phase;
mod revalidate;
mod store;
#[cfg(test)]
mod tests;

pub use revalidate::{CachedResponse, Lookup, Revalidation};
pub use store::WebCache;

use key::CacheKey;

/// The response header that tells clients (and our tests) how the cache answered.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Responses kept per primary key. `Vary: Accept-Encoding` needs a few (identity, gzip, br);
/// a field with many values (`Vary: User-Agent`) would otherwise grow one key without limit.
pub const MAX_VARIANTS: usize = 4;

/// Status codes RFC 9110 §15.1 calls heuristically cacheable, narrowed to those the gateway
/// stores (no 206: the cache does not assemble ranges).
const STORABLE_STATUSES: [u16; 7] = [200, 203, 204, 300, 301, 404, 410];

/// How long a stale entry with validators is kept past its usefulness window: a conditional
/// request still saves sending the body. Memory pressure evicts it sooner.
const VALIDATOR_GRACE: Duration = Duration::from_secs(3600);

/// Slack added to moka's expiry so an entry outlives the window the freshness rules use.
const EXPIRY_SLACK: Duration = Duration::from_secs(60);

/// After this long a background refresh claimed under `stale-while-revalidate` is presumed
/// lost (the upstream call failed) and the next caller may claim one.
const REFRESH_CLAIM_SECS: u64 = 30;

/// Per-response bookkeeping charged to the memory bound on top of body and header bytes.
const RESPONSE_OVERHEAD: usize = 128;

/// RFC 9111 §1.2.2: delta-seconds too large to represent are sent as 2^31.
const MAX_DELTA_SECONDS: u64 = 1 << 31;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// How a response was produced, as sent in the [`X_CACHE`] header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Fresh from the cache.
    Hit,
    /// Served stale, under `stale-while-revalidate` or `stale-if-error`.
    Stale,
    /// From the cache after the upstream confirmed it with a 304.
    Revalidated,
    /// From the upstream; the route is cached but nothing usable was stored.
    Miss,
    /// From the upstream; the request was not eligible for the cache.
    Bypass,
}

impl CacheStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Stale => "STALE",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
        }
    }

    pub const fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }

    /// Sets the [`X_CACHE`] header, replacing any the upstream sent.
    pub fn mark(self, headers: &mut HeaderMap) {
        headers.insert(X_CACHE, self.header_value());
    }
}

/// Why a response was not stored. Returned rather than logged so the proxy decides the level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uncacheable {
    /// Only responses to GET are stored (HEAD is served from GET's entry).
    Method,
    /// The request said `Cache-Control: no-store`.
    RequestNoStore,
    /// Not one of the storable status codes.
    Status,
    /// The response said `no-store`.
    NoStore,
    /// The response said `private` (also the field-qualified form, which we do not split).
    Private,
    /// A `Set-Cookie` belongs to one client, never to a shared cache.
    SetCookie,
    /// `Vary: *` or an unparsable field name: no later request could be matched to it.
    Vary,
    /// The request carried `Authorization` and the response said none of `public`, `s-maxage`,
    /// `must-revalidate` (RFC 9111 §3.5).
    Authorization,
    /// Neither `s-maxage`, `max-age`, `Expires` nor `no-cache`: the gateway stores only
    /// explicit freshness.
    NoFreshness,
    /// It would always need revalidation but has no `ETag` or `Last-Modified` to do it with.
    NoValidators,
    /// Larger than the per-object limit.
    TooLarge,
}

/// The parts of a client request the cache reads, borrowed from the proxy's request.
#[derive(Debug)]
pub struct CacheRequest<'a> {
    method: &'a Method,
    headers: &'a HeaderMap,
    key: CacheKey,
}

impl<'a> CacheRequest<'a> {
    /// Pass the request as the client sent it (before rewriting for the upstream): the host is
    /// the URI's authority (HTTP/2, absolute-form) or else the `Host` header, lowercased.
    pub fn new(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        let host = match uri.host() {
            Some(host) => match uri.port_u16() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            },
            None => headers
                .get(HOST)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        };
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        CacheRequest {
            method,
            headers,
            key: CacheKey::new(&host, path_and_query),
        }
    }

    fn is_get_or_head(&self) -> bool {
        *self.method == Method::GET || *self.method == Method::HEAD
    }

    fn authorized(&self) -> bool {
        self.headers.contains_key(AUTHORIZATION)
    }
}
