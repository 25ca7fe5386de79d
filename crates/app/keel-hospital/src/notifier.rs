//! Telling people: a webhook receives a JSON notice per admission and a periodic digest of
//! admissions by cause.
//!
//! Every keel process may run a notifier; they share the hospital's notice channels
//! (`admissions`, `digest`). A notifier sends only while it holds a channel's claim (a lease taken
//! by compare-and-set), and after each notice it moves the channel's position (the last patient
//! id notified) under that claim. So each admission is notified by one process, in id order;
//! admissions commit in id order (they are serialized), so the cursor never skips one. A failed
//! POST stops the round with the position before that notice: it is sent again next round,
//! never lost. The one duplicate possible is a notice whose POST succeeded in a process that died
//! before moving the position; notices carry a stable `notice_id` for receivers to drop it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_domain::{Hospital, HospitalError, Patient, PatientFilter, PatientQuery, PatientState};
use serde::Serialize;

/// The notice channels in the hospital.
pub const ADMISSIONS_CHANNEL: &str = "admissions";
pub const DIGEST_CHANNEL: &str = "digest";

/// Where and how often to notify.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// The webhook: an `http://` URL that accepts `POST` with a JSON body and answers 2xx.
    pub webhook_url: String,
    /// keel's public base URL (`https://keel.example.com`), for links to the console in notices;
    /// unset, notices carry the console path only.
    pub console_base_url: Option<String>,
    /// How often to look for new admissions.
    pub poll_interval: Duration,
    /// At least this long between two digests.
    pub digest_interval: Duration,
    /// How long a process holds a channel per round; longer than a round takes.
    pub lease: Duration,
    /// Longest wait for the webhook to answer.
    pub timeout: Duration,
    /// Most notices per round.
    pub batch: u32,
}

impl NotifierConfig {
    /// Sensible timings for `webhook_url`: a poll per second, a digest per hour.
    pub fn new(webhook_url: impl Into<String>) -> Self {
        Self {
            webhook_url: webhook_url.into(),
            console_base_url: None,
            poll_interval: Duration::from_secs(1),
            digest_interval: Duration::from_secs(3600),
            lease: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            batch: 100,
        }
    }
}

/// Why a notifier round stopped.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error("invalid webhook url: {0}")]
    InvalidUrl(String),
    #[error("hospital")]
    Hospital(#[from] HospitalError),
    #[error("webhook did not answer")]
    Unreachable(#[source] reqwest::Error),
    #[error("webhook answered {0}")]
    Refused(reqwest::StatusCode),
}

/// The JSON posted for each admission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdmissionNotice {
    /// Always `admission`.
    pub kind: &'static str,
    /// Stable per admission (`admission-<patient id>`): a receiver drops a notice it has seen.
    pub notice_id: String,
    pub patient_id: i64,
    pub group: String,
    pub topic: String,
    pub message_id: String,
    pub key: Option<String>,
    pub reason: &'static str,
    pub attempts: usize,
    pub last_error: Option<String>,
    pub cause: String,
    pub trace_id: Option<String>,
    pub admitted_at: DateTime<Utc>,
    /// The patient's page in the console.
    pub console_url: String,
}

/// One cause in a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DigestCause {
    pub group: String,
    pub reason: &'static str,
    pub cause: String,
    pub count: u64,
    pub latest_patient_id: i64,
}

/// The JSON posted periodically: admissions since the last digest, by cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Digest {
    /// Always `digest`.
    pub kind: &'static str,
    /// Stable per digest (`digest-<after>-<through>`).
    pub notice_id: String,
    /// Patients admitted after this id and up to `through_patient_id` are counted.
    pub after_patient_id: i64,
    pub through_patient_id: i64,
    pub admitted: u64,
    pub causes: Vec<DigestCause>,
    /// Patients waiting now, whenever admitted.
    pub waiting_now: u64,
    pub console_url: String,
}

/// The webhook notifier over a hospital.
#[derive(Clone)]
pub struct Notifier {
    hospital: Arc<dyn Hospital>,
    client: reqwest::Client,
    config: NotifierConfig,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    pub fn new(hospital: Arc<dyn Hospital>, config: NotifierConfig) -> Result<Self, NotifierError> {
        let url = reqwest::Url::parse(&config.webhook_url)
            .map_err(|e| NotifierError::InvalidUrl(e.to_string()))?;
        if url.scheme() != "http" {
            // Built without TLS for now (see ARCHITECTURE.md): refuse rather than fail later.
            return Err(NotifierError::InvalidUrl(format!(
                "{}: only http:// webhooks are supported",
                url.scheme()
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(NotifierError::Unreachable)?;
        Ok(Self {
            hospital,
            client,
            config,
        })
    }

    /// Runs rounds until `shutdown` resolves. A failed round is logged and tried again after a
    /// backoff (doubling from the poll interval up to a minute); nothing is skipped.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut failures: u32 = 0;
        loop {
            let round = async {
                let sent = self.notify_admissions().await?;
                let digest = self.send_digest(Utc::now()).await?;
                Ok::<_, NotifierError>((sent, digest.is_some()))
            };
            let outcome = tokio::select! {
                outcome = round => outcome,
                () = &mut shutdown => return,
            };
            let pause = match outcome {
                Ok(_) => {
                    failures = 0;
                    self.config.poll_interval
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        error = %keel_domain::error_chain(&e),
                        failures,
                        "hospital notice not delivered; it will be sent again"
                    );
                    self.config
                        .poll_interval
                        .saturating_mul(1 << failures.min(6))
                        .min(Duration::from_secs(60))
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// One round of admission notices: if this process gets the channel, posts a notice for
    /// each patient admitted after its position (at most a batch), moving the position after
    /// each. Returns how many were sent.
    pub async fn notify_admissions(&self) -> Result<usize, NotifierError> {
        let started = tokio::time::Instant::now();
        let Some(claim) = self
            .hospital
            .claim_notices(ADMISSIONS_CHANNEL, self.config.lease)
            .await?
        else {
            return Ok(0); // another process is notifying
        };
        let result = async {
            let page = self
                .hospital
                .find(&PatientQuery {
                    filter: PatientFilter {
                        after_id: Some(claim.position),
                        ..PatientFilter::default()
                    },
                    cursor: None,
                    limit: self.config.batch,
                    oldest_first: true,
                })
                .await?;
            let mut sent = 0;
            for patient in &page.patients {
                // Stop while the claim surely holds, so that no notice goes out unclaimed.
                if started.elapsed() + self.config.timeout >= self.config.lease {
                    break;
                }
                self.post(&self.admission_notice(patient)).await?;
                sent += 1;
                if !self
                    .hospital
                    .advance_notices(ADMISSIONS_CHANNEL, claim.token, patient.id)
                    .await?
                {
                    break; // the claim was lost: the new holder goes on from the position
                }
            }
            Ok(sent)
        }
        .await;
        self.release(ADMISSIONS_CHANNEL, claim.token).await;
        result
    }

    /// Sends a digest if this process gets the channel, the last digest is at least the digest
    /// interval old at `now`, and patients were admitted since. Returns the digest sent.
    pub async fn send_digest(&self, now: DateTime<Utc>) -> Result<Option<Digest>, NotifierError> {
        let Some(claim) = self
            .hospital
            .claim_notices(DIGEST_CHANNEL, self.config.lease)
            .await?
        else {
            return Ok(None);
        };
        let result = async {
            let interval = chrono::Duration::from_std(self.config.digest_interval)
                .unwrap_or(chrono::Duration::MAX);
            if now - claim.updated_at < interval {
                return Ok(None);
            }
            let newest = self.hospital.list(1).await?;
            let Some(through) = newest
                .first()
                .map(|p| p.id)
                .filter(|&id| id > claim.position)
            else {
                // Nothing new: restart the interval rather than send an empty digest.
                self.hospital
                    .advance_notices(DIGEST_CHANNEL, claim.token, claim.position)
                    .await?;
                return Ok(None);
            };
            let causes = self
                .hospital
                .causes(&PatientFilter {
                    after_id: Some(claim.position),
                    through_id: Some(through),
                    ..PatientFilter::default()
                })
                .await?;
            let waiting_now = self
                .hospital
                .causes(&PatientFilter {
                    state: Some(PatientState::Waiting),
                    ..PatientFilter::default()
                })
                .await?
                .iter()
                .map(|c| c.count)
                .sum();
            let digest = Digest {
                kind: "digest",
                notice_id: format!("digest-{}-{through}", claim.position),
                after_patient_id: claim.position,
                through_patient_id: through,
                admitted: causes.iter().map(|c| c.count).sum(),
                causes: causes
                    .into_iter()
                    .map(|c| DigestCause {
                        group: c.group,
                        reason: c.reason.as_str(),
                        cause: c.cause,
                        count: c.count,
                        latest_patient_id: c.latest_id,
                    })
                    .collect(),
                waiting_now,
                console_url: self.link("/admin/hospital/causes"),
            };
            self.post(&digest).await?;
            self.hospital
                .advance_notices(DIGEST_CHANNEL, claim.token, through)
                .await?;
            Ok(Some(digest))
        }
        .await;
        self.release(DIGEST_CHANNEL, claim.token).await;
        result
    }

    fn admission_notice(&self, p: &Patient) -> AdmissionNotice {
        AdmissionNotice {
            kind: "admission",
            notice_id: format!("admission-{}", p.id),
            patient_id: p.id,
            group: p.group.clone(),
            topic: p.topic.clone(),
            message_id: p.message_id.to_string(),
            key: p.key.clone(),
            reason: p.reason.as_str(),
            attempts: p.attempts.len(),
            last_error: p.last_error().map(str::to_owned),
            cause: p.cause.clone(),
            trace_id: p.trace_id.clone(),
            admitted_at: p.admitted_at,
            console_url: self.link(&format!("/admin/hospital/patients/{}", p.id)),
        }
    }

    fn link(&self, path: &str) -> String {
        match &self.config.console_base_url {
            Some(base) => format!("{}{path}", base.trim_end_matches('/')),
            None => path.to_owned(),
        }
    }

    async fn post(&self, body: &impl Serialize) -> Result<(), NotifierError> {
        let response = self
            .client
            .post(&self.config.webhook_url)
            .json(body)
            .send()
            .await
            .map_err(NotifierError::Unreachable)?;
        if !response.status().is_success() {
            return Err(NotifierError::Refused(response.status()));
        }
        Ok(())
    }

    async fn release(&self, channel: &str, token: uuid::Uuid) {
        if let Err(e) = self.hospital.release_notices(channel, token).await {
            // The lease ends by itself; another round takes the channel then.
            tracing::warn!(channel, error = %e, "notice channel not released");
        }
    }
}
