//! A rule engine plugged in as one more phase, through the API the binary uses
//! ([`Gateway::new`](keel_gateway::Gateway::new)'s `phases`): it scores a request's head, its
//! body and the upstream's response into one anomaly score in its per-request context, refuses
//! the request (or the response) once the total reaches its threshold, and otherwise annotates
//! the response with the score. The proxy knows nothing of it: this is the WAF's shape.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::Response;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, StatusCode, response};
use keel_gateway::phase::{ErasedPhase, Phase, Session, Step};

use crate::common::{Gw, Upstream, client, code, pool, route, settings};

/// What each request ended with: the route, the final score and the status sent.
type Log = Arc<Mutex<Vec<(Option<String>, u32, u16)>>>;

/// Scores: 3 for `script` in the query, 4 for `DROP TABLE` in the body, 3 for a response that
/// leaks an `x-debug-trace` header; blocks at 5.
struct AnomalyScore {
    log: Log,
}

const THRESHOLD: u32 = 5;

fn blocked(status: StatusCode, score: u32) -> Response<Body> {
    let body = serde_json::json!({ "error": format!("anomaly score {score}"), "code": "blocked" });
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = status;
    res
}

impl Phase for AnomalyScore {
    type Ctx = u32;

    fn name(&self) -> &'static str {
        "anomaly_score"
    }

    fn new_ctx(&self) -> u32 {
        0
    }

    fn request_head(&self, _s: &mut Session<'_>, head: &mut Parts, score: &mut u32) -> Step {
        if head.uri.query().is_some_and(|q| q.contains("script")) {
            *score += 3;
        }
        Step::Continue
    }

    async fn request_body(
        &self,
        _s: &mut Session<'_>,
        _head: &Parts,
        body: &Bytes,
        score: &mut u32,
    ) -> Step {
        if body.windows(10).any(|w| w == b"DROP TABLE") {
            *score += 4;
        }
        if *score >= THRESHOLD {
            return Step::Refuse(blocked(StatusCode::FORBIDDEN, *score));
        }
        Step::Continue
    }

    fn upstream_response_head(
        &self,
        _s: &mut Session<'_>,
        res: &mut response::Parts,
        score: &mut u32,
    ) -> Step {
        if res.headers.contains_key("x-debug-trace") {
            *score += 3;
        }
        if *score >= THRESHOLD {
            return Step::Refuse(blocked(StatusCode::BAD_GATEWAY, *score));
        }
        res.headers
            .insert("x-anomaly-score", HeaderValue::from(*score));
        Step::Continue
    }

    fn logging(&self, s: &Session<'_>, status: StatusCode, score: &mut u32) {
        self.log
            .lock()
            .unwrap()
            .push((s.route_name().map(str::to_owned), *score, status.as_u16()));
    }
}

/// An upstream that leaks a debug header on `/leak`, and the gateway with the engine in front.
async fn start() -> (Upstream, Gw, Log) {
    let up = Upstream::with("up", |seen, _| {
        let mut res = Response::new(Body::from("ok"));
        if seen.path() == "/leak" {
            res.headers_mut()
                .insert("x-debug-trace", HeaderValue::from_static("stack"));
        }
        res
    })
    .await;
    let log = Log::default();
    let engine: Arc<dyn ErasedPhase> = Arc::new(AnomalyScore { log: log.clone() });
    let gw = Gw::with_phases(
        settings(vec![pool("p", &[&up])], vec![route("/", "p")]),
        vec![engine],
    )
    .await;
    (up, gw, log)
}

fn last_logged(log: &Log) -> (Option<String>, u32, u16) {
    log.lock()
        .unwrap()
        .last()
        .cloned()
        .expect("a logged request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_request_passes_with_its_score_annotated() {
    let (up, gw, log) = start().await;
    let res = client().get(gw.url("/page?q=1")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-anomaly-score"], "0");
    assert_eq!(up.hits_on("/page"), 1);
    assert_eq!(last_logged(&log), (Some("*/".to_owned()), 0, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_below_the_threshold_pass_and_add_up_from_head_and_body() {
    let (up, gw, log) = start().await;
    let res = client()
        .post(gw.url("/form?q=script"))
        .body("name=x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-anomaly-score"], "3");
    assert_eq!(up.hits_on("/form"), 1);
    assert_eq!(last_logged(&log).1, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_body_scores_together_block_before_the_upstream() {
    let (up, gw, log) = start().await;
    let res = client()
        .post(gw.url("/form?q=script"))
        .body("q=1; DROP TABLE users")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(code(&res.text().await.unwrap()), "blocked");
    assert_eq!(
        up.hits_on("/form"),
        0,
        "a blocked request never reaches the upstream"
    );
    assert_eq!(last_logged(&log), (Some("*/".to_owned()), 7, 403));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_score_and_a_leaking_response_together_block_the_response() {
    let (up, gw, log) = start().await;
    // The response alone scores 3: passed, annotated.
    let res = client().get(gw.url("/leak")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-anomaly-score"], "3");
    // With the query's 3 the total reaches the threshold on the way out.
    let res = client().get(gw.url("/leak?q=script")).send().await.unwrap();
    assert_eq!(res.status(), 502);
    assert!(res.headers().get("x-debug-trace").is_none());
    assert_eq!(code(&res.text().await.unwrap()), "blocked");
    assert_eq!(
        up.hits_on("/leak"),
        2,
        "the upstream answered; its answer was withheld"
    );
    assert_eq!(last_logged(&log).1, 6);
    assert_eq!(last_logged(&log).2, 502);
}
