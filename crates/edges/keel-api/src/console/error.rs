//! The console's failures, each rendered as a small page with its status: a bad filter or form
//! (400), a refused form (403), no such patient (404), the hospital unreachable (503) or failing
//! (500, with an error id the log also names).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_domain::HospitalError;

use super::html::{self, esc};

/// A console failure, rendered as a small page.
#[derive(Debug)]
pub(super) enum ConsoleError {
    BadRequest(String),
    Forbidden(&'static str),
    NotFound(String),
    Hospital(HospitalError),
}

impl From<HospitalError> for ConsoleError {
    fn from(e: HospitalError) -> Self {
        match e {
            HospitalError::NotFound(id) => Self::NotFound(format!("no patient {id}")),
            HospitalError::Invalid { what, why } => Self::BadRequest(format!("{what}: {why}")),
            other => Self::Hospital(other),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Self::BadRequest(why) => (StatusCode::BAD_REQUEST, why),
            Self::Forbidden(why) => (StatusCode::FORBIDDEN, why.to_owned()),
            Self::NotFound(why) => (StatusCode::NOT_FOUND, why),
            Self::Hospital(e @ HospitalError::Unavailable(_)) => {
                tracing::warn!(error = %keel_domain::error_chain(&e), "hospital console: hospital unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the hospital is unavailable; try again shortly".to_owned(),
                )
            }
            Self::Hospital(e) => {
                let error_id = uuid::Uuid::new_v4();
                tracing::error!(%error_id, error = %keel_domain::error_chain(&e), "hospital console failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("internal error (error id {error_id})"),
                )
            }
        };
        let body = format!(
            "<p>{}</p><p><a href=\"/admin/hospital\">Back to the patients</a></p>",
            esc(&text)
        );
        let mut response = (status, html::bare_page("Error", &body)).into_response();
        html::secure_headers(response.headers_mut());
        response
    }
}
