//! The OpenID Connect provider driven end to end by an independent relying-party library
//! (the `openidconnect` crate): discovery, the authorization code flow with PKCE through the
//! sign-in page (as a browser would post it), the token exchange, ID token validation (issuer,
//! audience, nonce, EdDSA signature against the JWKS) and userinfo; then what the provider
//! refuses: unregistered redirect URIs, a reused code, a wrong verifier, forged CSRF.

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, RedirectUrl, Scope, TokenResponse,
};
use serde_json::{Value, json};

use crate::auth::{PASSWORD, grant, sign_up, tokens_of};
use crate::helpers::{Backend, TestApp};
use crate::on_every_backend;

on_every_backend!(
    an_independent_client_library_completes_the_code_flow_with_pkce,
    the_provider_refuses_what_it_must,
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
    let app = crate::helpers::spawn_app(backend).await;
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
    let app = crate::helpers::spawn_app(backend).await;
    register(&app, "spa", true).await;
    sign_up(&app, "ada@example.com").await;
    let http = no_redirects();
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let authorize = |redirect: &str, with_pkce: bool| {
        let mut url = format!(
            "{}/oauth/authorize?response_type=code&client_id=spa&scope=openid%20email&state=s1&redirect_uri={}",
            app.address,
            keel_identity::percent_encode(redirect)
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
