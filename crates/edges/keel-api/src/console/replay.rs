//! `GET /admin/hospital/replay?ids=…` or `?<filter>`: the dry run, with the form that confirms
//! it; `POST /admin/hospital/replay`: the replay itself, with its report.

use std::fmt::Write as _;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use keel_hospital::{ReplayOutcome, ReplayReport, ReplayTarget};
use serde::Deserialize;

use super::auth::{Admin, Csrf};
use super::error::ConsoleError;
use super::filter::{FilterForm, given};
use super::html::{self, esc};
use super::{ConsoleState, respond};

/// Which patients a replay form names: `ids` (comma-separated), else the filter.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ReplayParams {
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

pub(super) async fn replay_preview(
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
            html::csrf_field(&csrf)
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

pub(super) async fn replay(
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
