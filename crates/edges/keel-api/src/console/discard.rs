//! `POST /admin/hospital/patients/{id}/discard`: settles a waiting patient without replaying
//! it, with the operator's reason.

use axum::Form;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::ConsoleState;
use super::auth::{Admin, Csrf};
use super::error::ConsoleError;
use super::patient::{NotDone, answer_action};

#[derive(Debug, Deserialize)]
pub(super) struct DiscardForm {
    csrf: String,
    reason: String,
}

pub(super) async fn discard(
    admin: Admin,
    csrf: Csrf,
    State(state): State<ConsoleState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<DiscardForm>,
) -> Result<Response, ConsoleError> {
    csrf.check_post(&headers, &form.csrf)
        .map_err(ConsoleError::Forbidden)?;
    let outcome = state
        .service
        .discard(id, &form.reason, &admin.actor())
        .await?;
    let not_done = NotDone {
        busy: "Not discarded: a replay of this patient is in progress.",
        settled: "Not discarded: the patient was already replayed or discarded.",
        draft: None,
    };
    answer_action(&state, &admin, &csrf, id, outcome, "discarded", not_done).await
}
