//! `GET /admin/hospital`: the patients, filtered, newest first, paged.

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use keel_domain::PatientQuery;
use serde::Deserialize;

use super::auth::{Admin, Csrf};
use super::error::ConsoleError;
use super::filter::{FilterForm, given};
use super::html::{self, esc, first_line, time};
use super::{ConsoleState, PAGE_SIZE, respond};

#[derive(Debug, Default, Deserialize)]
pub(super) struct ListParams {
    #[serde(flatten)]
    filter: FilterForm,
    cursor: Option<String>,
}

pub(super) async fn list(
    admin: Admin,
    csrf: Csrf,
    State(state): State<ConsoleState>,
    Query(params): Query<ListParams>,
) -> Result<Response, ConsoleError> {
    let filter = params.filter.filter()?;
    let cursor = given(&params.cursor)
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ConsoleError::BadRequest(format!("cursor: {c:?} is not an id")))
        })
        .transpose()?;
    let page = state
        .service
        .hospital
        .find(&PatientQuery {
            filter,
            cursor,
            limit: PAGE_SIZE,
            oldest_first: false,
        })
        .await?;
    let query = params.filter.query();
    let mut body = String::from("<h1>Patients</h1>");
    body.push_str(&params.filter.form("/admin/hospital", true));
    let _ = write!(
        body,
        "<p><span class=\"count\" id=\"shown\">{}</span> shown{}. \
         <a class=\"button\" id=\"replay-filtered\" href=\"/admin/hospital/replay?{q}\">Replay the waiting patients of this filter…</a> \
         <a class=\"button secondary\" href=\"/admin/hospital/causes?{q}\">Group by cause</a></p>",
        page.patients.len(),
        if cursor.is_some() {
            " (older page)"
        } else {
            ""
        },
        q = esc(&query)
    );
    if page.patients.is_empty() {
        body.push_str("<p class=\"muted\">No patient matches.</p>");
    } else {
        body.push_str(
            "<table id=\"patients\"><thead><tr><th>#</th><th>Admitted (UTC)</th><th>Group</th><th>Topic</th>\
             <th>Reason</th><th>State</th><th>Attempts</th><th>Last error</th><th>Trace id</th></tr></thead><tbody>",
        );
        for p in &page.patients {
            let _ = write!(
                body,
                "<tr id=\"patient-{id}\"><td><a href=\"/admin/hospital/patients/{id}\">{id}</a></td><td class=\"mono\">{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
                time(p.admitted_at),
                esc(&p.group),
                esc(&p.topic),
                esc(p.reason.as_str()),
                html::state_badge(p.state),
                p.attempts.len(),
                esc(&first_line(p.last_error().unwrap_or("—"), 140)),
                esc(p.trace_id.as_deref().unwrap_or("—")),
                id = p.id,
            );
        }
        body.push_str("</tbody></table>");
    }
    if let Some(next) = page.next_cursor {
        let sep = if query.is_empty() { "" } else { "&" };
        let _ = write!(
            body,
            "<p class=\"pager\"><a href=\"/admin/hospital?{}{sep}cursor={next}\">Older →</a></p>",
            esc(&query)
        );
    }
    Ok(respond(
        StatusCode::OK,
        &csrf,
        html::page("Patients", &admin.name, None, &body),
    ))
}
