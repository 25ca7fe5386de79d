//! `GET /admin/hospital/audit`: the audit log, newest first, paged; and the audit table the
//! patient page shows its history in.

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use keel_domain::hospital::AuditEntry;
use serde::Deserialize;

use super::auth::{Admin, Csrf};
use super::error::ConsoleError;
use super::filter::given;
use super::html::{self, esc, time};
use super::{AUDIT_PAGE_SIZE, ConsoleState, respond};

pub(super) fn audit_table(entries: &[AuditEntry]) -> String {
    if entries.is_empty() {
        return "<p class=\"muted\">No action recorded.</p>".into();
    }
    let mut out = String::from(
        "<table class=\"audit\"><thead><tr><th>#</th><th>At (UTC)</th><th>Actor</th><th>Action</th>\
         <th>Patients</th><th>Detail</th></tr></thead><tbody>",
    );
    for e in entries {
        let patients = e
            .patient_ids
            .iter()
            .map(|id| format!("<a href=\"/admin/hospital/patients/{id}\">{id}</a>"))
            .collect::<Vec<_>>()
            .join(", ");
        let detail = serde_json::from_str::<serde_json::Value>(&e.detail)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| e.detail.clone());
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{patients}</td><td><pre>{}</pre></td></tr>",
            e.id,
            time(e.at),
            esc(&e.actor),
            esc(&e.action),
            esc(&detail)
        );
    }
    out.push_str("</tbody></table>");
    out
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct AuditParams {
    cursor: Option<String>,
}

pub(super) async fn audit(
    admin: Admin,
    csrf: Csrf,
    State(state): State<ConsoleState>,
    Query(params): Query<AuditParams>,
) -> Result<Response, ConsoleError> {
    let cursor = given(&params.cursor)
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ConsoleError::BadRequest(format!("cursor: {c:?} is not an id")))
        })
        .transpose()?;
    let entries = state
        .service
        .hospital
        .audit_log(None, cursor, AUDIT_PAGE_SIZE)
        .await?;
    let mut body = String::from(
        "<h1>Audit log</h1><p class=\"muted\">Every operator action, newest first. The log is \
         append-only: each entry was written in the same transaction as its action.</p>",
    );
    body.push_str(&audit_table(&entries).replacen(
        "<table class=\"audit\">",
        "<table class=\"audit\" id=\"audit\">",
        1,
    ));
    if entries.len() == usize::try_from(AUDIT_PAGE_SIZE).unwrap_or(usize::MAX)
        && let Some(last) = entries.last()
    {
        let _ = write!(
            body,
            "<p class=\"pager\"><a href=\"/admin/hospital/audit?cursor={}\">Older →</a></p>",
            last.id
        );
    }
    Ok(respond(
        StatusCode::OK,
        &csrf,
        html::page("Audit log", &admin.name, None, &body),
    ))
}
