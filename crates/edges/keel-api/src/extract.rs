//! Request parsing that names what is wrong, as keel's JSON errors (never the framework's plain
//! text):
//! - JSON bodies ([`JsonObject`]): wrong content type (415), too large (413), unreadable (400),
//!   not JSON or a key given twice (400, the duplicate named), not an object or an unknown /
//!   missing / mistyped field (422 with the field);
//! - query strings ([`Query`]) and form bodies ([`Form`]): a repeated parameter is refused (400
//!   `duplicate_parameter`, naming it) rather than one of its values picked silently, and a value
//!   of the wrong type is 400 `invalid_parameter`, naming it;
//! - path parameters ([`Path`]): 400 `invalid_path`.

use std::collections::HashSet;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use futures_util::StreamExt as _;
use keel_domain::ValidationError;
use serde::de::DeserializeOwned;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::fmt;

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
        let bytes = read_body(req.into_body(), limit).await?;
        let value = parse_strict(&bytes)?;
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

/// The whole body, at most `limit` bytes: 413 past the limit; 400 `malformed_body` when the body
/// cannot be read (broken chunked framing, a connection cut mid-body), which is the client's
/// framing, not its size.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::MalformedBody(e.to_string()))?;
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.into())
}

/// `application/x-www-form-urlencoded` pairs deserialized into `T`, once each.
///
/// A repeated name is refused whatever `T` makes of it: serde would refuse it for some fields
/// and keep one value of it for others (a flattened or ignored one), and RFC 6749 §3.1 forbids
/// repeating a parameter. Value errors name the parameter when serde's path does.
pub fn parse_params<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    let mut seen = HashSet::new();
    for (name, _) in form_urlencoded::parse(raw) {
        if !seen.insert(name.clone()) {
            return Err(ApiError::DuplicateParameter {
                name: name.into_owned(),
            });
        }
    }
    let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw));
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let name = (path != ".").then_some(path);
        let message = match &name {
            Some(name) => format!("parameter `{name}`: {message}"),
            None => message,
        };
        ApiError::InvalidParameter { name, message }
    })
}

/// The query string as `T` (see [`parse_params`]); the framework's `Query` answers plain text.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or_default();
        parse_params(raw.as_bytes()).map(Self)
    }
}

/// A form body (`application/x-www-form-urlencoded`) as `T`: 415 for another content type, the
/// body limits of [`read_body`], then [`parse_params`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Form<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Form<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, state: &AppState) -> Result<Self, Self::Rejection> {
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                mime.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !is_form {
            return Err(ApiError::UnsupportedForm);
        }
        let bytes = read_body(req.into_body(), state.http.body_limit_bytes).await?;
        parse_params(&bytes).map(Self)
    }
}

/// Path parameters as `T`; the framework's `Path` answers plain text (e.g. for an escape that is
/// not UTF-8).
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|e| ApiError::InvalidPath(e.body_text()))
    }
}

/// Parses JSON refusing an object that names a key twice, at any depth: serde_json keeps the
/// last value, so `{"name":"a","name":"b"}` would pass validation of one value and store
/// another, and two parsers of the same body could disagree on what it says.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, ApiError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = StrictValue(&duplicate)
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match (parsed, duplicate.into_inner()) {
        (_, Some(field)) => Err(ApiError::DuplicateField(field)),
        (Ok(value), None) => Ok(value),
        (Err(e), None) => Err(ApiError::MalformedJson(e.to_string())),
    }
}

/// A JSON value whose objects have distinct keys; the first repeated key is left in the cell.
struct StrictValue<'a>(&'a RefCell<Option<String>>);

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue(self.0))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let message = format!("duplicate key `{key}`");
                *self.0.borrow_mut() = Some(key);
                return Err(de::Error::custom(message));
            }
            let value = map.next_value_seed(StrictValue(self.0))?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}
