//! Freshness (RFC 9111 §4.2): what may be stored, for how long, and what a stored response may
//! still be used for; with the HTTP dates its rules read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    AGE, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, DATE, ETAG, EXPIRES,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING,
    UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::directives::{Directives, delta_seconds};
use super::key::vary_value;
use super::revalidate::CachedResponse;
use super::{
    CacheRequest, CacheStatus, EXPIRY_SLACK, KEEP_ALIVE, MAX_DELTA_SECONDS, PROXY_CONNECTION,
    REFRESH_CLAIM_SECS, RESPONSE_OVERHEAD, STORABLE_STATUSES, Uncacheable, VALIDATOR_GRACE,
    X_CACHE,
};

/// The request-side rules for storing: GET only, and not when the request said `no-store`.
pub(super) fn admit_request(req: &CacheRequest<'_>) -> Result<(), Uncacheable> {
    if *req.method != Method::GET {
        return Err(Uncacheable::Method);
    }
    if Directives::from_request(req.headers).no_store {
        return Err(Uncacheable::RequestNoStore);
    }
    Ok(())
}

/// The response-side rules for storing, and what the stored response may be used for.
pub(super) fn response_policy(
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
pub(super) fn freshness_lifetime(
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

/// Fields a 304 may not overwrite: connection-level fields, and those describing the stored
/// body's bytes, which the 304 did not resend.
pub(super) fn updatable_from_304(name: &HeaderName) -> bool {
    !is_hop_by_hop(name)
        && ![CONTENT_LENGTH, CONTENT_ENCODING, CONTENT_RANGE, X_CACHE].contains(name)
}

pub(super) fn is_hop_by_hop(name: &HeaderName) -> bool {
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
pub(super) struct Policy {
    pub(super) lifetime: Duration,
    /// `no-cache`: stored, but every use needs the upstream's confirmation.
    pub(super) no_cache: bool,
    /// `must-revalidate` or `proxy-revalidate`: never served stale.
    pub(super) no_stale: bool,
    /// `public`, `s-maxage` or `must-revalidate`: may answer requests with `Authorization`.
    pub(super) shareable_with_auth: bool,
    pub(super) stale_while_revalidate: Duration,
    pub(super) stale_if_error: Duration,
}

/// One stored response.
#[derive(Debug)]
pub(super) struct Stored {
    pub(super) status: StatusCode,
    /// As received, minus hop-by-hop fields and `Age`, with `Content-Length` set to the body's.
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    /// The `Vary` field names and the storing request's values of them.
    pub(super) vary: Vec<(HeaderName, Option<Vec<u8>>)>,
    pub(super) policy: Policy,
    pub(super) response_time: SystemTime,
    /// RFC 9111 §4.2.3: the age when received, from `Date`, `Age` and the round trip.
    pub(super) corrected_initial_age: Duration,
    /// Body plus header bytes, compared with `max_object_bytes`.
    pub(super) size: usize,
    /// How long past storing this response is still of any use; drives moka's expiry.
    pub(super) keep_for: Duration,
    /// Unix seconds when a `stale-while-revalidate` refresh was handed out, 0 if none. A stored
    /// response is replaced, never mutated, after a refresh, so the claim resets with it.
    pub(super) refresh_claimed_at: AtomicU64,
}

impl Stored {
    pub(super) fn new(
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

    pub(super) fn weight(&self) -> usize {
        let vary_bytes: usize = self
            .vary
            .iter()
            .map(|(name, value)| name.as_str().len() + value.as_ref().map_or(0, Vec::len))
            .sum();
        self.size + vary_bytes + RESPONSE_OVERHEAD
    }

    pub(super) fn current_age(&self, now: SystemTime) -> Duration {
        let resident_time = now.duration_since(self.response_time).unwrap_or_default();
        self.corrected_initial_age + resident_time
    }

    pub(super) fn may_serve_stale(&self) -> bool {
        !self.policy.no_cache && !self.policy.no_stale
    }

    pub(super) fn matches(&self, request_headers: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| vary_value(request_headers, name) == *value)
    }

    pub(super) fn conditional_headers(&self) -> HeaderMap {
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
    pub(super) fn claim_refresh(&self, now: SystemTime) -> bool {
        let now = unix_seconds(now).max(1);
        let previous = self.refresh_claimed_at.load(Ordering::Acquire);
        if previous != 0 && now < previous + REFRESH_CLAIM_SECS {
            return false;
        }
        self.refresh_claimed_at
            .compare_exchange(previous, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(super) fn response(
        &self,
        method: &Method,
        age: Duration,
        status: CacheStatus,
    ) -> CachedResponse {
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

pub(super) fn header_date(headers: &HeaderMap, name: HeaderName) -> Option<SystemTime> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_http_date)
}

pub(super) fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Parses an HTTP-date in any of RFC 9110 §5.6.7's three forms: IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime
/// (`Sun Nov  6 08:49:37 1994`), with the `httpdate` crate hyper already brings. Dates before
/// 1970 are rejected.
pub(super) fn parse_http_date(text: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            parse_http_date("Tue, 01 Oct 2024 12:00:00 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(1_727_784_000))
        );
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
}
