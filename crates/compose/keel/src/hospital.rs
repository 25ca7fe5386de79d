//! `keel hospital …`: the console's actions from a terminal, over keel-hospital's
//! [`HospitalService`]. In the binary crate, which owns the command line (clap), so that
//! keel-hospital stays an application crate of ports only (docs/decisions/0102).
//!
//! `list [filters] [--by-cause]`, `show <id>`, `replay <id>… | --filter… | --all [--dry-run]`,
//! `discard <id> --reason …`, `edit <id> --body-file F`, `audit`. Results go to the given writer
//! (standard output); a bulk replay draws a progress bar on standard error when it is a
//! terminal, and plain progress lines (no carriage returns) when it is not.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use chrono::{DateTime, NaiveDateTime, Utc};
use keel_domain::{
    AdmissionReason, HospitalError, PatientFilter, PatientQuery, PatientState, Transition,
};

use keel_hospital::{HospitalService, ReplayOutcome, ReplayTarget};

/// The `hospital` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum HospitalCommand {
    /// List patients, newest first (waiting ones unless --state says otherwise).
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Count them by group, reason and cause instead.
        #[arg(long)]
        by_cause: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after this patient id (the `next:` line of the previous page).
        #[arg(long)]
        cursor: Option<i64>,
    },
    /// Show one patient: headers, body, every attempt's error, trace id, history.
    Show { id: i64 },
    /// Send patients' messages back to the groups that failed them (with their ids), then mark
    /// them replayed. Name patient ids, or a filter, or --all.
    Replay {
        /// Patient ids.
        ids: Vec<i64>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Every waiting patient.
        #[arg(long)]
        all: bool,
        /// Say what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Discard a waiting patient: it will not be handled. Kept for the record with the reason.
    Discard {
        id: i64,
        /// Why (required; written to the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Replace a waiting patient's body (what a replay sends) with a file's contents.
    Edit {
        id: i64,
        #[arg(long, value_name = "FILE")]
        body_file: PathBuf,
    },
    /// The audit log, newest first.
    Audit {
        /// Only the entries about this patient.
        #[arg(long)]
        patient: Option<i64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// Which patients: every given option must match.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// The consumer group that failed them.
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long)]
    pub topic: Option<String>,
    /// exhausted, permanent or expired.
    #[arg(long, value_parser = parse_reason)]
    pub reason: Option<AdmissionReason>,
    /// waiting (default), replayed, discarded or any.
    #[arg(long)]
    pub state: Option<String>,
    /// A case-insensitive substring of the last error (an error class, a message).
    #[arg(long)]
    pub error: Option<String>,
    /// Exactly this cause (as `list --by-cause` prints it).
    #[arg(long)]
    pub cause: Option<String>,
    /// Admitted at or after (RFC 3339, or YYYY-MM-DDTHH:MM in UTC).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Admitted before.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
}

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.group.is_none()
            && self.topic.is_none()
            && self.reason.is_none()
            && self.state.is_none()
            && self.error.is_none()
            && self.cause.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    fn filter(&self) -> Result<PatientFilter, CliError> {
        Ok(PatientFilter {
            group: self.group.clone(),
            topic: self.topic.clone(),
            reason: self.reason,
            state: match self.state.as_deref() {
                None => Some(PatientState::Waiting),
                Some("any") => None,
                Some(s) => Some(PatientState::parse(s).ok_or_else(|| {
                    CliError::Usage(format!(
                        "unknown state {s:?} (waiting, replayed, discarded or any)"
                    ))
                })?),
            },
            error_contains: self.error.clone(),
            cause: self.cause.clone(),
            admitted_from: self.since,
            admitted_until: self.until,
            after_id: None,
            through_id: None,
        })
    }
}

fn parse_reason(raw: &str) -> Result<AdmissionReason, String> {
    AdmissionReason::parse(raw).ok_or_else(|| "exhausted, permanent or expired".to_owned())
}

fn parse_time(raw: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(raw, f).ok())
        .map(|t| t.and_utc())
        .ok_or_else(|| "an RFC 3339 time, or YYYY-MM-DDTHH:MM in UTC".to_owned())
}

/// Why a hospital command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{failed} of {total} replays failed")]
    Incomplete { failed: usize, total: usize },
    #[error(transparent)]
    Hospital(#[from] HospitalError),
    #[error("cannot write the output")]
    Io(#[from] std::io::Error),
}

/// Runs `command` as the current user (`cli:$USER`), writing results to `out` and progress to
/// standard error.
pub async fn cli(
    command: HospitalCommand,
    service: &HospitalService,
    out: &mut (impl Write + Send),
) -> Result<(), CliError> {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let stderr = std::io::stderr();
    let tty = stderr.is_terminal();
    let mut progress = Progress::new(stderr, tty);
    cli_as(command, service, &format!("cli:{user}"), out, &mut progress).await
}

/// [`cli`] with the actor and the progress sink given.
pub async fn cli_as<P: Write + Send>(
    command: HospitalCommand,
    service: &HospitalService,
    actor: &str,
    out: &mut (impl Write + Send),
    progress: &mut Progress<P>,
) -> Result<(), CliError> {
    let hospital = &service.hospital;
    match command {
        HospitalCommand::List {
            filter,
            by_cause,
            limit,
            cursor,
        } => {
            let filter = filter.filter()?;
            if by_cause {
                let causes = hospital.causes(&filter).await?;
                writeln!(
                    out,
                    "{:>7}  {:<20} {:<10} cause",
                    "count", "group", "reason"
                )?;
                for c in causes {
                    writeln!(
                        out,
                        "{:>7}  {:<20} {:<10} {}",
                        c.count,
                        c.group,
                        c.reason.as_str(),
                        if c.cause.is_empty() {
                            "(no error recorded)"
                        } else {
                            &c.cause
                        }
                    )?;
                }
                return Ok(());
            }
            let page = hospital
                .find(&PatientQuery {
                    filter,
                    cursor,
                    limit,
                    oldest_first: false,
                })
                .await?;
            writeln!(
                out,
                "{:>7}  {:<24} {:<16} {:<20} {:<9} {:<9} last error",
                "id", "admitted (UTC)", "group", "topic", "reason", "state"
            )?;
            for p in &page.patients {
                writeln!(
                    out,
                    "{:>7}  {:<24} {:<16} {:<20} {:<9} {:<9} {}",
                    p.id,
                    p.admitted_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    p.group,
                    p.topic,
                    p.reason.as_str(),
                    p.state.as_str(),
                    p.last_error().and_then(|e| e.lines().next()).unwrap_or("-")
                )?;
            }
            if let Some(next) = page.next_cursor {
                writeln!(out, "next: --cursor {next}")?;
            }
            Ok(())
        }
        HospitalCommand::Show { id } => {
            let p = hospital.get(id).await?.ok_or(HospitalError::NotFound(id))?;
            writeln!(out, "patient     {}", p.id)?;
            writeln!(out, "state       {}", p.state.as_str())?;
            writeln!(out, "group       {}", p.group)?;
            writeln!(out, "topic       {}", p.topic)?;
            writeln!(out, "message id  {}", p.message_id)?;
            writeln!(out, "key         {}", p.key.as_deref().unwrap_or("-"))?;
            writeln!(out, "reason      {}", p.reason.as_str())?;
            writeln!(out, "cause       {}", p.cause)?;
            writeln!(out, "trace id    {}", p.trace_id.as_deref().unwrap_or("-"))?;
            writeln!(out, "published   {}", p.published_at.to_rfc3339())?;
            writeln!(out, "admitted    {}", p.admitted_at.to_rfc3339())?;
            if let Some(s) = &p.settled {
                writeln!(
                    out,
                    "settled     by {} at {}{}",
                    s.by,
                    s.at.to_rfc3339(),
                    s.note
                        .as_deref()
                        .map(|n| format!(": {n}"))
                        .unwrap_or_default()
                )?;
            }
            if let Some(e) = &p.edited {
                writeln!(out, "edited      by {} at {}", e.by, e.at.to_rfc3339())?;
            }
            writeln!(out, "headers")?;
            for (name, value) in &p.headers {
                writeln!(out, "  {name}: {value}")?;
            }
            writeln!(out, "body ({} bytes)", p.body.len())?;
            writeln!(out, "{}", String::from_utf8_lossy(&p.body))?;
            writeln!(out, "attempts")?;
            for a in &p.attempts {
                writeln!(
                    out,
                    "  #{} at {}: {}",
                    a.attempt,
                    a.at.to_rfc3339(),
                    a.error
                )?;
            }
            Ok(())
        }
        HospitalCommand::Replay {
            ids,
            filter,
            all,
            dry_run,
        } => {
            let target = match (ids.is_empty(), filter.is_empty(), all) {
                (false, true, false) => ReplayTarget::Ids(ids),
                (true, false, false) => ReplayTarget::Filter(filter.filter()?),
                (true, true, true) => ReplayTarget::Filter(PatientFilter::default()),
                (true, true, false) => {
                    return Err(CliError::Usage(
                        "name patient ids, a filter (--group, --reason, --error, …) or --all"
                            .into(),
                    ));
                }
                _ => {
                    return Err(CliError::Usage(
                        "give patient ids, a filter, or --all: one of them".into(),
                    ));
                }
            };
            let label = if dry_run { "dry run" } else { "replay" };
            let report = service
                .replay_with_progress(&target, dry_run, actor, &mut |done, total| {
                    progress.update(label, done, total);
                })
                .await;
            progress.finish();
            let report = report?;
            for item in &report.items {
                let what = match &item.summary {
                    Some(s) => format!("{} {} {}", s.group, s.topic, s.message_id),
                    None => "-".into(),
                };
                let outcome = match &item.outcome {
                    ReplayOutcome::Failed(why) => format!("failed: {why}"),
                    other => other.label().to_owned(),
                };
                writeln!(out, "{:>7}  {outcome:<18} {what}", item.id)?;
            }
            let summary_label = if dry_run {
                ReplayOutcome::WouldReplay.label()
            } else {
                ReplayOutcome::Replayed.label()
            };
            writeln!(
                out,
                "{} {summary_label}, {} failed, {} in all{}",
                report.count(summary_label),
                report.failures(),
                report.items.len(),
                if report.truncated {
                    " (cut: run again for the rest)"
                } else {
                    ""
                }
            )?;
            match report.failures() {
                0 => Ok(()),
                failed => Err(CliError::Incomplete {
                    failed,
                    total: report.items.len(),
                }),
            }
        }
        HospitalCommand::Discard { id, reason } => {
            match service.discard(id, &reason, actor).await? {
                Transition::Done(_) => writeln!(out, "{id} discarded")?,
                Transition::Settled(p) => {
                    writeln!(out, "{id} was already {}: unchanged", p.state.as_str())?;
                }
                Transition::Busy(_) => {
                    return Err(CliError::Usage(format!(
                        "{id} is being replayed; not discarded"
                    )));
                }
            }
            Ok(())
        }
        HospitalCommand::Edit { id, body_file } => {
            let body = std::fs::read(&body_file).map_err(|e| {
                CliError::Usage(format!("cannot read {}: {e}", body_file.display()))
            })?;
            match service.edit(id, &body, actor).await? {
                Transition::Done(_) => writeln!(out, "{id} body replaced ({} bytes)", body.len())?,
                Transition::Settled(p) => {
                    return Err(CliError::Usage(format!(
                        "{id} is {}; only a waiting patient can be edited",
                        p.state.as_str()
                    )));
                }
                Transition::Busy(_) => {
                    return Err(CliError::Usage(format!(
                        "{id} is being replayed; not edited"
                    )));
                }
            }
            Ok(())
        }
        HospitalCommand::Audit { patient, limit } => {
            for e in hospital.audit_log(patient, None, limit).await? {
                writeln!(
                    out,
                    "{:>7}  {}  {:<24} {:<8} {:?} {}",
                    e.id,
                    e.at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    e.actor,
                    e.action,
                    e.patient_ids,
                    e.detail
                )?;
            }
            Ok(())
        }
    }
}

/// A progress bar for bulk replays. On a terminal it redraws one line (`\r`); elsewhere (a log
/// file, a pipe) it writes a plain line at each tenth, so that nothing is garbled.
#[derive(Debug)]
pub struct Progress<W: Write> {
    out: W,
    tty: bool,
    /// The last tenth written (not a terminal), or the last width drawn (terminal).
    last: Option<usize>,
    drawn: bool,
}

/// Width of the bar, in characters.
const BAR: usize = 30;

impl<W: Write> Progress<W> {
    pub fn new(out: W, tty: bool) -> Self {
        Self {
            out,
            tty,
            last: None,
            drawn: false,
        }
    }

    /// `done` of `total` finished. Progress is best effort: a failing sink is ignored.
    pub fn update(&mut self, label: &str, done: usize, total: usize) {
        if total < 2 {
            return; // one patient needs no bar
        }
        if self.tty {
            let filled = done * BAR / total;
            if self.last == Some(filled) && done != total {
                return;
            }
            self.last = Some(filled);
            let _ = write!(
                self.out,
                "\r{label} [{}{}] {done}/{total}",
                "#".repeat(filled),
                ".".repeat(BAR - filled)
            );
            let _ = self.out.flush();
            self.drawn = true;
        } else {
            let tenth = done * 10 / total;
            if self.last.is_some_and(|last| last >= tenth) || (tenth == 0 && done != total) {
                return;
            }
            self.last = Some(tenth);
            let _ = writeln!(self.out, "{label}: {done}/{total}");
        }
    }

    /// Ends the bar's line, so that what follows starts on its own.
    pub fn finish(&mut self) {
        if self.tty && self.drawn {
            let _ = writeln!(self.out);
            self.drawn = false;
        }
        self.last = None;
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_a_terminal_the_bar_redraws_one_line_then_ends_it() {
        let mut p = Progress::new(Vec::new(), true);
        for done in 1..=4 {
            p.update("replay", done, 4);
        }
        p.finish();
        let text = String::from_utf8(p.into_inner()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        assert!(text.ends_with("\rreplay [##############################] 4/4\n"));
        assert!(text.starts_with("\rreplay [#######"));
    }

    #[test]
    fn elsewhere_progress_is_plain_lines_at_each_tenth() {
        let mut p = Progress::new(Vec::new(), false);
        for done in 1..=100 {
            p.update("replay", done, 100);
        }
        p.finish();
        let text = String::from_utf8(p.into_inner()).unwrap();
        assert!(!text.contains('\r'), "{text:?}");
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 10, "{lines:?}");
        assert_eq!(lines[0], "replay: 10/100");
        assert_eq!(lines[9], "replay: 100/100");
    }

    #[test]
    fn a_single_patient_draws_no_bar() {
        let mut p = Progress::new(Vec::new(), true);
        p.update("replay", 1, 1);
        p.finish();
        assert!(p.into_inner().is_empty());
    }

    #[test]
    fn times_parse_as_utc() {
        assert_eq!(
            parse_time("2026-05-01T12:30").unwrap().to_rfc3339(),
            "2026-05-01T12:30:00+00:00"
        );
        assert_eq!(
            parse_time("2026-05-01T14:30:00+02:00")
                .unwrap()
                .to_rfc3339(),
            "2026-05-01T12:30:00+00:00"
        );
        assert!(parse_time("yesterday").is_err());
    }
}
