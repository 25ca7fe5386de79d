//! The JSON body of every refusal keel's edges send (`{"error": …, "code": …}`, with `field`
//! for a request field at fault and `error_id` for an internal error), and the table of its
//! stable codes. keel-api maps its `ApiError` onto it; the gateway's own answers use it too, so
//! a client parses one shape whichever edge refused it.

use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Human-readable message (the seed's `{"error": "User not found"}`).
    pub error: String,
    /// Stable machine-readable code, e.g. `not_found`, `validation_failed`, `conflict`.
    pub code: &'static str,
    /// The request field at fault, for validation and conflict errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For internal errors only: quote it to operators; the log has the cause under this id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_id: Option<String>,
}

impl ErrorBody {
    /// A body with `code` and the message `error`, naming no field.
    pub fn new(code: &'static str, error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            code,
            field: None,
            error_id: None,
        }
    }

    /// The body as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the error body serialises")
    }

    /// A response with `status`, this body and its content type, for any body type made from a
    /// string (axum's, hyper's, the gateway's).
    pub fn into_response<B: From<String>>(self, status: StatusCode) -> Response<B> {
        let mut res = Response::new(B::from(self.to_json()));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    }
}

/// The stable `code`s of error bodies. A code, once sent, keeps its meaning: clients branch on
/// it, not on the `error` text.
pub mod codes {
    // Any edge.
    pub const NOT_FOUND: &str = "not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNPROCESSABLE_ENTITY: &str = "unprocessable_entity";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    pub const UNSUPPORTED_TRANSFER_CODING: &str = "unsupported_transfer_coding";
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    pub const FORBIDDEN: &str = "forbidden";
    pub const INTERNAL: &str = "internal";
    // The API's requests and resources.
    pub const VALIDATION_FAILED: &str = "validation_failed";
    pub const UNKNOWN_FIELD: &str = "unknown_field";
    pub const MALFORMED_JSON: &str = "malformed_json";
    pub const DUPLICATE_FIELD: &str = "duplicate_field";
    pub const MALFORMED_BODY: &str = "malformed_body";
    pub const DUPLICATE_PARAMETER: &str = "duplicate_parameter";
    pub const INVALID_PARAMETER: &str = "invalid_parameter";
    pub const INVALID_PATH: &str = "invalid_path";
    pub const CONFLICT: &str = "conflict";
    pub const CONCURRENT_UPDATE: &str = "concurrent_update";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const TIMEOUT: &str = "timeout";
    pub const OVERLOADED: &str = "overloaded";
    // The API's accounts.
    pub const INVALID_CREDENTIALS: &str = "invalid_credentials";
    pub const MFA_REQUIRED: &str = "mfa_required";
    pub const TOO_MANY_ATTEMPTS: &str = "too_many_attempts";
    pub const WEAK_PASSWORD: &str = "weak_password";
    pub const PASSWORD_EXPIRED: &str = "password_expired";
    pub const INVALID_LINK: &str = "invalid_link";
    pub const SIGNUP_CLOSED: &str = "signup_closed";
    // The gateway's own answers.
    pub const NO_ROUTE: &str = "no_route";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const REQUEST_TIMEOUT: &str = "request_timeout";
    pub const UPSTREAM_TIMEOUT: &str = "upstream_timeout";
    pub const UPSTREAM_FAILED: &str = "upstream_failed";
    pub const UPSTREAM_BUSY: &str = "upstream_busy";
    pub const NO_UPSTREAM: &str = "no_upstream";
}

/// The code of a refusal known only by its status (a framework's plain-text answer).
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => codes::BAD_REQUEST,
        StatusCode::NOT_FOUND => codes::NOT_FOUND,
        StatusCode::METHOD_NOT_ALLOWED => codes::METHOD_NOT_ALLOWED,
        StatusCode::PAYLOAD_TOO_LARGE => codes::PAYLOAD_TOO_LARGE,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => codes::UNSUPPORTED_MEDIA_TYPE,
        StatusCode::UNPROCESSABLE_ENTITY => codes::UNPROCESSABLE_ENTITY,
        s if s.is_client_error() => codes::BAD_REQUEST,
        _ => codes::INTERNAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_only_what_it_has() {
        let body = ErrorBody::new(codes::NO_ROUTE, "no route for this host and path");
        assert_eq!(
            body.to_json(),
            r#"{"error":"no route for this host and path","code":"no_route"}"#
        );
        let body = ErrorBody {
            field: Some("email".into()),
            error_id: Some("abc".into()),
            ..ErrorBody::new(codes::CONFLICT, "email already exists")
        };
        assert_eq!(
            body.to_json(),
            r#"{"error":"email already exists","code":"conflict","field":"email","error_id":"abc"}"#
        );
    }

    #[test]
    fn a_response_carries_the_status_and_the_json_type() {
        let res: Response<String> = ErrorBody::new(codes::RATE_LIMITED, "slow down")
            .into_response(StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        assert!(res.body().contains("\"rate_limited\""));
    }

    #[test]
    fn bare_statuses_get_a_code() {
        assert_eq!(code_for_status(StatusCode::NOT_FOUND), "not_found");
        assert_eq!(code_for_status(StatusCode::IM_A_TEAPOT), "bad_request");
        assert_eq!(code_for_status(StatusCode::BAD_GATEWAY), "internal");
    }
}
