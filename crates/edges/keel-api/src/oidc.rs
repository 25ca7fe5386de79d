//! The OpenID Connect provider's HTTP face (issue 4): discovery, the authorization endpoint with
//! its sign-in and consent page (server-rendered, no outside assets), the token endpoint, userinfo,
//! end-session, and client registration for admins.
//!
//! The page keeps a browser session at the IdP in an HttpOnly, SameSite=Lax cookie (Secure when
//! the issuer is https), and every form carries a CSRF token bound to a second cookie.
//!
//! The authorization endpoint takes a request by GET or by POST (Core §3.1.2.1). A POST that
//! carries the page's own fields (`csrf`, `decision`, credentials) is the page's form and must
//! pass the CSRF check; any other POST is an authentication request and is answered exactly as
//! its GET would be, so it can do nothing a link could not. Every answer sent back to the client
//! carries `iss` (RFC 9207).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use base64::Engine as _;
use keel_identity::oidc::{AuthorizeError, AuthorizeRequest, Authorized, Next, OAuthError};
use keel_identity::service::{AuthError, Idp, SignIn};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{ClientAddr, idp, now};
use crate::extract::{Form, JsonBody, Query};
use crate::input::ClientInput;
use crate::policy::Signed;
use crate::{ApiError, AppState};

pub(crate) const SESSION_COOKIE: &str = "keel_session";
const CSRF_COOKIE: &str = "keel_csrf";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/oauth/authorize", get(authorize_get).post(authorize_post))
        .route("/oauth/token", axum::routing::post(token))
        .route("/oauth/userinfo", get(userinfo).post(userinfo))
        .route("/oauth/logout", get(logout))
        .route("/oauth/clients", axum::routing::post(register_client))
}

async fn discovery(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(idp(&state)?.oidc().discovery()).into_response())
}

// ---- cookies ----

/// The IdP's browser session cookie of a request (the console accepts it, see `policy`).
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, SESSION_COOKIE)
}

pub(crate) use keel_http::cookie;

pub(crate) fn set_cookie(
    idp: &Idp,
    name: &str,
    value: &str,
    max_age: i64,
    same_site: &str,
) -> HeaderValue {
    let secure = if idp.settings().issuer.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}"
    ))
    .expect("cookie values are base64url and digits")
}

// ---- the page ----

pub(crate) use keel_http::html::escape;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem;color:#222}\
h1{font-size:1.3rem}label{display:block;margin:.8rem 0 .2rem}input{width:100%;padding:.5rem;box-sizing:border-box}\
button{margin-top:1rem;padding:.6rem 1rem}.error{color:#a00}.muted{color:#666;font-size:.9rem}";

pub(crate) fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        title = escape(title)
    ))
}

fn hidden_fields(request: &AuthorizeRequest) -> String {
    let pairs = [
        ("response_type", &request.response_type),
        ("client_id", &request.client_id),
        ("redirect_uri", &request.redirect_uri),
        ("scope", &request.scope),
        ("state", &request.state),
        ("nonce", &request.nonce),
        ("code_challenge", &request.code_challenge),
        ("code_challenge_method", &request.code_challenge_method),
        ("prompt", &request.prompt),
        ("max_age", &request.max_age),
    ];
    pairs
        .iter()
        .filter_map(|(name, value)| {
            value.as_ref().map(|v| {
                format!(
                    "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                    escape(v)
                )
            })
        })
        .collect()
}

struct Form_<'a> {
    request: &'a AuthorizeRequest,
    authorized: &'a Authorized,
    csrf: &'a str,
    signed_in_as: Option<&'a str>,
    email: &'a str,
    ask_second_factor: bool,
    error: Option<&'a str>,
}

fn authorize_form(f: &Form_<'_>) -> Html<String> {
    let client = escape(&f.authorized.client.name);
    let wants: Vec<&str> = f
        .authorized
        .scope
        .split_whitespace()
        .filter_map(|s| match s {
            "email" => Some("your email address"),
            "profile" => Some("your name"),
            _ => None,
        })
        .collect();
    let wants = if wants.is_empty() {
        "who you are".to_owned()
    } else {
        format!("who you are, {}", wants.join(" and "))
    };
    let error = f
        .error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let credentials = match f.signed_in_as {
        Some(email) => format!("<p>Signed in as <strong>{}</strong>.</p>", escape(email)),
        None => {
            let second = if f.ask_second_factor {
                "<label for=\"second_factor\">Code from your authenticator app, or a recovery code</label>\
                 <input id=\"second_factor\" name=\"second_factor\" autocomplete=\"one-time-code\" inputmode=\"numeric\" autofocus>"
            } else {
                ""
            };
            format!(
                "<label for=\"email\">Email</label>\
                 <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" value=\"{email}\" required>\
                 <label for=\"password\">Password</label>\
                 <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>{second}",
                email = escape(f.email)
            )
        }
    };
    let action = if f.signed_in_as.is_some() {
        "Allow"
    } else {
        "Sign in and allow"
    };
    page(
        &format!("Sign in to {}", f.authorized.client.name),
        &format!(
            "<h1>Sign in to {client}</h1><p>{client} will see {wants}.</p>{error}\
             <form method=\"post\" action=\"/oauth/authorize\">{hidden}\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">{credentials}\
             <button type=\"submit\" name=\"decision\" value=\"allow\">{action}</button> \
             <button type=\"submit\" name=\"decision\" value=\"deny\" formnovalidate>Deny</button></form>\
             <p class=\"muted\">keel identity</p>",
            hidden = hidden_fields(f.request),
            csrf = escape(f.csrf),
        ),
    )
}

fn error_page(status: StatusCode, message: &str) -> Response {
    (
        status,
        page(
            "Sign-in request refused",
            &format!(
                "<h1>This sign-in request cannot be served</h1><p class=\"error\">{}</p>",
                escape(message)
            ),
        ),
    )
        .into_response()
}

/// `redirect_uri` with `params` added to its query.
fn back_to(redirect_uri: &str, params: &[(&str, Option<&str>)]) -> Response {
    let mut url = redirect_uri.to_owned();
    let mut sep = if url.contains('?') { '&' } else { '?' };
    for (name, value) in params {
        if let Some(value) = value {
            url.push(sep);
            url.push_str(name);
            url.push('=');
            url.push_str(&keel_credentials::percent_encode(value));
            sep = '&';
        }
    }
    Redirect::to(&url).into_response()
}

/// An authorization response to the client: `params`, its `state` and the issuer's `iss`
/// (RFC 9207: the client knows which provider answered).
fn answer(
    idp: &Idp,
    redirect_uri: &str,
    state: Option<&str>,
    params: &[(&str, Option<&str>)],
) -> Response {
    let mut all = params.to_vec();
    all.push(("state", state));
    all.push(("iss", Some(&idp.settings().issuer)));
    let mut res = back_to(redirect_uri, &all);
    no_store(&mut res);
    res
}

/// An error response to the client.
fn answer_error(idp: &Idp, authorized: &Authorized, code: &str, description: &str) -> Response {
    answer(
        idp,
        &authorized.redirect_uri,
        authorized.state.as_deref(),
        &[
            ("error", Some(code)),
            ("error_description", Some(description)),
        ],
    )
}

fn refused(idp: &Idp, e: AuthorizeError) -> Response {
    match e {
        AuthorizeError::Display(message) => error_page(StatusCode::BAD_REQUEST, &message),
        AuthorizeError::Redirect {
            redirect_uri,
            state,
            error,
        } => answer(
            idp,
            &redirect_uri,
            state.as_deref(),
            &[
                ("error", Some(error.code)),
                ("error_description", Some(&error.description)),
            ],
        ),
    }
}

/// Whether a form's CSRF token belongs to this browser's CSRF cookie.
pub(crate) fn csrf_ok(idp: &Idp, headers: &HeaderMap, token: Option<&str>) -> bool {
    match (cookie(headers, CSRF_COOKIE), token) {
        (Some(cookie), Some(token)) => csrf_key(idp).verify(cookie, token),
        _ => false,
    }
}

/// The CSRF cookie of this browser, made if it has none yet, and the token for its forms.
pub(crate) fn csrf_for(idp: &Idp, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    match cookie(headers, CSRF_COOKIE) {
        Some(value) if !value.is_empty() => (csrf_key(idp).token(value), None),
        _ => {
            let value = keel_http::csrf::new_cookie();
            let header = set_cookie(idp, CSRF_COOKIE, &value, 3600, "Lax");
            (csrf_key(idp).token(&value), Some(header))
        }
    }
}

/// The key of the IdP's pages' CSRF tokens.
fn csrf_key(idp: &Idp) -> keel_http::CsrfKey {
    keel_http::CsrfKey::new(&idp.browser().csrf_key())
}

/// The session of this browser that can stand for its person now, if any.
async fn current_session(
    idp: &Idp,
    headers: &HeaderMap,
    now: i64,
) -> Result<Option<keel_identity::oidc::BrowserSession>, ApiError> {
    Ok(match cookie(headers, SESSION_COOKIE) {
        Some(value) => idp
            .browser()
            .current_session(value, now)
            .await?
            .map(|(s, _)| s),
        None => None,
    })
}

/// `GET /oauth/authorize`.
async fn authorize_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(request): Query<AuthorizeRequest>,
) -> Result<Response, ApiError> {
    authorization_request(&state, &headers, &request).await
}

/// `POST /oauth/authorize`: the page's form (CSRF-checked), or an authentication request sent
/// by POST (Core §3.1.2.1), answered as its GET.
async fn authorize_post(
    State(state): State<AppState>,
    peer: ClientAddr,
    headers: HeaderMap,
    Form(form): Form<AuthorizeForm>,
) -> Result<Response, ApiError> {
    let from_the_page = form.csrf.is_some()
        || form.decision.is_some()
        || form.email.is_some()
        || form.password.is_some()
        || form.second_factor.is_some();
    if from_the_page {
        authorize_submit(&state, peer, &headers, form).await
    } else {
        authorization_request(&state, &headers, &form.request).await
    }
}

/// An authentication request: checked, then answered with a code at once (a current session
/// that already allowed these scopes), the page (sign-in and consent, or consent alone), or,
/// under `prompt=none`, the error saying what the page would have asked.
async fn authorization_request(
    state: &AppState,
    headers: &HeaderMap,
    request: &AuthorizeRequest,
) -> Result<Response, ApiError> {
    let idp = idp(state)?;
    let authorized = match idp.oidc().check_authorize(request).await {
        Ok(authorized) => authorized,
        Err(e) => return Ok(refused(idp, e)),
    };
    let now = now();
    let session = current_session(idp, headers, now).await?;
    let next = idp.oidc().next_step(&authorized, session, now).await?;
    let signed_in_as = match &next {
        Next::Consent(session) => state
            .users
            .get(session.user)
            .await?
            .map(|u| u.value.email.as_str().to_owned()),
        _ => None,
    };
    match (next, authorized.prompt.none) {
        (Next::Code(session), _) => {
            let code = idp.oidc().issue_code(&authorized, &session, now).await?;
            return Ok(answer(
                idp,
                &authorized.redirect_uri,
                authorized.state.as_deref(),
                &[("code", Some(&code))],
            ));
        }
        (Next::SignIn, true) => {
            return Ok(answer_error(
                idp,
                &authorized,
                "login_required",
                "the person must sign in",
            ));
        }
        (Next::Consent(_), true) => {
            return Ok(answer_error(
                idp,
                &authorized,
                "consent_required",
                "the person must allow the client these scopes",
            ));
        }
        _ => {}
    }
    let (csrf, set) = csrf_for(idp, headers);
    let mut res = authorize_form(&Form_ {
        request,
        authorized: &authorized,
        csrf: &csrf,
        signed_in_as: signed_in_as.as_deref(),
        email: "",
        ask_second_factor: false,
        error: None,
    })
    .into_response();
    if let Some(set) = set {
        res.headers_mut().append(header::SET_COOKIE, set);
    }
    no_store(&mut res);
    Ok(res)
}

pub(crate) fn no_store(res: &mut Response) {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The page must not be framed by another site (clickjacking the consent button).
    res.headers_mut()
        .insert("x-frame-options", HeaderValue::from_static("DENY"));
    res.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http: https:; frame-ancestors 'none'"),
    );
}

#[derive(Debug, Deserialize)]
struct AuthorizeForm {
    #[serde(flatten)]
    request: AuthorizeRequest,
    csrf: Option<String>,
    decision: Option<String>,
    email: Option<String>,
    password: Option<String>,
    second_factor: Option<String>,
}

/// The page's form: sign in if needed (no session that suffices for this request), then allow
/// (the consent is remembered and a code goes back to the client) or deny.
async fn authorize_submit(
    state: &AppState,
    ClientAddr(peer): ClientAddr,
    headers: &HeaderMap,
    form: AuthorizeForm,
) -> Result<Response, ApiError> {
    let idp = idp(state)?;
    if !csrf_ok(idp, headers, form.csrf.as_deref()) {
        return Ok(error_page(
            StatusCode::FORBIDDEN,
            "the form expired or came from another site; go back to the application and try again",
        ));
    }
    let authorized = match idp.oidc().check_authorize(&form.request).await {
        Ok(authorized) => authorized,
        Err(e) => return Ok(refused(idp, e)),
    };
    if form.decision.as_deref() != Some("allow") {
        return Ok(answer_error(
            idp,
            &authorized,
            "access_denied",
            "the person declined",
        ));
    }
    let now = now();
    // prompt=login and max_age hold here too: the page asked for credentials, so a session
    // that does not suffice is not used in their place.
    let existing = current_session(idp, headers, now)
        .await?
        .filter(|s| keel_identity::oidc::OidcProvider::session_suffices(&authorized, s, now));
    let (session, new_cookie) = match existing {
        Some(session) => (session, None),
        None => {
            let email = form.email.as_deref().unwrap_or_default();
            let attempt = SignIn {
                email,
                password: form.password.as_deref().unwrap_or_default(),
                second_factor: form
                    .second_factor
                    .as_deref()
                    .filter(|c| !c.trim().is_empty()),
                device_token: None,
                client: &peer,
                client_id: &authorized.client.id,
            };
            let again = |message: &str, ask_second_factor: bool| {
                let csrf = form.csrf.clone().unwrap_or_default();
                let mut res = authorize_form(&Form_ {
                    request: &form.request,
                    authorized: &authorized,
                    csrf: &csrf,
                    signed_in_as: None,
                    email,
                    ask_second_factor,
                    error: Some(message),
                })
                .into_response();
                no_store(&mut res);
                res
            };
            match idp.sessions().authenticate(&attempt, now).await {
                Ok(signed_in) => {
                    let (session, value) = idp.browser().browser_session(
                        signed_in.user.id,
                        signed_in.generation,
                        &signed_in.amr,
                        now,
                    );
                    let max_age = session.expires_at - now;
                    (
                        session,
                        Some(set_cookie(idp, SESSION_COOKIE, &value, max_age, "Lax")),
                    )
                }
                Err(e) => {
                    let (status, message, ask_code) =
                        crate::pages::sign_in_refusal(e, attempt.second_factor.is_some())?;
                    return Ok((status, again(&message, ask_code)).into_response());
                }
            }
        }
    };
    idp.oidc()
        .remember_consent(session.user, &authorized, now)
        .await?;
    let code = idp.oidc().issue_code(&authorized, &session, now).await?;
    let mut res = answer(
        idp,
        &authorized.redirect_uri,
        authorized.state.as_deref(),
        &[("code", Some(&code))],
    );
    if let Some(cookie) = new_cookie {
        res.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(res)
}

// ---- the token endpoint ----

fn oauth_error(status: StatusCode, e: &OAuthError) -> Response {
    let mut res = (
        status,
        Json(json!({"error": e.code, "error_description": e.description})),
    )
        .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if e.code == "invalid_client" {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"keel\""),
        );
    }
    res
}

/// `POST /oauth/token` (RFC 6749 §4.1.3, §6); the client authenticates with HTTP Basic or with
/// `client_id` and `client_secret` here.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = TokenRequestForm)]
pub(crate) struct TokenForm {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// RFC 6749 §2.3.1: `client_id:client_secret`, each form-urlencoded, in Basic.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = keel_domain::identity::auth_scheme::credentials(value, "Basic")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// `application/x-www-form-urlencoded` decoding of one value; `None` on a bad escape or bytes
/// that are not UTF-8.
fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

async fn token(
    State(state): State<AppState>,
    ClientAddr(peer): ClientAddr,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, ApiError>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    // RFC 6749 §5.2: a malformed token request (another content type, a repeated or mistyped
    // parameter, an unreadable body) is a JSON 400 `invalid_request`, never the framework's text.
    let form = match form {
        Ok(Form(form)) => form,
        Err(e) => {
            let status = match e {
                ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            let e = OAuthError {
                code: "invalid_request",
                description: e.to_string(),
            };
            return Ok(oauth_error(status, &e));
        }
    };
    let (client_id, secret) = match basic_credentials(&headers) {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (form.client_id.clone(), form.client_secret.clone()),
    };
    let Some(client_id) = client_id else {
        return Ok(oauth_error(
            StatusCode::UNAUTHORIZED,
            &OAuthError {
                code: "invalid_client",
                description: "no client authentication".into(),
            },
        ));
    };
    let client = match idp
        .oidc()
        .authenticate_client(&client_id, secret.as_deref())
        .await
    {
        Ok(client) => client,
        Err(e) => return Ok(oauth_error(StatusCode::UNAUTHORIZED, &e)),
    };
    let now = now();
    let result = match form.grant_type.as_deref() {
        Some("authorization_code") => match form.code.as_deref() {
            Some(code) => {
                idp.oidc()
                    .exchange_code(
                        &client,
                        code,
                        form.redirect_uri.as_deref(),
                        form.code_verifier.as_deref(),
                        now,
                    )
                    .await
            }
            None => Err(OAuthError {
                code: "invalid_request",
                description: "code is required".into(),
            }),
        },
        Some("refresh_token") => match form.refresh_token.as_deref() {
            Some(token) => idp.oidc().refresh_oidc(&client, token, &peer, now).await,
            None => Err(OAuthError {
                code: "invalid_request",
                description: "refresh_token is required".into(),
            }),
        },
        _ => Err(OAuthError {
            code: "unsupported_grant_type",
            description: "grant_type must be authorization_code or refresh_token".into(),
        }),
    };
    Ok(match result {
        Ok(tokens) => {
            let mut res = Json(tokens).into_response();
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res.headers_mut()
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            res
        }
        Err(e) if e.code == "server_error" || e.code == "temporarily_unavailable" => {
            oauth_error(StatusCode::SERVICE_UNAVAILABLE, &e)
        }
        Err(e) => oauth_error(StatusCode::BAD_REQUEST, &e),
    })
}

async fn userinfo(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| keel_domain::identity::auth_scheme::credentials(v, "Bearer"));
    let info = match token {
        Some(token) => idp.oidc().userinfo(token, now()).await,
        None => Err(AuthError::InvalidCredentials),
    };
    match info {
        Ok(info) => Ok(Json(info).into_response()),
        Err(AuthError::Store(e)) => Err(e.into()),
        Err(_) => {
            let mut res = (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "invalid_token"})),
            )
                .into_response();
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            Ok(res)
        }
    }
}

#[derive(Debug, Deserialize)]
struct LogoutParams {
    client_id: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
}

/// RP-initiated logout: the browser session ends; back to the client if it registered the URI.
async fn logout(
    State(state): State<AppState>,
    Query(params): Query<LogoutParams>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    let clear = set_cookie(idp, SESSION_COOKIE, "", 0, "Lax");
    let target = match (&params.client_id, &params.post_logout_redirect_uri) {
        (Some(id), Some(uri)) => idp
            .oidc()
            .client(id)
            .await?
            .filter(|c| c.redirect_uris.iter().any(|r| r == uri))
            .map(|_| uri.clone()),
        _ => None,
    };
    let mut res = match target {
        Some(uri) => back_to(&uri, &[("state", params.state.as_deref())]),
        None => page("Signed out", "<h1>You are signed out</h1>").into_response(),
    };
    res.headers_mut().append(header::SET_COOKIE, clear);
    Ok(res)
}

/// Registers a client (admins): `{client_id, name, redirect_uris, public}` → 201 with the
/// secret, shown once.
async fn register_client(
    State(state): State<AppState>,
    Signed(caller): Signed,
    JsonBody(body): JsonBody<ClientInput>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    let public = body.public.unwrap_or(false);
    let id = body.client_id.as_str();
    let name = body.name.as_deref().unwrap_or(id);
    let uris = body.redirect_uris;
    let registered = idp
        .oidc()
        .register_client(id, name, &uris, public, &caller.user.to_string(), now())
        .await?;
    Ok((StatusCode::CREATED, Json(registered)).into_response())
}
