//! The queue benchmark's table, the keel/raw ratios against the targets, and
//! queue.json.

use std::time::Duration;

use serde_json::{Value, json};

use super::{BackendKind, Ctx, Outcome, Row};

/// The targets per backend.
enum Target {
    /// keel's rate over the raw client's, at least.
    Ratio(f64),
    /// keel's rate, at least (msg/s).
    Rate(f64),
}

fn target(backend: BackendKind) -> Target {
    match backend {
        BackendKind::Sqlite => Target::Rate(20_000.0),
        BackendKind::Postgres => Target::Ratio(0.5),
        BackendKind::Rabbitmq | BackendKind::Nats => Target::Ratio(0.7),
    }
}

/// The raw figures the issue measured on this kind of machine (100k messages), for comparison.
fn reference(backend: BackendKind, ctx: &Ctx) -> &'static str {
    match backend {
        BackendKind::Sqlite => "55-80k",
        BackendKind::Postgres => "30-40k",
        BackendKind::Rabbitmq if ctx.rabbitmq_queue.as_str() == "classic" => "~11k",
        BackendKind::Rabbitmq => "~14k",
        BackendKind::Nats => "~50k",
    }
}

fn rate(rows: &[Row], backend: BackendKind, system: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.backend == backend && r.system == system)
        .and_then(|r| match &r.outcome {
            Outcome::Measured(f) => Some(f.rate()),
            _ => None,
        })
}

/// Every run's rate of one row, in run order, if all of them were measured.
fn runs(rows: &[Row], backend: BackendKind, system: &str) -> Option<Vec<f64>> {
    rows.iter()
        .find(|r| r.backend == backend && r.system == system)
        .filter(|r| matches!(r.outcome, Outcome::Measured(_)))
        .map(|r| r.runs.clone())
}

/// keel's rate over raw's, round by round (the two ran one after the other).
fn paired_ratios(rows: &[Row], backend: BackendKind) -> Vec<f64> {
    match (runs(rows, backend, "keel"), runs(rows, backend, "raw")) {
        (Some(keel), Some(raw)) => keel.iter().zip(&raw).map(|(k, r)| k / r).collect(),
        _ => Vec::new(),
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

pub(super) fn render(ctx: &Ctx, rows: &[Row], load_start: &str) -> String {
    let p = &ctx.plan;
    let mut o = String::new();
    o.push_str(&format!(
        "\nkeel queue benchmark — {} messages of {} B per row, best of {} run(s), {} publisher(s) x batches of {}, {} consumer(s) x batches of {}, {} keys, offered rate {}\n",
        p.messages,
        p.body_bytes,
        ctx.args.repeat,
        p.publishers,
        p.publish_batch,
        p.workers,
        p.fetch_batch,
        p.keys,
        if p.rate == 0 { "unlimited".to_string() } else { format!("{} msg/s", p.rate) },
    ));
    o.push_str(&format!(
        "load average at start {load_start} / at end {} (other work on the machine skews the figures; steal: the CPU time the hypervisor gave other guests during the row)\n\n",
        crate::report::loadavg()
    ));
    let header = [
        "backend",
        "row",
        "msg/s",
        "publish msg/s",
        "p50",
        "p99",
        "max",
        "steal",
        "runs (k msg/s)",
        "what",
    ];
    let mut cells: Vec<[String; 10]> = Vec::new();
    for r in rows {
        let (rate, publish, p50, p99, max) = match &r.outcome {
            Outcome::Measured(f) => (
                format!("{:.0}", f.rate()),
                format!("{:.0}", f.publish_rate()),
                ms(f.tally.p50),
                ms(f.tally.p99),
                ms(f.tally.max),
            ),
            Outcome::Failed(_) => (
                "FAILED".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ),
            Outcome::NotBuilt => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        let what = match &r.outcome {
            Outcome::NotBuilt => "keel adapter not built in".to_string(),
            _ => r.label.clone(),
        };
        cells.push([
            r.backend.key().into(),
            r.system.into(),
            rate,
            publish,
            p50,
            p99,
            max,
            r.steal.map_or("-".into(), |s| format!("{:.0}%", s * 100.0)),
            r.runs
                .iter()
                .map(|r| format!("{:.1}", r / 1000.0))
                .collect::<Vec<_>>()
                .join(" "),
            what,
        ]);
    }
    let mut width = header.map(str::len);
    for row in &cells {
        for (i, c) in row.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        let mut s = String::from("|");
        for (i, c) in row.iter().enumerate() {
            if i < 2 || i == row.len() - 1 {
                s.push_str(&format!(" {:<w$} |", c, w = width[i]));
            } else {
                s.push_str(&format!(" {:>w$} |", c, w = width[i]));
            }
        }
        s.push('\n');
        s
    };
    o.push_str(&line(&header.map(String::from)));
    let sep: Vec<String> = width
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i < 2 || i == width.len() - 1 {
                format!(":{}", "-".repeat(w - 1))
            } else {
                format!("{}:", "-".repeat(w - 1))
            }
        })
        .collect();
    o.push_str(&line(&sep));
    for row in &cells {
        o.push_str(&line(row));
    }

    let mut problems = String::new();
    for r in rows {
        match &r.outcome {
            Outcome::Failed(e) => {
                problems.push_str(&format!("  FAILED {} {}: {e}\n", r.backend.key(), r.system));
            }
            Outcome::Measured(f) => {
                for n in &f.notes {
                    problems.push_str(&format!("  note {} {}: {n}\n", r.backend.key(), r.system));
                }
            }
            Outcome::NotBuilt => {}
        }
    }
    if !problems.is_empty() {
        o.push_str("\nnotes and failures:\n");
        o.push_str(&problems);
    }

    o.push_str("\nkeel against the raw client, and the targets:\n");
    let backends: Vec<BackendKind> = {
        let mut v: Vec<BackendKind> = rows.iter().map(|r| r.backend).collect();
        v.dedup();
        v
    };
    o.push_str(
        "  (judged on the median over rounds: of keel's rate, or of keel/raw within each round, where raw and keel ran one after the other)\n",
    );
    for b in backends {
        let (keel, raw) = (rate(rows, b, "keel"), rate(rows, b, "raw"));
        let best = keel.zip(raw).map(|(k, r)| k / r);
        let paired = paired_ratios(rows, b);
        let ratio = median(&paired);
        let keel_median = runs(rows, b, "keel").and_then(|r| median(&r));
        let ratio_text = ratio.map_or("n/a".into(), |v| format!("{v:.2}x"));
        let (target_text, verdict) = match target(b) {
            Target::Ratio(t) => (
                format!("keel/raw >= {t}x"),
                ratio.map_or("(not measured)", |v| if v >= t { "MET" } else { "MISSED" }),
            ),
            Target::Rate(t) => (
                format!("keel >= {t:.0} msg/s"),
                keel_median.map_or("(not measured)", |v| if v >= t { "MET" } else { "MISSED" }),
            ),
        };
        o.push_str(&format!(
            "  {:<9} keel/raw {:>7}   target {:<22} {:<15} (rounds: {}; best/best {}; keel median {}; raw reference on this machine: {} msg/s)\n",
            b.key(),
            ratio_text,
            target_text,
            verdict,
            paired
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            best.map_or("n/a".into(), |v| format!("{v:.2}x")),
            keel_median.map_or("n/a".into(), |v| format!("{v:.0}")),
            reference(b, ctx)
        ));
    }
    o
}

pub(super) fn to_json(
    ctx: &Ctx,
    rows: &[Row],
    started: chrono::DateTime<chrono::Utc>,
    load_start: &str,
) -> Value {
    let p = &ctx.plan;
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            let base = json!({
                "backend": r.backend.key(),
                "row": r.system,
                "what": r.label,
            });
            let extra = match &r.outcome {
                Outcome::Measured(f) => json!({
                    "status": "ok",
                    "msgs_per_s": f.rate().round(),
                    "publish_msgs_per_s": f.publish_rate().round(),
                    "elapsed_s": f.elapsed.as_secs_f64(),
                    "latency_p50_ms": f.tally.p50.as_secs_f64() * 1000.0,
                    "latency_p99_ms": f.tally.p99.as_secs_f64() * 1000.0,
                    "latency_max_ms": f.tally.max.as_secs_f64() * 1000.0,
                    "duplicates_absorbed": f.tally.duplicates,
                    "notes": f.notes,
                    "steal": r.steal,
                    "runs_msgs_per_s": r.runs,
                }),
                Outcome::Failed(e) => json!({"status": "failed", "error": e}),
                Outcome::NotBuilt => json!({"status": "keel adapter not built in"}),
            };
            let mut v = base;
            if let (Some(a), Value::Object(b)) = (v.as_object_mut(), extra) {
                a.extend(b);
            }
            v
        })
        .collect();
    json!({
        "started_at": started.to_rfc3339(),
        "finished_at": chrono::Utc::now().to_rfc3339(),
        "loadavg_start": load_start,
        "loadavg_end": crate::report::loadavg(),
        "params": {
            "messages": p.messages,
            "repeat": ctx.args.repeat,
            "body_bytes": p.body_bytes,
            "keys": p.keys,
            "workers": p.workers,
            "publishers": p.publishers,
            "publish_batch": p.publish_batch,
            "fetch_batch": p.fetch_batch,
            "rate": p.rate,
            "rabbitmq_queue": ctx.rabbitmq_queue.as_str(),
        },
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[0.9, 0.5, 0.7]), Some(0.7));
        assert_eq!(median(&[0.8, 0.6]), Some(0.7));
    }
}
