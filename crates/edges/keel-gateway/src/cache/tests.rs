//! The cache's rules, tested with time as a parameter (no sleeping).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::HOST;
use http::response::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri};

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
