//! What a keel message looks like on NATS: the body is the NATS payload; everything else travels
//! in `Keel-*` headers, encoded so that no value can break the header framing or pose as one of
//! the server's own `Nats-*` control headers.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use chrono::{DateTime, SecondsFormat, Utc};
use keel_domain::{MessageId, Outgoing};
use uuid::Uuid;

/// The message id (also sent as `Nats-Msg-Id` on publish, for the server's de-duplication).
pub(crate) const ID: &str = "Keel-Id";
/// The topic it was published to (a checked name: safe as is).
pub(crate) const TOPIC: &str = "Keel-Topic";
/// The ordering key, percent-encoded outside printable ASCII.
pub(crate) const KEY: &str = "Keel-Key";
/// The application's headers (trace context, …) as one JSON object: JSON escapes control
/// characters, and the names cannot collide with NATS's.
pub(crate) const HEADERS: &str = "Keel-Headers";
/// RFC 3339, microseconds, UTC.
pub(crate) const PUBLISHED_AT: &str = "Keel-Published-At";
/// RFC 3339, microseconds, UTC.
pub(crate) const EXPIRES_AT: &str = "Keel-Expires-At";

/// The headers of `message` published to `topic` at `published_at`.
pub(crate) fn encode(topic: &str, message: &Outgoing, published_at: DateTime<Utc>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ID, message.id.to_string().as_str());
    headers.insert(TOPIC, topic);
    headers.insert(PUBLISHED_AT, time(published_at).as_str());
    if let Some(key) = &message.key {
        headers.insert(KEY, percent_encode(key).as_str());
    }
    if let Some(at) = message.expires_at {
        headers.insert(EXPIRES_AT, time(at).as_str());
    }
    if !message.headers.is_empty() {
        // A map of strings always serializes.
        let json = serde_json::to_string(&message.headers).unwrap_or_default();
        headers.insert(HEADERS, json.as_str());
    }
    headers
}

/// A delivered message's keel fields.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) id: MessageId,
    pub(crate) topic: String,
    pub(crate) key: Option<String>,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) published_at: DateTime<Utc>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
}

/// Reads the keel fields back; `Err` names what is missing or malformed (a message that keel did
/// not write).
pub(crate) fn decode(headers: Option<&HeaderMap>) -> Result<Decoded, String> {
    let headers = headers.ok_or("no headers")?;
    let get = |name: &str| headers.get(name).map(|v| v.as_str());
    let id = get(ID)
        .and_then(|v| Uuid::parse_str(v).ok())
        .ok_or("no valid Keel-Id")?;
    let topic = get(TOPIC).ok_or("no Keel-Topic")?.to_owned();
    let published_at = get(PUBLISHED_AT)
        .and_then(parse_time)
        .ok_or("no valid Keel-Published-At")?;
    let key = match get(KEY) {
        Some(v) => Some(percent_decode(v).ok_or("malformed Keel-Key")?),
        None => None,
    };
    let expires_at = match get(EXPIRES_AT) {
        Some(v) => Some(parse_time(v).ok_or("malformed Keel-Expires-At")?),
        None => None,
    };
    let app_headers = match get(HEADERS) {
        Some(v) => serde_json::from_str(v).map_err(|_| "malformed Keel-Headers")?,
        None => BTreeMap::new(),
    };
    Ok(Decoded {
        id: MessageId(id),
        topic,
        key,
        headers: app_headers,
        published_at,
        expires_at,
    })
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Bytes outside `!`..=`~`, and `%` itself, as `%XX`: readable for ordinary keys, injective for all.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_survives_the_round_trip() {
        let mut message = Outgoing::new(b"body".to_vec()).with_key("user 42\r\nNats-Msg-Id: x %");
        message
            .headers
            .insert("traceparent".into(), "00-abc-def-01".into());
        message
            .headers
            .insert("Nats-Expected-Stream".into(), "évil\r\nvalue".into());
        message.expires_at = Some(Utc::now() + chrono::Duration::seconds(60));
        let published_at = Utc::now();
        let headers = encode("user.created", &message, published_at);
        assert!(
            headers.get("Nats-Expected-Stream").is_none(),
            "application headers never become NATS headers"
        );
        let decoded = decode(Some(&headers)).unwrap();
        assert_eq!(decoded.id, message.id);
        assert_eq!(decoded.topic, "user.created");
        assert_eq!(decoded.key, message.key);
        assert_eq!(decoded.headers, message.headers);
        let micros = |t: DateTime<Utc>| t.timestamp_micros();
        assert_eq!(micros(decoded.published_at), micros(published_at));
        assert_eq!(
            decoded.expires_at.map(micros),
            message.expires_at.map(micros)
        );
    }

    #[test]
    fn foreign_messages_are_recognised() {
        assert!(decode(None).is_err());
        assert!(decode(Some(&HeaderMap::new())).is_err());
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
    }
}
