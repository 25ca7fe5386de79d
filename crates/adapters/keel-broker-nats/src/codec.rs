//! What a keel message looks like on NATS: the body is the NATS payload; everything else travels
//! in two headers (`Keel`, `Keel-Headers`), encoded so that no value can break the header framing or pose as one of
//! the server's own `Nats-*` control headers.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use keel_domain::{MessageId, Outgoing};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use uuid::Uuid;

/// Every keel field but the application's headers, in one header (the server scans a message's
/// headers for its own `Nats-*` ones, so fewer bytes there is less work per message):
/// `1;<id>;<published, µs since the epoch>;<expires, µs, or empty>;<topic>[;<key>]`. The topic is
/// a checked name (no `;`); the key, last, is percent-encoded outside printable ASCII, so it may
/// hold `;` and nothing that breaks the header framing.
pub(crate) const FIELDS: &str = "Keel";
/// The application's headers (trace context, …) as one JSON object: JSON escapes control
/// characters, and the names cannot collide with NATS's.
pub(crate) const HEADERS: &str = "Keel-Headers";
/// The format version leading [`FIELDS`].
const VERSION: &str = "1";

/// The headers of `message` published to `topic` at `published_at`.
pub(crate) fn encode(topic: &str, message: &Outgoing, published_at: DateTime<Utc>) -> HeaderMap {
    let mut fields = format!(
        "{VERSION};{};{};{};{topic}",
        message.id,
        published_at.timestamp_micros(),
        message
            .expires_at
            .map(|at| at.timestamp_micros().to_string())
            .unwrap_or_default(),
    );
    if let Some(key) = &message.key {
        fields.push(';');
        fields.extend(utf8_percent_encode(key, KEY_ESCAPED));
    }
    let mut headers = HeaderMap::new();
    headers.insert(FIELDS, fields.as_str());
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
    let fields = headers
        .get(FIELDS)
        .map(async_nats::HeaderValue::as_str)
        .ok_or("no Keel header")?;
    let mut parts = fields.splitn(6, ';');
    if parts.next() != Some(VERSION) {
        return Err("unknown Keel header version".into());
    }
    let mut next = |what: &str| parts.next().ok_or(format!("Keel header without {what}"));
    let id = Uuid::parse_str(next("id")?).map_err(|_| "malformed id in the Keel header")?;
    let published_at =
        micros(next("publish time")?).ok_or("malformed publish time in the Keel header")?;
    let expires_at = match next("expiry")? {
        "" => None,
        text => Some(micros(text).ok_or("malformed expiry in the Keel header")?),
    };
    let topic = next("topic")?.to_owned();
    let key = match parts.next() {
        Some(text) => Some(percent_decode(text).ok_or("malformed key in the Keel header")?),
        None => None,
    };
    let app_headers = match headers.get(HEADERS) {
        Some(v) => serde_json::from_str(v.as_str()).map_err(|_| "malformed Keel-Headers")?,
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

fn micros(text: &str) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(text.parse().ok()?)
}

/// The bytes of a key written as `%XX`: everything outside `!`..=`~` (controls, space, DEL; the
/// crate escapes every non-ASCII byte), and `%` itself: readable for ordinary keys, injective for
/// all.
const KEY_ESCAPED: &AsciiSet = &CONTROLS.add(b' ').add(b'%');

/// A key as [`encode`] wrote it; `None` for a malformed escape, which the crate would pass
/// through as text (keel never writes one, so the header is not keel's), or for bytes that are
/// not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let well_formed = text.split('%').skip(1).all(|escape| {
        escape
            .as_bytes()
            .get(..2)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return None;
    }
    percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_survives_the_round_trip() {
        let mut message =
            Outgoing::new(b"body".to_vec()).with_key("user 42\r\nNats-Msg-Id: x %;a;b");
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
    fn a_message_without_key_expiry_or_headers_survives_the_round_trip() {
        let message = Outgoing::new(b"plain".to_vec());
        let published_at = Utc::now();
        let decoded = decode(Some(&encode("t.x", &message, published_at))).unwrap();
        assert_eq!(
            (
                decoded.id,
                decoded.topic.as_str(),
                decoded.key,
                decoded.expires_at
            ),
            (message.id, "t.x", None, None)
        );
        assert!(decoded.headers.is_empty());
    }

    #[test]
    fn a_key_is_written_as_it_always_was() {
        // The wire format: processes of different builds read each other's keys.
        let message = Outgoing::new(Vec::new()).with_key("user 42\r\n%;\u{e9}~!\u{7f}");
        let headers = encode("t", &message, Utc::now());
        let fields = headers.get(FIELDS).unwrap().as_str();
        assert!(
            fields.ends_with(";t;user%2042%0D%0A%25;%C3%A9~!%7F"),
            "{fields}"
        );
    }

    #[test]
    fn foreign_messages_are_recognised() {
        let mut bad = HeaderMap::new();
        bad.insert(FIELDS, "2;x");
        assert!(decode(Some(&bad)).is_err());
        let mut bad = HeaderMap::new();
        bad.insert(FIELDS, "1;not-a-uuid;1;;t");
        assert!(decode(Some(&bad)).is_err());
        assert!(decode(None).is_err());
        assert!(decode(Some(&HeaderMap::new())).is_err());
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
    }
}
