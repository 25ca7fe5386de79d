//! The console's router in process (no browser): who is let in (the caller keel's guard hands
//! it, by role), escaping, CSRF and origin checks, and
//! each page and action on a real SQLite hospital and queue.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use keel_api::console::{self, CSRF_COOKIE};
use keel_domain::Caller;
use keel_domain::{Hospital, PatientState};
use keel_test_support::ward::{Ward, ward};
use tower::ServiceExt;

const HOST: &str = "keel.test";
/// The browser's CSRF cookie in these requests.
const COOKIE: &str = "0123456789abcdef0123456789abcdef";
/// The key the console under test signs CSRF tokens with.
const CSRF_KEY: [u8; 32] = [7; 32];
/// The operator's account id, as the audit log names it (`console:<id>`).
const OPERATOR: &str = "0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee";

fn router(ward: &Ward) -> axum::Router {
    console::router(ward.service.clone(), keel_http::CsrfKey::new(&CSRF_KEY))
}

/// The CSRF token of [`COOKIE`]'s forms.
fn token() -> String {
    keel_http::CsrfKey::new(&CSRF_KEY).token(COOKIE)
}

/// The caller keel's API guard hands the console for a signed-in account with `roles`.
fn caller(roles: &[&str]) -> Caller {
    Caller {
        user: OPERATOR.parse().unwrap(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
    }
}

async fn send(
    app: &axum::Router,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header(header::HOST, HOST)
        .extension(caller(&["operator"]))
        .body(Body::empty())
        .unwrap()
}

fn post(path: &str, form: &str, origin: Option<&str>, cookie: Option<&str>) -> Request<Body> {
    let mut request = Request::post(path)
        .header(header::HOST, HOST)
        .extension(caller(&["operator"]))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(origin) = origin {
        request = request.header(header::ORIGIN, origin);
    }
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, format!("{CSRF_COOKIE}={cookie}"));
    }
    request.body(Body::from(form.to_owned())).unwrap()
}

#[tokio::test]
async fn every_page_needs_an_operator_or_admin() {
    let ward = ward().await;
    let app = router(&ward);
    for path in [
        "/admin/hospital",
        "/admin/hospital/causes",
        "/admin/hospital/patients/1",
        "/admin/hospital/replay?ids=1",
        "/admin/hospital/audit",
    ] {
        // Mounted without keel's guard, nobody is let in.
        let anonymous = Request::get(path).body(Body::empty()).unwrap();
        let (status, _, page) = send(&app, anonymous).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(page.contains("/signin"), "{path} says where to sign in");
        for roles in [&[][..], &["auditor"][..]] {
            let plain = Request::get(path)
                .extension(caller(roles))
                .body(Body::empty())
                .unwrap();
            assert_eq!(
                send(&app, plain).await.0,
                StatusCode::FORBIDDEN,
                "{path} {roles:?}"
            );
        }
        let admin = Request::get(path)
            .header(header::HOST, HOST)
            .extension(caller(&["admin"]))
            .body(Body::empty())
            .unwrap();
        assert_ne!(
            send(&app, admin).await.0,
            StatusCode::FORBIDDEN,
            "{path} admin"
        );
    }
    for (path, form) in [
        ("/admin/hospital/patients/1/edit", "csrf=x&body=y"),
        ("/admin/hospital/patients/1/discard", "csrf=x&reason=y"),
        ("/admin/hospital/replay", "csrf=x&ids=1"),
    ] {
        let anonymous = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap();
        assert_eq!(
            send(&app, anonymous).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        let plain = Request::post(path)
            .extension(caller(&[]))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap();
        assert_eq!(send(&app, plain).await.0, StatusCode::FORBIDDEN, "{path}");
    }
    let (status, headers, _) = send(&app, get("/admin/hospital")).await;
    assert_eq!(status, StatusCode::OK);
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with(&format!("{CSRF_COOKIE}=")), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
}

#[tokio::test]
async fn untrusted_payloads_errors_and_headers_are_rendered_inert() {
    let ward = ward().await;
    let app = router(&ward);
    let evil = "<script>alert(1)</script> permanent \"quoted\" & 'single'";
    let sent = ward.publish("order.created", evil, None).await;
    ward.drain().await;
    let id = ward.patient_of(sent.id).await.id;
    for path in [
        "/admin/hospital".to_owned(),
        "/admin/hospital/causes".to_owned(),
        format!("/admin/hospital/patients/{id}"),
        format!("/admin/hospital/replay?ids={id}"),
    ] {
        let (status, _, page) = send(&app, get(&path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!page.contains("<script>"), "{path} renders markup");
        assert!(
            page.contains("&lt;script&gt;alert("),
            "{path} shows it escaped"
        );
    }
}

#[tokio::test]
async fn posts_need_the_same_origin_and_the_cookie_token() {
    let ward = ward().await;
    let app = router(&ward);
    let sent = ward.publish("order.created", "permanent: a", None).await;
    ward.drain().await;
    let id = ward.patient_of(sent.id).await.id;
    let path = format!("/admin/hospital/patients/{id}/discard");
    let form = format!("csrf={}&reason=spam", token());
    let origin = format!("http://{HOST}");
    for (origin, cookie, why) in [
        (None, Some(COOKIE), "no origin"),
        (Some("http://evil.example"), Some(COOKIE), "another origin"),
        (Some(origin.as_str()), None, "no cookie"),
        (
            Some(origin.as_str()),
            Some("ffffffffffffffffffffffffffffffff"),
            "another token",
        ),
    ] {
        let (status, _, _) = send(&app, post(&path, &form, origin, cookie)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{why}");
    }
    // A plain double submit (the form repeating the cookie) is no token: it must be signed.
    let plain = format!("csrf={COOKIE}&reason=spam");
    let (status, _, _) = send(&app, post(&path, &plain, Some(&origin), Some(COOKIE))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the cookie as token");
    assert_eq!(
        ward.hospital.get(id).await.unwrap().unwrap().state,
        PatientState::Waiting,
        "nothing was done"
    );
    let (status, headers, _) = send(&app, post(&path, &form, Some(&origin), Some(COOKIE))).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        headers[header::LOCATION],
        format!("/admin/hospital/patients/{id}?done=discarded")
    );
    let patient = ward.hospital.get(id).await.unwrap().unwrap();
    assert_eq!(patient.state, PatientState::Discarded);
    assert_eq!(patient.settled.unwrap().by, format!("console:{OPERATOR}"));
}

#[tokio::test]
async fn edit_replay_and_audit_through_the_console() {
    let ward = ward().await;
    let app = router(&ward);
    let origin = format!("http://{HOST}");
    let sent = ward
        .publish("order.created", "permanent: {\"n\": 1}", Some("order-1"))
        .await;
    ward.drain().await;
    let id = ward.patient_of(sent.id).await.id;

    let (status, _, page) = send(&app, get(&format!("/admin/hospital/patients/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    for shown in [
        "order.created",
        "order-1",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "x-tenant",
        "permanent: {&quot;n&quot;: 1}",
        &sent.id.to_string(),
    ] {
        assert!(page.contains(shown), "the patient page shows {shown}");
    }

    // The textarea's CRLF line ends come back as LF.
    let form = format!("csrf={}&body=ok%0D%0Aline+2", token());
    let (status, _, _) = send(
        &app,
        post(
            &format!("/admin/hospital/patients/{id}/edit"),
            &form,
            Some(&origin),
            Some(COOKIE),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        ward.hospital.get(id).await.unwrap().unwrap().body,
        b"ok\nline 2"
    );

    let (status, _, page) = send(&app, get(&format!("/admin/hospital/replay?ids={id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("would replay"));
    assert!(page.contains("Replay 1 message(s)"));
    assert_eq!(ward.depth("billing").await, 0, "the preview sent nothing");

    let (status, _, page) = send(
        &app,
        post(
            "/admin/hospital/replay",
            &format!("csrf={}&ids={id}", token()),
            Some(&origin),
            Some(COOKIE),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("<span class=\"count\" id=\"replayed\">1</span> replayed"));
    assert_eq!(ward.depth("billing").await, 1);
    ward.drain().await;
    assert_eq!(
        ward.consumers.effect("billing", sent.id).as_deref(),
        Some(b"ok\nline 2".as_slice())
    );

    let (_, _, page) = send(&app, get("/admin/hospital/audit")).await;
    assert!(page.contains(&format!("console:{OPERATOR}")));
    assert!(page.matches("<td>replay</td>").count() == 1 && page.contains("<td>edit</td>"));

    // Filters and the cause view.
    let (_, _, page) = send(&app, get("/admin/hospital?state=replayed&group=billing")).await;
    assert!(page.contains(&format!("id=\"patient-{id}\"")));
    let (_, _, page) = send(&app, get("/admin/hospital?state=waiting")).await;
    assert!(!page.contains(&format!("id=\"patient-{id}\"")));
    let (status, _, _) = send(&app, get("/admin/hospital?reason=bogus")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, page) = send(&app, get("/admin/hospital/causes?state=any")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("permanent: {&quot;n&quot;: &lt;n&gt;}"),
        "{page}"
    );
    let (status, _, _) = send(&app, get("/admin/hospital/patients/999999")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
