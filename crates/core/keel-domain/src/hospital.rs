//! The error hospital port (DESIGN.md C6): where messages go when handling them failed for good,
//! so that people can look at them and replay or discard them. Nothing leaves it silently.
//!
//! A patient is **waiting** until an operator replays it (its message goes back to the group that
//! failed it) or discards it with a reason; replayed and discarded patients stay, with who did it,
//! when and why. Every operator action is written to an append-only audit log in the same
//! transaction as its effect. A replay is claimed first (a lease on the patient), so that two
//! operators replaying one patient send it once.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::messaging::queue::{Delivery, MessageId};

/// Why a message was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AdmissionReason {
    /// Every allowed attempt failed with a transient error.
    Exhausted,
    /// The handler said retrying cannot help.
    Permanent,
    /// The message's time to live passed before it was handled; it was not handled.
    Expired,
}

impl AdmissionReason {
    pub const ALL: [Self; 3] = [Self::Exhausted, Self::Permanent, Self::Expired];

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

/// Where a patient is in its care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatientState {
    /// Admitted and not yet dealt with: it can be edited, replayed or discarded.
    Waiting,
    /// Its message was sent back to its group. Kept for the record.
    Replayed,
    /// An operator decided it must not be handled, and said why. Kept for the record.
    Discarded,
}

impl PatientState {
    pub const ALL: [Self; 3] = [Self::Waiting, Self::Replayed, Self::Discarded];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Replayed => "replayed",
            Self::Discarded => "discarded",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "waiting" => Some(Self::Waiting),
            "replayed" => Some(Self::Replayed),
            "discarded" => Some(Self::Discarded),
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

/// Who took a patient out of waiting, when, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub by: String,
    pub at: DateTime<Utc>,
    /// The discard reason; for a replay, an optional note.
    pub note: Option<String>,
}

/// The last edit of a patient's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub by: String,
    pub at: DateTime<Utc>,
    /// The body as it was admitted (the patient's `body` is the edited one).
    pub original_body: Vec<u8>,
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
    /// The body a replay sends: as admitted, or as last edited.
    pub body: Vec<u8>,
    pub published_at: DateTime<Utc>,
    pub admitted_at: DateTime<Utc>,
    pub reason: AdmissionReason,
    /// The W3C trace id from the `traceparent` header, when the message carried one.
    pub trace_id: Option<String>,
    /// Every failed attempt, oldest first.
    pub attempts: Vec<AttemptRecord>,
    pub state: PatientState,
    /// Set once the patient is replayed or discarded.
    pub settled: Option<Settlement>,
    /// Set once an operator edited the body.
    pub edited: Option<Edit>,
    /// `[group, reason, cause]` is what the console groups by: [`cause_of`] the last error.
    pub cause: String,
    /// Who is replaying it now, until when (a replay in progress holds a lease on the patient).
    pub replay_claim: Option<(String, DateTime<Utc>)>,
}

impl Patient {
    /// The last attempt's error, if any was recorded (an expired message has none).
    pub fn last_error(&self) -> Option<&str> {
        self.attempts.last().map(|a| a.error.as_str())
    }

    /// Whether a replay holds this patient at `now`.
    pub fn is_claimed(&self, now: DateTime<Utc>) -> bool {
        self.replay_claim
            .as_ref()
            .is_some_and(|(_, until)| *until > now)
    }
}

/// Which patients a listing, a count or a bulk replay is about. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatientFilter {
    pub group: Option<String>,
    pub topic: Option<String>,
    pub reason: Option<AdmissionReason>,
    pub state: Option<PatientState>,
    /// A case-insensitive substring of the last error: an error class, a fragment of a message.
    pub error_contains: Option<String>,
    /// Exactly this cause (see [`cause_of`]): one row of the group-by-cause view.
    pub cause: Option<String>,
    /// Admitted at or after this instant.
    pub admitted_from: Option<DateTime<Utc>>,
    /// Admitted before this instant.
    pub admitted_until: Option<DateTime<Utc>>,
    /// Only patients with a greater id (admitted later).
    pub after_id: Option<i64>,
    /// Only patients with this id or a smaller one: fixes a set as it was previewed, so that a
    /// bulk replay confirmed after a dry run does not take in patients admitted since.
    pub through_id: Option<i64>,
}

/// One page request of a patient listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientQuery {
    pub filter: PatientFilter,
    /// Continue after this patient id (exclusive), in the listing's order.
    pub cursor: Option<i64>,
    /// At most this many patients (callers bound it).
    pub limit: u32,
    /// Oldest first (ascending ids) instead of the default newest first.
    pub oldest_first: bool,
}

impl PatientQuery {
    /// The newest `limit` patients matching `filter`.
    pub fn newest(filter: PatientFilter, limit: u32) -> Self {
        Self {
            filter,
            cursor: None,
            limit,
            oldest_first: false,
        }
    }
}

/// One page of patients, and the cursor that continues after it when more may follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientPage {
    pub patients: Vec<Patient>,
    pub next_cursor: Option<i64>,
}

/// How many patients share one cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CauseCount {
    pub group: String,
    pub reason: AdmissionReason,
    pub cause: String,
    pub count: u64,
    pub first_admitted: DateTime<Utc>,
    pub last_admitted: DateTime<Utc>,
    /// The newest patient of this cause, to show as an example.
    pub latest_id: i64,
}

/// The outcome of an operator action on one patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Done; the patient as it now is.
    Done(Patient),
    /// Nothing done: the patient was already replayed or discarded (as it now is). Repeating an
    /// action is therefore harmless.
    Settled(Patient),
    /// Nothing done: a replay in progress holds the patient.
    Busy(Patient),
}

/// The outcome of claiming a patient for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayClaim {
    /// The caller holds the patient until the lease ends: it may redeliver, then mark it.
    Claimed { patient: Patient, token: Uuid },
    /// Already replayed or discarded: nothing to do.
    Settled(Patient),
    /// Another replay holds it now.
    Busy(Patient),
}

/// One line of the audit log: an operator action, written in the transaction of its effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    /// `edit`, `replay` or `discard`.
    pub action: String,
    pub patient_ids: Vec<i64>,
    /// A JSON object with the action's particulars (the discard reason, the body before an
    /// edit, the filter of a bulk replay...).
    pub detail: String,
}

/// A notice channel claimed by one process: it may send what follows `position`, then advance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeClaim {
    pub token: Uuid,
    /// Where the channel stands (for admissions: the last patient id notified).
    pub position: i64,
    /// When the position last moved (or the channel was created).
    pub updated_at: DateTime<Utc>,
}

/// Why a hospital call failed.
#[derive(Debug, thiserror::Error)]
pub enum HospitalError {
    /// The hospital holds its maximum of waiting patients: admission is refused (the message
    /// stays in its queue and an alert is raised) rather than evicting an older patient.
    #[error("hospital full")]
    Full,
    /// No patient has this id.
    #[error("patient {0} not found")]
    NotFound(i64),
    /// The caller's input is refused (an empty discard reason, an empty actor).
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("hospital unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("hospital fault")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Storage of failed attempts, admitted messages, operator actions and notice positions.
#[async_trait]
pub trait Hospital: Send + Sync + 'static {
    /// Records one failed attempt, so that an admission can show every attempt's error.
    async fn record_attempt(&self, delivery: &Delivery, error: &str) -> Result<(), HospitalError>;
    /// Admits the delivery's message with its recorded attempts and returns the patient id.
    /// Idempotent per group and message id while the patient is waiting or discarded (a
    /// redelivery after a crash between admission and ack is admitted once, its new attempts
    /// joining the patient); a message that fails again after a replay is a new patient.
    async fn admit(
        &self,
        delivery: &Delivery,
        reason: AdmissionReason,
    ) -> Result<i64, HospitalError>;
    async fn get(&self, id: i64) -> Result<Option<Patient>, HospitalError>;
    /// A page of patients matching the query's filter.
    async fn find(&self, query: &PatientQuery) -> Result<PatientPage, HospitalError>;
    /// Patients matching `filter` counted by group, reason and cause, most numerous first.
    async fn causes(&self, filter: &PatientFilter) -> Result<Vec<CauseCount>, HospitalError>;
    /// Replaces a waiting patient's body, keeping the admitted one; audited.
    async fn edit_body(
        &self,
        id: i64,
        body: &[u8],
        actor: &str,
    ) -> Result<Transition, HospitalError>;
    /// Claims a waiting patient for replay for `lease` (race-safe: one claimant wins). A claim
    /// whose lease ended may be taken by another replay: a replayer that died is not waited on.
    async fn claim_replay(
        &self,
        id: i64,
        actor: &str,
        lease: Duration,
    ) -> Result<ReplayClaim, HospitalError>;
    /// Marks a claimed patient replayed and writes the audit entry (with `detail`, a JSON object)
    /// in the same transaction. `Settled` if it was already replayed; `Busy` if the claim was
    /// lost to another replay.
    async fn mark_replayed(
        &self,
        id: i64,
        token: Uuid,
        actor: &str,
        detail: &str,
    ) -> Result<Transition, HospitalError>;
    /// Gives a claim back (the redelivery failed): the patient is waiting and free again.
    async fn release_replay(&self, id: i64, token: Uuid) -> Result<(), HospitalError>;
    /// Discards a waiting patient with a reason; audited. Idempotent (`Settled` once settled).
    async fn discard(
        &self,
        id: i64,
        reason: &str,
        actor: &str,
    ) -> Result<Transition, HospitalError>;
    /// The audit log, newest first, before `cursor` (an entry id), optionally about one patient.
    async fn audit_log(
        &self,
        patient: Option<i64>,
        cursor: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, HospitalError>;
    /// Claims a notice channel (created at position 0) for `lease`, unless another process holds
    /// it: with several processes, each admission is then notified by one of them.
    async fn claim_notices(
        &self,
        channel: &str,
        lease: Duration,
    ) -> Result<Option<NoticeClaim>, HospitalError>;
    /// Moves a claimed channel to `position` (compare-and-set on the claim): `false` if the claim
    /// was lost, in which case the caller must stop sending.
    async fn advance_notices(
        &self,
        channel: &str,
        token: Uuid,
        position: i64,
    ) -> Result<bool, HospitalError>;
    /// Gives the channel back, so another process need not wait for the lease to end.
    async fn release_notices(&self, channel: &str, token: Uuid) -> Result<(), HospitalError>;

    /// The newest `limit` patients, whatever their state.
    async fn list(&self, limit: u32) -> Result<Vec<Patient>, HospitalError> {
        Ok(self
            .find(&PatientQuery::newest(PatientFilter::default(), limit))
            .await?
            .patients)
    }
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(headers: &BTreeMap<String, String>) -> Option<String> {
    let parent = headers.get("traceparent")?;
    let mut parts = parent.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.chars().all(|c| c.is_ascii_hexdigit())).then(|| trace.to_owned())
}

/// Longest actor name, in characters.
pub const MAX_ACTOR_CHARS: usize = 200;
/// Longest discard reason or replay note, in characters.
pub const MAX_NOTE_CHARS: usize = 2000;

/// Checks who acts: 1 to [`MAX_ACTOR_CHARS`] characters, no control characters.
pub fn check_actor(actor: &str) -> Result<(), HospitalError> {
    let n = actor.chars().count();
    if actor.trim().is_empty() || n > MAX_ACTOR_CHARS || actor.chars().any(char::is_control) {
        return Err(HospitalError::Invalid {
            what: "actor",
            why: format!("must be 1-{MAX_ACTOR_CHARS} characters without control characters"),
        });
    }
    Ok(())
}

/// Checks a discard reason: not blank, at most [`MAX_NOTE_CHARS`] characters.
pub fn check_reason(reason: &str) -> Result<(), HospitalError> {
    if reason.trim().is_empty() || reason.chars().count() > MAX_NOTE_CHARS {
        return Err(HospitalError::Invalid {
            what: "reason",
            why: format!("a discard needs a reason of 1-{MAX_NOTE_CHARS} characters"),
        });
    }
    Ok(())
}

/// Longest cause kept, in characters.
pub const MAX_CAUSE_CHARS: usize = 200;

/// The cause of an error, for grouping: its first non-empty line with what varies between
/// occurrences replaced — UUIDs by `<uuid>`, long runs of hexadecimal digits and letters (hashes, trace ids) by `<hex>`,
/// numbers by `<n>` — spaces collapsed, at most [`MAX_CAUSE_CHARS`] characters. So
/// `order 42 not found (id 0190…)` and `order 7 not found (id 0191…)` share one cause.
pub fn cause_of(error: &str) -> String {
    let line = error
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let chars: Vec<char> = line.chars().collect();
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        let at_word_start = i == 0 || !word(chars[i - 1]);
        if at_word_start && is_uuid_at(&chars, i) {
            out.push_str("<uuid>");
            i += 36;
            continue;
        }
        if at_word_start {
            let run = chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit())
                .count();
            let ends_word = chars.get(i + run).is_none_or(|&c| !word(c));
            let hex = &chars[i..i + run];
            let mixed =
                hex.iter().any(char::is_ascii_digit) && hex.iter().any(char::is_ascii_alphabetic);
            if run >= 8 && ends_word && mixed {
                out.push_str("<hex>");
                i += run;
                continue;
            }
        }
        if chars[i].is_ascii_digit() {
            out.push_str("<n>");
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            continue;
        }
        if chars[i].is_whitespace() {
            if !out.ends_with(' ') {
                out.push(' ');
            }
        } else {
            out.push(chars[i]);
        }
        i += 1;
    }
    match out.char_indices().nth(MAX_CAUSE_CHARS) {
        Some((cut, _)) => out[..cut].to_owned(),
        None => out,
    }
}

fn is_uuid_at(chars: &[char], i: usize) -> bool {
    let Some(candidate) = chars.get(i..i + 36) else {
        return false;
    };
    let shape_ok = candidate.iter().enumerate().all(|(n, c)| match n {
        8 | 13 | 18 | 23 => *c == '-',
        _ => c.is_ascii_hexdigit(),
    });
    shape_ok && chars.get(i + 36).is_none_or(|c| !c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_hide_what_varies_between_occurrences() {
        assert_eq!(
            cause_of("order 42 not found (id 0190b4d3-7c2e-7a3f-8e1d-9f00a1b2c3d4)"),
            "order <n> not found (id <uuid>)"
        );
        assert_eq!(
            cause_of("order 7 not found (id 0191aaaa-bbbb-7ccc-8ddd-eeeeffff0000)\nat line 3"),
            "order <n> not found (id <uuid>)"
        );
        assert_eq!(
            cause_of("trace 0af7651916cd43dd8448eb211c80319c failed"),
            "trace <hex> failed"
        );
        assert_eq!(
            cause_of("\n\n   timeout   after 30s  "),
            "timeout after <n>s"
        );
        assert_eq!(cause_of("v2 decoder"), "v<n> decoder");
        assert_eq!(cause_of("row 12345678 locked"), "row <n> locked");
        // Words made of hex letters are words, not hashes.
        assert_eq!(cause_of("deadbeef cafe"), "deadbeef cafe");
        assert_eq!(cause_of(""), "");
        assert_eq!(cause_of(&"é".repeat(500)).chars().count(), MAX_CAUSE_CHARS);
    }

    #[test]
    fn states_and_reasons_round_trip_through_their_names() {
        for state in PatientState::ALL {
            assert_eq!(PatientState::parse(state.as_str()), Some(state));
        }
        for reason in AdmissionReason::ALL {
            assert_eq!(AdmissionReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(PatientState::parse("gone"), None);
    }
}
