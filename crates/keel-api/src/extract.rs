//! Request body parsing that names what is wrong: wrong content type (415), too large (413),
//! not JSON or a key given twice (400, the duplicate named), not an object or an unknown /
//! missing / mistyped field (422 with the field).

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use keel_domain::ValidationError;
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
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| ApiError::PayloadTooLarge { limit })?;
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
