//! `GET /admin/hospital/patients/{id}`: one patient (headers, body, every attempt, trace id,
//! times, history) with its edit, replay and discard forms; also the page the edit and discard
//! actions answer with when they could not act.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use keel_domain::hospital::AuditEntry;
use keel_domain::{Patient, PatientState, Transition};
use serde::Deserialize;

use super::audit::audit_table;
use super::auth::{Admin, Csrf};
use super::error::ConsoleError;
use super::html::{self, esc, time};
use super::{ConsoleState, respond, see_other};

#[derive(Debug, Default, Deserialize)]
pub(super) struct PatientParams {
    done: Option<String>,
}

pub(super) async fn patient(
    admin: Admin,
    csrf: Csrf,
    State(state): State<ConsoleState>,
    Path(id): Path<i64>,
    Query(params): Query<PatientParams>,
) -> Result<Response, ConsoleError> {
    let flash = match params.done.as_deref() {
        Some("edited") => Some(("Body saved: a replay will send it.", false)),
        Some("discarded") => Some(("Discarded.", false)),
        _ => None,
    };
    patient_page(&state, &admin, &csrf, id, StatusCode::OK, flash, None).await
}

/// Why an action on a patient did nothing, for [`answer_action`].
pub(super) struct NotDone<'a> {
    /// A replay in progress holds the patient.
    pub(super) busy: &'a str,
    /// It was already replayed or discarded.
    pub(super) settled: &'a str,
    /// The operator's unsaved body, shown again while a replay holds the patient.
    pub(super) draft: Option<&'a str>,
}

/// The answer to an action on patient `id`: back to its page with `?done=<done>` when it acted,
/// else its page again, 409, saying why not.
pub(super) async fn answer_action(
    state: &ConsoleState,
    admin: &Admin,
    csrf: &Csrf,
    id: i64,
    outcome: Transition,
    done: &str,
    not_done: NotDone<'_>,
) -> Result<Response, ConsoleError> {
    let (why, draft) = match outcome {
        Transition::Done(_) => {
            return Ok(see_other(&format!(
                "/admin/hospital/patients/{id}?done={done}"
            )));
        }
        Transition::Busy(_) => (not_done.busy, not_done.draft),
        Transition::Settled(_) => (not_done.settled, None),
    };
    patient_page(
        state,
        admin,
        csrf,
        id,
        StatusCode::CONFLICT,
        Some((why, true)),
        draft,
    )
    .await
}

pub(super) async fn patient_page(
    state: &ConsoleState,
    admin: &Admin,
    csrf: &Csrf,
    id: i64,
    status: StatusCode,
    flash: Option<(&str, bool)>,
    draft: Option<&str>,
) -> Result<Response, ConsoleError> {
    let patient = state
        .service
        .hospital
        .get(id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("no patient {id}")))?;
    let history = state
        .service
        .hospital
        .audit_log(Some(id), None, 100)
        .await?;
    let body = render_patient(&patient, &history, csrf, draft);
    Ok(respond(
        status,
        csrf,
        html::page(&format!("Patient {id}"), &admin.name, flash, &body),
    ))
}

fn render_patient(p: &Patient, history: &[AuditEntry], csrf: &Csrf, draft: Option<&str>) -> String {
    let now = Utc::now();
    let mut out = format!(
        "<h1>Patient {} {}</h1><table class=\"kv\" id=\"facts\">",
        p.id,
        html::state_badge(p.state)
    );
    let mut row = |name: &str, value: String| {
        let _ = write!(out, "<tr><th>{}</th><td>{value}</td></tr>", esc(name));
    };
    row("Group", esc(&p.group));
    row("Topic", esc(&p.topic));
    row(
        "Message id",
        format!("<span class=\"mono\">{}</span>", p.message_id),
    );
    row(
        "Key",
        p.key
            .as_deref()
            .map_or("<span class=\"muted\">none</span>".into(), esc),
    );
    row("Reason", esc(p.reason.as_str()));
    row(
        "Cause",
        format!("<span class=\"mono\">{}</span>", esc(&p.cause)),
    );
    row(
        "Trace id",
        format!(
            "<span class=\"mono\" id=\"trace-id\">{}</span>",
            esc(p.trace_id.as_deref().unwrap_or("—"))
        ),
    );
    row(
        "Published",
        format!("<span class=\"mono\">{}</span>", time(p.published_at)),
    );
    row(
        "Admitted",
        format!("<span class=\"mono\">{}</span>", time(p.admitted_at)),
    );
    if let Some(s) = &p.settled {
        row(
            if p.state == PatientState::Replayed {
                "Replayed"
            } else {
                "Discarded"
            },
            format!(
                "by {} at <span class=\"mono\">{}</span>{}",
                esc(&s.by),
                time(s.at),
                s.note
                    .as_deref()
                    .map(|n| format!(": <span id=\"settled-note\">{}</span>", esc(n)))
                    .unwrap_or_default()
            ),
        );
    }
    if let Some(e) = &p.edited {
        row(
            "Edited",
            format!(
                "by {} at <span class=\"mono\">{}</span>",
                esc(&e.by),
                time(e.at)
            ),
        );
    }
    if p.is_claimed(now)
        && let Some((by, until)) = &p.replay_claim
    {
        row(
            "Replay in progress",
            format!("by {} until {}", esc(by), time(*until)),
        );
    }
    out.push_str("</table><h2>Headers</h2>");
    if p.headers.is_empty() {
        out.push_str("<p class=\"muted\">none</p>");
    } else {
        out.push_str(
            "<table id=\"headers\"><thead><tr><th>Name</th><th>Value</th></tr></thead><tbody>",
        );
        for (name, value) in &p.headers {
            let _ = write!(
                out,
                "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td></tr>",
                esc(name),
                esc(value)
            );
        }
        out.push_str("</tbody></table>");
    }
    let (text, utf8) = html::body_text(&p.body);
    let _ = write!(
        out,
        "<h2>Body <span class=\"muted\">({} bytes{})</span></h2><pre id=\"body\">{}</pre>",
        p.body.len(),
        if utf8 {
            ""
        } else {
            ", not UTF-8: shown lossily"
        },
        esc(&text)
    );
    if let Some(e) = &p.edited {
        let (original, _) = html::body_text(&e.original_body);
        let _ = write!(
            out,
            "<h2>Body as admitted</h2><pre id=\"original-body\">{}</pre>",
            esc(&original)
        );
    }
    out.push_str("<h2>Attempts</h2>");
    if p.attempts.is_empty() {
        out.push_str(
            "<p class=\"muted\">No attempt recorded (an expired message is not handled).</p>",
        );
    } else {
        out.push_str("<table id=\"attempts\"><thead><tr><th>#</th><th>At (UTC)</th><th>Error</th></tr></thead><tbody>");
        for a in &p.attempts {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"mono\">{}</td><td><pre>{}</pre></td></tr>",
                a.attempt,
                time(a.at),
                esc(&a.error)
            );
        }
        out.push_str("</tbody></table>");
    }
    if p.state == PatientState::Waiting {
        out.push_str("<div class=\"actions\">");
        if utf8 {
            let _ = write!(
                out,
                "<form method=\"post\" action=\"/admin/hospital/patients/{id}/edit\" id=\"edit-form\">\
                 <h2>Edit the payload</h2>{csrf}<textarea name=\"body\" spellcheck=\"false\">{}</textarea>\
                 <p><button type=\"submit\">Save body</button></p></form>",
                esc(draft.unwrap_or(&text)),
                id = p.id,
                csrf = html::csrf_field(csrf),
            );
        } else {
            out.push_str("<form><h2>Edit the payload</h2><p class=\"muted\">The body is not UTF-8 text; it cannot be edited here.</p></form>");
        }
        let _ = write!(
            out,
            "<form method=\"get\" action=\"/admin/hospital/replay\" id=\"replay-form\"><h2>Replay</h2>\
             <p>Sends the message back to group <b>{}</b> with its id, key and headers{}.</p>\
             <input type=\"hidden\" name=\"ids\" value=\"{id}\"><button type=\"submit\">Preview the replay…</button></form>\
             <form method=\"post\" action=\"/admin/hospital/patients/{id}/discard\" id=\"discard-form\"><h2>Discard</h2>{csrf}\
             <p><label>Reason <input name=\"reason\" required size=\"40\" maxlength=\"2000\"></label></p>\
             <p><button type=\"submit\" class=\"danger\">Discard</button></p></form></div>",
            esc(&p.group),
            if p.edited.is_some() {
                " and the edited body"
            } else {
                ""
            },
            id = p.id,
            csrf = html::csrf_field(csrf),
        );
    }
    out.push_str("<h2>History</h2>");
    out.push_str(&audit_table(history));
    out
}
