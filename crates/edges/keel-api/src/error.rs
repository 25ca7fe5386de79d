//! The one mapping from failures to HTTP: status, stable `code`, human `error` text, and for
//! validation the offending `field`. A 500 carries only an opaque `error_id`; its cause travels in
//! a response extension to the middleware, which logs it under that id.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_domain::{StoreError, ValidationError};
use serde::Serialize;

/// Every error the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("User not found")]
    UserNotFound,
    #[error("Job not found")]
    JobNotFound,
    #[error("not found")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Validation(ValidationError),
    /// A field of a JSON body that is missing or of the wrong type, named by its path.
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    #[error("unknown field `{field}`; expected one of: {expected}")]
    UnknownField { field: String, expected: String },
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("field `{0}` is given more than once")]
    DuplicateField(String),
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("content type must be application/x-www-form-urlencoded")]
    UnsupportedForm,
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body could not be read: {0}")]
    MalformedBody(String),
    #[error("parameter `{name}` is given more than once")]
    DuplicateParameter { name: String },
    #[error("{message}")]
    InvalidParameter {
        /// The parameter at fault, when the parser names one.
        name: Option<String>,
        message: String,
    },
    #[error("the path is not valid: {0}")]
    InvalidPath(String),
    #[error("transfer coding `{0}` is not supported; send the body with `chunked` alone")]
    UnsupportedTransferCoding(String),
    #[error("{field} already exists")]
    Conflict { field: &'static str },
    #[error("the user changed concurrently; retry")]
    ConcurrentUpdate,
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("request timed out")]
    Timeout,
    #[error("server is at capacity; retry")]
    Overloaded,
    #[error("a valid access token is required")]
    Unauthenticated,
    #[error("the credentials are not valid")]
    InvalidCredentials,
    #[error("a second factor is required: send second_factor with a TOTP or recovery code")]
    MfaRequired,
    #[error("this account is not allowed to do that")]
    Forbidden,
    #[error("too many failed attempts; try again in {retry_after_secs} s")]
    TooManyAttempts { retry_after_secs: i64 },
    #[error("{0}")]
    WeakPassword(String),
    #[error("the password has expired; reset it through POST /auth/password/forgot")]
    PasswordExpired,
    #[error("the link is not valid: it is malformed, expired or already used")]
    InvalidLink,
    #[error("sign-up is {0}: ask an admin for an account")]
    SignupClosed(&'static str),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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

/// The cause of a 500, for the middleware to log; never sent to the client.
#[derive(Debug, Clone)]
pub struct InternalCause {
    pub error_id: String,
    pub cause: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UserNotFound | Self::JobNotFound | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Validation(_) | Self::InvalidField { .. } | Self::UnknownField { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::MalformedJson(_)
            | Self::DuplicateField(_)
            | Self::MalformedBody(_)
            | Self::DuplicateParameter { .. }
            | Self::InvalidParameter { .. }
            | Self::InvalidPath(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedTransferCoding(_) => StatusCode::NOT_IMPLEMENTED,
            Self::UnsupportedMediaType | Self::UnsupportedForm => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict { .. } | Self::ConcurrentUpdate => StatusCode::CONFLICT,
            Self::Unavailable(_) | Self::Timeout | Self::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Unauthenticated
            | Self::InvalidCredentials
            | Self::MfaRequired
            | Self::PasswordExpired => StatusCode::UNAUTHORIZED,
            Self::InvalidLink => StatusCode::BAD_REQUEST,
            Self::Forbidden | Self::SignupClosed(_) => StatusCode::FORBIDDEN,
            Self::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::WeakPassword(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::UserNotFound | Self::JobNotFound | Self::RouteNotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Validation(_) | Self::InvalidField { .. } => "validation_failed",
            Self::UnknownField { .. } => "unknown_field",
            Self::MalformedJson(_) => "malformed_json",
            Self::DuplicateField(_) => "duplicate_field",
            Self::MalformedBody(_) => "malformed_body",
            Self::DuplicateParameter { .. } => "duplicate_parameter",
            Self::InvalidParameter { .. } => "invalid_parameter",
            Self::InvalidPath(_) => "invalid_path",
            Self::UnsupportedTransferCoding(_) => "unsupported_transfer_coding",
            Self::UnsupportedMediaType | Self::UnsupportedForm => "unsupported_media_type",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Conflict { .. } => "conflict",
            Self::ConcurrentUpdate => "concurrent_update",
            Self::Unavailable(_) => "unavailable",
            Self::Timeout => "timeout",
            Self::Overloaded => "overloaded",
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidCredentials => "invalid_credentials",
            Self::MfaRequired => "mfa_required",
            Self::Forbidden => "forbidden",
            Self::TooManyAttempts { .. } => "too_many_attempts",
            Self::WeakPassword(_) => "weak_password",
            Self::PasswordExpired => "password_expired",
            Self::InvalidLink => "invalid_link",
            Self::SignupClosed(_) => "signup_closed",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::Validation(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { field } => Self::Conflict { field },
            StoreError::StaleVersion => Self::ConcurrentUpdate,
            // The cause is logged by the middleware when it is internal; an outage is operational
            // and its detail is logged here, since the client sees only "unavailable".
            StoreError::Unavailable(source) => {
                tracing::warn!(error = %source, "database unavailable");
                Self::Unavailable("database unavailable".into())
            }
            StoreError::Internal(source) => Self::Internal(source),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = ErrorBody {
            error: self.to_string(),
            code: self.code(),
            field: None,
            error_id: None,
        };
        let mut cause = None;
        match &self {
            Self::Validation(e) => {
                body.field = Some(e.field.to_owned());
            }
            Self::InvalidField { field, .. }
            | Self::UnknownField { field, .. }
            | Self::DuplicateField(field) => body.field = Some(field.clone()),
            Self::DuplicateParameter { name } => body.field = Some(name.clone()),
            Self::InvalidParameter { name, .. } => body.field.clone_from(name),
            Self::Conflict { field } => body.field = Some((*field).to_owned()),
            Self::WeakPassword(_) => body.field = Some("password".to_owned()),
            Self::Internal(source) => {
                let error_id = uuid::Uuid::new_v4().simple().to_string();
                body.error_id = Some(error_id.clone());
                cause = Some(InternalCause {
                    error_id,
                    cause: keel_domain::error_chain(&**source),
                });
            }
            _ => {}
        }
        let mut res = (status, Json(body)).into_response();
        if let Some(cause) = cause {
            res.extensions_mut().insert(cause);
        }
        if matches!(self, Self::Overloaded | Self::Unavailable(_)) {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::TooManyAttempts { retry_after_secs } = self {
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs.max(1)),
            );
        }
        if matches!(self, Self::Unauthenticated) {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keel\""),
            );
        }
        res
    }
}
