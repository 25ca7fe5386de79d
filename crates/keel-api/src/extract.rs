//! Request body parsing that names what is wrong: wrong content type (415), too large (413),
//! not JSON (400), not an object or an unknown / missing / mistyped field (422 with the field).

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use keel_domain::ValidationError;
use serde_json::{Map, Value};

use crate::{ApiError, AppState};

/// A JSON object body, checked for unknown fields against the route's list.
#[derive(Debug)]
pub struct JsonObject(pub Map<String, Value>);

impl FromRequest<AppState> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, state: &AppState) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json")
                    || mime.to_ascii_lowercase().ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = state.http.body_limit_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| ApiError::PayloadTooLarge { limit })?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        match value {
            Value::Object(map) => Ok(Self(map)),
            _ => Err(ValidationError::new("body", "must be a JSON object").into()),
        }
    }
}

impl JsonObject {
    /// Refuses any field not in `allowed`.
    pub fn deny_unknown(&self, allowed: &[&'static str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(unknown) => Err(ApiError::UnknownField {
                field: unknown.clone(),
                expected: allowed.join(", "),
            }),
            None => Ok(()),
        }
    }

    /// The string field `name`, if present and not null.
    pub fn optional_str(&self, name: &'static str) -> Result<Option<&str>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.required_str(name).map(Some),
        }
    }

    /// The required string field `name`.
    pub fn required_str(&self, name: &'static str) -> Result<&str, ApiError> {
        match self.0.get(name) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(ValidationError::new(name, "must be a string").into()),
            None => Err(ValidationError::new(name, "is required").into()),
        }
    }
}
