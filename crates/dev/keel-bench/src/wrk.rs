//! Driving wrk (pinned to core 0) and reading its figures: the `KEELBENCH` line our Lua
//! scripts print from `done()` (exact microseconds), with wrk's own summary as a fallback.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};

#[derive(Debug, Clone, Default)]
pub(crate) struct WrkResult {
    pub requests: u64,
    pub duration_s: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub non2xx: u64,
    pub socket_errors: u64,
    pub timeouts: u64,
    /// miss.lua only: highest id index used and how many requests wrapped around the list.
    pub ids_used: Option<u64>,
    pub ids_exhausted: Option<u64>,
}

impl WrkResult {
    pub(crate) fn non2xx_fraction(&self) -> f64 {
        if self.requests == 0 {
            1.0
        } else {
            self.non2xx as f64 / self.requests as f64
        }
    }
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "duration_s": self.duration_s,
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p90_ms": round(self.p90_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "mean_ms": round(self.mean_ms, 3),
            "non2xx": self.non2xx,
            "socket_errors": self.socket_errors,
            "timeouts": self.timeouts,
            "ids_used": self.ids_used,
            "ids_exhausted": self.ids_exhausted,
        })
    }
}

pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

pub(crate) struct WrkSpec<'a> {
    pub url: &'a str,
    pub threads: u32,
    pub connections: u32,
    pub duration_s: u64,
    pub script: &'a Path,
    pub script_args: Vec<String>,
    pub log: &'a Path,
    pub wrk_core: &'a str,
}

pub(crate) fn run(spec: &WrkSpec<'_>) -> anyhow::Result<WrkResult> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", spec.wrk_core, "wrk"])
        .arg(format!("-t{}", spec.threads))
        .arg(format!("-c{}", spec.connections))
        .arg(format!("-d{}s", spec.duration_s))
        .arg("--timeout")
        .arg("5s")
        .arg("--latency")
        .arg("-s")
        .arg(spec.script)
        .arg(spec.url)
        .arg("--")
        .args(&spec.script_args);
    let out = cmd
        .output()
        .context("running wrk (is it installed? bench/run.sh installs it)")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    {
        use std::io::Write;
        let mut f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(spec.log)?;
        writeln!(f, "$ {cmd:?}\n{stdout}{stderr}")?;
    }
    if !out.status.success() {
        bail!("wrk failed ({}): {stderr}{stdout}", out.status);
    }
    parse(&stdout)
}

fn parse(out: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut got_line = false;
    for line in out.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("KEELBENCH ") {
            got_line = true;
            let mut errors = 0;
            for kv in rest.split_whitespace() {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v: f64 = v.parse().unwrap_or(0.0);
                match k {
                    "requests" => r.requests = v as u64,
                    "duration_us" => r.duration_s = v / 1e6,
                    "status_errors" => r.non2xx = v as u64,
                    "connect_errors" | "read_errors" | "write_errors" => errors += v as u64,
                    "timeouts" => r.timeouts = v as u64,
                    "p50_us" => r.p50_ms = v / 1e3,
                    "p90_us" => r.p90_ms = v / 1e3,
                    "p99_us" => r.p99_ms = v / 1e3,
                    "max_us" => r.max_ms = v / 1e3,
                    "mean_us" => r.mean_ms = v / 1e3,
                    _ => {}
                }
            }
            r.socket_errors = errors;
        } else if let Some(v) = line.strip_prefix("ids_used=") {
            r.ids_used = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("ids_exhausted=") {
            r.ids_exhausted = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            // wrk's own count, should equal status_errors
            r.non2xx = r.non2xx.max(v.trim().parse().unwrap_or(0));
        }
    }
    if !got_line {
        bail!("wrk printed no KEELBENCH line:\n{out}");
    }
    if r.duration_s > 0.0 {
        r.rps = r.requests as f64 / r.duration_s;
    }
    Ok(r)
}
