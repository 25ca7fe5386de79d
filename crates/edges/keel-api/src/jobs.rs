//! Fire-and-forget jobs (the seed's first asynchronous pattern): the request stores the job and
//! its message in one transaction and returns 202 at once; a worker does the work; the client
//! polls `GET /jobs/{id}` for the state and the result.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use keel_domain::{EventStore, Job, JobState, Permission, UserId};
use serde::Serialize;
use uuid::Uuid;

use crate::error::ErrorBody;
use crate::extract::Path;
use crate::policy::Signed;
use crate::{ApiError, AppState};

/// What the jobs routes and the event-emitting writes need.
#[derive(Clone)]
pub struct JobsState {
    pub events: Arc<dyn EventStore>,
    /// Outbox rows waiting, as last seen (kept fresh by the binary).
    pub outbox_backlog: Arc<AtomicU64>,
    /// Beyond this backlog, writes that emit events are refused with 503 and Retry-After: the
    /// outbox (and the broker behind it) stays bounded when workers or the broker are down.
    pub max_outbox: u64,
    /// A job not started within this time expires; `None`: never.
    pub job_ttl: Option<Duration>,
}

impl JobsState {
    /// Refuses a write while the outbox is over its bound.
    pub fn check_backpressure(&self) -> Result<(), ApiError> {
        if self.outbox_backlog.load(Ordering::Relaxed) >= self.max_outbox {
            return Err(ApiError::Unavailable(
                "too many events waiting to be published; retry later".into(),
            ));
        }
        Ok(())
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users/{id}/export", post(export_user))
        .route("/jobs/{id}", get(get_job))
}

/// The answer to a job request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobAccepted {
    job_id: Uuid,
    state: JobState,
    /// Poll this for the state and result.
    status_url: String,
}

/// A job's state and, once succeeded, its result.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    id: Uuid,
    kind: String,
    subject: String,
    /// `queued`, `running`, `succeeded`, `failed` or `expired`.
    state: JobState,
    /// The job's output (for `user.export`: the user and their audit trail).
    #[schema(value_type = Option<Object>)]
    result: Option<serde_json::Value>,
    error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Request an export of a user's data (a slow job): 202 at once, the result at `GET /jobs/{id}`.
#[utoipa::path(post, path = "/users/{id}/export", tag = "jobs", params(("id" = String, Path, description = "user id (UUID)")), responses(
    (status = 202, description = "accepted; poll `status_url`", body = JobAccepted),
    (status = 404, description = "`{\"error\": \"User not found\"}`", body = ErrorBody),
    (status = 503, description = "too many events waiting; retry after `Retry-After`", body = ErrorBody),
))]
pub async fn export_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: UserId = id.parse().map_err(|_| ApiError::UserNotFound)?;
    state.jobs.check_backpressure()?;
    if state.users.get(id).await?.is_none() {
        return Err(ApiError::UserNotFound);
    }
    let job = Job::new("user.export", &id.to_string());
    state
        .jobs
        .events
        .submit_job(&job, &job.message(state.jobs.job_ttl))
        .await?;
    let status_url = format!("/jobs/{}", job.id);
    let mut res = (
        StatusCode::ACCEPTED,
        Json(JobAccepted {
            job_id: job.id,
            state: job.state,
            status_url: status_url.clone(),
        }),
    )
        .into_response();
    res.headers_mut().insert(
        header::LOCATION,
        status_url.parse().expect("a path is a valid header"),
    );
    Ok(res)
}

/// A job's state and result.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "job id (UUID)")), responses(
    (status = 200, description = "the job", body = JobView),
    (status = 404, description = "`{\"error\": \"Job not found\"}`", body = ErrorBody),
))]
pub async fn get_job(
    State(state): State<AppState>,
    Signed(caller): Signed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::JobNotFound)?;
    let job = state
        .jobs
        .events
        .job(id)
        .await?
        .ok_or(ApiError::JobNotFound)?;
    // Another account's job is not found rather than forbidden: its id tells nothing.
    let mine = job
        .subject
        .parse::<UserId>()
        .is_ok_and(|subject| caller.can_on(subject, Permission::UsersRead));
    if !mine {
        return Err(ApiError::JobNotFound);
    }
    let mut job_state = job.state;
    // A job that waited past its time to live is not run (the worker sends its message to the
    // hospital, marked expired); report it as such even before a worker has seen it.
    if job_state == JobState::Queued
        && state.jobs.job_ttl.is_some_and(|ttl| {
            chrono::Duration::from_std(ttl).is_ok_and(|ttl| job.created_at + ttl <= Utc::now())
        })
    {
        job_state = JobState::Expired;
    }
    let result = job
        .result
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(Json(JobView {
        id: job.id,
        kind: job.kind,
        subject: job.subject,
        state: job_state,
        result,
        error: job.error,
        created_at: job.created_at,
        updated_at: job.updated_at,
    })
    .into_response())
}
