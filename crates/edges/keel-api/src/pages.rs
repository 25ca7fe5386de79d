//! The IdP's browser pages outside OpenID Connect: sign-in (for keel's own consoles, such as
//! the error hospital's), sign-out, enrolment of an authenticator app (a QR code to scan), and
//! the applications a person allowed (their OpenID Connect consents), each withdrawable.
//!
//! They share the OpenID Connect page's browser session (an HttpOnly, SameSite=Lax cookie) and
//! its CSRF defence (a token bound to a second cookie, in every form), and answer with
//! `no-store`, no framing and no script.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use keel_identity::service::{AuthError, Idp, SignIn};
use serde::Deserialize;

use crate::auth::{ClientAddr, idp, now};
use crate::extract::{Form, Query};
use crate::oidc::{SESSION_COOKIE, cookie, csrf_for, csrf_ok, escape, no_store, page, set_cookie};
use crate::{ApiError, AppState};

/// The OAuth client id sign-ins through these pages are recorded under.
const CONSOLE_CLIENT: &str = "keel-console";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/signin", get(sign_in_page).post(sign_in_submit))
        .route("/signout", axum::routing::post(sign_out))
        .route("/account/mfa", get(mfa_page).post(mfa_submit))
        .route(
            "/account/consents",
            get(consents_page).post(consent_withdraw),
        )
}

/// Where to go after signing in: a path of this site only (no `//host`, no scheme), else the
/// sign-in page itself, which then shows who is signed in.
pub(crate) fn local_path(to: Option<&str>) -> &str {
    match to {
        Some(to)
            if to.starts_with('/')
                && !to.starts_with("//")
                && !to.contains('\\')
                && !to.chars().any(char::is_control) =>
        {
            to
        }
        _ => "/signin",
    }
}

/// What a failed sign-in attempt tells the person, its status, and whether to ask for a code.
/// Shared with the OpenID Connect authorization page.
pub(crate) fn sign_in_refusal(
    e: AuthError,
    sent_code: bool,
) -> Result<(StatusCode, String, bool), ApiError> {
    Ok(match e {
        AuthError::MfaRequired => {
            let message = if sent_code {
                "That code is not right."
            } else {
                "Enter the code from your authenticator app."
            };
            (StatusCode::UNAUTHORIZED, message.to_owned(), true)
        }
        AuthError::Locked { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many attempts. Try again in {retry_after_secs} seconds."),
            false,
        ),
        AuthError::InvalidCredentials => (
            StatusCode::UNAUTHORIZED,
            "The email or password is not right.".to_owned(),
            sent_code,
        ),
        AuthError::PasswordExpired => (
            StatusCode::UNAUTHORIZED,
            "Your password has expired. Reset it (POST /auth/password/forgot), then sign in."
                .to_owned(),
            false,
        ),
        e => return Err(e.into()),
    })
}

/// The account a browser's session cookie names, if current.
async fn signed_in(
    state: &AppState,
    idp: &Idp,
    headers: &HeaderMap,
) -> Result<Option<keel_domain::User>, ApiError> {
    let Some(value) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let Some(caller) = idp.browser().session_caller(value, now()).await? else {
        return Ok(None);
    };
    Ok(state.users.get(caller.user).await?.map(|u| u.value.clone()))
}

fn respond(
    status: StatusCode,
    title: &str,
    body: &str,
    set: Option<header::HeaderValue>,
) -> Response {
    let mut res = (status, page(title, body)).into_response();
    if let Some(set) = set {
        res.headers_mut().append(header::SET_COOKIE, set);
    }
    no_store(&mut res);
    res
}

fn expired_form() -> Response {
    respond(
        StatusCode::FORBIDDEN,
        "Form expired",
        "<h1>This form expired</h1><p class=\"error\">It expired or came from another site. \
         <a href=\"/signin\">Start again</a>.</p>",
        None,
    )
}

struct SignInForm<'a> {
    csrf: &'a str,
    return_to: &'a str,
    email: &'a str,
    ask_code: bool,
    error: Option<&'a str>,
}

fn sign_in_form(f: &SignInForm<'_>) -> String {
    let error = f
        .error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let code = if f.ask_code {
        "<label for=\"second_factor\">Code from your authenticator app, or a recovery code</label>\
         <input id=\"second_factor\" name=\"second_factor\" autocomplete=\"one-time-code\" inputmode=\"numeric\" autofocus>"
    } else {
        ""
    };
    format!(
        "<h1>Sign in to keel</h1>{error}<form method=\"post\" action=\"/signin\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"return_to\" value=\"{return_to}\">\
         <label for=\"email\">Email</label>\
         <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" value=\"{email}\" required>\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>{code}\
         <button type=\"submit\">Sign in</button></form><p class=\"muted\">keel identity</p>",
        csrf = escape(f.csrf),
        return_to = escape(f.return_to),
        email = escape(f.email),
    )
}

#[derive(Debug, Deserialize)]
struct ReturnTo {
    return_to: Option<String>,
}

/// `GET /signin`: the form, or who is signed in (with sign-out) for a browser that is.
async fn sign_in_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ReturnTo>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    let (csrf, set) = csrf_for(idp, &headers);
    let return_to = local_path(query.return_to.as_deref());
    let body = match signed_in(&state, idp, &headers).await? {
        Some(user) => format!(
            "<h1>Signed in</h1><p>Signed in as <strong>{email}</strong>.</p>\
             <p><a href=\"{to}\">Continue</a> · <a href=\"/account/mfa\">Authenticator app</a> · \
             <a href=\"/account/consents\">Applications you allowed</a></p>\
             <form method=\"post\" action=\"/signout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\">Sign out</button></form>",
            email = escape(user.email.as_str()),
            to = escape(return_to),
            csrf = escape(&csrf),
        ),
        None => sign_in_form(&SignInForm {
            csrf: &csrf,
            return_to,
            email: "",
            ask_code: false,
            error: None,
        }),
    };
    Ok(respond(StatusCode::OK, "Sign in", &body, set))
}

/// `POST /signin`; every field is optional to the parser, the page says what is missing.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct SignInFields {
    csrf: Option<String>,
    return_to: Option<String>,
    email: Option<String>,
    password: Option<String>,
    second_factor: Option<String>,
}

/// `POST /signin`: checks the attempt (throttled like every sign-in), starts the browser
/// session and goes back where the person came from.
async fn sign_in_submit(
    State(state): State<AppState>,
    ClientAddr(peer): ClientAddr,
    headers: HeaderMap,
    Form(form): Form<SignInFields>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    if !csrf_ok(idp, &headers, form.csrf.as_deref()) {
        return Ok(expired_form());
    }
    let return_to = local_path(form.return_to.as_deref());
    let email = form.email.as_deref().unwrap_or_default();
    let second_factor = form
        .second_factor
        .as_deref()
        .filter(|c| !c.trim().is_empty());
    let attempt = SignIn {
        email,
        password: form.password.as_deref().unwrap_or_default(),
        second_factor,
        device_token: None,
        client: &peer,
        client_id: CONSOLE_CLIENT,
    };
    let now = now();
    match idp.sessions().authenticate(&attempt, now).await {
        Ok(signed_in) => {
            let (session, value) = idp.browser().browser_session(
                signed_in.user.id,
                signed_in.generation,
                &signed_in.amr,
                now,
            );
            let mut res = Redirect::to(return_to).into_response();
            res.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(idp, SESSION_COOKIE, &value, session.expires_at - now, "Lax"),
            );
            no_store(&mut res);
            Ok(res)
        }
        Err(e) => {
            let (status, message, ask_code) = sign_in_refusal(e, second_factor.is_some())?;
            let body = sign_in_form(&SignInForm {
                csrf: form.csrf.as_deref().unwrap_or_default(),
                return_to,
                email,
                ask_code,
                error: Some(&message),
            });
            Ok(respond(status, "Sign in", &body, None))
        }
    }
}

/// A form that only proves it came from keel's page (`POST /signout`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct CsrfOnly {
    csrf: Option<String>,
}

/// `POST /signout`: ends the browser session (its cookie).
async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    if !csrf_ok(idp, &headers, form.csrf.as_deref()) {
        return Ok(expired_form());
    }
    let mut res = Redirect::to("/signin").into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(idp, SESSION_COOKIE, "", 0, "Lax"),
    );
    no_store(&mut res);
    Ok(res)
}

fn to_sign_in(back: &str) -> Response {
    let mut res = Redirect::to(&format!(
        "/signin?return_to={}",
        keel_credentials::percent_encode(back)
    ))
    .into_response();
    no_store(&mut res);
    res
}

fn code_form(csrf: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    format!(
        "{error}<form method=\"post\" action=\"/account/mfa\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label for=\"code\">The 6-digit code the app shows</label>\
         <input id=\"code\" name=\"code\" autocomplete=\"one-time-code\" inputmode=\"numeric\" required>\
         <button type=\"submit\">Turn on</button></form>",
        csrf = escape(csrf)
    )
}

/// `GET /account/mfa`: for a signed-in browser without a second factor, a new authenticator
/// secret as a QR code (and as text), and the form that confirms it with a first code.
async fn mfa_page(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    let Some(user) = signed_in(&state, idp, &headers).await? else {
        return Ok(to_sign_in("/account/mfa"));
    };
    let (csrf, set) = csrf_for(idp, &headers);
    let body = match idp.mfa().enroll_totp(&user, now()).await {
        Ok(enrolment) => format!(
            "<h1>Authenticator app</h1><p>Scan this code with your authenticator app \
             (or type the key below), then enter the code it shows.</p>\
             <figure id=\"qr\" aria-label=\"QR code of your authenticator key\">{svg}</figure>\
             <p class=\"muted\">Key: <code id=\"secret\">{secret}</code></p>{form}",
            // The SVG is made by keel from the URI alone; nothing in it comes from the request.
            svg = enrolment.qr_svg,
            secret = escape(&enrolment.secret),
            form = code_form(&csrf, None),
        ),
        Err(AuthError::AlreadyEnrolled) => {
            "<h1>Authenticator app</h1><p id=\"enrolled\">Your account already signs in with an \
             authenticator app.</p><p><a href=\"/signin\">Back</a></p>"
                .to_owned()
        }
        Err(e) => return Err(e.into()),
    };
    Ok(respond(StatusCode::OK, "Authenticator app", &body, set))
}

/// `POST /account/mfa`: the first code of the authenticator being enrolled.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct CodeFields {
    csrf: Option<String>,
    code: Option<String>,
}

/// `POST /account/mfa`: confirms the pending secret with a first code; shows the recovery
/// codes once.
async fn mfa_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CodeFields>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    if !csrf_ok(idp, &headers, form.csrf.as_deref()) {
        return Ok(expired_form());
    }
    let Some(user) = signed_in(&state, idp, &headers).await? else {
        return Ok(to_sign_in("/account/mfa"));
    };
    let code = form.code.as_deref().unwrap_or_default();
    match idp.mfa().confirm_totp(&user, code, now()).await {
        Ok(codes) => {
            let items: String = codes
                .iter()
                .map(|c| format!("<li><code>{}</code></li>", escape(c)))
                .collect();
            let body = format!(
                "<h1>Authenticator app on</h1><p>From now on, signing in asks for a code from \
                 the app. Keep these recovery codes somewhere safe: each works once if the app \
                 is lost. They are not shown again.</p><ul id=\"recovery-codes\">{items}</ul>\
                 <p><a href=\"/signin\">Done</a></p>"
            );
            Ok(respond(StatusCode::OK, "Authenticator app on", &body, None))
        }
        Err(AuthError::InvalidCredentials | AuthError::NothingToConfirm) => {
            let body = format!(
                "<h1>Authenticator app</h1>{}",
                code_form(
                    form.csrf.as_deref().unwrap_or_default(),
                    Some("That code is not right. Enter the code the app shows now.")
                )
            );
            Ok(respond(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Authenticator app",
                &body,
                None,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// What a scope lets a client see, in words.
fn scope_words(scope: &str) -> String {
    let mut words = vec!["who you are"];
    for s in scope.split_whitespace() {
        match s {
            "email" => words.push("your email address"),
            "profile" => words.push("your name"),
            _ => {}
        }
    }
    words.join(", ")
}

/// `GET /account/consents`: the applications the signed-in person allowed, what each sees, and
/// a form per application to withdraw it.
async fn consents_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    let Some(user) = signed_in(&state, idp, &headers).await? else {
        return Ok(to_sign_in("/account/consents"));
    };
    let (csrf, set) = csrf_for(idp, &headers);
    let mut items = String::new();
    for consent in idp.oidc().consents(user.id).await? {
        let name = idp
            .oidc()
            .client(&consent.client_id)
            .await?
            .map_or_else(|| consent.client_id.clone(), |c| c.name);
        let since = chrono::DateTime::from_timestamp(consent.granted_at, 0)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        items.push_str(&format!(
            "<li class=\"consent\" data-client=\"{id}\"><strong>{name}</strong> sees {words} \
             <span class=\"muted\">(since {since})</span>\
             <form method=\"post\" action=\"/account/consents\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"client_id\" value=\"{id}\">\
             <button type=\"submit\">Withdraw</button></form></li>",
            id = escape(&consent.client_id),
            name = escape(&name),
            words = escape(&scope_words(&consent.scope)),
            csrf = escape(&csrf),
        ));
    }
    let body = if items.is_empty() {
        "<h1>Applications you allowed</h1><p id=\"no-consents\">You have not allowed any \
         application to sign you in.</p><p><a href=\"/signin\">Back</a></p>"
            .to_owned()
    } else {
        format!(
            "<h1>Applications you allowed</h1><p>Withdrawing signs you out of the application; \
             it asks again the next time you use it.</p><ul>{items}</ul>\
             <p><a href=\"/signin\">Back</a></p>"
        )
    };
    Ok(respond(
        StatusCode::OK,
        "Applications you allowed",
        &body,
        set,
    ))
}

/// `POST /account/consents`: withdraws the consent to one client.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = WithdrawConsentForm)]
pub(crate) struct WithdrawFields {
    csrf: Option<String>,
    client_id: Option<String>,
}

/// `POST /account/consents`: withdraws the consent to one application (and ends its sign-ins
/// of the person), then back to the list.
async fn consent_withdraw(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<WithdrawFields>,
) -> Result<Response, ApiError> {
    let idp = idp(&state)?;
    if !csrf_ok(idp, &headers, form.csrf.as_deref()) {
        return Ok(expired_form());
    }
    let Some(user) = signed_in(&state, idp, &headers).await? else {
        return Ok(to_sign_in("/account/consents"));
    };
    if let Some(client_id) = form.client_id.as_deref() {
        idp.oidc()
            .withdraw_consent(user.id, client_id, now())
            .await?;
    }
    let mut res = Redirect::to("/account/consents").into_response();
    no_store(&mut res);
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::local_path;

    #[test]
    fn only_paths_of_this_site_are_returned_to() {
        assert_eq!(
            local_path(Some("/admin/hospital?state=x")),
            "/admin/hospital?state=x"
        );
        for outside in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "admin",
            "",
        ] {
            assert_eq!(local_path(Some(outside)), "/signin", "{outside}");
        }
        assert_eq!(local_path(None), "/signin");
    }
}
