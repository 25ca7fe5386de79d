//! The OpenAPI 3.1 document of every route the router serves (`/openapi.json`).
//!
//! - Operations: the handlers of `users`, `jobs` and `ops` carry their own `#[utoipa::path]`;
//!   the routes of the identity provider, the OpenID Connect provider, the browser pages and the
//!   hospital console are described in [`routes`], so their handlers stay as they are.
//! - What holds for many operations is added from one source, by [`Generic`]: the security
//!   requirement and the 401 / 403 of each operation come from its rule in `policy::RULES`; a
//!   JSON body brings 400 / 413 / 415 / 422, a form body 400 / 413 / 415 (keel's JSON errors),
//!   a query string its 400, a path parameter 404; every operation may answer 500 and 503.
//! - Request schemas state the validators' limits from the validators' own constants
//!   (`keel_domain::NAME_MAX_CHARS`, `EMAIL_MAX_BYTES`, `ROLES`) and the configured password
//!   policy, so the document cannot drift from what is enforced.
//!
//! The API tests compare the operations with the router's routes, and a schemathesis run
//! fuzzes the API from this document (crates/compose/keel/tests/api/openapi.rs).

use keel_credentials::password::PasswordPolicy;
use keel_domain::identity::rbac::ROLES;
use keel_domain::users::{EMAIL_MAX_BYTES, NAME_MAX_CHARS};
use serde::Deserialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ArrayBuilder, Object, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{
    ContentBuilder, HttpMethod, KnownFormat, RefOr, ResponseBuilder, Schema,
    security::SecurityRequirement,
};
use utoipa::{OpenApi, ToSchema};

use crate::error::ErrorBody;
use crate::input::{
    AdminAccountInput, ClientInput, CodeInput, EmailInput, NewAccountInput, PasswordChangeInput,
    RefreshInput, SignInInput, SignUpInput, TokenInput, TokenPasswordInput, UserInput,
};
use crate::policy::{Access, rule};

/// A display name as `UserName::parse` accepts it.
pub(crate) fn name_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(NAME_MAX_CHARS))
        .description(Some(format!(
            "1 to {NAME_MAX_CHARS} characters once trimmed, no control characters"
        )))
        .build()
}

/// An email address as `UserEmail::parse` accepts it.
pub(crate) fn email_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
        .max_length(Some(EMAIL_MAX_BYTES))
        .description(Some(format!(
            "an address like name@example.com (at most {EMAIL_MAX_BYTES} bytes, a local part \
             of at most 64, a dotted domain); stored lower-cased, unique"
        )))
        .build()
}

/// The roles an admin may give a new account.
pub(crate) fn roles_schema() -> utoipa::openapi::schema::Array {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(ROLES)),
        )
        .build()
}

/// A new password; its length is set from the configured policy by [`Generic`].
pub(crate) fn new_password_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "a new password: the configured policy's length, not a common password, not the \
             account's email address or name",
        ))
        .build()
}

/// An OAuth 2.0 error (RFC 6749 §5.2; RFC 6750 §3 at userinfo).
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub struct OAuthErrorBody {
    error: String,
    error_description: Option<String>,
}

/// The sign-in fields of the authorization page's form (`POST /oauth/authorize`); every field
/// is optional to the parser, the page says what is missing. Written for the document, the one
/// form body that is: the parser's `oidc::AuthorizeForm` flattens keel-identity's
/// `AuthorizeRequest`, and the application crates know nothing of OpenAPI.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct PageForm {
    csrf: Option<String>,
    email: Option<String>,
    password: Option<String>,
    second_factor: Option<String>,
    code: Option<String>,
    return_to: Option<String>,
}

/// The routes whose handlers live outside this crate's annotated modules.
#[allow(dead_code)] // described, not called: the handlers are in auth, oidc, pages, federation
mod routes {
    use super::*;
    use crate::error::ErrorBody;

    // ---- the identity provider (auth.rs) ----

    /// Sign-up, the same as `POST /users`.
    #[utoipa::path(post, path = "/auth/signup", tag = "auth", request_body = NewAccountInput, responses(
        (status = 201, description = "created (a verification or invitation mail is on its way)", body = keel_domain::User),
        (status = 403, description = "sign-up is by invitation or closed (`signup_closed`)", body = ErrorBody),
        (status = 409, description = "email already exists", body = ErrorBody),
    ))]
    fn signup() {}

    /// The verification link opened in a browser: a small page saying how it went.
    #[utoipa::path(get, path = "/auth/verify-email", tag = "pages", params(("token" = Option<String>, Query)), responses(
        (status = 200, description = "verified", content_type = "text/html", body = String),
        (status = 400, description = "the link is malformed, expired or used", content_type = "text/html", body = String),
    ))]
    fn verify_email_page() {}

    /// Verifies an address with the token mailed to it.
    #[utoipa::path(post, path = "/auth/verify-email", tag = "auth", request_body = TokenInput, responses(
        (status = 200, description = "verified: `{verified, user}`", body = Object),
    ))]
    fn verify_email() {}

    /// Mails the signed-in account a new verification link.
    #[utoipa::path(post, path = "/auth/verify-email/resend", tag = "auth", responses(
        (status = 202, description = "sent (nothing when already verified)"),
    ))]
    fn resend_verification() {}

    /// Starts a password reset: 202 whether or not the address has an account.
    #[utoipa::path(post, path = "/auth/password/forgot", tag = "auth", request_body = EmailInput, responses(
        (status = 202, description = "a reset link is mailed if the account exists"),
        (status = 429, description = "too many attempts; `Retry-After` says when", body = ErrorBody),
    ))]
    fn forgot_password() {}

    /// Sets a new password with the mailed reset token; every sign-in of the account ends.
    #[utoipa::path(post, path = "/auth/password/reset", tag = "auth", request_body = TokenPasswordInput, responses(
        (status = 204, description = "the password is set"),
        (status = 429, description = "too many attempts", body = ErrorBody),
    ))]
    fn reset_password() {}

    /// Accepts an invitation: the invited account chooses its password.
    #[utoipa::path(post, path = "/auth/invitation/accept", tag = "auth", request_body = TokenPasswordInput, responses(
        (status = 200, description = "the account", body = keel_domain::User),
        (status = 409, description = "the account already has a password", body = ErrorBody),
        (status = 429, description = "too many attempts", body = ErrorBody),
    ))]
    fn accept_invitation() {}

    /// The dev mailbox: the mails sent to an account, oldest first.
    #[utoipa::path(get, path = "/auth/dev/mailbox", tag = "auth", params(("user" = String, Query, description = "user id (UUID)")), responses(
        (status = 200, description = "`{mails: [{to, text, sent_at}]}`", body = Object),
        (status = 422, description = "`user` is not a user id", body = ErrorBody),
    ))]
    fn dev_mailbox() {}

    /// Sign in: tokens, or 401 `mfa_required` when a second factor must be sent too.
    #[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = SignInInput, responses(
        (status = 200, description = "access and refresh tokens", body = Object),
        (status = 401, description = "`invalid_credentials`, `mfa_required` or `password_expired`", body = ErrorBody),
        (status = 429, description = "too many failed attempts; `Retry-After` says when", body = ErrorBody),
    ))]
    fn sign_in() {}

    /// New tokens for a refresh token (rotated: the old one is spent).
    #[utoipa::path(post, path = "/auth/refresh", tag = "auth", request_body = RefreshInput, responses(
        (status = 200, description = "access and refresh tokens", body = Object),
        (status = 401, description = "the refresh token is not valid", body = ErrorBody),
    ))]
    fn refresh() {}

    /// Ends the sign-in of a refresh token (an unknown token also answers 204).
    #[utoipa::path(post, path = "/auth/logout", tag = "auth", request_body = RefreshInput, responses(
        (status = 204, description = "signed out"),
    ))]
    fn sign_out() {}

    /// The signed-in account: the user, its roles, how it signed in.
    #[utoipa::path(get, path = "/auth/me", tag = "auth", responses(
        (status = 200, description = "`{user, roles, amr, mfa_setup_required}`", body = Object),
    ))]
    fn me() {}

    /// Starts TOTP enrolment: the secret and its `otpauth://` URI.
    #[utoipa::path(post, path = "/auth/totp", tag = "auth", responses(
        (status = 200, description = "the secret to enrol", body = Object),
        (status = 409, description = "already enrolled (`field: totp`)", body = ErrorBody),
    ))]
    fn enroll_totp() {}

    /// Confirms TOTP enrolment with a first code: the recovery codes, shown once.
    #[utoipa::path(post, path = "/auth/totp/confirm", tag = "auth", request_body = CodeInput, responses(
        (status = 200, description = "`{recovery_codes}`", body = Object),
        (status = 409, description = "already enrolled", body = ErrorBody),
    ))]
    fn confirm_totp() {}

    /// The authentication audit log, newest first.
    #[utoipa::path(get, path = "/auth/audit", tag = "auth", params(
        ("subject" = Option<String>, Query), ("actor" = Option<String>, Query), ("action" = Option<String>, Query),
        ("before" = Option<i64>, Query, description = "Unix time: entries before it"),
        ("limit" = Option<u32>, Query, description = "1 to 1000 (default 100; values outside are clamped)"),
    ), responses(
        (status = 200, description = "`{events: [...]}`", body = Object),
    ))]
    fn audit() {}

    /// Changes the signed-in account's password; every sign-in of it ends.
    #[utoipa::path(post, path = "/auth/password", tag = "auth", request_body = PasswordChangeInput, responses(
        (status = 204, description = "changed"),
        (status = 429, description = "too many failed attempts", body = ErrorBody),
    ))]
    fn change_password() {}

    /// Ends every sign-in of the signed-in account.
    #[utoipa::path(post, path = "/auth/logout-all", tag = "auth", responses(
        (status = 204, description = "every sign-in ended"),
    ))]
    fn sign_out_everywhere() {}

    /// Disables an account: it cannot sign in, and its sign-ins end.
    #[utoipa::path(post, path = "/auth/accounts/{id}/disable", tag = "auth", params(("id" = String, Path, description = "user id (UUID)")), responses(
        (status = 204, description = "disabled"),
    ))]
    fn disable() {}

    /// Enables a disabled account again.
    #[utoipa::path(post, path = "/auth/accounts/{id}/enable", tag = "auth", params(("id" = String, Path, description = "user id (UUID)")), responses(
        (status = 204, description = "enabled"),
    ))]
    fn enable() {}

    /// The keys that sign keel's tokens (JWK Set).
    #[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", responses(
        (status = 200, description = "`{keys: [...]}`", body = Object),
    ))]
    fn jwks() {}

    // ---- OpenID Connect (oidc.rs) ----

    /// OpenID Connect discovery.
    #[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "oidc", responses(
        (status = 200, description = "the provider's metadata", body = Object),
    ))]
    fn discovery() {}

    /// The authorization endpoint's page: sign-in and consent.
    #[utoipa::path(get, path = "/oauth/authorize", tag = "pages", params(
        ("response_type" = Option<String>, Query), ("client_id" = Option<String>, Query),
        ("redirect_uri" = Option<String>, Query), ("scope" = Option<String>, Query),
        ("state" = Option<String>, Query), ("nonce" = Option<String>, Query),
        ("code_challenge" = Option<String>, Query), ("code_challenge_method" = Option<String>, Query),
        ("prompt" = Option<String>, Query),
    ), responses(
        (status = 200, description = "the sign-in and consent page", content_type = "text/html", body = String),
        (status = 303, description = "back to the client with a code or an error"),
        (status = 400, description = "no such client or redirect URI: a page says why", content_type = "text/html", body = String),
    ))]
    fn authorize_page() {}

    /// The authorization page's form.
    #[utoipa::path(post, path = "/oauth/authorize", tag = "pages", request_body(content = PageForm, content_type = "application/x-www-form-urlencoded"), responses(
        (status = 200, description = "the page again, with what went wrong", content_type = "text/html", body = String),
        (status = 303, description = "back to the client with a code or an error"),
        (status = 400, description = "no such client or redirect URI", content_type = "text/html", body = String),
        (status = 401, description = "wrong credentials: the page again", content_type = "text/html", body = String),
        (status = 403, description = "the form's CSRF token does not match", content_type = "text/html", body = String),
        (status = 429, description = "too many attempts", content_type = "text/html", body = String),
    ))]
    fn authorize_submit() {}

    /// The token endpoint (RFC 6749 §3.2).
    #[utoipa::path(post, path = "/oauth/token", tag = "oidc", request_body(content = crate::oidc::TokenForm, content_type = "application/x-www-form-urlencoded"), responses(
        (status = 200, description = "tokens", body = Object),
        (status = 400, description = "the grant is not valid, or the request is malformed (`invalid_request`: another content type, a repeated parameter, an unreadable body)", body = OAuthErrorBody),
        (status = 401, description = "`invalid_client`", body = OAuthErrorBody),
        (status = 413, description = "the body is too large (`invalid_request`)", body = OAuthErrorBody),
    ))]
    fn token() {}

    /// The signed-in person's claims (OpenID Connect Core §5.3), for an OIDC access token.
    #[utoipa::path(get, path = "/oauth/userinfo", tag = "oidc", responses(
        (status = 200, description = "the claims", body = Object),
        (status = 401, description = "`invalid_token`", body = OAuthErrorBody),
    ))]
    fn userinfo_get() {}

    /// The same, by POST.
    #[utoipa::path(post, path = "/oauth/userinfo", tag = "oidc", responses(
        (status = 200, description = "the claims", body = Object),
        (status = 401, description = "`invalid_token`", body = OAuthErrorBody),
    ))]
    fn userinfo_post() {}

    /// RP-initiated logout: the browser session ends.
    #[utoipa::path(get, path = "/oauth/logout", tag = "pages", params(
        ("client_id" = Option<String>, Query), ("post_logout_redirect_uri" = Option<String>, Query), ("state" = Option<String>, Query),
    ), responses(
        (status = 200, description = "signed out", content_type = "text/html", body = String),
        (status = 303, description = "back to the client's registered URI"),
    ))]
    fn logout() {}

    /// Registers a client; its secret is in the answer, once.
    #[utoipa::path(post, path = "/oauth/clients", tag = "oidc", request_body = ClientInput, responses(
        (status = 201, description = "registered", body = Object),
        (status = 409, description = "the client id is taken", body = ErrorBody),
    ))]
    fn register_client() {}

    // ---- the browser pages (pages.rs, federation.rs) ----

    /// The sign-in page of keel's consoles.
    #[utoipa::path(get, path = "/signin", tag = "pages", params(("return_to" = Option<String>, Query)), responses(
        (status = 200, description = "the page", content_type = "text/html", body = String),
    ))]
    fn sign_in_page() {}

    /// The sign-in page's form.
    #[utoipa::path(post, path = "/signin", tag = "pages", request_body(content = crate::pages::SignInFields, content_type = "application/x-www-form-urlencoded"), responses(
        (status = 200, description = "the page again (a second factor is needed)", content_type = "text/html", body = String),
        (status = 303, description = "signed in: to `return_to`"),
        (status = 401, description = "wrong credentials: the page again", content_type = "text/html", body = String),
        (status = 403, description = "the form's CSRF token does not match", content_type = "text/html", body = String),
        (status = 429, description = "too many attempts", content_type = "text/html", body = String),
    ))]
    fn sign_in_submit() {}

    /// Ends the browser session.
    #[utoipa::path(post, path = "/signout", tag = "pages", request_body(content = crate::pages::CsrfOnly, content_type = "application/x-www-form-urlencoded"), responses(
        (status = 303, description = "to the sign-in page"),
        (status = 403, description = "the form's CSRF token does not match", content_type = "text/html", body = String),
    ))]
    fn sign_out_page() {}

    /// The authenticator-app enrolment page.
    #[utoipa::path(get, path = "/account/mfa", tag = "pages", responses(
        (status = 200, description = "the page", content_type = "text/html", body = String),
        (status = 303, description = "not signed in: to the sign-in page"),
    ))]
    fn mfa_page() {}

    /// The enrolment page's form.
    #[utoipa::path(post, path = "/account/mfa", tag = "pages", request_body(content = crate::pages::CodeFields, content_type = "application/x-www-form-urlencoded"), responses(
        (status = 200, description = "enrolled", content_type = "text/html", body = String),
        (status = 303, description = "not signed in: to the sign-in page"),
        (status = 403, description = "the form's CSRF token does not match", content_type = "text/html", body = String),
        (status = 422, description = "wrong code: the page again", content_type = "text/html", body = String),
    ))]
    fn mfa_submit() {}

    /// The applications the signed-in person allowed, each with a form to withdraw it.
    #[utoipa::path(get, path = "/account/consents", tag = "pages", responses(
        (status = 200, description = "the page", content_type = "text/html", body = String),
        (status = 303, description = "not signed in: to the sign-in page"),
    ))]
    fn consents_page() {}

    /// Withdraws the consent to one application and ends its sign-ins of the person.
    #[utoipa::path(post, path = "/account/consents", tag = "pages", request_body(content = crate::pages::WithdrawFields, content_type = "application/x-www-form-urlencoded"), responses(
        (status = 303, description = "withdrawn (or not signed in: to the sign-in page)"),
        (status = 403, description = "the form's CSRF token does not match", content_type = "text/html", body = String),
    ))]
    fn consent_withdraw() {}

    /// Starts a sign-in through an external provider.
    #[utoipa::path(get, path = "/federation/{provider}/start", tag = "pages", params(
        ("provider" = String, Path), ("return_to" = Option<String>, Query), ("link" = Option<String>, Query),
    ), responses(
        (status = 303, description = "to the provider"),
        (status = 404, description = "no such provider", content_type = "text/html", body = String),
        (status = 502, description = "the provider does not answer", content_type = "text/html", body = String),
    ))]
    fn federation_start() {}

    /// The provider's answer.
    #[utoipa::path(get, path = "/federation/{provider}/callback", tag = "pages", params(
        ("provider" = String, Path), ("code" = Option<String>, Query), ("state" = Option<String>, Query),
        ("error" = Option<String>, Query), ("error_description" = Option<String>, Query),
    ), responses(
        (status = 303, description = "signed in: to `return_to`"),
        (status = 400, description = "expired or not valid", content_type = "text/html", body = String),
        (status = 401, description = "refused", content_type = "text/html", body = String),
        (status = 403, description = "no account for this identity", content_type = "text/html", body = String),
        (status = 404, description = "no such provider", content_type = "text/html", body = String),
        (status = 502, description = "the provider failed", content_type = "text/html", body = String),
    ))]
    fn federation_callback() {}

    // ---- the error hospital's console (keel-hospital) ----

    /// Patients, filtered, newest first.
    #[utoipa::path(get, path = "/admin/hospital", tag = "hospital console", responses(
        (status = 200, description = "the page", content_type = "text/html", body = String),
        (status = 400, description = "a filter is not valid", content_type = "text/html", body = String),
    ))]
    fn hospital_list() {}

    /// Patients counted by group, reason and cause.
    #[utoipa::path(get, path = "/admin/hospital/causes", tag = "hospital console", responses(
        (status = 200, description = "the page", content_type = "text/html", body = String),
        (status = 400, description = "a filter is not valid", content_type = "text/html", body = String),
    ))]
    fn hospital_causes() {}

    /// One patient.
    #[utoipa::path(get, path = "/admin/hospital/patients/{id}", tag = "hospital console", params(("id" = i64, Path, description = "patient id"), ("done" = Option<String>, Query)), responses(
        (status = 200, description = "the page", content_type = "text/html", body = String),
    ))]
    fn hospital_patient() {}

    /// Edits a patient's message.
    #[utoipa::path(post, path = "/admin/hospital/patients/{id}/edit", tag = "hospital console", params(("id" = i64, Path, description = "patient id")), request_body(content = Object, content_type = "application/x-www-form-urlencoded"), responses(
        (status = 303, description = "done: back to the patient"),
        (status = 400, description = "not valid", content_type = "text/html", body = String),
    ))]
    fn hospital_edit() {}

    /// Discards a patient.
    #[utoipa::path(post, path = "/admin/hospital/patients/{id}/discard", tag = "hospital console", params(("id" = i64, Path, description = "patient id")), request_body(content = Object, content_type = "application/x-www-form-urlencoded"), responses(
        (status = 303, description = "done: back to the patient"),
        (status = 400, description = "not valid", content_type = "text/html", body = String),
    ))]
    fn hospital_discard() {}

    /// The dry run of a replay.
    #[utoipa::path(get, path = "/admin/hospital/replay", tag = "hospital console", responses(
        (status = 200, description = "the page", content_type = "text/html", body = String),
        (status = 400, description = "not valid", content_type = "text/html", body = String),
    ))]
    fn hospital_replay_preview() {}

    /// A replay.
    #[utoipa::path(post, path = "/admin/hospital/replay", tag = "hospital console", request_body(content = Object, content_type = "application/x-www-form-urlencoded"), responses(
        (status = 200, description = "the report", content_type = "text/html", body = String),
        (status = 303, description = "done"),
        (status = 400, description = "not valid", content_type = "text/html", body = String),
    ))]
    fn hospital_replay() {}

    /// The hospital's audit log.
    #[utoipa::path(get, path = "/admin/hospital/audit", tag = "hospital console", responses(
        (status = 200, description = "the page", content_type = "text/html", body = String),
        (status = 400, description = "not valid", content_type = "text/html", body = String),
    ))]
    fn hospital_audit() {}

    // ---- operations (ops.rs) ----

    /// This document.
    #[utoipa::path(get, path = "/openapi.json", tag = "operations", responses(
        (status = 200, description = "the OpenAPI 3.1 document", body = Object),
    ))]
    fn openapi() {}

    /// The API docs, rendered from this document with no outside assets.
    #[utoipa::path(get, path = "/docs", tag = "operations", responses(
        (status = 200, description = "the page", content_type = "text/html", body = String),
    ))]
    fn docs() {}
}

#[derive(OpenApi)]
#[openapi(
    info(title = "keel", description = "keel's API: users through the cache, jobs, the identity provider, OpenID Connect, the consoles and operations."),
    paths(
        crate::users::create_user,
        crate::users::list_users,
        crate::users::get_user,
        crate::users::update_user,
        crate::users::delete_user,
        crate::users::user_data,
        crate::users::reinvite,
        crate::jobs::export_user,
        crate::jobs::get_job,
        crate::ops::healthz,
        crate::ops::readyz,
        crate::ops::metrics,
        routes::openapi,
        routes::docs,
        routes::signup,
        routes::verify_email_page,
        routes::verify_email,
        routes::resend_verification,
        routes::forgot_password,
        routes::reset_password,
        routes::accept_invitation,
        routes::dev_mailbox,
        routes::sign_in,
        routes::refresh,
        routes::sign_out,
        routes::me,
        routes::enroll_totp,
        routes::confirm_totp,
        routes::audit,
        routes::change_password,
        routes::sign_out_everywhere,
        routes::disable,
        routes::enable,
        routes::jwks,
        routes::discovery,
        routes::authorize_page,
        routes::authorize_submit,
        routes::token,
        routes::userinfo_get,
        routes::userinfo_post,
        routes::logout,
        routes::register_client,
        routes::sign_in_page,
        routes::sign_in_submit,
        routes::sign_out_page,
        routes::mfa_page,
        routes::mfa_submit,
        routes::consents_page,
        routes::consent_withdraw,
        routes::federation_start,
        routes::federation_callback,
        routes::hospital_list,
        routes::hospital_causes,
        routes::hospital_patient,
        routes::hospital_edit,
        routes::hospital_discard,
        routes::hospital_replay_preview,
        routes::hospital_replay,
        routes::hospital_audit,
    ),
    components(schemas(keel_domain::User, UserInput, NewAccountInput, SignUpInput, AdminAccountInput, TokenPasswordInput, PasswordChangeInput, crate::users::UserPage, ErrorBody, OAuthErrorBody, crate::jobs::JobAccepted, crate::jobs::JobView, keel_domain::JobState)),
    tags(
        (name = "users", description = "Users, read through the cache"),
        (name = "jobs", description = "Fire-and-forget jobs: 202 at once, then poll"),
        (name = "auth", description = "The identity provider's JSON routes"),
        (name = "oidc", description = "The OpenID Connect provider's protocol endpoints"),
        (name = "pages", description = "Server-rendered pages for browsers (forms with CSRF tokens)"),
        (name = "hospital console", description = "The error hospital's console (server-rendered)"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    ),
)]
struct ApiDoc;

/// The document for a server whose password policy is `policy`.
pub fn document(policy: &PasswordPolicy) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    Generic { policy }.modify(&mut doc);
    doc
}

/// What the rule table, the body parser and the middleware add to every operation.
struct Generic<'a> {
    policy: &'a PasswordPolicy,
}

/// Public operations where a bearer token, when sent, changes what the handler does.
const OPTIONAL_BEARER: &[(&str, &str)] = &[("POST", "/users"), ("POST", "/auth/signup")];

/// A JSON error, and on the console (whose own refusals are pages) also a page.
fn json_or_html(description: &str, schema: &str, html: bool) -> RefOr<utoipa::openapi::Response> {
    let mut res = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                schema,
            ))))
            .build(),
    );
    if html {
        res = res.content(
            "text/html",
            ContentBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::String).build()))
                .build(),
        );
    }
    res.build().into()
}

fn method_name(method: &HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Head => "HEAD",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Trace => "TRACE",
    }
}

fn operations_mut(item: &mut utoipa::openapi::PathItem) -> Vec<(HttpMethod, &mut Operation)> {
    [
        (HttpMethod::Get, item.get.as_mut()),
        (HttpMethod::Post, item.post.as_mut()),
        (HttpMethod::Put, item.put.as_mut()),
        (HttpMethod::Delete, item.delete.as_mut()),
        (HttpMethod::Patch, item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.map(|op| (method, op)))
    .collect()
}

impl Generic<'_> {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "an access token from `POST /auth/login` (or, at `/oauth/userinfo`, \
                         from `POST /oauth/token`)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "client_basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some("an OAuth client's id and secret (RFC 6749 §2.3.1)"))
                    .build(),
            ),
        );
        self.password_limits(components);
        // Which shape `POST /users` takes depends on the caller, and a body with a name, an
        // email and a password fits both: `anyOf`, not the `oneOf` an untagged enum derives.
        components.schemas.insert(
            "NewAccountInput".to_owned(),
            utoipa::openapi::schema::AnyOfBuilder::new()
                .item(utoipa::openapi::Ref::from_schema_name("SignUpInput"))
                .item(utoipa::openapi::Ref::from_schema_name("AdminAccountInput"))
                .description(Some(
                    "anonymous sign-up (`SignUpInput`, when `identity.signup` is open), or, with \
                     an admin's bearer token, an account with roles or an invitation \
                     (`AdminAccountInput`); `roles` from anyone else is refused (422)",
                ))
                .into(),
        );
        let anyone = SecurityRequirement::default();
        let bearer = SecurityRequirement::new("bearer", Vec::<String>::new());
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in operations_mut(item) {
                let method = method_name(&method);
                let parsed: axum::http::Method = method.parse().expect("a method");
                let access = rule(&parsed, path).unwrap_or_else(|| {
                    panic!("{method} {path} is documented but has no access rule")
                });
                let console = path.starts_with("/admin/");
                let json_response =
                    |description: &str, schema: &str| json_or_html(description, schema, console);
                let responses = &mut op.responses.responses;
                // A status the operation documents already keeps its description and gains the
                // generic response's content types (a page's 400 may also be keel's JSON error).
                let mut add =
                    |status: &str, response: RefOr<utoipa::openapi::Response>| match responses
                        .get_mut(status)
                    {
                        Some(RefOr::T(existing)) => {
                            if let RefOr::T(generic) = response {
                                for (content_type, content) in generic.content {
                                    existing.content.entry(content_type).or_insert(content);
                                }
                            }
                        }
                        Some(RefOr::Ref(_)) => {}
                        None => {
                            responses.insert(status.to_owned(), response);
                        }
                    };
                op.security = Some(match access {
                    Access::Public if OPTIONAL_BEARER.contains(&(method, path.as_str())) => {
                        vec![anyone.clone(), bearer.clone()]
                    }
                    Access::Public if path == "/oauth/userinfo" => vec![bearer.clone()],
                    Access::Public if path == "/oauth/token" => vec![
                        anyone.clone(),
                        SecurityRequirement::new("client_basic", Vec::<String>::new()),
                    ],
                    Access::Public => vec![anyone.clone()],
                    _ => vec![bearer.clone()],
                });
                match access {
                    // A public route acting on its caller refuses a token that does not verify
                    // (expired, revoked, forged) rather than serving it as anonymous.
                    Access::Public if OPTIONAL_BEARER.contains(&(method, path.as_str())) => add(
                        "401",
                        json_response("a bearer token was sent and does not verify", "ErrorBody"),
                    ),
                    Access::Public => {}
                    Access::SignedIn => {
                        add("401", json_response("no valid access token", "ErrorBody"));
                    }
                    Access::Need(_) | Access::SelfOr(_) => {
                        add("401", json_response("no valid access token", "ErrorBody"));
                        add(
                            "403",
                            json_response("the account's roles do not allow it", "ErrorBody"),
                        );
                    }
                }
                if console && method == "POST" {
                    add(
                        "403",
                        json_response(
                            "the roles do not allow it, or the form's origin or CSRF token is \
                             not this console's",
                            "ErrorBody",
                        ),
                    );
                }
                if console && method == "GET" {
                    add(
                        "303",
                        ResponseBuilder::new()
                            .description("a browser without a session: to the sign-in page")
                            .build()
                            .into(),
                    );
                }
                if path.contains('{') {
                    add("404", json_response("no such resource", "ErrorBody"));
                }
                let has_query = op.parameters.as_ref().is_some_and(|params| {
                    params
                        .iter()
                        .any(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Query)
                });
                if has_query {
                    add(
                        "400",
                        json_response(
                            "a query parameter given twice (`duplicate_parameter`) or of the \
                             wrong type (`invalid_parameter`), named in `field`",
                            "ErrorBody",
                        ),
                    );
                }
                let body_type = op
                    .request_body
                    .as_ref()
                    .and_then(|body| body.content.keys().next().cloned());
                match body_type.as_deref() {
                    Some("application/json") => {
                        add(
                            "400",
                            json_response(
                                "malformed JSON (`malformed_json`) or a key given twice \
                                 (`duplicate_field`, named in `field`)",
                                "ErrorBody",
                            ),
                        );
                        add("413", json_response("the body is too large", "ErrorBody"));
                        add("415", json_response("the body is not JSON", "ErrorBody"));
                        add(
                            "422",
                            json_response(
                                "an invalid, unknown, missing or mistyped field (named in \
                                 `field`), or a weak password",
                                "ErrorBody",
                            ),
                        );
                    }
                    Some(_) => {
                        add(
                            "400",
                            json_response(
                                "a parameter given twice (`duplicate_parameter`) or of the \
                                 wrong type (`invalid_parameter`), named in `field`, or a body \
                                 that cannot be read (`malformed_body`)",
                                "ErrorBody",
                            ),
                        );
                        add("413", json_response("the body is too large", "ErrorBody"));
                        add("415", json_response("the body is not a form", "ErrorBody"));
                    }
                    None => {}
                }
                add(
                    "500",
                    json_response("an internal error: quote `error_id`", "ErrorBody"),
                );
                add(
                    "503",
                    json_response(
                        "overloaded, timed out or a dependency is down; retry after \
                         `Retry-After`",
                        "ErrorBody",
                    ),
                );
                if console && path.contains('{') {
                    // The console's patient ids are integers; the framework refuses others
                    // before the handler runs, which the API's middleware answers as JSON.
                    add("400", json_response("the id is not a number", "ErrorBody"));
                }
            }
        }
    }

    /// Sets the configured policy's length on every new password.
    fn password_limits(&self, components: &mut utoipa::openapi::Components) {
        let fields = [
            ("SignUpInput", "password"),
            ("AdminAccountInput", "password"),
            ("TokenPasswordInput", "password"),
            ("PasswordChangeInput", "new_password"),
        ];
        for (schema, field) in fields {
            let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) else {
                panic!("{schema} is not an object schema");
            };
            let Some(RefOr::T(Schema::Object(property))) = object.properties.get_mut(field) else {
                panic!("{schema}.{field} is not a schema");
            };
            property.min_length = Some(self.policy.min_chars);
            property.max_length = Some(self.policy.max_chars);
        }
    }
}
