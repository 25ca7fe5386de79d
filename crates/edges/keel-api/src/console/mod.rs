//! The error hospital's web console at `/admin/hospital`, beside the IdP's server-rendered pages
//! ([`crate::pages`], [`crate::oidc`]): inline CSS, no script. One module per page or action:
//!
//! - [`patients`]: `GET /admin/hospital`, patients filtered (group, topic, reason, state, error
//!   text, cause, admission time), newest first, paged.
//! - [`causes`]: `GET /admin/hospital/causes`, the same patients counted by group, reason and
//!   cause.
//! - [`patient`]: `GET /admin/hospital/patients/{id}`, one patient with its forms;
//!   [`edit`] and [`discard`]: its `POST …/edit` and `POST …/discard`.
//! - [`replay`]: `GET /admin/hospital/replay?ids=…` or `?<filter>`, the dry run with the form
//!   that confirms it; `POST /admin/hospital/replay`, the replay itself.
//! - [`audit`]: `GET /admin/hospital/audit`, the audit log.
//!
//! Beside them: [`auth`] (who may use it, CSRF), [`filter`] (the patient filter form),
//! [`html`] (the layout and formatters), [`error`] (failures as pages).
//!
//! Every handler takes an [`Admin`] (an IdP account with the operator or admin role); every `POST`
//! checks the origin and the CSRF token (keel-http's scheme). Every value rendered is escaped.
//! The actions go through keel-hospital's [`HospitalService`].

mod audit;
mod auth;
mod causes;
mod discard;
mod edit;
mod error;
mod filter;
pub mod html;
mod patient;
mod patients;
mod replay;

use axum::Router;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel_hospital::HospitalService;
use keel_http::CsrfKey;

pub use auth::{Admin, CSRF_COOKIE, Csrf};

/// Patients per page of the list.
const PAGE_SIZE: u32 = 50;
/// Audit entries per page.
const AUDIT_PAGE_SIZE: u32 = 50;

/// What the console's handlers share.
#[derive(Clone)]
pub struct ConsoleState {
    service: HospitalService,
    /// Signs the forms' CSRF tokens (`Idp::csrf_key` in keel).
    csrf: CsrfKey,
}

/// The console's routes, all under `/admin/hospital`, to merge into keel's router behind its
/// guard (which signs people in and checks their roles; see [`Admin`]). `csrf` signs its forms'
/// tokens.
pub fn router(service: HospitalService, csrf: CsrfKey) -> Router {
    let state = ConsoleState { service, csrf };
    Router::new()
        .route("/admin/hospital", get(patients::list))
        .route("/admin/hospital/causes", get(causes::causes))
        .route("/admin/hospital/patients/{id}", get(patient::patient))
        .route("/admin/hospital/patients/{id}/edit", post(edit::edit))
        .route(
            "/admin/hospital/patients/{id}/discard",
            post(discard::discard),
        )
        .route(
            "/admin/hospital/replay",
            get(replay::replay_preview).post(replay::replay),
        )
        .route("/admin/hospital/audit", get(audit::audit))
        .with_state(state)
}

/// A page response: the secure headers, and the CSRF cookie when it is new.
fn respond(status: StatusCode, csrf: &Csrf, page: String) -> Response {
    let mut response = (status, axum::response::Html(page)).into_response();
    html::secure_headers(response.headers_mut());
    if let Some(cookie) = csrf
        .set_cookie()
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    html::secure_headers(response.headers_mut());
    response
}
