//! `POST /admin/hospital/patients/{id}/edit`: saves a waiting patient's payload for its replay.

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
pub(super) struct EditForm {
    csrf: String,
    body: String,
}

pub(super) async fn edit(
    admin: Admin,
    csrf: Csrf,
    State(state): State<ConsoleState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<EditForm>,
) -> Result<Response, ConsoleError> {
    csrf.check_post(&headers, &form.csrf)
        .map_err(ConsoleError::Forbidden)?;
    // Browsers send a textarea's lines ended by CRLF; bodies keep the line ends they came with.
    let body = form.body.replace("\r\n", "\n");
    let outcome = state
        .service
        .edit(id, body.as_bytes(), &admin.actor())
        .await?;
    let not_done = NotDone {
        busy: "Not saved: a replay of this patient is in progress.",
        settled: "Not saved: the patient was already replayed or discarded.",
        draft: Some(&body),
    };
    answer_action(&state, &admin, &csrf, id, outcome, "edited", not_done).await
}
