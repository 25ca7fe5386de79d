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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_LOCATION, CONTENT_RANGE, DATE, ETAG, EXPIRES, HOST, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, LOCATION, PRAGMA, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VARY,
};
use http::response::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri};
use moka::Expiry;
use moka::ops::compute::Op;

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

/// The primary cache key. The method is not part of it: only GET responses are stored and HEAD
/// reads them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    host: Box<str>,
    path_and_query: Box<str>,
}

impl CacheKey {
    fn new(host: &str, path_and_query: &str) -> Self {
        CacheKey {
            host: host.to_ascii_lowercase().into(),
            path_and_query: path_and_query.into(),
        }
    }

    /// `example.com` matches a key stored for `example.com:8443`, so purges need not know ports.
    fn host_matches(&self, host: &str) -> bool {
        *self.host == *host || host_without_port(&self.host) == host
    }
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.split_once(':').map_or(host, |(name, _)| name)
}

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
    /// [`Revalidation::conditional_headers`]; a 304 goes to [`WebCache::revalidated`], a 200
    /// to [`WebCache::store`], a failure to [`Revalidation::stale_if_error`].
    Revalidate(Revalidation),
    /// Nothing usable stored: forward without the client's `If-None-Match` and
    /// `If-Modified-Since` (so the answer is a storable 200), then [`WebCache::store`] it and
    /// answer the client's condition with [`CachedResponse::not_modified`].
    Miss,
    /// The request may not use the cache (method, `no-store`): forward, do not store.
    Bypass,
}

/// A stored response that needs the upstream's confirmation. Owned, so it can move into a
/// background task.
#[derive(Debug)]
pub struct Revalidation {
    key: CacheKey,
    stored: Arc<Stored>,
    method: Method,
    /// The request carried `Authorization`: the refreshed response is held to RFC 9111 §3.5 too.
    authorized: bool,
    conditional: HeaderMap,
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

/// The shared response cache. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct WebCache {
    entries: moka::sync::Cache<CacheKey, Arc<Variants>>,
    max_object_bytes: usize,
}

impl WebCache {
    /// At most `max_bytes` of bodies plus headers in total (moka evicts by weight), and no
    /// single response larger than `max_object_bytes`.
    pub fn new(max_bytes: u64, max_object_bytes: usize) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &CacheKey, variants: &Arc<Variants>| {
                let key_bytes = key.host.len() + key.path_and_query.len();
                u32::try_from(variants.weight + key_bytes).unwrap_or(u32::MAX)
            })
            .expire_after(KeepFor)
            .build();
        WebCache {
            entries,
            max_object_bytes,
        }
    }

    pub fn max_object_bytes(&self) -> usize {
        self.max_object_bytes
    }

    /// What to do with `req` at `now`. Only GET and HEAD are looked up.
    pub fn lookup(&self, req: &CacheRequest<'_>, now: SystemTime) -> Lookup {
        if !req.is_get_or_head() {
            return Lookup::Bypass;
        }
        let wants = Directives::from_request(req.headers);
        if wants.no_store {
            return Lookup::Bypass;
        }
        let Some(variants) = self.entries.get(&req.key) else {
            return Lookup::Miss;
        };
        let Some(stored) = variants.select(req.headers) else {
            return Lookup::Miss;
        };
        if req.authorized() && !stored.policy.shareable_with_auth {
            return Lookup::Miss;
        }
        let age = stored.current_age(now);
        let lifetime = stored.policy.lifetime;
        let client_revalidates = wants.no_cache
            || wants
                .max_age
                .is_some_and(|max| max == 0 || age.as_secs() > max)
            || wants
                .min_fresh
                .is_some_and(|min| lifetime.saturating_sub(age).as_secs() < min);
        if age < lifetime && !stored.policy.no_cache && !client_revalidates {
            return Lookup::Fresh(stored.response(req.method, age, CacheStatus::Hit));
        }
        let stale_window = lifetime + stored.policy.stale_while_revalidate;
        let serve_stale = !client_revalidates && stored.may_serve_stale() && age < stale_window;
        let response = serve_stale.then(|| stored.response(req.method, age, CacheStatus::Stale));
        let claimed = serve_stale && stored.claim_refresh(now);
        let revalidation = Revalidation {
            key: req.key.clone(),
            conditional: stored.conditional_headers(),
            stored,
            method: req.method.clone(),
            authorized: req.authorized(),
        };
        match response {
            Some(response) => Lookup::Stale {
                response,
                refresh: claimed.then_some(revalidation),
            },
            None => Lookup::Revalidate(revalidation),
        }
    }

    /// Whether a response with these headers may be stored, checked before buffering its body
    /// (a `Content-Length` over the limit fails here). [`WebCache::store`] checks again.
    /// `received` is when the response head arrived.
    pub fn storable(
        &self,
        req: &CacheRequest<'_>,
        res: &Parts,
        received: SystemTime,
    ) -> Result<(), Uncacheable> {
        admit_request(req)?;
        response_policy(res.status, &res.headers, req.authorized(), received)?;
        vary_fields(&res.headers)?;
        let declared = res
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|len| len > self.max_object_bytes) {
            return Err(Uncacheable::TooLarge);
        }
        Ok(())
    }

    /// Stores the upstream's answer to `req`, replacing the variant with the same `Vary`
    /// values. `sent` is when the upstream request left, `received` when the response head
    /// arrived: their gap counts toward the response's age (RFC 9111 §4.2.3).
    pub fn store(
        &self,
        req: &CacheRequest<'_>,
        res: &Parts,
        body: Bytes,
        sent: SystemTime,
        received: SystemTime,
    ) -> Result<(), Uncacheable> {
        admit_request(req)?;
        let policy = response_policy(res.status, &res.headers, req.authorized(), received)?;
        let vary = vary_fields(&res.headers)?
            .into_iter()
            .map(|name| {
                let value = vary_value(req.headers, &name);
                (name, value)
            })
            .collect();
        let headers = res.headers.clone();
        let stored = Stored::new(res.status, headers, body, vary, policy, sent, received);
        if stored.size > self.max_object_bytes {
            return Err(Uncacheable::TooLarge);
        }
        self.insert(req.key.clone(), Arc::new(stored), None);
        Ok(())
    }

    /// Applies the upstream's 304 to the stored response: its header fields replace the stored
    /// ones (RFC 9111 §3.2, except `Content-Length` and the body's encoding) and freshness
    /// starts over. Returns the response to send, marked [`CacheStatus::Revalidated`].
    ///
    /// `None` when `res` is not a 304, or its `ETag` names another representation (the stale
    /// entry is dropped): forward the request again without validators. A 200 goes to
    /// [`WebCache::store`] instead.
    pub fn revalidated(
        &self,
        revalidation: &Revalidation,
        res: &Parts,
        sent: SystemTime,
        received: SystemTime,
    ) -> Option<CachedResponse> {
        if res.status != StatusCode::NOT_MODIFIED {
            return None;
        }
        let old = &revalidation.stored;
        if let (Some(new_tag), Some(old_tag)) = (res.headers.get(ETAG), old.headers.get(ETAG))
            && opaque_tag(new_tag.as_bytes()) != opaque_tag(old_tag.as_bytes())
        {
            self.remove_variant(&revalidation.key, old);
            return None;
        }
        let mut headers = old.headers.clone();
        for name in res.headers.keys() {
            if !updatable_from_304(name) {
                continue;
            }
            headers.remove(name);
            for value in res.headers.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        // The merged response meets the same rules as a new one: a 304 may turn `private`.
        let policy = response_policy(old.status, &headers, revalidation.authorized, received);
        let admitted = policy.is_ok();
        let stored = Arc::new(Stored::new(
            old.status,
            headers,
            old.body.clone(),
            old.vary.clone(),
            policy.unwrap_or_default(),
            sent,
            received,
        ));
        if admitted && stored.size <= self.max_object_bytes {
            self.insert(revalidation.key.clone(), stored.clone(), Some(old));
        } else {
            self.remove_variant(&revalidation.key, old);
        }
        let age = stored.current_age(received);
        Some(stored.response(&revalidation.method, age, CacheStatus::Revalidated))
    }

    /// RFC 9111 §4.4: a successful unsafe request (POST, PUT, DELETE, ...) drops the stored
    /// responses for its URI and for the same-host `Location` and `Content-Location`. Returns
    /// the number of keys removed.
    pub fn invalidate_after_unsafe(&self, req: &CacheRequest<'_>, res: &Parts) -> usize {
        let safe = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE];
        if safe.contains(req.method) || !(res.status.is_success() || res.status.is_redirection()) {
            return 0;
        }
        let mut keys = vec![req.key.clone()];
        for name in [LOCATION, CONTENT_LOCATION] {
            let Some(uri) = res
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok()?.parse::<Uri>().ok())
            else {
                continue;
            };
            let same_host = uri.host().is_none_or(|host| req.key.host_matches(host));
            if same_host && let Some(pq) = uri.path_and_query() {
                keys.push(CacheKey::new(&req.key.host, pq.as_str()));
            }
        }
        keys.iter()
            .filter(|key| self.entries.remove(*key).is_some())
            .count()
    }

    /// Removes every key whose path-and-query starts with `path_prefix`, on `host` (port
    /// optional) or on all hosts. Returns the number of keys removed (all variants of a URL
    /// count as one).
    pub fn purge(&self, path_prefix: &str, host: Option<&str>) -> usize {
        let host = host.map(str::to_ascii_lowercase);
        let doomed: Vec<CacheKey> = self
            .entries
            .iter()
            .filter(|(key, _)| {
                key.path_and_query.starts_with(path_prefix)
                    && host.as_deref().is_none_or(|host| key.host_matches(host))
            })
            .map(|(key, _)| CacheKey::clone(&key))
            .collect();
        doomed
            .iter()
            .filter(|key| self.entries.remove(*key).is_some())
            .count()
    }

    /// Removes one URL (all its variants). `true` if it was stored.
    pub fn purge_exact(&self, host: &str, path_and_query: &str) -> bool {
        self.entries
            .remove(&CacheKey::new(host, path_and_query))
            .is_some()
    }

    /// Number of stored URLs. Approximate: moka updates it in its housekeeping.
    pub fn len(&self) -> u64 {
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged against `max_bytes`. Approximate, like [`WebCache::len`].
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Puts `stored` first among the key's variants, replacing the one with the same `Vary`
    /// values. With `replacing`, does nothing if that variant is no longer the one revalidated
    /// (a concurrent 200 already stored something newer).
    fn insert(&self, key: CacheKey, stored: Arc<Stored>, replacing: Option<&Arc<Stored>>) {
        self.entries.entry(key).and_compute_with(|current| {
            let current = current.map(|entry| entry.into_value());
            let existing: &[Arc<Stored>] = current.as_ref().map_or(&[], |v| v.list.as_slice());
            let same_variant = existing.iter().find(|v| v.vary == stored.vary);
            if let (Some(replacing), Some(same)) = (replacing, same_variant)
                && !Arc::ptr_eq(replacing, same)
            {
                return Op::Nop;
            }
            let mut list = vec![stored.clone()];
            list.extend(
                existing
                    .iter()
                    .filter(|v| v.vary != stored.vary)
                    .take(MAX_VARIANTS - 1)
                    .cloned(),
            );
            Op::Put(Arc::new(Variants::new(list)))
        });
    }

    fn remove_variant(&self, key: &CacheKey, stored: &Arc<Stored>) {
        self.entries.entry_by_ref(key).and_compute_with(|current| {
            let Some(current) = current else {
                return Op::Nop;
            };
            let list: Vec<_> = current
                .value()
                .list
                .iter()
                .filter(|v| !Arc::ptr_eq(v, stored))
                .cloned()
                .collect();
            match list.len() {
                0 => Op::Remove,
                n if n == current.value().list.len() => Op::Nop,
                _ => Op::Put(Arc::new(Variants::new(list))),
            }
        });
    }
}

/// The request-side rules for storing: GET only, and not when the request said `no-store`.
fn admit_request(req: &CacheRequest<'_>) -> Result<(), Uncacheable> {
    if *req.method != Method::GET {
        return Err(Uncacheable::Method);
    }
    if Directives::from_request(req.headers).no_store {
        return Err(Uncacheable::RequestNoStore);
    }
    Ok(())
}

/// The response-side rules for storing, and what the stored response may be used for.
fn response_policy(
    status: StatusCode,
    headers: &HeaderMap,
    authorized: bool,
    received: SystemTime,
) -> Result<Policy, Uncacheable> {
    if !STORABLE_STATUSES.contains(&status.as_u16()) {
        return Err(Uncacheable::Status);
    }
    let cc = Directives::parse(headers);
    if cc.no_store {
        return Err(Uncacheable::NoStore);
    }
    if cc.private {
        return Err(Uncacheable::Private);
    }
    if headers.contains_key(SET_COOKIE) {
        return Err(Uncacheable::SetCookie);
    }
    let shareable_with_auth = cc.public || cc.s_maxage.is_some() || cc.must_revalidate;
    if authorized && !shareable_with_auth {
        return Err(Uncacheable::Authorization);
    }
    let lifetime = match freshness_lifetime(&cc, headers, received) {
        Some(lifetime) => lifetime,
        None if cc.no_cache => Duration::ZERO,
        None => return Err(Uncacheable::NoFreshness),
    };
    let has_validators = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
    if (cc.no_cache || lifetime.is_zero()) && !has_validators {
        return Err(Uncacheable::NoValidators);
    }
    Ok(Policy {
        lifetime,
        no_cache: cc.no_cache,
        // s-maxage implies proxy-revalidate (RFC 9111 §5.2.2.10), but the explicit
        // stale-while-revalidate / stale-if-error grants win: `s-maxage=60,
        // stale-while-revalidate=30` is the common CDN header and means exactly that.
        no_stale: cc.must_revalidate || cc.proxy_revalidate,
        shareable_with_auth,
        stale_while_revalidate: Duration::from_secs(cc.stale_while_revalidate.unwrap_or(0)),
        stale_if_error: Duration::from_secs(cc.stale_if_error.unwrap_or(0)),
    })
}

/// RFC 9111 §4.2.1: `s-maxage` over `max-age` over `Expires` minus `Date`. An unparsable
/// `Expires` means already expired; a missing `Date` is the time of receipt (RFC 9110 §6.6.1).
fn freshness_lifetime(
    cc: &Directives,
    headers: &HeaderMap,
    received: SystemTime,
) -> Option<Duration> {
    if let Some(secs) = cc.s_maxage.or(cc.max_age) {
        return Some(Duration::from_secs(secs));
    }
    let expires = headers.get(EXPIRES)?;
    let Some(expires) = expires.to_str().ok().and_then(parse_http_date) else {
        return Some(Duration::ZERO);
    };
    let date = header_date(headers, DATE).unwrap_or(received);
    Some(expires.duration_since(date).unwrap_or_default())
}

/// The field names in `Vary`, lowercased by `HeaderName`.
fn vary_fields(headers: &HeaderMap) -> Result<Vec<HeaderName>, Uncacheable> {
    let mut names = Vec::new();
    for value in headers.get_all(VARY) {
        for field in value.as_bytes().split(|&b| b == b',') {
            let field = field.trim_ascii();
            if field.is_empty() {
                continue;
            }
            if field == b"*" {
                return Err(Uncacheable::Vary);
            }
            let name = HeaderName::from_bytes(field).map_err(|_| Uncacheable::Vary)?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Ok(names)
}

/// A request's value of a `Vary` field, normalised so `gzip, br` and `gzip,br` select the same
/// variant. `None` when absent, which only matches an absent field.
fn vary_value(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let mut out = Vec::new();
    for piece in values.flat_map(|value| value.as_bytes().split(|&b| b == b',')) {
        if !out.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(piece.trim_ascii());
    }
    Some(out)
}

/// Fields a 304 may not overwrite: connection-level fields, and those describing the stored
/// body's bytes, which the 304 did not resend.
fn updatable_from_304(name: &HeaderName) -> bool {
    !is_hop_by_hop(name)
        && ![CONTENT_LENGTH, CONTENT_ENCODING, CONTENT_RANGE, X_CACHE].contains(name)
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ]
    .contains(name)
}

/// The freshness-relevant facts about a stored response, derived from its header fields.
#[derive(Clone, Debug, Default)]
struct Policy {
    lifetime: Duration,
    /// `no-cache`: stored, but every use needs the upstream's confirmation.
    no_cache: bool,
    /// `must-revalidate` or `proxy-revalidate`: never served stale.
    no_stale: bool,
    /// `public`, `s-maxage` or `must-revalidate`: may answer requests with `Authorization`.
    shareable_with_auth: bool,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
}

/// One stored response.
#[derive(Debug)]
struct Stored {
    status: StatusCode,
    /// As received, minus hop-by-hop fields and `Age`, with `Content-Length` set to the body's.
    headers: HeaderMap,
    body: Bytes,
    /// The `Vary` field names and the storing request's values of them.
    vary: Vec<(HeaderName, Option<Vec<u8>>)>,
    policy: Policy,
    response_time: SystemTime,
    /// RFC 9111 §4.2.3: the age when received, from `Date`, `Age` and the round trip.
    corrected_initial_age: Duration,
    /// Body plus header bytes, compared with `max_object_bytes`.
    size: usize,
    /// How long past storing this response is still of any use; drives moka's expiry.
    keep_for: Duration,
    /// Unix seconds when a `stale-while-revalidate` refresh was handed out, 0 if none. A stored
    /// response is replaced, never mutated, after a refresh, so the claim resets with it.
    refresh_claimed_at: AtomicU64,
}

impl Stored {
    fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        vary: Vec<(HeaderName, Option<Vec<u8>>)>,
        policy: Policy,
        sent: SystemTime,
        received: SystemTime,
    ) -> Self {
        let age_value = headers
            .get(AGE)
            .and_then(|value| value.to_str().ok())
            .map_or(0, |text| delta_seconds(Some(text)));
        let date = header_date(&headers, DATE).unwrap_or(received);
        let apparent_age = received.duration_since(date).unwrap_or_default();
        let response_delay = received.duration_since(sent).unwrap_or_default();
        let corrected_initial_age =
            apparent_age.max(Duration::from_secs(age_value) + response_delay);

        let connection_named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
            .collect();
        for name in connection_named {
            headers.remove(name);
        }
        let stripped: Vec<HeaderName> = headers
            .keys()
            .filter(|name| is_hop_by_hop(name) || **name == AGE || **name == X_CACHE)
            .cloned()
            .collect();
        for name in stripped {
            headers.remove(name);
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));

        let header_bytes: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        let mut useful = policy.lifetime.saturating_sub(corrected_initial_age);
        if !policy.no_stale {
            useful += policy.stale_while_revalidate.max(policy.stale_if_error);
        }
        if headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED) {
            useful += VALIDATOR_GRACE;
        }
        Stored {
            status,
            size: body.len() + header_bytes,
            headers,
            body,
            vary,
            policy,
            response_time: received,
            corrected_initial_age,
            keep_for: useful + EXPIRY_SLACK,
            refresh_claimed_at: AtomicU64::new(0),
        }
    }

    fn weight(&self) -> usize {
        let vary_bytes: usize = self
            .vary
            .iter()
            .map(|(name, value)| name.as_str().len() + value.as_ref().map_or(0, Vec::len))
            .sum();
        self.size + vary_bytes + RESPONSE_OVERHEAD
    }

    fn current_age(&self, now: SystemTime) -> Duration {
        let resident_time = now.duration_since(self.response_time).unwrap_or_default();
        self.corrected_initial_age + resident_time
    }

    fn may_serve_stale(&self) -> bool {
        !self.policy.no_cache && !self.policy.no_stale
    }

    fn matches(&self, request_headers: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| vary_value(request_headers, name) == *value)
    }

    fn conditional_headers(&self) -> HeaderMap {
        let mut conditional = HeaderMap::new();
        if let Some(etag) = self.headers.get(ETAG) {
            conditional.insert(IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = self.headers.get(LAST_MODIFIED) {
            conditional.insert(IF_MODIFIED_SINCE, modified.clone());
        }
        conditional
    }

    /// True for the one caller allowed to start a background refresh now.
    fn claim_refresh(&self, now: SystemTime) -> bool {
        let now = unix_seconds(now).max(1);
        let previous = self.refresh_claimed_at.load(Ordering::Acquire);
        if previous != 0 && now < previous + REFRESH_CLAIM_SECS {
            return false;
        }
        self.refresh_claimed_at
            .compare_exchange(previous, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn response(&self, method: &Method, age: Duration, status: CacheStatus) -> CachedResponse {
        let mut headers = self.headers.clone();
        headers.insert(AGE, HeaderValue::from(age.as_secs().min(MAX_DELTA_SECONDS)));
        status.mark(&mut headers);
        let body = if *method == Method::HEAD {
            Bytes::new()
        } else {
            self.body.clone()
        };
        CachedResponse {
            status: self.status,
            headers,
            body,
        }
    }
}

/// The stored responses of one primary key, newest first.
#[derive(Debug)]
struct Variants {
    list: Vec<Arc<Stored>>,
    weight: usize,
    keep_for: Duration,
}

impl Variants {
    fn new(list: Vec<Arc<Stored>>) -> Self {
        let weight = list.iter().map(|stored| stored.weight()).sum();
        let newest = list
            .first()
            .map_or(UNIX_EPOCH, |stored| stored.response_time);
        // Older variants' windows are measured from the newest's store time, the moment moka
        // sees this value.
        let keep_for = list
            .iter()
            .map(|stored| {
                let until = stored.response_time + stored.keep_for;
                until.duration_since(newest).unwrap_or_default()
            })
            .max()
            .unwrap_or_default();
        Variants {
            list,
            weight,
            keep_for,
        }
    }

    /// RFC 9111 §4.1: the newest stored response whose `Vary` values match the request.
    fn select(&self, request_headers: &HeaderMap) -> Option<Arc<Stored>> {
        self.list
            .iter()
            .find(|stored| stored.matches(request_headers))
            .cloned()
    }
}

/// Drops keys once no stored variant can be used any more, rather than waiting for the
/// memory bound to push them out.
struct KeepFor;

impl Expiry<CacheKey, Arc<Variants>> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Variants>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.keep_for)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<Variants>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep_for)
    }
}

/// The `Cache-Control` directives the cache acts on, from either side.
#[derive(Debug, Default)]
struct Directives {
    no_store: bool,
    no_cache: bool,
    private: bool,
    public: bool,
    must_revalidate: bool,
    proxy_revalidate: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
    min_fresh: Option<u64>,
    stale_while_revalidate: Option<u64>,
    stale_if_error: Option<u64>,
}

impl Directives {
    /// Names are case-insensitive; arguments may be quoted. A repeated delta-seconds directive
    /// keeps its smallest value and an invalid one counts as 0, so doubt means stale (RFC 9111
    /// §4.2.1). The field-qualified `no-cache="..."` and `private="..."` act unqualified.
    fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Directives::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let text = String::from_utf8_lossy(value.as_bytes());
            for (name, arg) in split_directives(&text) {
                let seconds = || delta_seconds(arg);
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "max-age" => keep_min(&mut cc.max_age, seconds()),
                    "s-maxage" => keep_min(&mut cc.s_maxage, seconds()),
                    "min-fresh" => keep_min(&mut cc.min_fresh, seconds()),
                    "stale-while-revalidate" => {
                        keep_min(&mut cc.stale_while_revalidate, seconds());
                    }
                    "stale-if-error" => keep_min(&mut cc.stale_if_error, seconds()),
                    _ => {}
                }
            }
        }
        cc
    }

    /// Request directives; `Pragma: no-cache` counts when there is no `Cache-Control` (RFC 9111
    /// §5.4, for HTTP/1.0 clients).
    fn from_request(headers: &HeaderMap) -> Self {
        let mut cc = Directives::parse(headers);
        if !headers.contains_key(CACHE_CONTROL) {
            cc.no_cache |= headers.get_all(PRAGMA).iter().any(|value| {
                value
                    .as_bytes()
                    .split(|&b| b == b',')
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"no-cache"))
            });
        }
        cc
    }
}

fn keep_min(slot: &mut Option<u64>, value: u64) {
    *slot = Some(slot.map_or(value, |old| old.min(value)));
}

/// Splits a `Cache-Control` value at commas outside quoted strings, into names and unquoted
/// arguments.
fn split_directives(text: &str) -> Vec<(&str, Option<&str>)> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (at, ch) in text.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
        .into_iter()
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once('=') {
            Some((name, arg)) => {
                let arg = arg.trim();
                let arg = arg
                    .strip_prefix('"')
                    .and_then(|a| a.strip_suffix('"'))
                    .unwrap_or(arg);
                (name.trim(), Some(arg))
            }
            None => (item, None),
        })
        .collect()
}

/// RFC 9111 §1.2.2 delta-seconds: digits only; too large saturates at 2^31; missing or
/// malformed is 0.
fn delta_seconds(arg: Option<&str>) -> u64 {
    let Some(arg) = arg.map(str::trim) else {
        return 0;
    };
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    arg.parse::<u64>()
        .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS))
}

/// Whether an `If-None-Match` list names `etag`, by weak comparison (RFC 9110 §13.1.2).
fn if_none_match_matches(request_headers: &HeaderMap, etag: Option<&HeaderValue>) -> bool {
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
fn opaque_tag(etag: &[u8]) -> &[u8] {
    let etag = etag.trim_ascii();
    etag.strip_prefix(b"W/").unwrap_or(etag)
}

fn header_date(headers: &HeaderMap, name: HeaderName) -> Option<SystemTime> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_http_date)
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Parses an HTTP-date in any of RFC 9110 §5.6.7's three forms: IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime
/// (`Sun Nov  6 08:49:37 1994`). Written here rather than taken from a crate: it is short, and
/// the workspace avoids small helper crates. Dates before 1970 are rejected.
fn parse_http_date(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (year, month, day, time) = if let Some((_, rest)) = text.split_once(',') {
        let parts: Vec<&str> = rest.split_ascii_whitespace().collect();
        match parts.as_slice() {
            [day, month, year, time, "GMT"] if year.len() == 4 => (
                year.parse().ok()?,
                month_number(month)?,
                day.parse().ok()?,
                *time,
            ),
            [date, time, "GMT"] => {
                let mut pieces = date.split('-');
                let (day, month, year) = (pieces.next()?, pieces.next()?, pieces.next()?);
                if pieces.next().is_some() || year.len() != 2 {
                    return None;
                }
                // RFC 9110 §5.6.7 wants years over 50 years ahead read as the past century;
                // with a 1970 floor, 70..99 is the 1900s.
                let year: i64 = year.parse().ok()?;
                let year = if year >= 70 { 1900 + year } else { 2000 + year };
                (year, month_number(month)?, day.parse().ok()?, *time)
            }
            _ => return None,
        }
    } else {
        let parts: Vec<&str> = text.split_ascii_whitespace().collect();
        match parts.as_slice() {
            [_weekday, month, day, time, year] if year.len() == 4 => (
                year.parse().ok()?,
                month_number(month)?,
                day.parse().ok()?,
                *time,
            ),
            _ => return None,
        }
    };
    let mut clock = time.split(':').map(|piece| {
        (piece.len() == 2)
            .then(|| piece.parse::<u64>().ok())
            .flatten()
    });
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    if clock.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if year < 1970 || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(seconds))
}

fn month_number(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let index = MONTHS.iter().position(|month| *month == name)?;
    u32::try_from(index + 1).ok()
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tue, 01 Oct 2024 12:00:00 GMT.
    const BASE_UNIX: u64 = 1_727_784_000;
    const BASE_DATE: &str = "Tue, 01 Oct 2024 12:00:00 GMT";

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(BASE_UNIX + seconds)
    }

    struct Req {
        method: Method,
        uri: Uri,
        headers: HeaderMap,
    }

    impl Req {
        fn new(method: Method, uri: &str, headers: &[(&str, &str)]) -> Self {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            if !map.contains_key(HOST) {
                map.insert(HOST, HeaderValue::from_static("example.com"));
            }
            Req {
                method,
                uri: uri.parse().unwrap(),
                headers: map,
            }
        }

        fn view(&self) -> CacheRequest<'_> {
            CacheRequest::new(&self.method, &self.uri, &self.headers)
        }
    }

    fn get(uri: &str) -> Req {
        Req::new(Method::GET, uri, &[])
    }

    fn get_with(uri: &str, headers: &[(&str, &str)]) -> Req {
        Req::new(Method::GET, uri, headers)
    }

    fn res(status: u16, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn cache() -> WebCache {
        WebCache::new(1 << 20, 64 * 1024)
    }

    /// Stores a response received at `received` with no round-trip delay.
    fn store_at(
        cache: &WebCache,
        req: &Req,
        res: &Parts,
        body: &'static str,
        received: SystemTime,
    ) -> Result<(), Uncacheable> {
        cache.store(
            &req.view(),
            res,
            Bytes::from_static(body.as_bytes()),
            received,
            received,
        )
    }

    fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        headers.get(name).map(|value| value.to_str().unwrap())
    }

    fn expect_fresh(lookup: Lookup) -> CachedResponse {
        match lookup {
            Lookup::Fresh(response) => response,
            other => panic!("expected a fresh hit, got {other:?}"),
        }
    }

    fn expect_revalidate(lookup: Lookup) -> Revalidation {
        match lookup {
            Lookup::Revalidate(revalidation) => revalidation,
            other => panic!("expected a revalidation, got {other:?}"),
        }
    }

    #[test]
    fn a_fresh_response_is_served_with_age_and_hit_marker() {
        let cache = cache();
        let req = get("/a?x=1");
        let upstream = res(200, &[("cache-control", "max-age=60"), ("date", BASE_DATE)]);
        store_at(&cache, &req, &upstream, "hello", at(0)).unwrap();

        let hit = expect_fresh(cache.lookup(&req.view(), at(10)));
        assert_eq!(hit.status, StatusCode::OK);
        assert_eq!(hit.body, "hello");
        assert_eq!(header(&hit.headers, "age"), Some("10"));
        assert_eq!(header(&hit.headers, "x-cache"), Some("HIT"));
        assert_eq!(header(&hit.headers, "content-length"), Some("5"));
    }

    #[test]
    fn the_key_is_host_plus_path_and_query() {
        let cache = cache();
        let upstream = res(200, &[("cache-control", "max-age=60")]);
        store_at(&cache, &get("/a?x=1"), &upstream, "one", at(0)).unwrap();

        assert!(matches!(
            cache.lookup(&get("/a?x=2").view(), at(1)),
            Lookup::Miss
        ));
        assert!(matches!(
            cache.lookup(&get("/a").view(), at(1)),
            Lookup::Miss
        ));
        let other_host = get_with("/a?x=1", &[("host", "other.example")]);
        assert!(matches!(
            cache.lookup(&other_host.view(), at(1)),
            Lookup::Miss
        ));
        // The Host header is case-insensitive; an absolute URI's authority wins over it.
        let upper = get_with("/a?x=1", &[("host", "EXAMPLE.com")]);
        expect_fresh(cache.lookup(&upper.view(), at(1)));
        let absolute = get_with("http://example.com/a?x=1", &[("host", "ignored.example")]);
        expect_fresh(cache.lookup(&absolute.view(), at(1)));
    }

    #[test]
    fn head_is_served_from_the_get_entry_without_a_body() {
        let cache = cache();
        let upstream = res(200, &[("cache-control", "max-age=60")]);
        store_at(&cache, &get("/doc"), &upstream, "body bytes", at(0)).unwrap();

        let head = Req::new(Method::HEAD, "/doc", &[]);
        let hit = expect_fresh(cache.lookup(&head.view(), at(1)));
        assert!(hit.body.is_empty());
        assert_eq!(header(&hit.headers, "content-length"), Some("10"));

        // A HEAD response has no body to serve a later GET with.
        let other = Req::new(Method::HEAD, "/other", &[]);
        assert_eq!(
            store_at(&cache, &other, &upstream, "", at(0)),
            Err(Uncacheable::Method)
        );
        assert!(matches!(
            cache.lookup(&get("/other").view(), at(1)),
            Lookup::Miss
        ));
    }

    #[test]
    fn only_get_and_head_use_the_cache() {
        let cache = cache();
        let upstream = res(200, &[("cache-control", "max-age=60")]);
        store_at(&cache, &get("/a"), &upstream, "x", at(0)).unwrap();
        let post = Req::new(Method::POST, "/a", &[]);
        assert!(matches!(cache.lookup(&post.view(), at(1)), Lookup::Bypass));
        assert_eq!(
            store_at(&cache, &post, &upstream, "x", at(0)),
            Err(Uncacheable::Method)
        );
    }

    #[test]
    fn upstream_age_counts_toward_current_age() {
        let cache = cache();
        let req = get("/a");
        let upstream = res(200, &[("cache-control", "max-age=60"), ("age", "50")]);
        store_at(&cache, &req, &upstream, "x", at(0)).unwrap();

        let hit = expect_fresh(cache.lookup(&req.view(), at(5)));
        assert_eq!(header(&hit.headers, "age"), Some("55"));
        expect_revalidate(cache.lookup(&req.view(), at(11)));
    }

    #[test]
    fn the_round_trip_and_an_old_date_count_toward_age() {
        let cache = cache();
        let req = get("/a");
        // No Date, so only the round trip counts: sent at 0, received at 4.
        let upstream = res(200, &[("cache-control", "max-age=60")]);
        cache
            .store(
                &req.view(),
                &upstream,
                Bytes::from_static(b"x"),
                at(0),
                at(4),
            )
            .unwrap();
        let hit = expect_fresh(cache.lookup(&req.view(), at(4)));
        assert_eq!(header(&hit.headers, "age"), Some("4"));

        // Date 30 s before arrival: the apparent age is 30.
        let upstream = res(200, &[("cache-control", "max-age=60"), ("date", BASE_DATE)]);
        let late = get("/late");
        cache
            .store(
                &late.view(),
                &upstream,
                Bytes::from_static(b"x"),
                at(30),
                at(30),
            )
            .unwrap();
        let hit = expect_fresh(cache.lookup(&late.view(), at(30)));
        assert_eq!(header(&hit.headers, "age"), Some("30"));
    }

    #[test]
    fn s_maxage_wins_over_max_age() {
        let cache = cache();
        let both = get("/both");
        let upstream = res(200, &[("cache-control", "max-age=10, s-maxage=100")]);
        store_at(&cache, &both, &upstream, "x", at(0)).unwrap();
        expect_fresh(cache.lookup(&both.view(), at(50)));

        let only_max_age = get("/max-age");
        let upstream = res(200, &[("cache-control", "max-age=10"), ("etag", "\"v\"")]);
        store_at(&cache, &only_max_age, &upstream, "x", at(0)).unwrap();
        expect_revalidate(cache.lookup(&only_max_age.view(), at(50)));
    }

    #[test]
    fn expires_minus_date_gives_the_lifetime() {
        let cache = cache();
        let req = get("/a");
        let upstream = res(
            200,
            &[
                ("date", BASE_DATE),
                ("expires", "Tue, 01 Oct 2024 12:02:00 GMT"),
            ],
        );
        store_at(&cache, &req, &upstream, "x", at(0)).unwrap();
        expect_fresh(cache.lookup(&req.view(), at(119)));
        expect_revalidate(cache.lookup(&req.view(), at(121)));

        // max-age overrides Expires.
        let overridden = get("/b");
        let upstream = res(
            200,
            &[
                ("date", BASE_DATE),
                ("expires", "Tue, 01 Oct 2024 12:02:00 GMT"),
                ("cache-control", "max-age=10"),
                ("etag", "\"v\""),
            ],
        );
        store_at(&cache, &overridden, &upstream, "x", at(0)).unwrap();
        expect_revalidate(cache.lookup(&overridden.view(), at(60)));
    }

    #[test]
    fn an_invalid_expires_means_already_stale() {
        let cache = cache();
        let upstream = res(200, &[("expires", "0"), ("date", BASE_DATE)]);
        assert_eq!(
            store_at(&cache, &get("/a"), &upstream, "x", at(0)),
            Err(Uncacheable::NoValidators)
        );
        let with_etag = res(200, &[("expires", "0"), ("etag", "\"v\"")]);
        store_at(&cache, &get("/b"), &with_etag, "x", at(0)).unwrap();
        expect_revalidate(cache.lookup(&get("/b").view(), at(0)));
    }

    #[test]
    fn responses_without_explicit_freshness_are_not_stored() {
        let cache = cache();
        let upstream = res(200, &[("etag", "\"v\""), ("last-modified", BASE_DATE)]);
        assert_eq!(
            store_at(&cache, &get("/a"), &upstream, "x", at(0)),
            Err(Uncacheable::NoFreshness)
        );
        assert!(matches!(
            cache.lookup(&get("/a").view(), at(0)),
            Lookup::Miss
        ));
    }

    #[test]
    fn only_heuristically_cacheable_statuses_are_stored() {
        let cache = cache();
        for status in [200, 203, 204, 300, 301, 404, 410] {
            let req = get(&format!("/s{status}"));
            let upstream = res(status, &[("cache-control", "max-age=60")]);
            store_at(&cache, &req, &upstream, "", at(0)).unwrap();
            let hit = expect_fresh(cache.lookup(&req.view(), at(1)));
            assert_eq!(hit.status.as_u16(), status);
        }
        for status in [201, 206, 302, 307, 400, 403, 500, 502, 503] {
            let req = get(&format!("/s{status}"));
            let upstream = res(status, &[("cache-control", "max-age=60")]);
            assert_eq!(
                store_at(&cache, &req, &upstream, "", at(0)),
                Err(Uncacheable::Status),
                "status {status}"
            );
        }
    }

    #[test]
    fn private_and_no_store_responses_are_refused() {
        let cache = cache();
        let cases = [
            ("private, max-age=60", Uncacheable::Private),
            ("max-age=60, private=\"x-user\"", Uncacheable::Private),
            ("no-store, max-age=60", Uncacheable::NoStore),
            ("public, NO-STORE, max-age=60", Uncacheable::NoStore),
        ];
        for (cc, reason) in cases {
            let upstream = res(200, &[("cache-control", cc)]);
            assert_eq!(
                store_at(&cache, &get("/a"), &upstream, "x", at(0)),
                Err(reason),
                "{cc}"
            );
            assert!(matches!(
                cache.lookup(&get("/a").view(), at(0)),
                Lookup::Miss
            ));
        }
    }

    #[test]
    fn responses_with_set_cookie_are_refused() {
        let cache = cache();
        let upstream = res(
            200,
            &[
                ("cache-control", "public, max-age=60"),
                ("set-cookie", "sid=1"),
            ],
        );
        assert_eq!(
            store_at(&cache, &get("/a"), &upstream, "x", at(0)),
            Err(Uncacheable::SetCookie)
        );
        assert!(matches!(
            cache.lookup(&get("/a").view(), at(0)),
            Lookup::Miss
        ));
    }

    #[test]
    fn vary_star_is_never_stored() {
        let cache = cache();
        let upstream = res(
            200,
            &[("cache-control", "max-age=60"), ("vary", "accept, *")],
        );
        assert_eq!(
            store_at(&cache, &get("/a"), &upstream, "x", at(0)),
            Err(Uncacheable::Vary)
        );
    }

    #[test]
    fn a_vary_mismatch_is_a_miss_and_variants_coexist() {
        let cache = cache();
        let upstream = res(
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")],
        );
        let gzip = get_with("/a", &[("accept-encoding", "gzip, br")]);
        store_at(&cache, &gzip, &upstream, "gzipped", at(0)).unwrap();

        let br = get_with("/a", &[("accept-encoding", "br")]);
        assert!(matches!(cache.lookup(&br.view(), at(1)), Lookup::Miss));
        let none = get("/a");
        assert!(matches!(cache.lookup(&none.view(), at(1)), Lookup::Miss));
        // Whitespace around commas does not matter.
        let same = get_with("/a", &[("accept-encoding", "gzip,br")]);
        assert_eq!(
            expect_fresh(cache.lookup(&same.view(), at(1))).body,
            "gzipped"
        );

        store_at(&cache, &br, &upstream, "brotli", at(2)).unwrap();
        assert_eq!(expect_fresh(cache.lookup(&br.view(), at(3))).body, "brotli");
        assert_eq!(
            expect_fresh(cache.lookup(&gzip.view(), at(3))).body,
            "gzipped"
        );

        // Storing the same variant again replaces it instead of adding one.
        store_at(&cache, &gzip, &upstream, "gzipped v2", at(4)).unwrap();
        assert_eq!(
            expect_fresh(cache.lookup(&gzip.view(), at(5))).body,
            "gzipped v2"
        );
        let variants = cache.entries.get(&gzip.view().key).unwrap();
        assert_eq!(variants.list.len(), 2);
    }

    #[test]
    fn variants_per_key_are_bounded() {
        let cache = cache();
        let upstream = res(
            200,
            &[("cache-control", "max-age=60"), ("vary", "accept-language")],
        );
        for lang in ["de", "en", "fr", "it", "nl", "pt"] {
            let req = get_with("/a", &[("accept-language", lang)]);
            store_at(&cache, &req, &upstream, "x", at(0)).unwrap();
        }
        let variants = cache.entries.get(&get("/a").view().key).unwrap();
        assert_eq!(variants.list.len(), MAX_VARIANTS);
        // The oldest went first.
        let de = get_with("/a", &[("accept-language", "de")]);
        assert!(matches!(cache.lookup(&de.view(), at(1)), Lookup::Miss));
        let pt = get_with("/a", &[("accept-language", "pt")]);
        expect_fresh(cache.lookup(&pt.view(), at(1)));
    }

    #[test]
    fn request_no_store_bypasses_and_is_not_stored() {
        let cache = cache();
        let upstream = res(200, &[("cache-control", "max-age=60")]);
        store_at(&cache, &get("/a"), &upstream, "x", at(0)).unwrap();
        let no_store = get_with("/a", &[("cache-control", "no-store")]);
        assert!(matches!(
            cache.lookup(&no_store.view(), at(1)),
            Lookup::Bypass
        ));
        assert_eq!(
            store_at(&cache, &no_store, &upstream, "y", at(1)),
            Err(Uncacheable::RequestNoStore)
        );
        assert_eq!(
            expect_fresh(cache.lookup(&get("/a").view(), at(2))).body,
            "x"
        );
    }

    #[test]
    fn request_no_cache_or_max_age_zero_forces_revalidation() {
        let cache = cache();
        let upstream = res(
            200,
            &[
                ("cache-control", "max-age=60, stale-while-revalidate=600"),
                ("etag", "\"v1\""),
            ],
        );
        store_at(&cache, &get("/a"), &upstream, "x", at(0)).unwrap();
        for headers in [
            [("cache-control", "no-cache")],
            [("cache-control", "max-age=0")],
            [("pragma", "no-cache")],
        ] {
            let req = get_with("/a", &headers);
            let revalidation = expect_revalidate(cache.lookup(&req.view(), at(1)));
            assert_eq!(
                header(revalidation.conditional_headers(), "if-none-match"),
                Some("\"v1\"")
            );
            // Even past expiry, stale-while-revalidate does not override the client.
            expect_revalidate(cache.lookup(&req.view(), at(70)));
        }
        // A client max-age the response is younger than is still a hit.
        let lenient = get_with("/a", &[("cache-control", "max-age=30")]);
        expect_fresh(cache.lookup(&lenient.view(), at(20)));
        expect_revalidate(cache.lookup(&lenient.view(), at(40)));
        let picky = get_with("/a", &[("cache-control", "min-fresh=50")]);
        expect_revalidate(cache.lookup(&picky.view(), at(20)));
        expect_fresh(cache.lookup(&get("/a").view(), at(1)));
    }

    #[test]
    fn authorized_requests_are_stored_only_when_the_response_allows_sharing() {
        let cache = cache();
        let auth = get_with("/a", &[("authorization", "Bearer t")]);
        let plain = res(200, &[("cache-control", "max-age=60")]);
        assert_eq!(
            store_at(&cache, &auth, &plain, "mine", at(0)),
            Err(Uncacheable::Authorization)
        );
        assert!(matches!(
            cache.lookup(&get("/a").view(), at(1)),
            Lookup::Miss
        ));

        for cc in [
            "public, max-age=60",
            "s-maxage=60",
            "must-revalidate, max-age=60",
        ] {
            let path = format!("/shared/{}", cc.len());
            let req = get_with(&path, &[("authorization", "Bearer t")]);
            store_at(
                &cache,
                &req,
                &res(200, &[("cache-control", cc)]),
                "ok",
                at(0),
            )
            .unwrap();
            expect_fresh(cache.lookup(&req.view(), at(1)));
        }
    }

    #[test]
    fn authorized_requests_are_not_served_a_response_that_does_not_allow_sharing() {
        let cache = cache();
        let plain = res(200, &[("cache-control", "max-age=60")]);
        store_at(&cache, &get("/a"), &plain, "anonymous", at(0)).unwrap();
        let auth = get_with("/a", &[("authorization", "Bearer t")]);
        assert!(matches!(cache.lookup(&auth.view(), at(1)), Lookup::Miss));

        let public = res(200, &[("cache-control", "public, max-age=60")]);
        store_at(&cache, &get("/b"), &public, "everyone", at(0)).unwrap();
        let auth = get_with("/b", &[("authorization", "Bearer t")]);
        assert_eq!(
            expect_fresh(cache.lookup(&auth.view(), at(1))).body,
            "everyone"
        );
    }

    #[test]
    fn no_cache_responses_are_revalidated_every_time() {
        let cache = cache();
        let upstream = res(
            200,
            &[
                ("cache-control", "no-cache, max-age=600"),
                ("etag", "\"v1\""),
            ],
        );
        store_at(&cache, &get("/a"), &upstream, "x", at(0)).unwrap();
        expect_revalidate(cache.lookup(&get("/a").view(), at(0)));
        expect_revalidate(cache.lookup(&get("/a").view(), at(1)));

        let without_freshness = res(
            200,
            &[("cache-control", "no-cache"), ("last-modified", BASE_DATE)],
        );
        store_at(&cache, &get("/b"), &without_freshness, "x", at(0)).unwrap();
        let revalidation = expect_revalidate(cache.lookup(&get("/b").view(), at(0)));
        assert_eq!(
            header(revalidation.conditional_headers(), "if-modified-since"),
            Some(BASE_DATE)
        );

        let no_validators = res(200, &[("cache-control", "no-cache, max-age=600")]);
        assert_eq!(
            store_at(&cache, &get("/c"), &no_validators, "x", at(0)),
            Err(Uncacheable::NoValidators)
        );
    }

    #[test]
    fn a_stale_entry_hands_out_both_validators() {
        let cache = cache();
        let upstream = res(
            200,
            &[
                ("cache-control", "max-age=10"),
                ("etag", "W/\"v1\""),
                ("last-modified", "Mon, 30 Sep 2024 08:00:00 GMT"),
            ],
        );
        store_at(&cache, &get("/a"), &upstream, "x", at(0)).unwrap();
        let revalidation = expect_revalidate(cache.lookup(&get("/a").view(), at(11)));
        let conditional = revalidation.conditional_headers();
        assert_eq!(header(conditional, "if-none-match"), Some("W/\"v1\""));
        assert_eq!(
            header(conditional, "if-modified-since"),
            Some("Mon, 30 Sep 2024 08:00:00 GMT")
        );
        assert_eq!(conditional.len(), 2);
    }

    #[test]
    fn a_stale_entry_without_validators_asks_for_an_unconditional_refetch() {
        let cache = cache();
        let upstream = res(200, &[("cache-control", "max-age=10")]);
        store_at(&cache, &get("/a"), &upstream, "x", at(0)).unwrap();
        let revalidation = expect_revalidate(cache.lookup(&get("/a").view(), at(11)));
        assert!(revalidation.conditional_headers().is_empty());
    }

    #[test]
    fn stale_while_revalidate_serves_stale_and_hands_out_one_refresh() {
        let cache = cache();
        let upstream = res(
            200,
            &[
                ("cache-control", "max-age=10, stale-while-revalidate=30"),
                ("etag", "\"v1\""),
            ],
        );
        store_at(&cache, &get("/a"), &upstream, "old", at(0)).unwrap();
        expect_fresh(cache.lookup(&get("/a").view(), at(9)));

        let Lookup::Stale { response, refresh } = cache.lookup(&get("/a").view(), at(20)) else {
            panic!("expected stale within stale-while-revalidate");
        };
        assert_eq!(response.body, "old");
        assert_eq!(header(&response.headers, "x-cache"), Some("STALE"));
        assert_eq!(header(&response.headers, "age"), Some("20"));
        let refresh = refresh.expect("the first stale lookup refreshes");
        assert_eq!(
            header(refresh.conditional_headers(), "if-none-match"),
            Some("\"v1\"")
        );

        // Others keep serving stale without starting a second refresh ...
        let Lookup::Stale { refresh, .. } = cache.lookup(&get("/a").view(), at(21)) else {
            panic!("expected stale");
        };
        assert!(refresh.is_none());
        // ... until the claim looks lost.
        let Lookup::Stale { refresh, .. } = cache.lookup(&get("/a").view(), at(39)) else {
            panic!("expected stale");
        };
        assert!(refresh.is_none());

        // Past the window the caller must wait for the upstream.
        expect_revalidate(cache.lookup(&get("/a").view(), at(41)));
    }

    #[test]
    fn a_lost_refresh_claim_is_handed_out_again() {
        let cache = cache();
        let upstream = res(
            200,
            &[("cache-control", "max-age=10, stale-while-revalidate=300")],
        );
        store_at(&cache, &get("/a"), &upstream, "old", at(0)).unwrap();
        let first = cache.lookup(&get("/a").view(), at(20));
        assert!(matches!(
            first,
            Lookup::Stale {
                refresh: Some(_),
                ..
            }
        ));
        let later = cache.lookup(&get("/a").view(), at(20 + REFRESH_CLAIM_SECS));
        assert!(matches!(
            later,
            Lookup::Stale {
                refresh: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn must_revalidate_forbids_serving_stale() {
        let cache = cache();
        for cc in [
            "max-age=10, stale-while-revalidate=30, stale-if-error=30, must-revalidate",
            "max-age=10, stale-while-revalidate=30, stale-if-error=30, proxy-revalidate",
        ] {
            let upstream = res(200, &[("cache-control", cc), ("etag", "\"v\"")]);
            store_at(&cache, &get("/a"), &upstream, "x", at(0)).unwrap();
            let revalidation = expect_revalidate(cache.lookup(&get("/a").view(), at(15)));
            assert!(revalidation.stale_if_error(at(15)).is_none(), "{cc}");
        }
    }

    #[test]
    fn stale_if_error_serves_stale_when_the_upstream_fails() {
        let cache = cache();
        let upstream = res(
            200,
            &[
                ("cache-control", "max-age=10, stale-if-error=60"),
                ("etag", "\"v\""),
            ],
        );
        store_at(&cache, &get("/a"), &upstream, "old", at(0)).unwrap();
        let revalidation = expect_revalidate(cache.lookup(&get("/a").view(), at(30)));
        let fallback = revalidation.stale_if_error(at(31)).unwrap();
        assert_eq!(fallback.body, "old");
        assert_eq!(header(&fallback.headers, "x-cache"), Some("STALE"));
        assert_eq!(header(&fallback.headers, "age"), Some("31"));
        assert!(revalidation.stale_if_error(at(71)).is_none());
    }

    #[test]
    fn a_304_refreshes_freshness_and_merges_headers() {
        let cache = cache();
        let upstream = res(
            200,
            &[
                ("cache-control", "max-age=10"),
                ("etag", "\"v1\""),
                ("x-version", "old"),
                ("content-type", "text/plain"),
                ("date", BASE_DATE),
            ],
        );
        store_at(&cache, &get("/a"), &upstream, "payload", at(0)).unwrap();
        let revalidation = expect_revalidate(cache.lookup(&get("/a").view(), at(20)));

        let not_modified = res(
            304,
            &[
                ("cache-control", "max-age=100"),
                ("etag", "\"v1\""),
                ("x-version", "new"),
                ("content-length", "0"),
                ("date", "Tue, 01 Oct 2024 12:00:20 GMT"),
                ("connection", "close"),
            ],
        );
        let sent = cache
            .revalidated(&revalidation, &not_modified, at(20), at(20))
            .unwrap();
        assert_eq!(sent.status, StatusCode::OK);
        assert_eq!(sent.body, "payload");
        assert_eq!(header(&sent.headers, "x-cache"), Some("REVALIDATED"));
        assert_eq!(header(&sent.headers, "x-version"), Some("new"));
        assert_eq!(header(&sent.headers, "content-type"), Some("text/plain"));
        assert_eq!(header(&sent.headers, "content-length"), Some("7"));
        assert_eq!(header(&sent.headers, "age"), Some("0"));
        assert!(sent.headers.get("connection").is_none());

        // Fresh for 100 s from the 304, with the merged headers.
        let hit = expect_fresh(cache.lookup(&get("/a").view(), at(110)));
        assert_eq!(hit.body, "payload");
        assert_eq!(header(&hit.headers, "x-version"), Some("new"));
        assert_eq!(header(&hit.headers, "age"), Some("90"));
        expect_revalidate(cache.lookup(&get("/a").view(), at(121)));
    }

    #[test]
    fn a_304_for_another_etag_drops_the_entry() {
        let cache = cache();
        let upstream = res(200, &[("cache-control", "max-age=10"), ("etag", "\"v1\"")]);
        store_at(&cache, &get("/a"), &upstream, "x", at(0)).unwrap();
        let revalidation = expect_revalidate(cache.lookup(&get("/a").view(), at(20)));
        let not_modified = res(304, &[("etag", "\"v2\""), ("cache-control", "max-age=100")]);
        assert!(
            cache
                .revalidated(&revalidation, &not_modified, at(20), at(20))
                .is_none()
        );
        assert!(matches!(
            cache.lookup(&get("/a").view(), at(21)),
            Lookup::Miss
        ));

        // A weak tag for the same representation does match.
        store_at(&cache, &get("/b"), &upstream, "x", at(0)).unwrap();
        let revalidation = expect_revalidate(cache.lookup(&get("/b").view(), at(20)));
        let weak = res(
            304,
            &[("etag", "W/\"v1\""), ("cache-control", "max-age=100")],
        );
        assert!(
            cache
                .revalidated(&revalidation, &weak, at(20), at(20))
                .is_some()
        );
        expect_fresh(cache.lookup(&get("/b").view(), at(21)));
    }

    #[test]
    fn a_304_that_turns_private_is_sent_but_no_longer_stored() {
        let cache = cache();
        let upstream = res(200, &[("cache-control", "max-age=10"), ("etag", "\"v1\"")]);
        store_at(&cache, &get("/a"), &upstream, "x", at(0)).unwrap();
        let revalidation = expect_revalidate(cache.lookup(&get("/a").view(), at(20)));
        let not_modified = res(304, &[("cache-control", "private, max-age=100")]);
        let sent = cache
            .revalidated(&revalidation, &not_modified, at(20), at(20))
            .unwrap();
        assert_eq!(sent.body, "x");
        assert!(matches!(
            cache.lookup(&get("/a").view(), at(21)),
            Lookup::Miss
        ));
    }

    #[test]
    fn revalidated_ignores_anything_but_a_304() {
        let cache = cache();
        let upstream = res(200, &[("cache-control", "max-age=10"), ("etag", "\"v1\"")]);
        store_at(&cache, &get("/a"), &upstream, "x", at(0)).unwrap();
        let revalidation = expect_revalidate(cache.lookup(&get("/a").view(), at(20)));
        let ok = res(200, &[("cache-control", "max-age=100")]);
        assert!(
            cache
                .revalidated(&revalidation, &ok, at(20), at(20))
                .is_none()
        );
        expect_revalidate(cache.lookup(&get("/a").view(), at(21)));
    }

    #[test]
    fn a_200_after_revalidation_replaces_the_entry() {
        let cache = cache();
        let upstream = res(200, &[("cache-control", "max-age=10"), ("etag", "\"v1\"")]);
        store_at(&cache, &get("/a"), &upstream, "old", at(0)).unwrap();
        expect_revalidate(cache.lookup(&get("/a").view(), at(20)));
        let replacement = res(200, &[("cache-control", "max-age=100"), ("etag", "\"v2\"")]);
        store_at(&cache, &get("/a"), &replacement, "new", at(20)).unwrap();
        let hit = expect_fresh(cache.lookup(&get("/a").view(), at(30)));
        assert_eq!(hit.body, "new");
        assert_eq!(header(&hit.headers, "etag"), Some("\"v2\""));
    }

    #[test]
    fn a_late_304_does_not_overwrite_a_newer_200() {
        let cache = cache();
        let upstream = res(200, &[("cache-control", "max-age=10"), ("etag", "\"v1\"")]);
        store_at(&cache, &get("/a"), &upstream, "old", at(0)).unwrap();
        let revalidation = expect_revalidate(cache.lookup(&get("/a").view(), at(20)));
        let replacement = res(200, &[("cache-control", "max-age=100"), ("etag", "\"v2\"")]);
        store_at(&cache, &get("/a"), &replacement, "new", at(20)).unwrap();

        let not_modified = res(304, &[("cache-control", "max-age=100")]);
        let sent = cache
            .revalidated(&revalidation, &not_modified, at(21), at(21))
            .unwrap();
        assert_eq!(sent.body, "old");
        assert_eq!(
            expect_fresh(cache.lookup(&get("/a").view(), at(22))).body,
            "new"
        );
    }

    #[test]
    fn a_matching_client_if_none_match_gets_a_304() {
        let cache = cache();
        let upstream = res(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"v1\""),
                ("content-type", "text/plain"),
            ],
        );
        store_at(&cache, &get("/a"), &upstream, "payload", at(0)).unwrap();
        let hit = expect_fresh(cache.lookup(&get("/a").view(), at(5)));

        for condition in ["\"v1\"", "W/\"v1\"", "\"other\", W/\"v1\"", "*"] {
            let client = get_with("/a", &[("if-none-match", condition)]);
            let not_modified = hit.not_modified(&client.headers).expect(condition);
            assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
            assert!(not_modified.body.is_empty());
            assert_eq!(header(&not_modified.headers, "etag"), Some("\"v1\""));
            assert_eq!(header(&not_modified.headers, "x-cache"), Some("HIT"));
            assert_eq!(header(&not_modified.headers, "age"), Some("5"));
            assert!(not_modified.headers.get("content-type").is_none());
        }
        for condition in ["\"v2\"", "\"v1", "W/\"v10\""] {
            let client = get_with("/a", &[("if-none-match", condition)]);
            assert!(hit.not_modified(&client.headers).is_none(), "{condition}");
        }
        assert!(hit.not_modified(&get("/a").headers).is_none());
    }

    #[test]
    fn a_client_if_modified_since_gets_a_304_unless_if_none_match_disagrees() {
        let cache = cache();
        let upstream = res(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"v1\""),
                ("last-modified", "Mon, 30 Sep 2024 08:00:00 GMT"),
            ],
        );
        store_at(&cache, &get("/a"), &upstream, "x", at(0)).unwrap();
        let hit = expect_fresh(cache.lookup(&get("/a").view(), at(1)));

        let since_later = get_with("/a", &[("if-modified-since", BASE_DATE)]);
        assert!(hit.not_modified(&since_later.headers).is_some());
        let since_earlier = get_with(
            "/a",
            &[("if-modified-since", "Sun, 29 Sep 2024 08:00:00 GMT")],
        );
        assert!(hit.not_modified(&since_earlier.headers).is_none());
        // If-None-Match takes precedence over If-Modified-Since.
        let both = get_with(
            "/a",
            &[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", BASE_DATE),
            ],
        );
        assert!(hit.not_modified(&both.headers).is_none());
    }

    #[test]
    fn a_cached_404_never_becomes_a_304() {
        let cache = cache();
        let upstream = res(
            404,
            &[("cache-control", "max-age=60"), ("etag", "\"gone\"")],
        );
        store_at(&cache, &get("/a"), &upstream, "", at(0)).unwrap();
        let hit = expect_fresh(cache.lookup(&get("/a").view(), at(1)));
        let client = get_with("/a", &[("if-none-match", "*")]);
        assert!(hit.not_modified(&client.headers).is_none());
    }

    #[test]
    fn purge_by_prefix_removes_matching_keys_on_the_given_host() {
        let cache = cache();
        let upstream = res(200, &[("cache-control", "max-age=60")]);
        let on = |host: &str, path: &str| get_with(path, &[("host", host)]);
        for req in [
            on("a.example", "/api/users"),
            on("a.example", "/api/orders?page=2"),
            on("a.example:8443", "/api/items"),
            on("a.example", "/static/app.js"),
            on("b.example", "/api/users"),
        ] {
            store_at(&cache, &req, &upstream, "x", at(0)).unwrap();
        }
        assert_eq!(cache.purge("/api/", Some("A.example")), 3);
        assert!(matches!(
            cache.lookup(&on("a.example", "/api/users").view(), at(1)),
            Lookup::Miss
        ));
        expect_fresh(cache.lookup(&on("a.example", "/static/app.js").view(), at(1)));
        expect_fresh(cache.lookup(&on("b.example", "/api/users").view(), at(1)));

        assert_eq!(cache.purge("/", None), 2);
        assert!(matches!(
            cache.lookup(&on("b.example", "/api/users").view(), at(1)),
            Lookup::Miss
        ));
        assert_eq!(cache.purge("/", None), 0);
    }

    #[test]
    fn purge_exact_removes_one_url() {
        let cache = cache();
        let upstream = res(200, &[("cache-control", "max-age=60")]);
        store_at(&cache, &get("/a?x=1"), &upstream, "x", at(0)).unwrap();
        store_at(&cache, &get("/a?x=2"), &upstream, "x", at(0)).unwrap();
        assert!(cache.purge_exact("Example.com", "/a?x=1"));
        assert!(!cache.purge_exact("example.com", "/a?x=1"));
        assert!(matches!(
            cache.lookup(&get("/a?x=1").view(), at(1)),
            Lookup::Miss
        ));
        expect_fresh(cache.lookup(&get("/a?x=2").view(), at(1)));
    }

    #[test]
    fn a_successful_unsafe_request_invalidates_the_uri_and_its_location() {
        let cache = cache();
        let upstream = res(200, &[("cache-control", "max-age=60")]);
        for path in ["/items", "/items/7", "/other"] {
            store_at(&cache, &get(path), &upstream, "x", at(0)).unwrap();
        }
        let post = Req::new(Method::POST, "/items", &[]);
        let failed = res(500, &[]);
        assert_eq!(cache.invalidate_after_unsafe(&post.view(), &failed), 0);
        expect_fresh(cache.lookup(&get("/items").view(), at(1)));

        let created = res(201, &[("location", "/items/7")]);
        assert_eq!(cache.invalidate_after_unsafe(&post.view(), &created), 2);
        assert!(matches!(
            cache.lookup(&get("/items").view(), at(1)),
            Lookup::Miss
        ));
        assert!(matches!(
            cache.lookup(&get("/items/7").view(), at(1)),
            Lookup::Miss
        ));
        expect_fresh(cache.lookup(&get("/other").view(), at(1)));

        let elsewhere = res(204, &[("content-location", "http://evil.example/other")]);
        let delete = Req::new(Method::DELETE, "/gone", &[]);
        assert_eq!(cache.invalidate_after_unsafe(&delete.view(), &elsewhere), 0);
        expect_fresh(cache.lookup(&get("/other").view(), at(1)));

        let safe = get("/other");
        assert_eq!(
            cache.invalidate_after_unsafe(&safe.view(), &res(200, &[])),
            0
        );
    }

    #[test]
    fn responses_over_the_object_limit_are_not_stored() {
        let cache = WebCache::new(1 << 20, 1000);
        let upstream = res(200, &[("cache-control", "max-age=60")]);
        let big = Bytes::from(vec![b'x'; 1000]);
        assert_eq!(
            cache.store(&get("/big").view(), &upstream, big, at(0), at(0)),
            Err(Uncacheable::TooLarge)
        );
        assert!(matches!(
            cache.lookup(&get("/big").view(), at(0)),
            Lookup::Miss
        ));
        let small = Bytes::from(vec![b'x'; 800]);
        cache
            .store(&get("/small").view(), &upstream, small, at(0), at(0))
            .unwrap();

        let declared = res(
            200,
            &[("cache-control", "max-age=60"), ("content-length", "5000")],
        );
        assert_eq!(
            cache.storable(&get("/big").view(), &declared, at(0)),
            Err(Uncacheable::TooLarge)
        );
        assert_eq!(
            cache.storable(&get("/big").view(), &upstream, at(0)),
            Ok(())
        );
        let private = res(200, &[("cache-control", "private")]);
        assert_eq!(
            cache.storable(&get("/big").view(), &private, at(0)),
            Err(Uncacheable::Private)
        );
    }

    #[test]
    fn the_memory_bound_evicts() {
        let max_bytes = 20_000;
        let cache = WebCache::new(max_bytes, 4096);
        let upstream = res(200, &[("cache-control", "max-age=600")]);
        for n in 0..100 {
            let body = Bytes::from(vec![b'x'; 1000]);
            cache
                .store(&get(&format!("/{n}")).view(), &upstream, body, at(0), at(0))
                .unwrap();
        }
        cache.entries.run_pending_tasks();
        assert!(
            cache.weighted_size() <= max_bytes,
            "{}",
            cache.weighted_size()
        );
        assert!(cache.weighted_size() > 10_000, "{}", cache.weighted_size());
        assert!(cache.len() < 100);
        assert!(!cache.is_empty());
        let served = (0..100)
            .filter(|n| {
                matches!(
                    cache.lookup(&get(&format!("/{n}")).view(), at(1)),
                    Lookup::Fresh(_)
                )
            })
            .count();
        assert!(served < 20, "{served}");
    }

    #[test]
    fn len_and_weighted_size_count_stored_urls() {
        let cache = cache();
        let upstream = res(200, &[("cache-control", "max-age=60"), ("vary", "accept")]);
        store_at(
            &cache,
            &get_with("/a", &[("accept", "a")]),
            &upstream,
            "12345",
            at(0),
        )
        .unwrap();
        store_at(
            &cache,
            &get_with("/a", &[("accept", "b")]),
            &upstream,
            "12345",
            at(0),
        )
        .unwrap();
        store_at(&cache, &get("/b"), &upstream, "12345", at(0)).unwrap();
        cache.entries.run_pending_tasks();
        assert_eq!(cache.len(), 2);
        assert!(cache.weighted_size() > 3 * (5 + RESPONSE_OVERHEAD as u64));
    }

    #[test]
    fn hop_by_hop_and_age_headers_are_not_stored() {
        let cache = cache();
        let upstream = res(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("connection", "x-trace"),
                ("x-trace", "abc"),
                ("keep-alive", "timeout=5"),
                ("transfer-encoding", "chunked"),
                ("x-cache", "HIT from upstream"),
                ("x-kept", "yes"),
            ],
        );
        store_at(&cache, &get("/a"), &upstream, "x", at(0)).unwrap();
        let hit = expect_fresh(cache.lookup(&get("/a").view(), at(1)));
        for gone in ["connection", "x-trace", "keep-alive", "transfer-encoding"] {
            assert!(hit.headers.get(gone).is_none(), "{gone}");
        }
        assert_eq!(header(&hit.headers, "x-cache"), Some("HIT"));
        assert_eq!(header(&hit.headers, "x-kept"), Some("yes"));
    }

    #[test]
    fn cache_status_marks_upstream_responses_the_same_way() {
        let mut headers = HeaderMap::new();
        CacheStatus::Miss.mark(&mut headers);
        assert_eq!(header(&headers, "x-cache"), Some("MISS"));
        CacheStatus::Bypass.mark(&mut headers);
        assert_eq!(headers.get_all("x-cache").iter().count(), 1);
        assert_eq!(header(&headers, "x-cache"), Some("BYPASS"));
    }

    #[test]
    fn into_response_keeps_status_headers_and_body() {
        let cache = cache();
        let upstream = res(203, &[("cache-control", "max-age=60"), ("x-a", "1")]);
        store_at(&cache, &get("/a"), &upstream, "body", at(0)).unwrap();
        let response = expect_fresh(cache.lookup(&get("/a").view(), at(1))).into_response();
        assert_eq!(response.status(), StatusCode::NON_AUTHORITATIVE_INFORMATION);
        assert_eq!(header(response.headers(), "x-a"), Some("1"));
        assert_eq!(response.body(), "body");
    }

    #[test]
    fn http_dates_parse_in_all_three_forms() {
        let expected = UNIX_EPOCH + Duration::from_secs(784_111_777);
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(text), Some(expected), "{text}");
        }
        assert_eq!(parse_http_date(BASE_DATE), Some(at(0)));
        assert_eq!(
            parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(1_709_164_800))
        );
        for bad in [
            "0",
            "",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Thu, 29 Feb 2023 00:00:00 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Thu, 01 Jan 1960 00:00:00 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn cache_control_parsing_handles_case_quotes_duplicates_and_overflow() {
        let mut headers = HeaderMap::new();
        headers.append(
            CACHE_CONTROL,
            HeaderValue::from_static("Max-Age=\"60\", no-cache=\"set-cookie, x-a\", public"),
        );
        headers.append(
            CACHE_CONTROL,
            HeaderValue::from_static("max-age=30, s-maxage=99999999999999999999999"),
        );
        let cc = Directives::parse(&headers);
        assert_eq!(cc.max_age, Some(30));
        assert_eq!(cc.s_maxage, Some(MAX_DELTA_SECONDS));
        assert!(cc.no_cache);
        assert!(cc.public);
        assert!(!cc.private);

        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=ten"));
        assert_eq!(Directives::parse(&headers).max_age, Some(0));
    }

    #[test]
    fn pragma_is_ignored_when_cache_control_is_present() {
        let mut headers = HeaderMap::new();
        headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(Directives::from_request(&headers).no_cache);
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        assert!(!Directives::from_request(&headers).no_cache);
    }

    #[test]
    fn host_ports_are_optional_when_matching() {
        assert_eq!(host_without_port("a.example:8443"), "a.example");
        assert_eq!(host_without_port("[::1]:8443"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        let key = CacheKey::new("a.example:8443", "/");
        assert!(key.host_matches("a.example"));
        assert!(key.host_matches("a.example:8443"));
        assert!(!key.host_matches("a.example:80"));
    }
}
