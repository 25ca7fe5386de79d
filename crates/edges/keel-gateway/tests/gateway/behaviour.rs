//! The gateway as a black box: the real listener in process on 127.0.0.1:0, in front of small
//! real upstream servers that record what reached them. Each test asserts what the client got
//! and what the upstreams saw.

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{
    Gw, Upstream, client, closed_port, code, eventually, get_n, pool, pool_of, route, settings,
};
use axum::body::Body;
use axum::http::Response;
use bytes::Bytes;
use keel_credentials::token::{Claims, KeySet};
use keel_gateway::settings::{CorsSettings, EdgeJwtSettings, RateLimitSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn all_ok(statuses: &[u16]) -> bool {
    statuses.iter().all(|s| *s == 200)
}

// ---------------------------------------------------------------------------------------------
// 1. Load balancing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_over_three_upstreams() {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let gw = Gw::start(settings(
        vec![pool("p", &[&a, &b, &c])],
        vec![route("/", "p")],
    ))
    .await;

    let statuses = get_n(&gw, "/rr", 30).await;

    assert!(all_ok(&statuses), "{statuses:?}");
    assert_eq!([a.hits(), b.hits(), c.hits()], [10, 10, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_sends_less_to_a_slow_upstream() {
    let slow = Upstream::start("slow").await;
    let fast = Upstream::start("fast").await;
    slow.set_delay(Duration::from_millis(150));
    let mut p = pool("p", &[&slow, &fast]);
    p.algorithm = "least-outstanding".to_owned();
    let gw = Gw::start(settings(vec![p], vec![route("/", "p")])).await;

    let until = Instant::now() + Duration::from_millis(800);
    let failures = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let url = gw.url("/work");
            let failures = failures.clone();
            tokio::spawn(async move {
                let client = client();
                while Instant::now() < until {
                    let res = client.get(&url).send().await.unwrap();
                    if res.status() != 200 {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = res.bytes().await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }

    assert_eq!(failures.load(Ordering::Relaxed), 0);
    let (s, f) = (slow.hits(), fast.hits());
    // Round robin would give both the same count; least-outstanding keeps the slow one at
    // about as many requests in flight as the fast one, a small share of the requests.
    assert!(f > 20, "the fast upstream got {f}");
    assert!(s * 4 < f, "slow got {s}, fast got {f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashing_on_header_cookie_and_path_is_sticky() {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let hashed = |name: &str, key: &str| {
        let mut p = pool(name, &[&a, &b, &c]);
        p.algorithm = "hash".to_owned();
        p.hash_key = Some(key.to_owned());
        p
    };
    let gw = Gw::start(settings(
        vec![
            hashed("by-header", "header:x-user"),
            hashed("by-cookie", "cookie:sid"),
            hashed("by-path", "path"),
        ],
        vec![
            route("/h", "by-header"),
            route("/c", "by-cookie"),
            route("/p", "by-path"),
        ],
    ))
    .await;
    let client = client();

    // Rounds outside, keys inside: round robin would move each key between rounds.
    let mut chosen: HashMap<(&str, usize), String> = HashMap::new();
    for _round in 0..4 {
        for k in 0..12 {
            for kind in ["header", "cookie", "path"] {
                let req = match kind {
                    "header" => client
                        .get(gw.url("/h/x"))
                        .header("x-user", format!("user-{k}")),
                    "cookie" => client
                        .get(gw.url("/c/x"))
                        .header("cookie", format!("theme=dark; sid=session-{k}")),
                    _ => client.get(gw.url(&format!("/p/item-{k}"))),
                };
                let res = req.send().await.unwrap();
                assert_eq!(res.status(), 200);
                let server = res.text().await.unwrap();
                let first = chosen.entry((kind, k)).or_insert_with(|| server.clone());
                assert_eq!(*first, server, "{kind} key {k} moved");
            }
        }
    }
    for kind in ["header", "cookie", "path"] {
        let used: HashSet<&String> = chosen
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, s)| s)
            .collect();
        assert!(used.len() >= 2, "{kind}: 12 keys all on {used:?}");
    }
    assert_eq!(a.hits() + b.hits() + c.hits(), 4 * 12 * 3);
}

// ---------------------------------------------------------------------------------------------
// 2. Active health checks
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_readiness_check_takes_an_upstream_out_and_recovery_brings_it_back() {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let gw = Gw::start(settings(
        vec![pool("p", &[&a, &b, &c])],
        vec![route("/", "p")],
    ))
    .await;
    assert!(all_ok(&get_n(&gw, "/", 6).await));
    assert_eq!(b.hits(), 2);

    b.set_ready(503);
    let out = eventually(Duration::from_secs(2), async || {
        let before = b.hits();
        get_n(&gw, "/", 6).await;
        b.hits() == before
    })
    .await
    .expect("b kept getting requests while its /readyz answered 503");
    assert!(out < Duration::from_millis(1000), "took {out:?}");
    let before = b.hits();
    assert!(all_ok(&get_n(&gw, "/", 30).await));
    assert_eq!(b.hits(), before, "an unhealthy upstream got requests");
    gw.wait_health("p", &b.authority(), false).await;

    b.set_ready(200);
    let back = eventually(Duration::from_secs(2), async || {
        let before = b.hits();
        get_n(&gw, "/", 6).await;
        b.hits() > before
    })
    .await
    .expect("b never got requests again after recovering");
    assert!(back < Duration::from_millis(1000), "took {back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_down_at_start_is_skipped() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let dead = closed_port();
    let mut r = route("/", "p");
    r.retries = 0;
    let gw = Gw::start(settings(
        vec![pool_of(
            "p",
            vec![a.authority(), dead.clone(), b.authority()],
        )],
        vec![r],
    ))
    .await;
    gw.wait_health("p", &dead, false).await;

    // No retries: a request sent to the dead server would fail.
    let statuses = get_n(&gw, "/", 30).await;

    assert!(all_ok(&statuses), "{statuses:?}");
    assert_eq!(a.hits() + b.hits(), 30);
    assert!(
        a.hits() >= 10 && b.hits() >= 10,
        "{} {}",
        a.hits(),
        b.hits()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Passive ejection
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_500s_is_ejected_then_readmitted() {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    b.set_status(500);
    let mut p = pool("p", &[&a, &b, &c]);
    p.eject_after_failures = 3;
    p.eject_base_ms = 500;
    let mut r = route("/", "p");
    r.retries = 0;
    let gw = Gw::start(settings(vec![p], vec![r])).await;
    let client = client();

    let mut errors = 0;
    let mut sent = 0;
    while b.hits() < 3 {
        let res = client.get(gw.url("/")).send().await.unwrap();
        if res.status() == 500 {
            errors += 1;
        }
        sent += 1;
        assert!(sent < 30, "b got only {} requests", b.hits());
    }
    let ejected_at = Instant::now();
    assert_eq!(errors, 3, "each of b's answers reached the client");

    let statuses = get_n(&gw, "/", 15).await;
    assert!(
        ejected_at.elapsed() < Duration::from_millis(400),
        "too slow to observe the ejection"
    );
    assert!(all_ok(&statuses), "{statuses:?}");
    assert_eq!(b.hits(), 3, "an ejected upstream got requests");

    let readmitted = eventually(Duration::from_secs(3), async || {
        get_n(&gw, "/", 3).await;
        b.hits() > 3
    })
    .await
    .expect("b was never re-admitted");
    let after = ejected_at.elapsed();
    assert!(
        after >= Duration::from_millis(400) && after < Duration::from_millis(1500),
        "re-admitted {after:?} after the ejection (polled for {readmitted:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Retries
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_get_meeting_a_503_is_retried_elsewhere() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.set_status(503);
    let mut r = route("/", "p");
    r.retries = 1;
    let gw = Gw::start(settings(vec![pool("p", &[&bad, &good])], vec![r])).await;

    for _ in 0..10 {
        assert_eq!(gw.get("/").await, (200, "good".to_owned()));
    }

    assert_eq!(good.hits(), 10);
    assert!(bad.hits() >= 1, "the 503 server was never tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_retried_elsewhere_for_any_method() {
    let good = Upstream::start("good").await;
    let mut p = pool_of("p", vec![closed_port(), good.authority()]);
    // No health checks: the dead server stays in the rotation and must be retried around.
    p.health_path = String::new();
    let mut r = route("/", "p");
    r.retries = 1;
    let gw = Gw::start(settings(vec![p], vec![r])).await;
    let client = client();

    for _ in 0..6 {
        assert_eq!(gw.get("/").await, (200, "good".to_owned()));
    }
    // A request that never left the gateway may go elsewhere whatever its method.
    for _ in 0..4 {
        let res = client
            .post(gw.url("/orders"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }

    assert_eq!(good.hits(), 10);
    assert_eq!(good.seen().iter().filter(|s| s.method == "POST").count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_got_a_503_is_not_retried() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.set_status(503);
    let mut r = route("/", "p");
    r.retries = 2;
    let gw = Gw::start(settings(vec![pool("p", &[&bad, &good])], vec![r])).await;
    let client = client();

    let mut unavailable = 0;
    let mut ok = 0;
    for _ in 0..4 {
        let res = client
            .post(gw.url("/orders"))
            .body("{}")
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            503 => unavailable += 1,
            200 => ok += 1,
            other => panic!("status {other}"),
        }
    }

    assert!(unavailable >= 1, "no POST met the 503 server");
    assert_eq!(bad.hits(), unavailable, "each 503 came from the bad server");
    assert_eq!(good.hits(), ok, "no POST was sent again after a 503");
    assert_eq!(
        bad.hits() + good.hits(),
        4,
        "each POST reached one upstream"
    );
}

/// A server that reads a request and closes the connection without answering; counts them.
async fn slammer() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                if let Ok(n) = stream.read(&mut buf).await
                    && n > 0
                {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_broken_after_sending_is_retried_only_when_idempotent() {
    let (broken, received) = slammer().await;
    let good = Upstream::start("good").await;
    let mut p = pool_of("p", vec![broken, good.authority()]);
    p.health_path = String::new();
    let mut r = route("/", "p");
    r.retries = 1;
    let gw = Gw::start(settings(vec![p], vec![r])).await;
    let client = client();

    for _ in 0..4 {
        assert_eq!(gw.get("/").await, (200, "good".to_owned()));
    }
    assert!(
        received.load(Ordering::SeqCst) >= 1,
        "no GET met the broken server"
    );
    assert_eq!(good.hits(), 4);

    // The POST may have been acted on: not sent again.
    let mut failed = 0;
    for _ in 0..4 {
        let res = client
            .post(gw.url("/orders"))
            .body("{}")
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => {}
            502 => {
                assert_eq!(code(&res.text().await.unwrap()), "upstream_failed");
                failed += 1;
            }
            other => panic!("status {other}"),
        }
    }
    assert!(failed >= 1, "no POST met the broken server");
    let posts = good.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(posts + failed, 4, "a POST that broke was sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_routes_limit() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
        Upstream::start("d").await,
    ];
    for u in &ups {
        u.set_status(503);
    }
    let refs: Vec<&Upstream> = ups.iter().collect();
    let mut two = route("/two", "p");
    two.retries = 2;
    let mut none = route("/none", "p");
    none.retries = 0;
    let gw = Gw::start(settings(vec![pool("p", &refs)], vec![two, none])).await;
    let total = || ups.iter().map(Upstream::hits).sum::<usize>();

    assert_eq!(gw.get("/two").await.0, 503);
    assert_eq!(total(), 3, "one try and two retries");
    for u in &ups {
        assert!(u.hits() <= 1, "a retry went to a server already tried");
    }

    assert_eq!(gw.get("/none").await.0, 503);
    assert_eq!(total(), 4, "no retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.set_status(503);
    let mut r = route("/", "p");
    r.retries = 1;
    let mut s = settings(vec![pool("p", &[&bad, &good])], vec![r]);
    s.retry_budget_ratio = 0.0;
    s.retry_budget_min_per_sec = 1;
    let gw = Gw::start(s).await;
    let started = Instant::now();

    let statuses = get_n(&gw, "/", 8).await;

    // Each request that met the bad server and still got 200 was retried.
    let unavailable = statuses.iter().filter(|s| **s == 503).count();
    let retried = bad.hits() - unavailable;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the requests spanned two budget seconds"
    );
    assert!(bad.hits() >= 2, "the budget was never tested: {statuses:?}");
    assert_eq!(retried, 1, "one retry per second: {statuses:?}");
    assert_eq!(good.hits(), 8 - unavailable);
}

// ---------------------------------------------------------------------------------------------
// 5. Timeout, 6. circuit breaker
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gives_504_within_the_routes_timeout() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    a.set_delay(Duration::from_secs(3));
    b.set_delay(Duration::from_secs(3));
    let mut r = route("/", "p");
    r.timeout_ms = 300;
    r.retries = 2;
    let gw = Gw::start(settings(vec![pool("p", &[&a, &b])], vec![r])).await;

    let started = Instant::now();
    let (status, body) = gw.get("/slow").await;
    let took = started.elapsed();

    assert_eq!(status, 504);
    assert_eq!(code(&body), "upstream_timeout");
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(1000),
        "took {took:?}"
    );
    assert_eq!(a.hits() + b.hits(), 1, "no time was left for a retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_in_flight_requests_fail_fast_with_503() {
    let slow = Upstream::start("slow").await;
    slow.set_delay(Duration::from_millis(800));
    let mut p = pool("p", &[&slow]);
    p.max_in_flight = 1;
    let gw = Gw::start(settings(vec![p], vec![route("/", "p")])).await;

    let url = gw.url("/");
    let first = tokio::spawn(async move {
        let res = client().get(url).send().await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    });
    eventually(Duration::from_secs(2), async || slow.hits() == 1)
        .await
        .expect("the first request never arrived");

    let extra: Vec<_> = (0..3)
        .map(|_| {
            let url = gw.url("/");
            tokio::spawn(async move {
                let started = Instant::now();
                let res = client().get(url).send().await.unwrap();
                let status = res.status().as_u16();
                (status, res.text().await.unwrap(), started.elapsed())
            })
        })
        .collect();
    for e in extra {
        let (status, body, took) = e.await.unwrap();
        assert_eq!(status, 503);
        assert_eq!(code(&body), "upstream_busy");
        assert!(took < Duration::from_millis(300), "took {took:?}");
    }

    assert_eq!(first.await.unwrap(), (200, "slow".to_owned()));
    assert_eq!(slow.hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// 7. Routing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_host_then_longest_prefix() {
    let api = Upstream::start("api").await;
    let v2 = Upstream::start("v2").await;
    let assets = Upstream::start("assets").await;
    let admin = Upstream::start("admin").await;
    let mut admin_route = route("/", "admin");
    admin_route.host = Some("admin.example.test".to_owned());
    let gw = Gw::start(settings(
        vec![
            pool("api", &[&api]),
            pool("v2", &[&v2]),
            pool("assets", &[&assets]),
            pool("admin", &[&admin]),
        ],
        vec![
            route("/api", "api"),
            route("/api/v2", "v2"),
            route("/static", "assets"),
            admin_route,
        ],
    ))
    .await;
    let client = client();

    for (path, want) in [
        ("/api", "api"),
        ("/api/x", "api"),
        ("/api/v2", "v2"),
        ("/api/v2/orders?page=2", "v2"),
        ("/api/v2x", "api"),
        ("/static/app.css", "assets"),
    ] {
        assert_eq!(gw.get(path).await, (200, want.to_owned()), "{path}");
    }
    for path in ["/apix", "/", "/nothing", "/staticx"] {
        let (status, body) = gw.get(path).await;
        assert_eq!((status, code(&body).as_str()), (404, "no_route"), "{path}");
    }
    // The host's route wins over the host-less ones, whatever the path; the port is ignored.
    for host in ["admin.example.test", "ADMIN.example.test:8443"] {
        let res = client
            .get(gw.url("/api/x"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), "admin", "{host}");
    }

    // The upstream sees the path as the client sent it.
    assert_eq!(v2.seen()[1].uri, "/api/v2/orders?page=2");
    assert_eq!(api.hits(), 3);
    assert_eq!(admin.hits(), 2);
}

// ---------------------------------------------------------------------------------------------
// 8. Request id, forwarding and hop-by-hop headers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_generated_kept_or_replaced() {
    let up = Upstream::start("a").await;
    let gw = Gw::start(settings(vec![pool("p", &[&up])], vec![route("/", "p")])).await;
    let client = client();
    let id_of = |res: &reqwest::Response| {
        res.headers()
            .get("x-request-id")
            .expect("a request id on the response")
            .to_str()
            .unwrap()
            .to_owned()
    };

    // Absent: generated, the same on both sides.
    let res = client.get(gw.url("/")).send().await.unwrap();
    let generated = id_of(&res);
    assert!(!generated.is_empty());
    assert_eq!(up.last().header("x-request-id"), Some(generated.as_str()));
    let res = client.get(gw.url("/")).send().await.unwrap();
    assert_ne!(id_of(&res), generated, "ids are unique");

    // Sane: kept.
    let sane = "client-42_a.b:c";
    let res = client
        .get(gw.url("/"))
        .header("x-request-id", sane)
        .send()
        .await
        .unwrap();
    assert_eq!(id_of(&res), sane);
    assert_eq!(up.last().header("x-request-id"), Some(sane));

    // Insane: replaced.
    for insane in ["x".repeat(129), "a b".to_owned(), "<script>".to_owned()] {
        let res = client
            .get(gw.url("/"))
            .header("x-request-id", &insane)
            .send()
            .await
            .unwrap();
        let replaced = id_of(&res);
        assert_ne!(replaced, insane);
        assert!(
            replaced.len() <= 128 && replaced.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{replaced}"
        );
        assert_eq!(up.last().header("x-request-id"), Some(replaced.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_dropped() {
    // The upstream's answer carries hop-by-hop headers of its own.
    let up = Upstream::with("a", |_, _| {
        Response::builder()
            .header("connection", "x-up-secret")
            .header("x-up-secret", "1")
            .header("keep-alive", "timeout=1")
            .header("x-up-kept", "yes")
            .body(Body::from("a"))
            .unwrap()
    })
    .await;
    let gw = Gw::start(settings(vec![pool("p", &[&up])], vec![route("/", "p")])).await;
    let client = client();

    let res = client
        .get(gw.url("/fwd"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("connection", "x-secret")
        .header("x-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("x-kept", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let back = res.headers();
    assert_eq!(back["x-up-kept"], "yes");
    for dropped in ["x-up-secret", "keep-alive"] {
        assert!(!back.contains_key(dropped), "{dropped} reached the client");
    }

    let seen = up.last();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    let host = gw.addr.to_string();
    assert_eq!(seen.header("x-forwarded-host"), Some(host.as_str()));
    assert_eq!(seen.header("host"), Some(host.as_str()));
    assert_eq!(seen.header("x-kept"), Some("yes"));
    for dropped in ["x-secret", "keep-alive", "te"] {
        assert_eq!(seen.header(dropped), None, "{dropped} reached the upstream");
    }
    assert!(
        seen.headers
            .get_all("connection")
            .iter()
            .all(|v| !v.to_str().unwrap().contains("x-secret")),
        "{:?}",
        seen.headers
    );

    // Without an earlier hop the client's address starts the list.
    client.get(gw.url("/fwd")).send().await.unwrap();
    assert_eq!(up.last().header("x-forwarded-for"), Some("127.0.0.1"));

    // Several field lines are one list (RFC 9110 §5.3): every hop is kept, in order.
    client
        .get(gw.url("/fwd"))
        .header("x-forwarded-for", "198.51.100.1")
        .header("x-forwarded-for", "198.51.100.2, 198.51.100.3")
        .send()
        .await
        .unwrap();
    let seen = up.last();
    let lines: Vec<&str> = seen
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        lines,
        ["198.51.100.1, 198.51.100.2, 198.51.100.3, 127.0.0.1"]
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Rate limits
// ---------------------------------------------------------------------------------------------

fn limit(name: &str, key: &str, burst: u32) -> RateLimitSettings {
    RateLimitSettings {
        name: name.to_owned(),
        key: key.to_owned(),
        // Slow refill: nothing comes back during the test.
        per_second: 0.2,
        burst,
        max_clients: 1000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ip_rate_limit_passes_the_burst_then_answers_429() {
    let up = Upstream::start("a").await;
    let mut r = route("/", "p");
    r.rate_limit = Some("per-ip".to_owned());
    let mut s = settings(vec![pool("p", &[&up])], vec![r]);
    s.rate_limits = vec![limit("per-ip", "ip", 3)];
    let gw = Gw::start(s).await;

    assert_eq!(get_n(&gw, "/", 3).await, [200, 200, 200]);
    let res = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 429);
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    assert_eq!(code(&res.text().await.unwrap()), "rate_limited");
    assert_eq!(up.hits(), 3, "a limited request reached the upstream");
}

/// An identity provider: signs tokens, publishes its JWKS at `/jwks`.
struct Idp {
    keys: KeySet,
    server: Upstream,
}

const ISSUER: &str = "https://idp.example.test";

impl Idp {
    async fn start() -> Self {
        let keys = KeySet::generate(3600);
        let jwks = keys.jwks().to_string();
        let server = Upstream::with("idp", move |_, _| {
            Response::builder()
                .header("content-type", "application/json")
                .body(Body::from(jwks.clone()))
                .unwrap()
        })
        .await;
        Self { keys, server }
    }

    fn settings(&self, name: &str, audience: &str) -> EdgeJwtSettings {
        EdgeJwtSettings {
            name: name.to_owned(),
            jwks_url: format!("http://{}/jwks", self.server.addr),
            issuer: ISSUER.to_owned(),
            audience: audience.to_owned(),
            jwks_ttl_secs: 3600,
        }
    }

    fn token(&self, sub: &str, audience: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        self.keys.sign(&Claims {
            iss: ISSUER.to_owned(),
            sub: sub.to_owned(),
            aud: vec![audience.to_owned()],
            exp: now + 300,
            nbf: now - 10,
            iat: now,
            jti: format!("jti-{sub}-{audience}"),
            extra: serde_json::Map::new(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subject_rate_limit_gives_each_subject_its_own_budget() {
    let idp = Idp::start().await;
    let up = Upstream::start("a").await;
    let mut r = route("/", "p");
    r.rate_limit = Some("per-subject".to_owned());
    r.jwt = Some("edge".to_owned());
    let mut s = settings(vec![pool("p", &[&up])], vec![r]);
    s.rate_limits = vec![limit("per-subject", "subject", 2)];
    s.jwt = vec![idp.settings("edge", "keel")];
    let gw = Gw::start(s).await;
    let client = client();
    let send = async |token: &str| {
        client
            .get(gw.url("/"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let (alice, bob) = (idp.token("alice", "keel"), idp.token("bob", "keel"));

    assert_eq!(send(&alice).await, 200);
    assert_eq!(send(&alice).await, 200);
    assert_eq!(send(&alice).await, 429);
    // Same address, another subject: a budget of its own.
    assert_eq!(send(&bob).await, 200);
    assert_eq!(send(&bob).await, 200);
    assert_eq!(send(&bob).await, 429);
    assert_eq!(send(&alice).await, 429);
    assert_eq!(up.hits(), 4);
}

// ---------------------------------------------------------------------------------------------
// 10. Allow and deny lists
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_lists_decide_by_client_address() {
    let up = Upstream::start("a").await;
    let cases: [(&[&str], &[&str], u16); 4] = [
        (&[], &["127.0.0.1/32"], 403),
        (&["10.0.0.0/8"], &[], 403),
        (&["127.0.0.0/8"], &[], 200),
        // Deny wins over allow.
        (&["127.0.0.0/8"], &["127.0.0.1/32"], 403),
    ];
    let mut expected_hits = 0;
    for (allow, deny, want) in cases {
        let mut s = settings(vec![pool("p", &[&up])], vec![route("/", "p")]);
        s.allow = allow.iter().map(|s| (*s).to_owned()).collect();
        s.deny = deny.iter().map(|s| (*s).to_owned()).collect();
        let gw = Gw::start(s).await;
        let (status, body) = gw.get("/").await;
        assert_eq!(status, want, "allow {allow:?} deny {deny:?}");
        if want == 403 {
            assert_eq!(code(&body), "forbidden");
        } else {
            expected_hits += 1;
        }
        assert_eq!(up.hits(), expected_hits, "allow {allow:?} deny {deny:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 11. Request size
// ---------------------------------------------------------------------------------------------

/// Writes `request` in one go on a new connection and reads the whole answer (the gateway
/// closes the connection after a 413).
async fn raw(gw: &Gw, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413_and_never_reach_the_upstream() {
    let up = Upstream::start("a").await;
    let mut s = settings(vec![pool("p", &[&up])], vec![route("/", "p")]);
    s.max_body_bytes = 1024;
    let gw = Gw::start(s).await;

    // Announced.
    let mut announced =
        b"POST /upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 2000\r\n\r\n".to_vec();
    announced.extend(std::iter::repeat_n(b'x', 2000));
    let answer = raw(&gw, &announced).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    // Sent: 4 chunks of 512 bytes.
    let mut chunked =
        b"POST /upload HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        chunked.extend(b"200\r\n");
        chunked.extend(std::iter::repeat_n(b'y', 512));
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let answer = raw(&gw, &chunked).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Just within: passes.
    let res = client()
        .post(gw.url("/upload"))
        .body(vec![b'z'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.hits(), 1, "an oversized body reached the upstream");
    assert_eq!(up.last().body.len(), 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_reach_the_upstream_exactly_and_again_on_a_retry() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.set_status(503);
    let mut r = route("/", "p");
    r.retries = 1;
    let mut s = settings(vec![pool("p", &[&bad, &good])], vec![r]);
    s.max_body_bytes = 4096;
    let gw = Gw::start(s).await;
    let client = client();
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();

    let mut tries = 0;
    while bad.hits() == 0 {
        let res = client
            .put(gw.url("/blob/1"))
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "a PUT met a 503 and was not retried");
        tries += 1;
        assert!(tries < 4, "no PUT went to the 503 server first");
    }
    // A chunked POST (no Content-Length) within the limit passes too.
    let answer = raw(
        &gw,
        b"POST /blob HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );

    let puts: Vec<_> = bad
        .seen()
        .into_iter()
        .chain(good.seen())
        .filter(|s| s.method == "PUT")
        .collect();
    assert!(puts.len() > tries, "the retry carried no second request");
    for seen in &puts {
        assert_eq!(
            seen.body.as_ref(),
            payload.as_slice(),
            "body changed on the way"
        );
    }
    let post = bad
        .seen()
        .into_iter()
        .chain(good.seen())
        .find(|s| s.method == "POST")
        .unwrap();
    assert_eq!(post.body.as_ref(), b"hello world");
}

// ---------------------------------------------------------------------------------------------
// 12. CORS
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_at_the_edge() {
    let up = Upstream::start("a").await;
    let mut s = settings(vec![pool("p", &[&up])], vec![route("/", "p")]);
    s.cors = Some(CorsSettings {
        allow_origins: vec!["https://app.example.test".to_owned()],
        ..CorsSettings::default()
    });
    let gw = Gw::start(s).await;
    let client = client();
    let preflight = |origin: &str| {
        client
            .request(reqwest::Method::OPTIONS, gw.url("/orders"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "content-type")
            .send()
    };

    let res = preflight("https://app.example.test").await.unwrap();
    assert_eq!(res.status(), 204);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.test");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("PUT"), "{methods}");
    let headers = h["access-control-allow-headers"].to_str().unwrap();
    assert!(headers.contains("content-type"), "{headers}");
    assert_eq!(h["access-control-max-age"], "600");

    let res = preflight("https://evil.example.test").await.unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.headers().get("access-control-allow-origin").is_none());
    assert_eq!(up.hits(), 0, "a preflight reached the upstream");

    let res = client
        .get(gw.url("/orders"))
        .header("origin", "https://app.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example.test"
    );
    let res = client
        .get(gw.url("/orders"))
        .header("origin", "https://evil.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("access-control-allow-origin").is_none());
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_refusals_carry_cors_grants() {
    // A browser app must be able to read a 401 or a 429 (and its Retry-After), or it sees a
    // network error instead.
    let idp = Idp::start().await;
    let up = Upstream::start("a").await;
    let mut secured = route("/me", "p");
    secured.jwt = Some("edge".to_owned());
    let mut limited = route("/limited", "p");
    limited.rate_limit = Some("per-ip".to_owned());
    let mut s = settings(vec![pool("p", &[&up])], vec![secured, limited]);
    s.jwt = vec![idp.settings("edge", "keel")];
    s.rate_limits = vec![limit("per-ip", "ip", 1)];
    s.cors = Some(CorsSettings {
        allow_origins: vec!["https://app.example.test".to_owned()],
        ..CorsSettings::default()
    });
    let gw = Gw::start(s).await;
    let client = client();
    let get = async |path: &str, origin: &str| {
        client
            .get(gw.url(path))
            .header("origin", origin)
            .send()
            .await
            .unwrap()
    };

    let res = get("/me", "https://app.example.test").await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example.test"
    );
    assert_eq!(res.headers()["vary"], "origin");
    assert_eq!(
        get("/limited", "https://app.example.test").await.status(),
        200
    );
    let res = get("/limited", "https://app.example.test").await;
    assert_eq!(res.status(), 429);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example.test"
    );
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("x-request-id"), "{exposed}");
    let res = get("/nowhere", "https://app.example.test").await;
    assert_eq!(res.status(), 404);
    assert!(res.headers().contains_key("access-control-allow-origin"));

    // Other origins still get no grant.
    let res = get("/me", "https://evil.example.test").await;
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("access-control-allow-origin").is_none());
    assert_eq!(up.hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// 13. Compression
// ---------------------------------------------------------------------------------------------

/// Valid JSON of exactly `n` bytes (n >= 10).
fn json_of_size(n: usize) -> Vec<u8> {
    let empty = br#"{"pad":""}"#.len();
    serde_json::to_vec(&serde_json::json!({ "pad": "p".repeat(n - empty) })).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_json_is_gzipped_for_clients_that_accept_it() {
    // About 4 KB of JSON.
    let big = {
        let items: Vec<_> = (0..120)
            .map(|i| serde_json::json!({ "id": i, "name": format!("item {i}"), "ok": true }))
            .collect();
        let v = serde_json::to_vec(&items).unwrap();
        assert!((4096..4600).contains(&v.len()), "{}", v.len());
        v
    };
    let small = json_of_size(100);
    assert_eq!(small.len(), 100);
    let (big_body, small_body) = (big.clone(), small.clone());
    let up = Upstream::with("a", move |seen, _| {
        let body = if seen.path() == "/big" {
            big_body.clone()
        } else {
            small_body.clone()
        };
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    })
    .await;
    let gw = Gw::start(settings(vec![pool("p", &[&up])], vec![route("/", "p")])).await;
    let client = client();

    let res = client
        .get(gw.url("/big"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-encoding"], "gzip");
    assert_eq!(res.headers()["vary"], "accept-encoding");
    let compressed = res.bytes().await.unwrap();
    assert!(compressed.len() < big.len() / 2, "{}", compressed.len());
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(compressed.as_ref())
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, big);

    // The plain copy varies too: a cache in front must not hand it to the next gzip client
    // as if it were the only representation.
    let res = client.get(gw.url("/big")).send().await.unwrap();
    assert!(res.headers().get("content-encoding").is_none());
    assert_eq!(res.headers()["vary"], "accept-encoding");
    assert_eq!(res.bytes().await.unwrap().as_ref(), big.as_slice());

    let res = client
        .get(gw.url("/small"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("content-encoding").is_none());
    assert!(res.headers().get("vary").is_none());
    assert_eq!(res.bytes().await.unwrap().as_ref(), small.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_responses_are_compressed_per_client() {
    let big = json_of_size(5000);
    let body = big.clone();
    let up = Upstream::with("origin", move |_, _| {
        Response::builder()
            .header("content-type", "application/json")
            .header("cache-control", "max-age=60")
            .header("etag", "\"big1\"")
            .body(Body::from(body.clone()))
            .unwrap()
    })
    .await;
    let gw = cached_gateway(&up).await;
    let client = client();

    for want in ["MISS", "HIT"] {
        let res = client
            .get(gw.url("/big"))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(x_cache(&res), want);
        assert_eq!(res.headers()["content-encoding"], "gzip");
        // The gzip bytes are not the stored ones: the validator is weakened.
        assert_eq!(res.headers()["etag"], "W/\"big1\"");
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(res.bytes().await.unwrap().as_ref())
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, big);
    }
    let res = client.get(gw.url("/big")).send().await.unwrap();
    assert_eq!(x_cache(&res), "HIT");
    assert!(res.headers().get("content-encoding").is_none());
    assert_eq!(res.headers()["etag"], "\"big1\"");
    assert_eq!(res.bytes().await.unwrap().as_ref(), big.as_slice());
    // The weak validator the gzip client holds still matches (weak comparison).
    let res = client
        .get(gw.url("/big"))
        .header("accept-encoding", "gzip")
        .header("if-none-match", "W/\"big1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    assert_eq!(up.hits(), 1);

    // An unsafe method goes through and drops the stored copy.
    let res = client.post(gw.url("/big")).body("x").send().await.unwrap();
    assert_eq!(x_cache(&res), "BYPASS");
    let res = client.get(gw.url("/big")).send().await.unwrap();
    assert_eq!(x_cache(&res), "MISS");
    assert_eq!(up.hits(), 3);
}

// ---------------------------------------------------------------------------------------------
// 14. JWT at the edge
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_checks_bearer_tokens_against_the_jwks() {
    let idp = Idp::start().await;
    let up = Upstream::start("a").await;
    let mut r = route("/", "p");
    r.jwt = Some("edge".to_owned());
    let mut s = settings(vec![pool("p", &[&up])], vec![r]);
    s.jwt = vec![idp.settings("edge", "keel")];
    let gw = Gw::start(s).await;
    let client = client();

    let res = client.get(gw.url("/me")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_eq!(code(&res.text().await.unwrap()), "unauthenticated");
    assert_eq!(
        up.hits(),
        0,
        "an unauthenticated request reached the upstream"
    );

    let res = client
        .get(gw.url("/me"))
        .bearer_auth(idp.token("alice", "keel"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.hits(), 1);
    assert!(
        up.last()
            .header("authorization")
            .is_some_and(|a| a.starts_with("Bearer ")),
        "the token is passed on"
    );

    for bad in [
        idp.token("alice", "another-api"),
        "not.a.token".to_owned(),
        format!("{}x", idp.token("alice", "keel")),
    ] {
        let res = client
            .get(gw.url("/me"))
            .bearer_auth(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{bad}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
    }
    assert_eq!(up.hits(), 1);
    assert_eq!(idp.server.hits(), 1, "the JWKS is fetched once");
}

// ---------------------------------------------------------------------------------------------
// 15. Response cache
// ---------------------------------------------------------------------------------------------

fn x_cache(res: &reqwest::Response) -> String {
    res.headers()
        .get("x-cache")
        .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
}

async fn cached_gateway(up: &Upstream) -> Gw {
    let mut r = route("/", "p");
    r.cache = true;
    Gw::start(settings(vec![pool("p", &[up])], vec![r])).await
}

/// An upstream with one path per caching behaviour.
async fn cacheable_upstream() -> Upstream {
    Upstream::with("origin", |seen, _| {
        let (cache_control, body) = match seen.path() {
            "/fresh" => ("max-age=60", "fresh body"),
            "/private" => ("private, max-age=60", "private body"),
            "/revalidate" => ("max-age=0, must-revalidate", "revalidated body"),
            _ => ("no-store", "other"),
        };
        if seen.path() == "/revalidate" && seen.header("if-none-match") == Some("\"v1\"") {
            return Response::builder()
                .status(304)
                .header("etag", "\"v1\"")
                .header("cache-control", cache_control)
                .body(Body::empty())
                .unwrap();
        }
        Response::builder()
            .header("content-type", "text/plain")
            .header("cache-control", cache_control)
            .header("etag", "\"v1\"")
            .body(Body::from(body))
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_responses_are_served_from_the_cache() {
    let up = cacheable_upstream().await;
    let gw = cached_gateway(&up).await;
    let client = client();

    let first = client.get(gw.url("/fresh")).send().await.unwrap();
    assert_eq!(x_cache(&first), "MISS");
    assert_eq!(first.text().await.unwrap(), "fresh body");
    for _ in 0..3 {
        let res = client.get(gw.url("/fresh")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(x_cache(&res), "HIT");
        assert_eq!(res.headers()["etag"], "\"v1\"");
        assert_eq!(res.text().await.unwrap(), "fresh body");
    }
    assert_eq!(up.hits_on("/fresh"), 1);

    // The client already holds it: 304 from the gateway.
    let res = client
        .get(gw.url("/fresh"))
        .header("if-none-match", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    assert!(res.bytes().await.unwrap().is_empty());
    let res = client
        .get(gw.url("/fresh"))
        .header("if-none-match", "\"v0\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.hits_on("/fresh"), 1);

    // Purged through the admin API: the next one is a miss.
    let purged: serde_json::Value = client
        .post(gw.admin_url("/cache/purge?prefix=/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(purged["purged"].as_u64().unwrap() >= 1, "{purged}");
    let res = client.get(gw.url("/fresh")).send().await.unwrap();
    assert_eq!(x_cache(&res), "MISS");
    assert_eq!(up.hits_on("/fresh"), 2);
    let res = client.get(gw.url("/fresh")).send().await.unwrap();
    assert_eq!(x_cache(&res), "HIT");
    assert_eq!(up.hits_on("/fresh"), 2);

    // The host is part of the key.
    let res = client
        .get(gw.url("/fresh"))
        .header("host", "other.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(x_cache(&res), "MISS");
    assert_eq!(up.hits_on("/fresh"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_responses_are_never_served_from_the_cache() {
    let up = cacheable_upstream().await;
    let gw = cached_gateway(&up).await;
    let client = client();

    for _ in 0..3 {
        let res = client.get(gw.url("/private")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_ne!(x_cache(&res), "HIT");
        assert_eq!(res.text().await.unwrap(), "private body");
    }
    assert_eq!(up.hits_on("/private"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_revalidate_responses_are_revalidated_with_a_304() {
    let up = cacheable_upstream().await;
    let gw = cached_gateway(&up).await;
    let client = client();
    let conditional = || {
        up.seen()
            .iter()
            .filter(|s| s.path() == "/revalidate" && s.header("if-none-match").is_some())
            .count()
    };

    let res = client.get(gw.url("/revalidate")).send().await.unwrap();
    assert_eq!(x_cache(&res), "MISS");
    assert_eq!(res.text().await.unwrap(), "revalidated body");
    assert_eq!(conditional(), 0);

    for n in 1..=2 {
        let res = client.get(gw.url("/revalidate")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(x_cache(&res), "REVALIDATED");
        assert_eq!(res.text().await.unwrap(), "revalidated body");
        assert_eq!(conditional(), n, "each use asks the upstream with the ETag");
    }
    assert_eq!(up.hits_on("/revalidate"), 3);
    assert_eq!(
        up.seen()[1].header("if-none-match"),
        Some("\"v1\""),
        "the stored validator is sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_behind() {
    let version = Arc::new(AtomicUsize::new(0));
    let counter = version.clone();
    let up = Upstream::with("origin", move |_, _| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Response::builder()
            .header("content-type", "text/plain")
            .header("cache-control", "max-age=1, stale-while-revalidate=30")
            .body(Body::from(format!("v{n}")))
            .unwrap()
    })
    .await;
    let gw = cached_gateway(&up).await;
    let client = client();

    let res = client.get(gw.url("/swr")).send().await.unwrap();
    assert_eq!(x_cache(&res), "MISS");
    assert_eq!(res.text().await.unwrap(), "v1");
    // From now on the upstream is slow: a stale answer must not wait for it.
    up.set_delay(Duration::from_millis(400));

    let mut stale_after = None;
    let found = eventually(Duration::from_secs(4), async || {
        let started = Instant::now();
        let res = client.get(gw.url("/swr")).send().await.unwrap();
        let took = started.elapsed();
        let status = x_cache(&res);
        let body = res.text().await.unwrap();
        match status.as_str() {
            "HIT" => {
                assert_eq!(body, "v1");
                false
            }
            "STALE" => {
                assert_eq!(body, "v1");
                stale_after = Some(took);
                true
            }
            other => panic!("x-cache {other} before the entry went stale"),
        }
    })
    .await;
    assert!(found.is_some(), "never served stale");
    let took = stale_after.unwrap();
    assert!(
        took < Duration::from_millis(300),
        "the stale answer waited for the upstream ({took:?})"
    );

    // The refresh happened in the background, and its answer replaced the entry.
    eventually(Duration::from_secs(3), async || up.hits() == 2)
        .await
        .expect("no background refresh");
    let refreshed = eventually(Duration::from_secs(3), async || {
        let res = client.get(gw.url("/swr")).send().await.unwrap();
        res.text().await.unwrap() == "v2"
    })
    .await;
    assert!(refreshed.is_some(), "the refreshed response never showed");
    assert_eq!(up.hits(), 2, "one refresh, no foreground trip");
}

// ---------------------------------------------------------------------------------------------
// 16. Hidden paths
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_gateway_hides_metrics_by_default() {
    let up = Upstream::start("a").await;
    let gw = Gw::start(settings(vec![pool("p", &[&up])], vec![route("/", "p")])).await;

    for path in ["/metrics", "/metrics/x", "/metrics?format=json"] {
        let (status, body) = gw.get(path).await;
        assert_eq!((status, code(&body).as_str()), (404, "not_found"), "{path}");
    }
    assert_eq!(up.hits(), 0, "a hidden path reached the upstream");
    // Only the path and what is under it.
    assert_eq!(gw.get("/metricsx").await.0, 200);
    assert_eq!(gw.get("/api/metrics").await.0, 200);
    assert_eq!(up.hits(), 2);
}

// ---------------------------------------------------------------------------------------------
// 17. Admin router
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_router_reports_health_readiness_and_upstreams() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    b.set_ready(503);
    let gw = Gw::start(settings(vec![pool("p", &[&a, &b])], vec![route("/", "p")])).await;
    let client = client();
    let status = async |path: &str| {
        client
            .get(gw.admin_url(path))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };

    assert_eq!(status("/healthz").await, 200);
    assert_eq!(status("/readyz").await, 200);
    gw.wait_health("p", &b.authority(), false).await;
    let doc: serde_json::Value = client
        .get(gw.admin_url("/upstreams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let servers = doc["pools"][0]["servers"].as_array().unwrap();
    assert_eq!(doc["pools"][0]["pool"], "p");
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["addr"], a.authority());
    assert_eq!(servers[0]["healthy"], true);
    assert_eq!(servers[1]["addr"], b.authority());
    assert_eq!(servers[1]["healthy"], false);
    assert_eq!(status("/readyz").await, 200, "one healthy server is enough");

    gw.gateway.start_draining();
    assert_eq!(status("/readyz").await, 503);
    assert_eq!(status("/healthz").await, 200, "draining is not dead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_a_pool_has_no_healthy_server() {
    let a = Upstream::start("a").await;
    let gw = Gw::start(settings(vec![pool("p", &[&a])], vec![route("/", "p")])).await;
    let client = client();
    let status = async || {
        client
            .get(gw.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status().await, 200);

    a.set_ready(503);
    eventually(Duration::from_secs(2), async || status().await == 503)
        .await
        .expect("ready with no healthy upstream");
    // And the public side says so too.
    let (code_, body) = gw.get("/").await;
    assert_eq!((code_, code(&body).as_str()), (502, "no_upstream"));

    a.set_ready(200);
    eventually(Duration::from_secs(2), async || status().await == 200)
        .await
        .expect("never ready again");
}

// ---------------------------------------------------------------------------------------------
// 18. Discovery file
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_join_and_leave_through_the_discovery_file() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("servers");
    std::fs::write(&file, format!("# the api\n{}\n", a.authority())).unwrap();
    let mut p = pool_of("p", vec![]);
    p.discovery_file = Some(file.clone());
    let gw = Gw::start(settings(vec![p], vec![route("/", "p")])).await;
    assert!(all_ok(&get_n(&gw, "/", 4).await));
    assert_eq!((a.hits(), b.hits()), (4, 0));

    std::fs::write(
        &file,
        format!("# the api\n{}\n{}  # new\n", a.authority(), b.authority()),
    )
    .unwrap();
    let joined = eventually(Duration::from_secs(3), async || {
        get_n(&gw, "/", 2).await;
        b.hits() > 0
    })
    .await
    .expect("b never got requests");
    assert!(joined < Duration::from_millis(1500), "took {joined:?}");

    // A garbage line: the file is refused whole, members stay a and b.
    std::fs::write(&file, format!("{}\nnot an address!\n", a.authority())).unwrap();
    // Two polls of the file (every 500 ms) and some.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = b.hits();
    assert!(all_ok(&get_n(&gw, "/", 10).await));
    assert_eq!(b.hits() - before, 5, "b left on a garbage file");

    std::fs::write(&file, format!("{}\n", a.authority())).unwrap();
    let left = eventually(Duration::from_secs(3), async || {
        let before = b.hits();
        get_n(&gw, "/", 4).await;
        b.hits() == before
    })
    .await
    .expect("b kept getting requests");
    assert!(left < Duration::from_millis(1500), "took {left:?}");
    let before = b.hits();
    assert!(all_ok(&get_n(&gw, "/", 20).await));
    assert_eq!(b.hits(), before);
}

// ---------------------------------------------------------------------------------------------
// 19. Reload
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_nothing() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let with = |u: &Upstream| settings(vec![pool("p", &[u])], vec![route("/", "p")]);
    let gw = Gw::start(with(&a)).await;

    let until = Instant::now() + Duration::from_millis(1500);
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let url = gw.url("/steady");
            let (failures, done) = (failures.clone(), done.clone());
            tokio::spawn(async move {
                let client = client();
                while Instant::now() < until {
                    match client.get(&url).send().await {
                        Ok(res) if res.status() == 200 => match res.text().await {
                            Ok(body) if body == "a" || body == "b" => {}
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(180)).await;
        let next = if i % 2 == 0 { &b } else { &a };
        gw.gateway.reload(&with(next)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.gateway.reload(&with(&b)).unwrap();
    for w in workers {
        w.await.unwrap();
    }

    let done = done.load(Ordering::Relaxed);
    assert_eq!(failures.load(Ordering::Relaxed), 0, "of {done}");
    assert!(done > 100, "only {done} requests: no load");
    assert!(a.hits() > 0 && b.hits() > 0);
    let (a_before, b_before) = (a.hits(), b.hits());
    assert!(all_ok(&get_n(&gw, "/", 20).await));
    assert_eq!(a.hits(), a_before, "the old upstream still gets requests");
    assert_eq!(b.hits(), b_before + 20);
}

// ---------------------------------------------------------------------------------------------
// 20. HTTP/2 with prior knowledge
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_reaches_an_http1_upstream() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let up = Upstream::start("a").await;
    let gw = Gw::start(settings(vec![pool("p", &[&up])], vec![route("/", "p")])).await;

    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = http::Request::get(format!("http://{}/h2/{i}", gw.addr))
            .header("x-stream", i.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), http::Version::HTTP_2);
        assert!(res.headers().contains_key("x-request-id"));
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.as_ref(), b"a");
    }

    // A body over HTTP/2 arrives whole, with its length, over HTTP/1.1.
    let req = http::Request::post(format!("http://{}/h2/upload", gw.addr))
        .body(Full::new(Bytes::from_static(b"over h2")))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let post = up.last();
    assert_eq!(post.body.as_ref(), b"over h2");
    assert_eq!(post.header("content-length"), Some("7"));

    let seen = &up.seen()[..3];
    assert_eq!(seen.len(), 3);
    let host = gw.addr.to_string();
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.version, http::Version::HTTP_11);
        assert_eq!(s.uri, format!("/h2/{i}"));
        assert_eq!(s.header("host"), Some(host.as_str()));
        assert_eq!(s.header("x-forwarded-host"), Some(host.as_str()));
        assert_eq!(s.header("x-stream"), Some(i.to_string().as_str()));
    }
}
