//! What the cache hands the proxy: a stored answer ([`CachedResponse`], with the gateway's own
//! 304 for a client's `If-None-Match`/`If-Modified-Since`), what a lookup found ([`Lookup`]),
//! and a stored response waiting for the upstream's confirmation ([`Revalidation`]).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{
    AGE, CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::freshness::{Stored, header_date};
use super::key::CacheKey;
use super::{CacheStatus, X_CACHE};

/// A response ready to send: status, headers (with `Age` and [`X_CACHE`] set) and body. The
/// body is empty when the request was HEAD; `Content-Length` still describes the GET body.
#[derive(Clone, Debug)]
pub struct CachedResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl CachedResponse {
    /// The gateway's own 304 when the client's condition says it already holds this response:
    /// `If-None-Match` by weak comparison (`*` matches anything), or, when that is absent,
    /// `If-Modified-Since` against `Last-Modified` (RFC 9110 §13.2.2). `None`: send `self`.
    pub fn not_modified(&self, request_headers: &HeaderMap) -> Option<CachedResponse> {
        if !self.status.is_success() {
            return None;
        }
        let matched = if request_headers.contains_key(IF_NONE_MATCH) {
            if_none_match_matches(request_headers, self.headers.get(ETAG))
        } else if let Some(since) = header_date(request_headers, IF_MODIFIED_SINCE) {
            header_date(&self.headers, LAST_MODIFIED).is_some_and(|modified| modified <= since)
        } else {
            false
        };
        if !matched {
            return None;
        }
        // RFC 9110 §15.4.5: the fields a 200 would have carried that help caches update.
        let mut headers = HeaderMap::new();
        for name in [
            CACHE_CONTROL,
            CONTENT_LOCATION,
            DATE,
            ETAG,
            EXPIRES,
            LAST_MODIFIED,
            VARY,
            AGE,
            X_CACHE,
        ] {
            for value in self.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        Some(CachedResponse {
            status: StatusCode::NOT_MODIFIED,
            headers,
            body: Bytes::new(),
        })
    }

    pub fn into_response(self) -> Response<Bytes> {
        let mut res = Response::new(self.body);
        *res.status_mut() = self.status;
        *res.headers_mut() = self.headers;
        res
    }
}

/// What the cache can do for a request.
#[derive(Debug)]
pub enum Lookup {
    /// Send it (after [`CachedResponse::not_modified`]).
    Fresh(CachedResponse),
    /// Stale within `stale-while-revalidate`: send it. `refresh` is `Some` for one caller at a
    /// time; that caller revalidates in the background while the others keep serving.
    Stale {
        response: CachedResponse,
        refresh: Option<Revalidation>,
    },
    /// A stored response exists but may not be sent without asking the upstream: forward with
    /// [`Revalidation::conditional_headers`]; a 304 goes to
    /// [`WebCache::revalidated`](super::WebCache::revalidated), a 200 to
    /// [`WebCache::store`](super::WebCache::store), a failure to
    /// [`Revalidation::stale_if_error`].
    Revalidate(Revalidation),
    /// Nothing usable stored: forward without the client's `If-None-Match` and
    /// `If-Modified-Since` (so the answer is a storable 200), then
    /// [`WebCache::store`](super::WebCache::store) it and answer the client's condition with
    /// [`CachedResponse::not_modified`].
    Miss,
    /// The request may not use the cache (method, `no-store`): forward, do not store.
    Bypass,
}

/// A stored response that needs the upstream's confirmation. Owned, so it can move into a
/// background task.
#[derive(Debug)]
pub struct Revalidation {
    pub(super) key: CacheKey,
    pub(super) stored: Arc<Stored>,
    pub(super) method: Method,
    /// The request carried `Authorization`: the refreshed response is held to RFC 9111 §3.5 too.
    pub(super) authorized: bool,
    pub(super) conditional: HeaderMap,
}

impl Revalidation {
    /// `If-None-Match` from the stored `ETag` and `If-Modified-Since` from `Last-Modified`, to
    /// insert into the upstream request (replacing the client's own). Empty when the stored
    /// response has no validators: the upstream request is then unconditional.
    pub fn conditional_headers(&self) -> &HeaderMap {
        &self.conditional
    }

    /// The stale response to send when the upstream failed (no answer, or a 500, 502, 503 or
    /// 504), if `stale-if-error` still covers it at `now` (RFC 5861 §4).
    pub fn stale_if_error(&self, now: SystemTime) -> Option<CachedResponse> {
        let stored = &self.stored;
        let age = stored.current_age(now);
        let window = stored.policy.lifetime + stored.policy.stale_if_error;
        (stored.may_serve_stale() && age < window)
            .then(|| stored.response(&self.method, age, CacheStatus::Stale))
    }
}

/// Whether an `If-None-Match` list names `etag`, by weak comparison (RFC 9110 §13.1.2).
pub(super) fn if_none_match_matches(
    request_headers: &HeaderMap,
    etag: Option<&HeaderValue>,
) -> bool {
    let Some(etag) = etag else {
        // `*` means "any current representation", and there is one.
        return request_headers
            .get_all(IF_NONE_MATCH)
            .iter()
            .any(|value| value.as_bytes().trim_ascii() == b"*");
    };
    let ours = opaque_tag(etag.as_bytes());
    for value in request_headers.get_all(IF_NONE_MATCH) {
        let mut rest = value.as_bytes();
        loop {
            rest = rest.trim_ascii_start();
            rest = rest.strip_prefix(b",").unwrap_or(rest).trim_ascii_start();
            if rest.is_empty() {
                break;
            }
            if rest[0] == b'*' {
                return true;
            }
            let tagged = rest.strip_prefix(b"W/").unwrap_or(rest);
            let Some(end) = tagged
                .strip_prefix(b"\"")
                .and_then(|inner| inner.iter().position(|&b| b == b'"'))
            else {
                break;
            };
            if tagged[..end + 2] == *ours {
                return true;
            }
            rest = &tagged[end + 2..];
        }
    }
    false
}

/// An entity tag without its weakness marker, for weak comparison.
pub(super) fn opaque_tag(etag: &[u8]) -> &[u8] {
    let etag = etag.trim_ascii();
    etag.strip_prefix(b"W/").unwrap_or(etag)
}
