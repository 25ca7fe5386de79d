//! The operator actions: replay (one, many, or a filtered set, with a dry run), discard, edit.
//!
//! A replay claims the patient (a lease, so that two operators replaying it at once send it
//! once), sends its message back to the group that failed it with the same id, key and headers
//! (and the body as edited), then marks it replayed, writing the audit entry in that same
//! transaction. If the process dies between sending and marking, the patient becomes free again
//! when the claim's lease ends and a later replay sends the message a second time: consumers
//! absorb that copy by the message id, as they absorb every redelivery (DESIGN.md C5). Sending
//! before marking is the order that can duplicate but never lose: marking first could leave a
//! patient marked replayed whose message was never sent.

use std::sync::Arc;
use std::time::Duration;

use keel_domain::{
    AdmissionReason, Broker, Hospital, HospitalError, MessageId, Outgoing, Patient, PatientFilter,
    PatientQuery, PatientState, ReplayClaim, Transition,
};

/// How long a replay holds a patient: far longer than a redelivery takes, short enough that a
/// replayer that died does not keep the patient from the next one for long.
pub const DEFAULT_REPLAY_LEASE: Duration = Duration::from_secs(60);

/// Most patients one bulk replay takes; a larger set is replayed in several runs (the report
/// says it was cut).
pub const MAX_BULK: usize = 10_000;

/// Which patients to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayTarget {
    /// These patients, in this order.
    Ids(Vec<i64>),
    /// The waiting patients matching the filter, oldest first (its `state` is ignored).
    Filter(PatientFilter),
}

/// What became, or would become, of one patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Dry run: it is waiting and free; a replay would send it.
    WouldReplay,
    /// Sent back to its group and marked replayed.
    Replayed,
    /// Nothing done: already replayed or discarded.
    Settled(PatientState),
    /// Nothing done: another replay holds it now.
    Busy,
    /// No patient has this id.
    NotFound,
    /// Not replayed, or sent but not marked; the text says which and why.
    Failed(String),
}

impl ReplayOutcome {
    /// A short word for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Self::WouldReplay => "would replay",
            Self::Replayed => "replayed",
            Self::Settled(PatientState::Replayed) => "already replayed",
            Self::Settled(_) => "already discarded",
            Self::Busy => "being replayed",
            Self::NotFound => "not found",
            Self::Failed(_) => "failed",
        }
    }
}

/// One patient of a replay report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayItem {
    pub id: i64,
    /// The patient's particulars, when it exists.
    pub summary: Option<Summary>,
    pub outcome: ReplayOutcome,
}

/// What a report shows of a patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub group: String,
    pub topic: String,
    pub message_id: MessageId,
    pub reason: AdmissionReason,
    pub cause: String,
}

impl From<&Patient> for Summary {
    fn from(p: &Patient) -> Self {
        Self {
            group: p.group.clone(),
            topic: p.topic.clone(),
            message_id: p.message_id,
            reason: p.reason,
            cause: p.cause.clone(),
        }
    }
}

/// The result of a replay or of its dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub dry_run: bool,
    pub items: Vec<ReplayItem>,
    /// For a filter: the newest patient id considered. Confirming a dry run with this as the
    /// filter's `through_id` replays the set that was previewed, not patients admitted since.
    pub through_id: Option<i64>,
    /// The filter matched more than [`MAX_BULK`] patients; only the oldest were taken.
    pub truncated: bool,
}

impl ReplayReport {
    /// How many items have an outcome with this label.
    pub fn count(&self, label: &str) -> usize {
        self.items
            .iter()
            .filter(|i| i.outcome.label() == label)
            .count()
    }

    /// How many failed.
    pub fn failures(&self) -> usize {
        self.items
            .iter()
            .filter(|i| matches!(i.outcome, ReplayOutcome::Failed(_)))
            .count()
    }
}

/// The hospital's operator actions over a hospital and the broker its patients came from.
#[derive(Clone)]
pub struct HospitalService {
    pub hospital: Arc<dyn Hospital>,
    pub broker: Arc<dyn Broker>,
    /// How long a replay holds each patient (see [`DEFAULT_REPLAY_LEASE`]).
    pub replay_lease: Duration,
}

impl std::fmt::Debug for HospitalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HospitalService")
            .field("replay_lease", &self.replay_lease)
            .finish_non_exhaustive()
    }
}

impl HospitalService {
    pub fn new(hospital: Arc<dyn Hospital>, broker: Arc<dyn Broker>) -> Self {
        Self {
            hospital,
            broker,
            replay_lease: DEFAULT_REPLAY_LEASE,
        }
    }

    /// Replays `target` as `actor`, or with `dry_run` says what a replay would do and changes
    /// nothing.
    pub async fn replay(
        &self,
        target: &ReplayTarget,
        dry_run: bool,
        actor: &str,
    ) -> Result<ReplayReport, HospitalError> {
        self.replay_with_progress(target, dry_run, actor, &mut |_, _| {})
            .await
    }

    /// [`Self::replay`], calling `progress(done, total)` after each patient.
    pub async fn replay_with_progress(
        &self,
        target: &ReplayTarget,
        dry_run: bool,
        actor: &str,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<ReplayReport, HospitalError> {
        keel_domain::hospital::check_actor(actor)?;
        let (ids, through_id, truncated, filter) = match target {
            ReplayTarget::Ids(ids) => (ids.clone(), None, false, None),
            ReplayTarget::Filter(filter) => {
                let (ids, truncated) = self.waiting_ids(filter).await?;
                let through = ids.last().copied().or(filter.through_id);
                (ids, through, truncated, Some(filter))
            }
        };
        let batch = uuid::Uuid::new_v4();
        let mut items = Vec::with_capacity(ids.len());
        for (n, &id) in ids.iter().enumerate() {
            let item = if dry_run {
                self.preview(id).await?
            } else {
                let detail = serde_json::json!({
                    "batch": batch.to_string(),
                    "filter": filter.map(filter_json),
                });
                self.replay_one(id, actor, detail).await?
            };
            items.push(item);
            progress(n + 1, ids.len());
        }
        Ok(ReplayReport {
            dry_run,
            items,
            through_id,
            truncated,
        })
    }

    /// The ids of the waiting patients matching `filter`, oldest first, at most [`MAX_BULK`].
    async fn waiting_ids(&self, filter: &PatientFilter) -> Result<(Vec<i64>, bool), HospitalError> {
        let filter = PatientFilter {
            state: Some(PatientState::Waiting),
            ..filter.clone()
        };
        let mut ids = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .hospital
                .find(&PatientQuery {
                    filter: filter.clone(),
                    cursor,
                    limit: 500,
                    oldest_first: true,
                })
                .await?;
            ids.extend(page.patients.iter().map(|p| p.id));
            if ids.len() > MAX_BULK {
                ids.truncate(MAX_BULK);
                return Ok((ids, true));
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok((ids, false)),
            }
        }
    }

    async fn preview(&self, id: i64) -> Result<ReplayItem, HospitalError> {
        let Some(patient) = self.hospital.get(id).await? else {
            return Ok(ReplayItem {
                id,
                summary: None,
                outcome: ReplayOutcome::NotFound,
            });
        };
        let outcome = if patient.state != PatientState::Waiting {
            ReplayOutcome::Settled(patient.state)
        } else if patient.is_claimed(chrono::Utc::now()) {
            ReplayOutcome::Busy
        } else {
            ReplayOutcome::WouldReplay
        };
        Ok(ReplayItem {
            id,
            summary: Some(Summary::from(&patient)),
            outcome,
        })
    }

    /// Claim, send, mark. Hospital faults on the claim end the whole replay (the report would
    /// otherwise be a list of the same fault); later faults are reported for this patient.
    async fn replay_one(
        &self,
        id: i64,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<ReplayItem, HospitalError> {
        let claim = match self
            .hospital
            .claim_replay(id, actor, self.replay_lease)
            .await
        {
            Ok(claim) => claim,
            Err(HospitalError::NotFound(_)) => {
                return Ok(ReplayItem {
                    id,
                    summary: None,
                    outcome: ReplayOutcome::NotFound,
                });
            }
            Err(e) => return Err(e),
        };
        let (patient, token) = match claim {
            ReplayClaim::Claimed { patient, token } => (patient, token),
            ReplayClaim::Settled(p) => return Ok(item(&p, ReplayOutcome::Settled(p.state))),
            ReplayClaim::Busy(p) => return Ok(item(&p, ReplayOutcome::Busy)),
        };
        let message = Outgoing {
            id: patient.message_id,
            key: patient.key.clone(),
            headers: patient.headers.clone(),
            body: patient.body.clone(),
            // A replay is an operator's decision to handle the message now: an expiry that
            // admitted it must not admit it again.
            expires_at: None,
        };
        if let Err(e) = self
            .broker
            .redeliver(&patient.group, &patient.topic, message)
            .await
        {
            let why = format!("not sent: {}", keel_domain::error_chain(&e));
            tracing::warn!(patient = id, error = %why, "replay failed");
            if let Err(release) = self.hospital.release_replay(id, token).await {
                // The claim's lease ends by itself; the patient is free again then.
                tracing::warn!(patient = id, error = %release, "replay claim not released");
            }
            return Ok(item(&patient, ReplayOutcome::Failed(why)));
        }
        let mut detail = detail;
        detail["message_id"] = patient.message_id.to_string().into();
        detail["group"] = patient.group.clone().into();
        detail["topic"] = patient.topic.clone().into();
        detail["edited"] = patient.edited.is_some().into();
        let outcome = match self
            .hospital
            .mark_replayed(id, token, actor, &detail.to_string())
            .await
        {
            Ok(Transition::Done(_)) => ReplayOutcome::Replayed,
            Ok(_) => ReplayOutcome::Failed(
                "sent, but the claim ran out before it was marked: another replay holds it and \
                 will send it again (consumers absorb the copy by message id)"
                    .into(),
            ),
            Err(e) => ReplayOutcome::Failed(format!(
                "sent, but not marked replayed ({}): it will be waiting again when the claim \
                 ends",
                keel_domain::error_chain(&e)
            )),
        };
        if let ReplayOutcome::Failed(why) = &outcome {
            tracing::warn!(patient = id, error = %why, "replay not marked");
        } else {
            tracing::info!(patient = id, message_id = %patient.message_id, group = %patient.group, actor, "patient replayed");
        }
        Ok(item(&patient, outcome))
    }

    /// Discards a waiting patient with a reason.
    pub async fn discard(
        &self,
        id: i64,
        reason: &str,
        actor: &str,
    ) -> Result<Transition, HospitalError> {
        let t = self.hospital.discard(id, reason.trim(), actor).await?;
        if matches!(t, Transition::Done(_)) {
            tracing::info!(patient = id, actor, "patient discarded");
        }
        Ok(t)
    }

    /// Replaces a waiting patient's body (what a replay will send).
    pub async fn edit(
        &self,
        id: i64,
        body: &[u8],
        actor: &str,
    ) -> Result<Transition, HospitalError> {
        let t = self.hospital.edit_body(id, body, actor).await?;
        if matches!(t, Transition::Done(_)) {
            tracing::info!(
                patient = id,
                actor,
                bytes = body.len(),
                "patient body edited"
            );
        }
        Ok(t)
    }
}

fn item(patient: &Patient, outcome: ReplayOutcome) -> ReplayItem {
    ReplayItem {
        id: patient.id,
        summary: Some(Summary::from(patient)),
        outcome,
    }
}

/// A filter as JSON, for the audit log: the conditions it sets.
pub fn filter_json(filter: &PatientFilter) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let mut put = |name: &str, value: Option<serde_json::Value>| {
        if let Some(value) = value {
            out.insert(name.to_owned(), value);
        }
    };
    put("group", filter.group.clone().map(Into::into));
    put("topic", filter.topic.clone().map(Into::into));
    put("reason", filter.reason.map(|r| r.as_str().into()));
    put(
        "error_contains",
        filter.error_contains.clone().map(Into::into),
    );
    put("cause", filter.cause.clone().map(Into::into));
    put(
        "admitted_from",
        filter.admitted_from.map(|t| t.to_rfc3339().into()),
    );
    put(
        "admitted_until",
        filter.admitted_until.map(|t| t.to_rfc3339().into()),
    );
    put("after_id", filter.after_id.map(Into::into));
    put("through_id", filter.through_id.map(Into::into));
    serde_json::Value::Object(out)
}
