//! `GET /admin/hospital/causes`: the filtered patients counted by group, reason and cause.

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::auth::{Admin, Csrf};
use super::error::ConsoleError;
use super::filter::FilterForm;
use super::html::{self, esc, time};
use super::{ConsoleState, respond};

pub(super) async fn causes(
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
