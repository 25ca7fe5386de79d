//! Request parsing that names what is wrong, as keel's JSON errors (never the framework's plain
//! text):
//! - JSON bodies ([`JsonBody`], into the structs of [`crate::input`]): wrong content type (415),
//!   too large (413), unreadable (400), not JSON or a key given twice (400, the duplicate named),
//!   not an object or an unknown / missing / mistyped field (422 with the field);
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

/// A JSON object body deserialized into `T` (one of [`crate::input`]'s structs), field by field
/// with the faulty field named: see [`from_json`].
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
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
        if !value.is_object() {
            return Err(ValidationError::new("body", "must be a JSON object").into());
        }
        from_json(value).map(Self)
    }
}

/// A JSON value (already free of duplicate keys, see [`parse_strict`]) as `T`, every refusal
/// naming the field at fault (decision 0090): a field `T` does not have is 422 `unknown_field`;
/// a missing field or a value of the wrong type is 422 `validation_failed`.
///
/// serde reports a missing field at the enclosing object's path, with the field's name only in
/// its message, so the name is taken from there.
pub fn from_json<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let within = |name: &str| match path.as_str() {
            "." => name.to_owned(),
            parent => format!("{parent}.{name}"),
        };
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
            // serde lists the fields as "`a`", "`a` or `b`" or "one of `a`, `b`, `c`".
            let expected = expected
                .trim_start_matches(", expected ")
                .trim_start_matches("one of ")
                .replace(" or ", ", ")
                .replace('`', "");
            // The path already ends with the unknown key.
            let field = match path.as_str() {
                "." => name.to_owned(),
                field => field.to_owned(),
            };
            return ApiError::UnknownField { field, expected };
        }
        if let Some(rest) = message.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or(rest);
            return ApiError::InvalidField {
                field: within(name),
                message: "is required".to_owned(),
            };
        }
        // A wrong type ("invalid type: integer `42`, expected a string") or value: the path
        // names the field; say what it must be, as the domain's validators do.
        let message = match message.rsplit_once(", expected ") {
            Some((_, expected)) => format!("must be {expected}"),
            None => message,
        };
        let field = match path.as_str() {
            "." => "body".to_owned(),
            field => field.to_owned(),
        };
        ApiError::InvalidField { field, message }
    })
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::input::{AdminAccountInput, UserInput};

    fn fault<T: DeserializeOwned + fmt::Debug>(body: Value) -> (String, String, String) {
        let err = from_json::<T>(body).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        let field = match &err {
            ApiError::UnknownField { field, .. } | ApiError::InvalidField { field, .. } => {
                field.clone()
            }
            other => panic!("not a field error: {other:?}"),
        };
        (err.code().to_owned(), field, err.to_string())
    }

    #[test]
    fn an_unknown_field_is_named_with_the_fields_expected() {
        let body = json!({"name": "Ada", "email": "a@example.com", "admin": true});
        assert_eq!(
            fault::<UserInput>(body),
            (
                "unknown_field".to_owned(),
                "admin".to_owned(),
                "unknown field `admin`; expected one of: name, email".to_owned()
            )
        );
    }

    #[test]
    fn a_missing_field_is_required() {
        let body = json!({"email": "a@example.com"});
        assert_eq!(
            fault::<UserInput>(body),
            (
                "validation_failed".to_owned(),
                "name".to_owned(),
                "name: is required".to_owned()
            )
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_says_what_it_must_be() {
        let body = json!({"name": 42, "email": "a@example.com"});
        assert_eq!(
            fault::<UserInput>(body),
            (
                "validation_failed".to_owned(),
                "name".to_owned(),
                "name: must be a string".to_owned()
            )
        );
        let body = json!({"name": "Ada", "email": "a@example.com", "roles": ["admin", 1]});
        assert_eq!(fault::<AdminAccountInput>(body).1, "roles[1]");
    }

    #[test]
    fn a_well_formed_body_is_read() {
        let input: UserInput = from_json(json!({"name": "Ada", "email": "a@x.org"})).unwrap();
        assert_eq!(
            (input.name.as_str(), input.email.as_str()),
            ("Ada", "a@x.org")
        );
    }
}
