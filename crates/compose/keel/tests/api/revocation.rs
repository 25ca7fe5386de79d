//! Revocation (issue 15 §1), on every backend: once an account is erased or disabled, signs out
//! everywhere or changes its password, every access token issued to it before is refused on
//! every route that accepts keel's tokens, and so are its refresh tokens, its browser session
//! at the IdP, its unredeemed authorization codes and its OpenID Connect clients' tokens;
//! tokens issued after (signing in again) work.

use openidconnect::PkceCodeChallenge;
use serde_json::{Value, json};

use crate::api::auth::{PASSWORD, grant, sign_up, tokens_of};
use crate::api::helpers::{Backend, TestApp, spawn_app};
use crate::api::oidc::{
    hidden_inputs, no_redirects, query_param, register, set_cookie_value, signed_in_on_the_page,
};
use crate::on_every_backend;

on_every_backend!(
    an_erased_admins_token_creates_no_admin_and_opens_no_route,
    a_disabled_accounts_tokens_are_refused_and_stay_refused_when_enabled,
    signing_out_everywhere_refuses_every_earlier_access_token,
    a_password_change_refuses_earlier_tokens_and_a_new_sign_in_in_the_same_second_works,
    browser_sessions_codes_and_oidc_tokens_stop_when_the_account_signs_out_everywhere,
);

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &Value,
    body: Option<Value>,
) -> reqwest::StatusCode {
    let mut req = app
        .client
        .request(method, app.url(path))
        .bearer_auth(token.as_str().unwrap());
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap().status()
}

/// The answers `token` gets from a route of each kind: the API guard (self, list), the IdP's
/// own routes, userinfo.
async fn answers(app: &TestApp, token: &Value, user: &str) -> Vec<(String, u16)> {
    use reqwest::Method;
    let mut out = Vec::new();
    for (method, path) in [
        (Method::GET, format!("/users/{user}")),
        (Method::GET, "/users".to_owned()),
        (Method::GET, "/auth/me".to_owned()),
        (Method::GET, "/auth/audit".to_owned()),
        (Method::GET, "/oauth/userinfo".to_owned()),
    ] {
        let status = call(app, method.clone(), &path, token, None).await;
        out.push((format!("{method} {path}"), status.as_u16()));
    }
    out
}

fn all_401(answers: &[(String, u16)]) -> bool {
    answers.iter().all(|(_, status)| *status == 401)
}

async fn refresh(app: &TestApp, tokens: &Value) -> u16 {
    app.post_json(
        "/auth/refresh",
        &json!({"refresh_token": tokens["refresh_token"]}),
    )
    .await
    .status()
    .as_u16()
}

async fn an_erased_admins_token_creates_no_admin_and_opens_no_route(backend: Backend) {
    let app = spawn_app(backend).await;
    let root = sign_up(&app, "root@example.com").await;
    grant(&app, &root, &["admin"]).await;
    let admin = tokens_of(&app, "root@example.com", PASSWORD).await;
    let id = root["id"].as_str().unwrap();
    let token = &admin["access_token"];
    // Seen before the erasure: the guard's cached-token fast path holds it.
    assert_eq!(
        call(&app, reqwest::Method::GET, "/users", token, None).await,
        200
    );

    let erased = call(
        &app,
        reqwest::Method::DELETE,
        &format!("/users/{id}"),
        token,
        None,
    )
    .await;
    assert_eq!(erased, 204);

    let new_admin = json!({"name": "Mallory", "email": "mallory@example.com", "roles": ["admin"]});
    let res = app
        .client
        .post(app.url("/users"))
        .bearer_auth(token.as_str().unwrap())
        .json(&new_admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "an erased admin makes no admin");
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "unauthenticated"
    );
    let answers = answers(&app, token, id).await;
    assert!(all_401(&answers), "{answers:?}");
    assert_eq!(refresh(&app, &admin).await, 401);
    app.stop().await;
}

async fn a_disabled_accounts_tokens_are_refused_and_stay_refused_when_enabled(backend: Backend) {
    let app = spawn_app(backend).await;
    let root = sign_up(&app, "root@example.com").await;
    grant(&app, &root, &["admin"]).await;
    let ada = sign_up(&app, "ada@example.com").await;
    grant(&app, &ada, &["admin"]).await;
    let admin = tokens_of(&app, "root@example.com", PASSWORD).await;
    let session = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let id = ada["id"].as_str().unwrap();
    let before = answers(&app, &session["access_token"], id).await;
    assert!(
        before.iter().all(|(_, status)| *status == 200),
        "{before:?}"
    );

    let path = |action: &str| format!("/auth/accounts/{id}/{action}");
    let post = reqwest::Method::POST;
    let admin_token = &admin["access_token"];
    assert_eq!(
        call(
            &app,
            post.clone(),
            &path("disable"),
            admin_token,
            Some(json!({}))
        )
        .await,
        204
    );
    let disabled = answers(&app, &session["access_token"], id).await;
    assert!(all_401(&disabled), "{disabled:?}");
    assert_eq!(refresh(&app, &session).await, 401);

    assert_eq!(
        call(&app, post, &path("enable"), admin_token, Some(json!({}))).await,
        204
    );
    let enabled = answers(&app, &session["access_token"], id).await;
    assert!(
        all_401(&enabled),
        "enabling brings no old token back: {enabled:?}"
    );
    let fresh = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let answers = answers(&app, &fresh["access_token"], id).await;
    assert!(answers.iter().all(|(_, s)| *s == 200), "{answers:?}");
    app.stop().await;
}

async fn signing_out_everywhere_refuses_every_earlier_access_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let ada = sign_up(&app, "ada@example.com").await;
    let id = ada["id"].as_str().unwrap();
    let laptop = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let phone = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let refreshed: Value = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": phone["refresh_token"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let post = reqwest::Method::POST;
    let res = call(
        &app,
        post,
        "/auth/logout-all",
        &laptop["access_token"],
        Some(json!({})),
    )
    .await;
    assert_eq!(res, 204);
    for tokens in [&laptop, &phone, &refreshed] {
        let answers = answers(&app, &tokens["access_token"], id).await;
        assert!(all_401(&answers), "{answers:?}");
        assert_eq!(refresh(&app, tokens).await, 401);
    }
    let again = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let get = reqwest::Method::GET;
    assert_eq!(
        call(&app, get, "/auth/me", &again["access_token"], None).await,
        200
    );
    app.stop().await;
}

async fn a_password_change_refuses_earlier_tokens_and_a_new_sign_in_in_the_same_second_works(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let ada = sign_up(&app, "ada@example.com").await;
    // An admin, so that every route of `answers` lets a valid token in.
    grant(&app, &ada, &["admin"]).await;
    let id = ada["id"].as_str().unwrap();
    let old = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let new = "an even longer passphrase now";
    let changed = call(
        &app,
        reqwest::Method::POST,
        "/auth/password",
        &old["access_token"],
        Some(json!({"current_password": PASSWORD, "new_password": new})),
    )
    .await;
    assert_eq!(changed, 204);
    // Straight after the change, within the same second as a rule: a counter, not a clock,
    // tells the two apart.
    let fresh = tokens_of(&app, "ada@example.com", new).await;
    let refused = answers(&app, &old["access_token"], id).await;
    assert!(all_401(&refused), "{refused:?}");
    let accepted = answers(&app, &fresh["access_token"], id).await;
    assert!(accepted.iter().all(|(_, s)| *s == 200), "{accepted:?}");
    assert_eq!(refresh(&app, &old).await, 401);
    assert_eq!(refresh(&app, &fresh).await, 200);
    app.stop().await;
}

async fn browser_sessions_codes_and_oidc_tokens_stop_when_the_account_signs_out_everywhere(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    register(&app, "spa", true).await;
    sign_up(&app, "ada@example.com").await;
    let http = no_redirects();
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let authorize = format!(
        "{}/oauth/authorize?response_type=code&client_id=spa&scope=openid%20email&state=s1&redirect_uri={}&code_challenge={}&code_challenge_method=S256",
        app.address,
        keel_credentials::percent_encode(crate::api::oidc::REDIRECT),
        challenge.as_str()
    );
    let exchange = |code: String| {
        let http = http.clone();
        let url = app.url("/oauth/token");
        let form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code),
            ("redirect_uri", crate::api::oidc::REDIRECT.to_owned()),
            ("client_id", "spa".to_owned()),
            ("code_verifier", verifier.secret().to_owned()),
        ];
        async move { http.post(url).form(&form).send().await.unwrap() }
    };
    // Asking for the client again with the browser session alone (no password): a code, at
    // once since the person allowed this client already, else after allowing it on the page.
    let allow_with_session = |session: String| {
        let http = http.clone();
        let authorize = authorize.clone();
        let url = app.url("/oauth/authorize");
        async move {
            let page = http
                .get(&authorize)
                .header("cookie", format!("keel_session={session}"))
                .send()
                .await
                .unwrap();
            if let Some(location) = page.headers().get("location") {
                return (true, query_param(location.to_str().unwrap(), "code"));
            }
            let csrf = set_cookie_value(&page, "keel_csrf").unwrap();
            let html = page.text().await.unwrap();
            let signed_in = html.contains("Signed in as");
            let mut form = hidden_inputs(&html);
            form.push(("decision".into(), "allow".into()));
            let res = http
                .post(url)
                .header(
                    "cookie",
                    format!("keel_csrf={csrf}; keel_session={session}"),
                )
                .form(&form)
                .send()
                .await
                .unwrap();
            let code = res
                .headers()
                .get("location")
                .and_then(|l| query_param(l.to_str().unwrap(), "code"));
            (signed_in, code)
        }
    };

    let (location, session) = signed_in_on_the_page(&http, &authorize, "ada@example.com").await;
    let res = exchange(query_param(&location, "code").unwrap()).await;
    assert_eq!(res.status(), 200);
    let oidc: Value = res.json().await.unwrap();
    let (signed_in, unredeemed) = allow_with_session(session.clone()).await;
    assert!(signed_in, "the session signs the browser in");
    let unredeemed = unredeemed.expect("a code from the session alone");
    let userinfo = |token: Value| {
        let http = http.clone();
        let url = app.url("/oauth/userinfo");
        async move {
            http.get(url)
                .bearer_auth(token.as_str().unwrap())
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(userinfo(oidc["access_token"].clone()).await, 200);

    let own = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let res = call(
        &app,
        reqwest::Method::POST,
        "/auth/logout-all",
        &own["access_token"],
        Some(json!({})),
    )
    .await;
    assert_eq!(res, 204);

    assert_eq!(
        userinfo(oidc["access_token"].clone()).await,
        401,
        "the client's access token"
    );
    let res = http
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", oidc["refresh_token"].as_str().unwrap()),
            ("client_id", "spa"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "the client's refresh token");
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "invalid_grant");
    let res = exchange(unredeemed).await;
    assert_eq!(res.status(), 400, "a code issued before");
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "invalid_grant");
    let (signed_in, code) = allow_with_session(session).await;
    assert!(!signed_in, "the browser session ended");
    assert_eq!(code, None, "and gets no code");

    // Signing in again works, at the IdP and for the client.
    let (location, _) = signed_in_on_the_page(&http, &authorize, "ada@example.com").await;
    let res = exchange(query_param(&location, "code").unwrap()).await;
    assert_eq!(res.status(), 200);
    let oidc: Value = res.json().await.unwrap();
    assert_eq!(userinfo(oidc["access_token"].clone()).await, 200);
    app.stop().await;
}
