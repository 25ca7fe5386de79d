//! The patient filter the list, the causes view and bulk replays share: its form fields as
//! browsers send them, parsed into the hospital's [`PatientFilter`], and rendered back as a form,
//! a query string and hidden inputs.

use std::fmt::Write as _;

use chrono::{DateTime, NaiveDateTime, Utc};
use keel_domain::{AdmissionReason, PatientFilter, PatientState};
use serde::Deserialize;

use super::error::ConsoleError;
use super::html::{esc, url_encode};

/// The filter fields of the list, the causes view and bulk replays, as the forms send them
/// (blank means unset).
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct FilterForm {
    pub(super) group: Option<String>,
    pub(super) topic: Option<String>,
    pub(super) reason: Option<String>,
    /// `waiting` (the default), `replayed`, `discarded`, or `any`.
    pub(super) state: Option<String>,
    pub(super) error: Option<String>,
    pub(super) cause: Option<String>,
    /// Admitted at or after (UTC; `YYYY-MM-DDTHH:MM[:SS]` or RFC 3339).
    pub(super) from: Option<String>,
    /// Admitted before.
    pub(super) until: Option<String>,
    /// The newest patient id a bulk replay takes (set by its dry run).
    pub(super) through: Option<String>,
}

pub(super) fn given(field: &Option<String>) -> Option<&str> {
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
    pub(super) fn filter(&self) -> Result<PatientFilter, ConsoleError> {
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
    pub(super) fn query(&self) -> String {
        self.fields()
            .iter()
            .filter_map(|(name, value)| given(value).map(|v| format!("{name}={}", url_encode(v))))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The given fields as hidden inputs.
    pub(super) fn hidden(&self) -> String {
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
    pub(super) fn form(&self, action: &str, with_text: bool) -> String {
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
