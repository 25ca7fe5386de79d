//! The one mapping from failures to HTTP: status, stable `code`, human `error` text, and for
//! validation the offending `field`. A 500 carries only an opaque `error_id`; its cause travels in
//! a response extension to the middleware, which logs it under that id.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_domain::{StoreError, ValidationError};
use keel_http::codes;

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

/// The JSON body of every error response: keel-http's, shared with the gateway.
pub use keel_http::ErrorBody;

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
            Self::UserNotFound | Self::JobNotFound | Self::RouteNotFound => codes::NOT_FOUND,
            Self::MethodNotAllowed => codes::METHOD_NOT_ALLOWED,
            Self::Validation(_) | Self::InvalidField { .. } => codes::VALIDATION_FAILED,
            Self::UnknownField { .. } => codes::UNKNOWN_FIELD,
            Self::MalformedJson(_) => codes::MALFORMED_JSON,
            Self::DuplicateField(_) => codes::DUPLICATE_FIELD,
            Self::MalformedBody(_) => codes::MALFORMED_BODY,
            Self::DuplicateParameter { .. } => codes::DUPLICATE_PARAMETER,
            Self::InvalidParameter { .. } => codes::INVALID_PARAMETER,
            Self::InvalidPath(_) => codes::INVALID_PATH,
            Self::UnsupportedTransferCoding(_) => codes::UNSUPPORTED_TRANSFER_CODING,
            Self::UnsupportedMediaType | Self::UnsupportedForm => codes::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => codes::PAYLOAD_TOO_LARGE,
            Self::Conflict { .. } => codes::CONFLICT,
            Self::ConcurrentUpdate => codes::CONCURRENT_UPDATE,
            Self::Unavailable(_) => codes::UNAVAILABLE,
            Self::Timeout => codes::TIMEOUT,
            Self::Overloaded => codes::OVERLOADED,
            Self::Unauthenticated => codes::UNAUTHENTICATED,
            Self::InvalidCredentials => codes::INVALID_CREDENTIALS,
            Self::MfaRequired => codes::MFA_REQUIRED,
            Self::Forbidden => codes::FORBIDDEN,
            Self::TooManyAttempts { .. } => codes::TOO_MANY_ATTEMPTS,
            Self::WeakPassword(_) => codes::WEAK_PASSWORD,
            Self::PasswordExpired => codes::PASSWORD_EXPIRED,
            Self::InvalidLink => codes::INVALID_LINK,
            Self::SignupClosed(_) => codes::SIGNUP_CLOSED,
            Self::Internal(_) => codes::INTERNAL,
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
        let mut body = ErrorBody::new(self.code(), self.to_string());
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
