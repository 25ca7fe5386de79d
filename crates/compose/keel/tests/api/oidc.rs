//! The OpenID Connect provider driven end to end by an independent relying-party library
//! (the `openidconnect` crate): discovery, the authorization code flow with PKCE through the
//! sign-in page (as a browser would post it), the token exchange, ID token validation (issuer,
//! audience, nonce, EdDSA signature against the JWKS) and userinfo; then what the provider
//! refuses: unregistered redirect URIs, a reused code, a wrong verifier, forged CSRF.

use base64::Engine as _;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, RedirectUrl, Scope, TokenResponse,
};
use serde_json::{Value, json};

use crate::api::auth::{PASSWORD, grant, sign_up, tokens_of};
use crate::api::helpers::{Backend, TestApp};
use crate::on_every_backend;

on_every_backend!(
    an_independent_client_library_completes_the_code_flow_with_pkce,
    the_provider_refuses_what_it_must,
    prompt_none_answers_with_a_code_or_an_error_and_never_a_page,
    consent_is_remembered_per_client_and_scopes_and_withdrawn_from_the_account_page,
    prompt_login_prompt_consent_and_max_age_ask_again_and_auth_time_is_the_sign_ins,
    an_authentication_request_by_post_is_answered_as_by_get_and_the_form_keeps_its_csrf_check,
    authentication_schemes_are_case_insensitive_everywhere,
    a_replayed_code_revokes_the_tokens_its_first_use_gave,
    the_discovery_document_states_what_the_provider_does,
    amr_says_a_second_factor_was_used,
);

pub(crate) const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// Registers a client through the admin API; returns its secret (none for a public client).
pub(crate) async fn register(app: &TestApp, id: &str, public: bool) -> Option<String> {
    let root = sign_up(app, &format!("root-{id}@example.com")).await;
    grant(app, &root, &["admin"]).await;
    let admin = tokens_of(app, &format!("root-{id}@example.com"), PASSWORD).await;
    let res = app
        .client
        .post(app.url("/oauth/clients"))
        .bearer_auth(admin["access_token"].as_str().unwrap())
        .json(&json!({"client_id": id, "name": "Test App", "redirect_uris": [REDIRECT], "public": public}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    body["client_secret"].as_str().map(str::to_owned)
}

pub(crate) fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `name="…" value="…"` pairs of a page's hidden inputs.
pub(crate) fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|rest| {
            let name = rest.strip_prefix("name=\"")?.split('"').next()?;
            let value = rest.split("value=\"").nth(1)?.split('"').next()?;
            Some((
                name.to_owned(),
                value.replace("&amp;", "&").replace("&quot;", "\""),
            ))
        })
        .collect()
}

pub(crate) fn set_cookie_value(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
}

/// What a person does in the browser: open the authorization URL, sign in on the page, allow.
/// Returns the redirect's Location.
async fn sign_in_on_the_page(http: &reqwest::Client, url: &str, email: &str) -> String {
    signed_in_on_the_page(http, url, email).await.0
}

/// [`sign_in_on_the_page`], also returning the browser session cookie's value.
pub(crate) async fn signed_in_on_the_page(
    http: &reqwest::Client,
    url: &str,
    email: &str,
) -> (String, String) {
    let page = http.get(url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csrf_cookie = set_cookie_value(&page, "keel_csrf").expect("a CSRF cookie");
    let html = page.text().await.unwrap();
    assert!(html.contains("Sign in to Test App"), "{html}");
    let mut form = hidden_inputs(&html);
    form.push(("email".into(), email.into()));
    form.push(("password".into(), PASSWORD.into()));
    form.push(("decision".into(), "allow".into()));
    let base = url.split("/oauth/authorize").next().unwrap();
    let res = http
        .post(format!("{base}/oauth/authorize"))
        .header("cookie", format!("keel_csrf={csrf_cookie}"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "{:?}", res.text().await);
    let session = set_cookie_value(&res, "keel_session").expect("a session cookie");
    (
        res.headers()["location"].to_str().unwrap().to_owned(),
        session,
    )
}

pub(crate) fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

async fn an_independent_client_library_completes_the_code_flow_with_pkce(backend: Backend) {
    let app = crate::api::helpers::spawn_app(backend).await;
    let secret = register(&app, "test-app", false).await.expect("a secret");
    let ada = sign_up(&app, "ada@example.com").await;
    let http = no_redirects();

    let metadata =
        CoreProviderMetadata::discover_async(IssuerUrl::new(app.address.clone()).unwrap(), &http)
            .await
            .expect("discovery");
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new("test-app".into()),
        Some(ClientSecret::new(secret)),
    )
    .set_redirect_uri(RedirectUrl::new(REDIRECT.into()).unwrap());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge)
        .url();

    let location = sign_in_on_the_page(&http, url.as_str(), "ada@example.com").await;
    assert!(location.starts_with(REDIRECT), "{location}");
    assert_eq!(
        query_param(&location, "state").as_deref(),
        Some(state.secret().as_str())
    );
    let code = query_param(&location, "code").expect("a code");

    let tokens = client
        .exchange_code(AuthorizationCode::new(code.clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("the code exchanges for tokens");
    let id_token = tokens.id_token().expect("an ID token");
    let claims = id_token
        .claims(&client.id_token_verifier(), &nonce)
        .expect("the ID token validates: signature, issuer, audience, nonce, times");
    assert_eq!(claims.subject().as_str(), ada["id"].as_str().unwrap());
    assert_eq!(claims.email().map(|e| e.as_str()), Some("ada@example.com"));
    assert!(tokens.refresh_token().is_some());

    let info: CoreUserInfoClaims = client
        .user_info(tokens.access_token().clone(), None)
        .unwrap()
        .request_async(&http)
        .await
        .expect("userinfo");
    assert_eq!(info.subject().as_str(), ada["id"].as_str().unwrap());
    assert_eq!(info.email().map(|e| e.as_str()), Some("ada@example.com"));

    // The refresh token works at the token endpoint, once.
    let refreshed = client
        .exchange_refresh_token(tokens.refresh_token().unwrap())
        .unwrap()
        .request_async(&http)
        .await
        .expect("refresh");
    assert!(refreshed.id_token().is_some());
    assert!(
        client
            .exchange_refresh_token(tokens.refresh_token().unwrap())
            .unwrap()
            .request_async(&http)
            .await
            .is_err(),
        "a refresh token works once"
    );
    // The code works once.
    let (_, verifier2) = PkceCodeChallenge::new_random_sha256();
    assert!(
        client
            .exchange_code(AuthorizationCode::new(code))
            .unwrap()
            .set_pkce_verifier(verifier2)
            .request_async(&http)
            .await
            .is_err()
    );
}

async fn the_provider_refuses_what_it_must(backend: Backend) {
    let app = crate::api::helpers::spawn_app(backend).await;
    register(&app, "spa", true).await;
    sign_up(&app, "ada@example.com").await;
    let http = no_redirects();
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let authorize = |redirect: &str, with_pkce: bool| {
        let mut url = format!(
            "{}/oauth/authorize?response_type=code&client_id=spa&scope=openid%20email&state=s1&redirect_uri={}",
            app.address,
            keel_credentials::percent_encode(redirect)
        );
        if with_pkce {
            url.push_str(&format!(
                "&code_challenge={}&code_challenge_method=S256",
                challenge.as_str()
            ));
        }
        url
    };

    // An unregistered redirect URI is shown an error page, never redirected to.
    let res = http
        .get(authorize("http://evil.example/cb", true))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // A public client without PKCE is sent back with an error.
    let res = http.get(authorize(REDIRECT, false)).send().await.unwrap();
    assert_eq!(res.status(), 303);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("invalid_request")
    );
    assert_eq!(query_param(&location, "state").as_deref(), Some("s1"));

    // A form without the CSRF cookie is refused.
    let page = http.get(authorize(REDIRECT, true)).send().await.unwrap();
    let html = page.text().await.unwrap();
    let mut form = hidden_inputs(&html);
    form.extend([
        ("email".to_owned(), "ada@example.com".to_owned()),
        ("password".to_owned(), PASSWORD.to_owned()),
        ("decision".to_owned(), "allow".to_owned()),
    ]);
    let res = http
        .post(app.url("/oauth/authorize"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    // A wrong password re-shows the page with one message; nothing is redirected.
    let page = http.get(authorize(REDIRECT, true)).send().await.unwrap();
    let csrf_cookie = set_cookie_value(&page, "keel_csrf").unwrap();
    let mut form = hidden_inputs(&page.text().await.unwrap());
    form.extend([
        ("email".to_owned(), "ada@example.com".to_owned()),
        ("password".to_owned(), "not the password at all".to_owned()),
        ("decision".to_owned(), "allow".to_owned()),
    ]);
    let res = http
        .post(app.url("/oauth/authorize"))
        .header("cookie", format!("keel_csrf={csrf_cookie}"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("location").is_none());
    let html = res.text().await.unwrap();
    assert!(
        html.contains("The email or password is not right."),
        "{html}"
    );
    assert!(
        html.contains("value=\"ada@example.com\""),
        "the email is kept"
    );

    let location = sign_in_on_the_page(&http, &authorize(REDIRECT, true), "ada@example.com").await;
    let code = query_param(&location, "code").unwrap();
    let exchange = |verifier: &str, code: &str| {
        let http = http.clone();
        let url = app.url("/oauth/token");
        let form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", REDIRECT.to_owned()),
            ("client_id", "spa".to_owned()),
            ("code_verifier", verifier.to_owned()),
        ];
        async move { http.post(url).form(&form).send().await.unwrap() }
    };
    let wrong = exchange(
        "a-wrong-verifier-that-is-long-enough-to-be-well-formed-0123",
        &code,
    )
    .await;
    assert_eq!(wrong.status(), 400);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
    // The failed attempt used the code up: the right verifier is too late.
    let late = exchange(verifier.secret(), &code).await;
    assert_eq!(late.status(), 400);

    // A refresh grants the sign-in's scope (`openid email`), no more: no name in userinfo.
    let location = sign_in_on_the_page(&http, &authorize(REDIRECT, true), "ada@example.com").await;
    let res = exchange(verifier.secret(), &query_param(&location, "code").unwrap()).await;
    assert_eq!(res.status(), 200);
    let tokens: Value = res.json().await.unwrap();
    let res = http
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", "spa"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let refreshed: Value = res.json().await.unwrap();
    assert_eq!(refreshed["scope"], "openid email");
    let info: Value = http
        .get(app.url("/oauth/userinfo"))
        .bearer_auth(refreshed["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["email"], "ada@example.com");
    assert!(info.get("name").is_none(), "{info}");

    let res = http
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "nobody"),
            ("code", "x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
}

// ---- conformance (issue 15 §2) ----

const CLIENT: &str = "test-app";

/// An authorization URL of the confidential client `test-app` with `extra` query parameters.
fn authorize_url(app: &TestApp, scope: &str, extra: &str) -> String {
    format!(
        "{}/oauth/authorize?response_type=code&client_id={CLIENT}&state=s1&nonce=n1&scope={}&redirect_uri={}{extra}",
        app.address,
        keel_credentials::percent_encode(scope),
        keel_credentials::percent_encode(REDIRECT),
    )
}

/// Opens `url` with the browser's session cookie (if any): the answer.
async fn open(http: &reqwest::Client, url: &str, session: Option<&str>) -> reqwest::Response {
    let mut req = http.get(url);
    if let Some(session) = session {
        req = req.header("cookie", format!("keel_session={session}"));
    }
    req.send().await.unwrap()
}

/// Submits the page at `url` (opened with `session`) with `fields` added: the answer.
async fn submit_page(
    http: &reqwest::Client,
    url: &str,
    session: Option<&str>,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let page = open(http, url, session).await;
    assert_eq!(page.status(), 200, "the page is shown");
    let csrf_cookie = set_cookie_value(&page, "keel_csrf").expect("a CSRF cookie");
    let mut form = hidden_inputs(&page.text().await.unwrap());
    form.extend(
        fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let mut cookies = format!("keel_csrf={csrf_cookie}");
    if let Some(session) = session {
        cookies.push_str(&format!("; keel_session={session}"));
    }
    let base = url.split("/oauth/authorize").next().unwrap();
    http.post(format!("{base}/oauth/authorize"))
        .header("cookie", cookies)
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// Signs in on the page at `url` and allows: the redirect's Location and the new session.
async fn sign_in_and_allow(
    http: &reqwest::Client,
    url: &str,
    email: &str,
    extra: &[(&str, &str)],
) -> (String, String) {
    let mut fields = vec![
        ("email", email),
        ("password", PASSWORD),
        ("decision", "allow"),
    ];
    fields.extend_from_slice(extra);
    let res = submit_page(http, url, None, &fields).await;
    assert_eq!(res.status(), 303, "{:?}", res.text().await);
    let session = set_cookie_value(&res, "keel_session").expect("a session");
    (location(&res), session)
}

fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get("location")
        .unwrap_or_else(|| panic!("a redirect, not {}", res.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

fn decoded(value: &str) -> String {
    reqwest::Url::parse(&format!("http://x/?v={value}"))
        .unwrap()
        .query_pairs()
        .next()
        .unwrap()
        .1
        .into_owned()
}

/// The redirect back to the client, checked to be an authorization response of this issuer
/// (RFC 9207 `iss`) with the request's state.
fn response_to_client(app: &TestApp, res: &reqwest::Response) -> String {
    assert_eq!(res.status(), 303, "a redirect, never a page");
    let location = location(res);
    assert!(location.starts_with(REDIRECT), "{location}");
    assert_eq!(query_param(&location, "state").as_deref(), Some("s1"));
    assert_eq!(
        query_param(&location, "iss")
            .map(|i| decoded(&i))
            .as_deref(),
        Some(app.address.as_str()),
        "{location}"
    );
    location
}

async fn exchange(app: &TestApp, secret: &str, code: &str) -> reqwest::Response {
    app.client
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", CLIENT),
            ("client_secret", secret),
        ])
        .send()
        .await
        .unwrap()
}

async fn refresh(app: &TestApp, secret: &str, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", CLIENT),
            ("client_secret", secret),
        ])
        .send()
        .await
        .unwrap()
}

/// A JWT's claims (the signature is checked by the client-library tests above).
fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// The `auth_time` a session cookie records (`<user>.<auth_time>.<expires>.<amr>.<mac>`).
fn auth_time_of(session: &str) -> i64 {
    session.split('.').nth(1).unwrap().parse().unwrap()
}

async fn prompt_none_answers_with_a_code_or_an_error_and_never_a_page(backend: Backend) {
    let app = crate::api::helpers::spawn_app(backend).await;
    let secret = register(&app, CLIENT, false).await.unwrap();
    sign_up(&app, "ada@example.com").await;
    let http = no_redirects();

    // No session: login_required, back at the client.
    let res = open(
        &http,
        &authorize_url(&app, "openid email", "&prompt=none"),
        None,
    )
    .await;
    let back = response_to_client(&app, &res);
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("login_required")
    );

    let (_, session) = sign_in_and_allow(
        &http,
        &authorize_url(&app, "openid email", ""),
        "ada@example.com",
        &[],
    )
    .await;
    // Signed in, the scopes allowed: a code at once, without the consent page.
    let url = authorize_url(&app, "openid email", "&prompt=none");
    let back = response_to_client(&app, &open(&http, &url, Some(&session)).await);
    let code = query_param(&back, "code").expect("a code");
    let res = exchange(&app, &secret, &code).await;
    assert_eq!(res.status(), 200);
    let tokens: Value = res.json().await.unwrap();
    let id = claims_of(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["auth_time"], auth_time_of(&session));
    assert_eq!(id["nonce"], "n1");

    // A scope not allowed yet: consent_required.
    let url = authorize_url(&app, "openid email profile", "&prompt=none");
    let back = response_to_client(&app, &open(&http, &url, Some(&session)).await);
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("consent_required")
    );
    assert!(query_param(&back, "code").is_none());
    // A session older than max_age: login_required (max_age=0: always).
    let url = authorize_url(&app, "openid email", "&prompt=none&max_age=0");
    let back = response_to_client(&app, &open(&http, &url, Some(&session)).await);
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("login_required")
    );
    // A forged or foreign session cookie is no session.
    let forged = format!("{}x", &session[..session.len() - 1]);
    let url = authorize_url(&app, "openid email", "&prompt=none");
    let back = response_to_client(&app, &open(&http, &url, Some(&forged)).await);
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("login_required")
    );
    // none with another value is a bad request, still answered at the client.
    let url = authorize_url(&app, "openid", "&prompt=none%20login");
    let back = response_to_client(&app, &open(&http, &url, Some(&session)).await);
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("invalid_request")
    );
}

async fn consent_is_remembered_per_client_and_scopes_and_withdrawn_from_the_account_page(
    backend: Backend,
) {
    let app = crate::api::helpers::spawn_app(backend).await;
    let secret = register(&app, CLIENT, false).await.unwrap();
    sign_up(&app, "ada@example.com").await;
    let http = no_redirects();
    let url = authorize_url(&app, "openid email", "");
    let (back, session) = sign_in_and_allow(&http, &url, "ada@example.com", &[]).await;
    let code = query_param(&back, "code").unwrap();
    let tokens: Value = exchange(&app, &secret, &code).await.json().await.unwrap();

    // The same client and scopes again: no page, a code.
    let res = open(&http, &url, Some(&session)).await;
    let back = response_to_client(&app, &res);
    assert!(query_param(&back, "code").is_some());
    // Fewer scopes are within the consent too; more are asked for.
    let res = open(&http, &authorize_url(&app, "openid", ""), Some(&session)).await;
    assert!(query_param(&response_to_client(&app, &res), "code").is_some());
    let wider = open(
        &http,
        &authorize_url(&app, "openid email profile", ""),
        Some(&session),
    )
    .await;
    assert_eq!(wider.status(), 200);
    let html = wider.text().await.unwrap();
    assert!(html.contains("Signed in as"), "consent alone: {html}");

    // The account page lists the client; withdrawing needs the form's CSRF token.
    let page = app
        .client
        .get(app.url("/account/consents"))
        .header("cookie", format!("keel_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csrf_cookie = set_cookie_value(&page, "keel_csrf").unwrap();
    let html = page.text().await.unwrap();
    assert!(html.contains("data-client=\"test-app\""), "{html}");
    assert!(html.contains("Test App"), "{html}");
    assert!(html.contains("your email address"), "{html}");
    let csrf = hidden_inputs(&html)
        .into_iter()
        .find(|(k, _)| k == "csrf")
        .unwrap()
        .1;
    let withdraw = |csrf: String| {
        let http = http.clone();
        let url = app.url("/account/consents");
        let cookies = format!("keel_session={session}; keel_csrf={csrf_cookie}");
        async move {
            http.post(url)
                .header("cookie", cookies)
                .form(&[("csrf", csrf.as_str()), ("client_id", CLIENT)])
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(withdraw("forged".into()).await.status(), 403);
    let res = withdraw(csrf).await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/account/consents");
    let html = app
        .client
        .get(app.url("/account/consents"))
        .header("cookie", format!("keel_session={session}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("id=\"no-consents\""), "{html}");

    // Withdrawn: the page asks again, prompt=none answers consent_required, and the client's
    // refresh token stopped working.
    assert_eq!(open(&http, &url, Some(&session)).await.status(), 200);
    let none = authorize_url(&app, "openid email", "&prompt=none");
    let back = response_to_client(&app, &open(&http, &none, Some(&session)).await);
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("consent_required")
    );
    let res = refresh(&app, &secret, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(res.status(), 400);
    // Without a session, the account page sends the person to sign in.
    let res = http.get(app.url("/account/consents")).send().await.unwrap();
    assert_eq!(res.status(), 303);
    assert!(location(&res).starts_with("/signin?return_to="));
}

async fn prompt_login_prompt_consent_and_max_age_ask_again_and_auth_time_is_the_sign_ins(
    backend: Backend,
) {
    let app = crate::api::helpers::spawn_app(backend).await;
    let secret = register(&app, CLIENT, false).await.unwrap();
    sign_up(&app, "ada@example.com").await;
    let http = no_redirects();
    let url = authorize_url(&app, "openid", "");
    let (_, session) = sign_in_and_allow(&http, &url, "ada@example.com", &[]).await;

    for extra in ["&prompt=login", "&max_age=0", "&prompt=select_account"] {
        let again = authorize_url(&app, "openid", extra);
        let page = open(&http, &again, Some(&session)).await;
        assert_eq!(page.status(), 200, "{extra}");
        let html = page.text().await.unwrap();
        assert!(html.contains("name=\"password\""), "{extra}: {html}");
        assert!(!html.contains("Signed in as"), "{extra}");
        // Allowing without the password does not fall back to the session.
        let res = submit_page(&http, &again, Some(&session), &[("decision", "allow")]).await;
        assert_eq!(res.status(), 401, "{extra}");
        assert!(res.headers().get("location").is_none());
    }
    // Signing in again makes a new session whose auth_time the ID token carries.
    let again = authorize_url(&app, "openid", "&max_age=0");
    let res = submit_page(
        &http,
        &again,
        Some(&session),
        &[
            ("email", "ada@example.com"),
            ("password", PASSWORD),
            ("decision", "allow"),
        ],
    )
    .await;
    let back = response_to_client(&app, &res);
    let fresh = set_cookie_value(&res, "keel_session").expect("a new session");
    let tokens: Value = exchange(&app, &secret, &query_param(&back, "code").unwrap())
        .await
        .json()
        .await
        .unwrap();
    let id = claims_of(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["auth_time"], auth_time_of(&fresh));
    // A refresh keeps the sign-in's auth_time (Core §12.2).
    let refreshed: Value = refresh(&app, &secret, tokens["refresh_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    let id = claims_of(refreshed["id_token"].as_str().unwrap());
    assert_eq!(id["auth_time"], auth_time_of(&fresh));

    // A large max_age lets the session stand; the code's ID token keeps the session's
    // auth_time, not the time the code was issued.
    let long = authorize_url(&app, "openid", "&max_age=3600");
    let back = response_to_client(&app, &open(&http, &long, Some(&fresh)).await);
    let tokens: Value = exchange(&app, &secret, &query_param(&back, "code").unwrap())
        .await
        .json()
        .await
        .unwrap();
    let id = claims_of(tokens["id_token"].as_str().unwrap());
    assert_eq!(id["auth_time"], auth_time_of(&fresh));

    // prompt=consent shows the consent page to a signed-in browser that allowed before.
    let page = open(
        &http,
        &authorize_url(&app, "openid", "&prompt=consent"),
        Some(&fresh),
    )
    .await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Signed in as"), "{html}");
    let res = submit_page(
        &http,
        &authorize_url(&app, "openid", "&prompt=consent"),
        Some(&fresh),
        &[("decision", "allow")],
    )
    .await;
    assert!(query_param(&response_to_client(&app, &res), "code").is_some());
    // A max_age that is not a number is refused at the client.
    let bad = authorize_url(&app, "openid", "&max_age=soon");
    let back = response_to_client(&app, &open(&http, &bad, Some(&fresh)).await);
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("invalid_request")
    );
}

async fn an_authentication_request_by_post_is_answered_as_by_get_and_the_form_keeps_its_csrf_check(
    backend: Backend,
) {
    let app = crate::api::helpers::spawn_app(backend).await;
    register(&app, CLIENT, false).await.unwrap();
    sign_up(&app, "ada@example.com").await;
    let http = no_redirects();
    let request = [
        ("response_type", "code"),
        ("client_id", CLIENT),
        ("redirect_uri", REDIRECT),
        ("scope", "openid email"),
        ("state", "s1"),
    ];
    let post = |fields: Vec<(&'static str, &'static str)>, cookie: Option<String>| {
        let http = http.clone();
        let url = app.url("/oauth/authorize");
        async move {
            let mut req = http.post(url).form(&fields);
            if let Some(cookie) = cookie {
                req = req.header("cookie", cookie);
            }
            req.send().await.unwrap()
        }
    };
    // The request by POST gets the page, as by GET.
    let res = post(request.to_vec(), None).await;
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    assert!(html.contains("Sign in to Test App"), "{html}");
    // prompt=none by POST answers at the client too.
    let mut none = request.to_vec();
    none.push(("prompt", "none"));
    let back = response_to_client(&app, &post(none.clone(), None).await);
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("login_required")
    );
    // The page's own form without its CSRF token is still refused, credentials or not.
    let mut forged = request.to_vec();
    forged.extend([
        ("email", "ada@example.com"),
        ("password", PASSWORD),
        ("decision", "allow"),
    ]);
    assert_eq!(post(forged, None).await.status(), 403);
    let mut only_decision = request.to_vec();
    only_decision.push(("decision", "allow"));
    assert_eq!(post(only_decision, None).await.status(), 403);
    // With a session and the consent, a POSTed request gets its code.
    let get = authorize_url(&app, "openid email", "");
    let (_, session) = sign_in_and_allow(&http, &get, "ada@example.com", &[]).await;
    let res = post(none, Some(format!("keel_session={session}"))).await;
    assert!(query_param(&response_to_client(&app, &res), "code").is_some());
}

async fn authentication_schemes_are_case_insensitive_everywhere(backend: Backend) {
    let app = crate::api::helpers::spawn_app(backend).await;
    let secret = register(&app, CLIENT, false).await.unwrap();
    let ada = sign_up(&app, "ada@example.com").await;
    let http = no_redirects();
    let own = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let own = own["access_token"].as_str().unwrap();
    let with_auth = |method: reqwest::Method, path: &str, value: String| {
        app.client
            .request(method, app.url(path))
            .header("authorization", value)
    };
    // The API guard and /auth/*.
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let res = with_auth(reqwest::Method::GET, "/auth/me", format!("{scheme} {own}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{scheme} at /auth/me");
        let path = format!("/users/{}", ada["id"].as_str().unwrap());
        let res = with_auth(reqwest::Method::GET, &path, format!("{scheme} {own}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{scheme} at {path}");
    }
    // Another scheme, or none, is not a bearer token.
    for value in [
        format!("Basic {own}"),
        format!("Bearer{own}"),
        "Bearer ".to_owned(),
    ] {
        let res = with_auth(reqwest::Method::GET, "/auth/me", value.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{value}");
    }

    // The token endpoint's Basic client authentication.
    let (back, _) = sign_in_and_allow(
        &http,
        &authorize_url(&app, "openid email", ""),
        "ada@example.com",
        &[],
    )
    .await;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT}:{secret}"));
    let res = with_auth(
        reqwest::Method::POST,
        "/oauth/token",
        format!("basic {basic}"),
    )
    .form(&[
        ("grant_type", "authorization_code"),
        ("code", query_param(&back, "code").unwrap().as_str()),
        ("redirect_uri", REDIRECT),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200, "basic at /oauth/token");
    let tokens: Value = res.json().await.unwrap();
    let res = with_auth(
        reqwest::Method::POST,
        "/oauth/token",
        format!("BASIC {basic}"),
    )
    .form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200, "BASIC at /oauth/token");

    // Userinfo.
    let access = tokens["access_token"].as_str().unwrap();
    for scheme in ["bearer", "BEARER"] {
        let res = with_auth(
            reqwest::Method::GET,
            "/oauth/userinfo",
            format!("{scheme} {access}"),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(res.status(), 200, "{scheme} at userinfo");
    }
    let res = with_auth(
        reqwest::Method::GET,
        "/oauth/userinfo",
        format!("Basic {access}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 401);
}

async fn a_replayed_code_revokes_the_tokens_its_first_use_gave(backend: Backend) {
    let app = crate::api::helpers::spawn_app(backend).await;
    let secret = register(&app, CLIENT, false).await.unwrap();
    sign_up(&app, "ada@example.com").await;
    let http = no_redirects();
    let url = authorize_url(&app, "openid email", "");
    let (back, session) = sign_in_and_allow(&http, &url, "ada@example.com", &[]).await;
    let code = query_param(&back, "code").unwrap();
    let res = exchange(&app, &secret, &code).await;
    assert_eq!(res.status(), 200);
    let first: Value = res.json().await.unwrap();
    let userinfo = |token: String| {
        let req = app
            .client
            .get(app.url("/oauth/userinfo"))
            .bearer_auth(token);
        async move { req.send().await.unwrap().status() }
    };
    let first_access = first["access_token"].as_str().unwrap().to_owned();
    assert_eq!(userinfo(first_access.clone()).await, 200);

    // Another sign-in's tokens, which the replay must leave alone.
    let back = response_to_client(&app, &open(&http, &url, Some(&session)).await);
    let other: Value = exchange(&app, &secret, &query_param(&back, "code").unwrap())
        .await
        .json()
        .await
        .unwrap();

    let replay = exchange(&app, &secret, &code).await;
    assert_eq!(replay.status(), 400);
    assert_eq!(
        replay.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
    let res = refresh(&app, &secret, first["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        res.status(),
        400,
        "the first use's refresh token is revoked"
    );
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "invalid_grant");
    assert_eq!(
        userinfo(first_access).await,
        401,
        "and userinfo refuses its access token"
    );
    let res = refresh(&app, &secret, other["refresh_token"].as_str().unwrap()).await;
    assert_eq!(res.status(), 200, "another code's tokens keep working");
    // A code never issued revokes nothing and is refused the same way.
    assert_eq!(exchange(&app, &secret, "made-up").await.status(), 400);
}

async fn the_discovery_document_states_what_the_provider_does(backend: Backend) {
    let app = crate::api::helpers::spawn_app(backend).await;
    register(&app, CLIENT, false).await.unwrap();
    let doc: Value = app
        .client
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], app.address.as_str());
    assert_eq!(doc["request_uri_parameter_supported"], false);
    assert_eq!(doc["request_parameter_supported"], false);
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    assert_eq!(doc["response_modes_supported"], json!(["query"]));
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["EdDSA"])
    );
    for prompt in ["none", "login", "consent"] {
        assert!(
            doc["prompt_values_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(prompt)),
            "{prompt}"
        );
    }
    assert!(
        doc["claims_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("amr"))
    );
    // Each endpoint it names answers.
    for name in [
        "jwks_uri",
        "authorization_endpoint",
        "userinfo_endpoint",
        "end_session_endpoint",
    ] {
        let url = doc[name].as_str().unwrap();
        assert!(url.starts_with(&app.address), "{name}");
        let status = no_redirects().get(url).send().await.unwrap().status();
        assert_ne!(status, 404, "{name}");
        assert_ne!(status, 405, "{name}");
    }
    // What it says it does not support is refused, at the client, with iss.
    let http = no_redirects();
    for (param, error) in [
        (
            "&request_uri=https%3A%2F%2Frp.example%2Freq",
            "request_uri_not_supported",
        ),
        ("&request=eyJhbGciOiJub25lIn0.e30.", "request_not_supported"),
    ] {
        let res = open(&http, &authorize_url(&app, "openid", param), None).await;
        let back = response_to_client(&app, &res);
        assert_eq!(query_param(&back, "error").as_deref(), Some(error));
    }
    // An error answer carries iss as well as a code does.
    let back = response_to_client(
        &app,
        &open(&http, &authorize_url(&app, "email", ""), None).await,
    );
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("invalid_scope")
    );
}

async fn amr_says_a_second_factor_was_used(backend: Backend) {
    use keel_credentials::totp::{Totp, TotpSecret};
    let app = crate::api::helpers::spawn_app(backend).await;
    let secret = register(&app, CLIENT, false).await.unwrap();
    sign_up(&app, "ada@example.com").await;
    let http = no_redirects();
    // A password alone: pwd.
    let (back, _) = sign_in_and_allow(
        &http,
        &authorize_url(&app, "openid", ""),
        "ada@example.com",
        &[],
    )
    .await;
    let tokens: Value = exchange(&app, &secret, &query_param(&back, "code").unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        claims_of(tokens["id_token"].as_str().unwrap())["amr"],
        json!(["pwd"])
    );

    // Enrol an authenticator; sign in with a recovery code.
    let own = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let access = own["access_token"].as_str().unwrap();
    let enrolment: Value = app
        .client
        .post(app.url("/auth/totp"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let totp = Totp::new(TotpSecret::from_base32(enrolment["secret"].as_str().unwrap()).unwrap());
    let unix = u64::try_from(chrono::Utc::now().timestamp()).unwrap();
    let recovery: Value = app
        .client
        .post(app.url("/auth/totp/confirm"))
        .bearer_auth(access)
        .json(&json!({"code": totp.code_at(unix)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let codes = recovery["recovery_codes"].as_array().unwrap();

    let (back, session) = sign_in_and_allow(
        &http,
        &authorize_url(&app, "openid", ""),
        "ada@example.com",
        &[("second_factor", codes[0].as_str().unwrap())],
    )
    .await;
    let tokens: Value = exchange(&app, &secret, &query_param(&back, "code").unwrap())
        .await
        .json()
        .await
        .unwrap();
    let both = json!(["pwd", "otp"]);
    assert_eq!(claims_of(tokens["id_token"].as_str().unwrap())["amr"], both);
    assert_eq!(
        claims_of(tokens["access_token"].as_str().unwrap())["amr"],
        both
    );
    // A code issued later from the same session says the same; so does a refresh.
    let back = response_to_client(
        &app,
        &open(&http, &authorize_url(&app, "openid", ""), Some(&session)).await,
    );
    let tokens: Value = exchange(&app, &secret, &query_param(&back, "code").unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(claims_of(tokens["id_token"].as_str().unwrap())["amr"], both);
    let refreshed: Value = refresh(&app, &secret, tokens["refresh_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        claims_of(refreshed["id_token"].as_str().unwrap())["amr"],
        both
    );
    assert_eq!(
        claims_of(refreshed["access_token"].as_str().unwrap())["amr"],
        both
    );

    // keel's own sign-in and its refresh say it too.
    let res = app
        .client
        .post(app.url("/auth/login"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD, "second_factor": codes[1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let own: Value = res.json().await.unwrap();
    assert_eq!(
        claims_of(own["access_token"].as_str().unwrap())["amr"],
        both
    );
    let res = app
        .client
        .post(app.url("/auth/refresh"))
        .json(&json!({"refresh_token": own["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let refreshed: Value = res.json().await.unwrap();
    assert_eq!(
        claims_of(refreshed["access_token"].as_str().unwrap())["amr"],
        both
    );
}
