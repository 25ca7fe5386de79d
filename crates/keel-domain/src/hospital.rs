//! The error hospital port (DESIGN.md C6): where messages go when handling them failed for good,
//! so that people can look at them and replay or discard them. Nothing leaves it silently.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::queue::{Delivery, MessageId};

/// Why a message was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdmissionReason {
    /// Every allowed attempt failed with a transient error.
    Exhausted,
    /// The handler said retrying cannot help.
    Permanent,
    /// The message's time to live passed before it was handled; it was not handled.
    Expired,
}

impl AdmissionReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Exhausted => "exhausted",
            Self::Permanent => "permanent",
            Self::Expired => "expired",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "exhausted" => Some(Self::Exhausted),
            "permanent" => Some(Self::Permanent),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }
}

/// One failed attempt at handling a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub error: String,
    pub at: DateTime<Utc>,
}

/// A message in the hospital, with everything needed to understand and replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patient {
    pub id: i64,
    pub group: String,
    pub topic: String,
    pub message_id: MessageId,
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub published_at: DateTime<Utc>,
    pub admitted_at: DateTime<Utc>,
    pub reason: AdmissionReason,
    /// The W3C trace id from the `traceparent` header, when the message carried one.
    pub trace_id: Option<String>,
    /// Every failed attempt, oldest first.
    pub attempts: Vec<AttemptRecord>,
}

/// Why a hospital call failed.
#[derive(Debug, thiserror::Error)]
pub enum HospitalError {
    /// The hospital holds its maximum: admission is refused (the message stays in its queue and
    /// an alert is raised) rather than evicting an older patient.
    #[error("hospital full")]
    Full,
    #[error("hospital unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("hospital fault")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Storage of failed attempts and admitted messages.
#[async_trait]
pub trait Hospital: Send + Sync + 'static {
    /// Records one failed attempt, so that an admission can show every attempt's error.
    async fn record_attempt(&self, delivery: &Delivery, error: &str) -> Result<(), HospitalError>;
    /// Admits the delivery's message with its recorded attempts. Idempotent per group and message
    /// id (a redelivery after a crash between admission and ack admits it once).
    async fn admit(
        &self,
        delivery: &Delivery,
        reason: AdmissionReason,
    ) -> Result<i64, HospitalError>;
    async fn get(&self, id: i64) -> Result<Option<Patient>, HospitalError>;
    /// Patients waiting, newest first, at most `limit`.
    async fn list(&self, limit: u32) -> Result<Vec<Patient>, HospitalError>;
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(headers: &BTreeMap<String, String>) -> Option<String> {
    let parent = headers.get("traceparent")?;
    let mut parts = parent.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.chars().all(|c| c.is_ascii_hexdigit())).then(|| trace.to_owned())
}
