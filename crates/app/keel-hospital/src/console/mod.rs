//! The web console at `/admin/hospital`: server-rendered pages, inline CSS, no script.
//!
//! - `GET /admin/hospital`: patients, filtered (group, topic, reason, state, error text, cause,
//!   admission time), newest first, paged.
//! - `GET /admin/hospital/causes`: the same patients counted by group, reason and cause.
//! - `GET /admin/hospital/patients/{id}`: one patient (headers, body, every attempt, trace id,
//!   times, history) with its edit, replay and discard forms.
//! - `GET /admin/hospital/replay?ids=…` or `?<filter>`: the dry run, with the form that confirms it;
//!   `POST /admin/hospital/replay`: the replay itself.
//! - `POST /admin/hospital/patients/{id}/edit`, `…/discard`.
//! - `GET /admin/hospital/audit`: the audit log.
//!
//! Every handler takes an [`Admin`] (an IdP account with the operator or admin role); every `POST`
//! checks the origin and the CSRF token. Every value rendered is escaped.

mod auth;
pub mod html;

use std::fmt::Write as _;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, NaiveDateTime, Utc};
use keel_domain::hospital::AuditEntry;
use keel_domain::{
    AdmissionReason, HospitalError, Patient, PatientFilter, PatientQuery, PatientState, Transition,
};
use serde::Deserialize;

pub use auth::{Admin, CSRF_COOKIE, Csrf};
use html::{esc, first_line, time, url_encode};

use crate::service::{HospitalService, ReplayOutcome, ReplayReport, ReplayTarget};

/// Patients per page of the list.
const PAGE_SIZE: u32 = 50;
/// Audit entries per page.
const AUDIT_PAGE_SIZE: u32 = 50;

/// What the console's handlers share.
#[derive(Clone)]
pub struct ConsoleState {
    service: HospitalService,
}

/// The console's routes, all under `/admin/hospital`, to merge into keel's router behind its
/// guard (which signs people in and checks their roles; see [`Admin`]).
pub fn console(service: HospitalService) -> Router {
    let state = ConsoleState { service };
    Router::new()
        .route("/admin/hospital", get(list))
        .route("/admin/hospital/causes", get(causes))
        .route("/admin/hospital/patients/{id}", get(patient))
        .route(
            "/admin/hospital/patients/{id}/edit",
            axum::routing::post(edit),
        )
        .route(
            "/admin/hospital/patients/{id}/discard",
            axum::routing::post(discard),
        )
        .route("/admin/hospital/replay", get(replay_preview).post(replay))
        .route("/admin/hospital/audit", get(audit))
        .with_state(state)
}

/// A console failure, rendered as a small page.
#[derive(Debug)]
enum ConsoleError {
    BadRequest(String),
    Forbidden(&'static str),
    NotFound(String),
    Hospital(HospitalError),
}

impl From<HospitalError> for ConsoleError {
    fn from(e: HospitalError) -> Self {
        match e {
            HospitalError::NotFound(id) => Self::NotFound(format!("no patient {id}")),
            HospitalError::Invalid { what, why } => Self::BadRequest(format!("{what}: {why}")),
            other => Self::Hospital(other),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Self::BadRequest(why) => (StatusCode::BAD_REQUEST, why),
            Self::Forbidden(why) => (StatusCode::FORBIDDEN, why.to_owned()),
            Self::NotFound(why) => (StatusCode::NOT_FOUND, why),
            Self::Hospital(e @ HospitalError::Unavailable(_)) => {
                tracing::warn!(error = %keel_domain::error_chain(&e), "hospital console: hospital unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the hospital is unavailable; try again shortly".to_owned(),
                )
            }
            Self::Hospital(e) => {
                let error_id = uuid::Uuid::new_v4();
                tracing::error!(%error_id, error = %keel_domain::error_chain(&e), "hospital console failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("internal error (error id {error_id})"),
                )
            }
        };
        let body = format!(
            "<p>{}</p><p><a href=\"/admin/hospital\">Back to the patients</a></p>",
            esc(&text)
        );
        let mut response = (status, html::bare_page("Error", &body)).into_response();
        html::secure_headers(response.headers_mut());
        response
    }
}

/// A page response: the secure headers, and the CSRF cookie when the token is new.
fn respond(status: StatusCode, csrf: &Csrf, page: String) -> Response {
    let mut response = (status, axum::response::Html(page)).into_response();
    html::secure_headers(response.headers_mut());
    if let Some(cookie) = csrf.cookie().and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    html::secure_headers(response.headers_mut());
    response
}

fn csrf_field(csrf: &Csrf) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&csrf.token)
    )
}

/// The filter fields of the list, the causes view and bulk replays, as the forms send them
/// (blank means unset).
#[derive(Debug, Clone, Default, Deserialize)]
struct FilterForm {
    group: Option<String>,
    topic: Option<String>,
    reason: Option<String>,
    /// `waiting` (the default), `replayed`, `discarded`, or `any`.
    state: Option<String>,
    error: Option<String>,
    cause: Option<String>,
    /// Admitted at or after (UTC; `YYYY-MM-DDTHH:MM[:SS]` or RFC 3339).
    from: Option<String>,
    /// Admitted before.
    until: Option<String>,
    /// The newest patient id a bulk replay takes (set by its dry run).
    through: Option<String>,
}

fn given(field: &Option<String>) -> Option<&str> {
    field.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parse_time(what: &str, raw: &str) -> Result<DateTime<Utc>, ConsoleError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(raw, f).ok())
    .map(|t| t.and_utc())
    .ok_or_else(|| {
        ConsoleError::BadRequest(format!(
            "{what}: {raw:?} is not a time (YYYY-MM-DDTHH:MM, UTC)"
        ))
    })
}

impl FilterForm {
    fn filter(&self) -> Result<PatientFilter, ConsoleError> {
        let text = |f: &Option<String>| given(f).map(str::to_owned);
        Ok(PatientFilter {
            group: text(&self.group),
            topic: text(&self.topic),
            reason: given(&self.reason)
                .map(|r| {
                    AdmissionReason::parse(r)
                        .ok_or_else(|| ConsoleError::BadRequest(format!("unknown reason {r:?}")))
                })
                .transpose()?,
            state: match given(&self.state) {
                None => Some(PatientState::Waiting),
                Some("any") => None,
                Some(s) => Some(
                    PatientState::parse(s)
                        .ok_or_else(|| ConsoleError::BadRequest(format!("unknown state {s:?}")))?,
                ),
            },
            error_contains: text(&self.error),
            cause: text(&self.cause),
            admitted_from: given(&self.from)
                .map(|t| parse_time("from", t))
                .transpose()?,
            admitted_until: given(&self.until)
                .map(|t| parse_time("until", t))
                .transpose()?,
            after_id: None,
            through_id: given(&self.through)
                .map(|t| {
                    t.parse().map_err(|_| {
                        ConsoleError::BadRequest(format!("through: {t:?} is not an id"))
                    })
                })
                .transpose()?,
        })
    }

    fn fields(&self) -> [(&'static str, &Option<String>); 9] {
        [
            ("group", &self.group),
            ("topic", &self.topic),
            ("reason", &self.reason),
            ("state", &self.state),
            ("error", &self.error),
            ("cause", &self.cause),
            ("from", &self.from),
            ("until", &self.until),
            ("through", &self.through),
        ]
    }

    /// The given fields as a query string (`a=1&b=2`).
    fn query(&self) -> String {
        self.fields()
            .iter()
            .filter_map(|(name, value)| given(value).map(|v| format!("{name}={}", url_encode(v))))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The given fields as hidden inputs.
    fn hidden(&self) -> String {
        self.fields()
            .iter()
            .filter_map(|(name, value)| {
                given(value).map(|v| {
                    format!(
                        "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                        esc(v)
                    )
                })
            })
            .collect()
    }

    /// The filter form, submitting to `action` by GET.
    fn form(&self, action: &str, with_text: bool) -> String {
        let value = |f: &Option<String>| esc(given(f).unwrap_or(""));
        let options = |current: Option<&str>, choices: &[(&str, &str)]| {
            choices
                .iter()
                .map(|(v, label)| {
                    format!(
                        "<option value=\"{v}\"{}>{label}</option>",
                        if current == Some(*v) { " selected" } else { "" }
                    )
                })
                .collect::<String>()
        };
        let mut out = format!(
            "<form class=\"filters\" method=\"get\" action=\"{action}\">\
             <label>Group<input name=\"group\" value=\"{}\"></label>",
            value(&self.group)
        );
        if with_text {
            let _ = write!(
                out,
                "<label>Topic<input name=\"topic\" value=\"{}\"></label>",
                value(&self.topic)
            );
        }
        let _ = write!(
            out,
            "<label>Reason<select name=\"reason\">{}</select></label>\
             <label>State<select name=\"state\">{}</select></label>",
            options(
                given(&self.reason),
                &[
                    ("", "any"),
                    ("exhausted", "exhausted"),
                    ("permanent", "permanent"),
                    ("expired", "expired")
                ]
            ),
            options(
                Some(given(&self.state).unwrap_or("waiting")),
                &[
                    ("waiting", "waiting"),
                    ("replayed", "replayed"),
                    ("discarded", "discarded"),
                    ("any", "any")
                ]
            ),
        );
        if with_text {
            let _ = write!(
                out,
                "<label>Error contains<input name=\"error\" value=\"{}\" placeholder=\"e.g. Timeout\"></label>\
                 <label>Cause<input name=\"cause\" value=\"{}\" size=\"28\"></label>",
                value(&self.error),
                value(&self.cause)
            );
        }
        let _ = write!(
            out,
            "<label>Admitted from (UTC)<input type=\"datetime-local\" name=\"from\" value=\"{}\"></label>\
             <label>until (UTC)<input type=\"datetime-local\" name=\"until\" value=\"{}\"></label>\
             <button type=\"submit\">Filter</button> <a class=\"button secondary\" href=\"{action}\">Reset</a></form>",
            value(&self.from),
            value(&self.until)
        );
        out
    }
}

#[derive(Debug, Default, Deserialize)]
struct ListParams {
    #[serde(flatten)]
    filter: FilterForm,
    cursor: Option<String>,
}

async fn list(
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

async fn causes(
    admin: Admin,
    csrf: Csrf,
    State(state): State<ConsoleState>,
    Query(form): Query<FilterForm>,
) -> Result<Response, ConsoleError> {
    let filter = form.filter()?;
    let causes = state.service.hospital.causes(&filter).await?;
    let mut body = String::from("<h1>Patients by cause</h1>");
    body.push_str(&form.form("/admin/hospital/causes", true));
    body.push_str(
        "<p class=\"muted\">A cause is the first line of the last error with numbers, UUIDs and \
         hashes replaced, so that occurrences of one failure count together.</p>",
    );
    if causes.is_empty() {
        body.push_str("<p class=\"muted\">No patient matches.</p>");
    } else {
        body.push_str(
            "<table id=\"causes\"><thead><tr><th>Group</th><th>Reason</th><th>Cause</th><th>Patients</th>\
             <th>First admitted</th><th>Last admitted</th><th></th></tr></thead><tbody>",
        );
        for c in &causes {
            let drill = FilterForm {
                group: Some(c.group.clone()),
                reason: Some(c.reason.as_str().to_owned()),
                cause: Some(c.cause.clone()),
                ..form.clone()
            }
            .query();
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td class=\"mono wrap\">{}</td><td class=\"count\">{}</td><td class=\"mono\">{}</td>\
                 <td class=\"mono\">{}</td><td><a href=\"/admin/hospital?{q}\">list</a> · \
                 <a href=\"/admin/hospital/replay?{q}\">replay…</a></td></tr>",
                esc(&c.group),
                esc(c.reason.as_str()),
                if c.cause.is_empty() {
                    "<span class=\"muted\">(no error recorded)</span>".to_owned()
                } else {
                    esc(&c.cause)
                },
                c.count,
                time(c.first_admitted),
                time(c.last_admitted),
                q = esc(&drill),
            );
        }
        body.push_str("</tbody></table>");
    }
    Ok(respond(
        StatusCode::OK,
        &csrf,
        html::page("By cause", &admin.name, None, &body),
    ))
}

#[derive(Debug, Default, Deserialize)]
struct PatientParams {
    done: Option<String>,
}

async fn patient(
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

async fn patient_page(
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
                csrf = csrf_field(csrf),
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
            csrf = csrf_field(csrf),
        );
    }
    out.push_str("<h2>History</h2>");
    out.push_str(&audit_table(history));
    out
}

fn audit_table(entries: &[AuditEntry]) -> String {
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

#[derive(Debug, Deserialize)]
struct EditForm {
    csrf: String,
    body: String,
}

async fn edit(
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
    match state
        .service
        .edit(id, body.as_bytes(), &admin.actor())
        .await?
    {
        Transition::Done(_) => Ok(see_other(&format!(
            "/admin/hospital/patients/{id}?done=edited"
        ))),
        Transition::Busy(_) => {
            patient_page(
                &state,
                &admin,
                &csrf,
                id,
                StatusCode::CONFLICT,
                Some(("Not saved: a replay of this patient is in progress.", true)),
                Some(&body),
            )
            .await
        }
        Transition::Settled(_) => {
            patient_page(
                &state,
                &admin,
                &csrf,
                id,
                StatusCode::CONFLICT,
                Some((
                    "Not saved: the patient was already replayed or discarded.",
                    true,
                )),
                None,
            )
            .await
        }
    }
}

#[derive(Debug, Deserialize)]
struct DiscardForm {
    csrf: String,
    reason: String,
}

async fn discard(
    admin: Admin,
    csrf: Csrf,
    State(state): State<ConsoleState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<DiscardForm>,
) -> Result<Response, ConsoleError> {
    csrf.check_post(&headers, &form.csrf)
        .map_err(ConsoleError::Forbidden)?;
    match state
        .service
        .discard(id, &form.reason, &admin.actor())
        .await?
    {
        Transition::Done(_) => Ok(see_other(&format!(
            "/admin/hospital/patients/{id}?done=discarded"
        ))),
        Transition::Busy(_) => {
            patient_page(
                &state,
                &admin,
                &csrf,
                id,
                StatusCode::CONFLICT,
                Some((
                    "Not discarded: a replay of this patient is in progress.",
                    true,
                )),
                None,
            )
            .await
        }
        Transition::Settled(_) => {
            patient_page(
                &state,
                &admin,
                &csrf,
                id,
                StatusCode::CONFLICT,
                Some((
                    "Not discarded: the patient was already replayed or discarded.",
                    true,
                )),
                None,
            )
            .await
        }
    }
}

/// Which patients a replay form names: `ids` (comma-separated), else the filter.
#[derive(Debug, Default, Deserialize)]
struct ReplayParams {
    #[serde(default)]
    csrf: String,
    ids: Option<String>,
    #[serde(flatten)]
    filter: FilterForm,
}

impl ReplayParams {
    fn target(&self) -> Result<ReplayTarget, ConsoleError> {
        match given(&self.ids) {
            Some(ids) => ids
                .split(',')
                .map(|id| {
                    id.trim().parse::<i64>().map_err(|_| {
                        ConsoleError::BadRequest(format!("ids: {id:?} is not a patient id"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(ReplayTarget::Ids),
            None => Ok(ReplayTarget::Filter(self.filter.filter()?)),
        }
    }
}

async fn replay_preview(
    admin: Admin,
    csrf: Csrf,
    State(state): State<ConsoleState>,
    Query(params): Query<ReplayParams>,
) -> Result<Response, ConsoleError> {
    let target = params.target()?;
    let report = state.service.replay(&target, true, &admin.actor()).await?;
    let would = report.count(ReplayOutcome::WouldReplay.label());
    let mut body = String::from("<h1>Replay — dry run</h1>");
    let _ = write!(
        body,
        "<p id=\"summary\">Nothing has been sent. <span class=\"count\" id=\"would\">{would}</span> of {} \
         patient(s) would be replayed: each message goes back to the group that failed it, with its id, key \
         and headers (and its edited body, if edited).{}</p>",
        report.items.len(),
        if report.truncated {
            " The filter matched more patients than one replay takes; the oldest are shown."
        } else {
            ""
        }
    );
    body.push_str(&report_table(&report));
    if would > 0 {
        let which = match &target {
            ReplayTarget::Ids(ids) => format!(
                "<input type=\"hidden\" name=\"ids\" value=\"{}\">",
                esc(&ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
            ),
            ReplayTarget::Filter(_) => {
                let fixed = FilterForm {
                    through: report.through_id.map(|t| t.to_string()),
                    ..params.filter.clone()
                };
                fixed.hidden()
            }
        };
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/admin/hospital/replay\" id=\"confirm-replay\" class=\"actions\">{}{which}\
             <p><button type=\"submit\">Replay {would} message(s)</button> \
             <a class=\"button secondary\" href=\"/admin/hospital\">Cancel</a></p></form>",
            csrf_field(&csrf)
        );
    } else {
        body.push_str("<p class=\"muted\">Nothing to replay.</p>");
    }
    Ok(respond(
        StatusCode::OK,
        &csrf,
        html::page("Replay (dry run)", &admin.name, None, &body),
    ))
}

async fn replay(
    admin: Admin,
    csrf: Csrf,
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Form(params): Form<ReplayParams>,
) -> Result<Response, ConsoleError> {
    csrf.check_post(&headers, &params.csrf)
        .map_err(ConsoleError::Forbidden)?;
    let target = params.target()?;
    let report = state.service.replay(&target, false, &admin.actor()).await?;
    let replayed = report.count(ReplayOutcome::Replayed.label());
    let failed = report.failures();
    let mut body = String::from("<h1>Replay — done</h1>");
    let _ = write!(
        body,
        "<p id=\"summary\"><span class=\"count\" id=\"replayed\">{replayed}</span> replayed, \
         <span class=\"count\">{failed}</span> failed, {} left as they were.</p>",
        report.items.len() - replayed - failed
    );
    body.push_str(&report_table(&report));
    let status = if failed > 0 {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::OK
    };
    Ok(respond(
        status,
        &csrf,
        html::page(
            "Replay",
            &admin.name,
            (failed > 0).then_some(("Some replays failed; see below.", true)),
            &body,
        ),
    ))
}

fn report_table(report: &ReplayReport) -> String {
    let mut out = String::from(
        "<table id=\"replay-report\"><thead><tr><th>#</th><th>Group</th><th>Topic</th><th>Message id</th>\
         <th>Reason</th><th>Cause</th><th>Outcome</th></tr></thead><tbody>",
    );
    for item in &report.items {
        let (group, topic, message, reason, cause) = match &item.summary {
            Some(s) => (
                esc(&s.group),
                esc(&s.topic),
                s.message_id.to_string(),
                esc(s.reason.as_str()),
                esc(&s.cause),
            ),
            None => Default::default(),
        };
        let outcome = match &item.outcome {
            ReplayOutcome::Failed(why) => format!("failed: {}", esc(why)),
            other => esc(other.label()),
        };
        let _ = write!(
            out,
            "<tr><td><a href=\"/admin/hospital/patients/{id}\">{id}</a></td><td>{group}</td><td>{topic}</td>\
             <td class=\"mono\">{message}</td><td>{reason}</td><td class=\"mono wrap\">{cause}</td><td class=\"outcome\">{outcome}</td></tr>",
            id = item.id,
        );
    }
    out.push_str("</tbody></table>");
    out
}

#[derive(Debug, Default, Deserialize)]
struct AuditParams {
    cursor: Option<String>,
}

async fn audit(
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
