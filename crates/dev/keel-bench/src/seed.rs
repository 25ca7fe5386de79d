//! The bench's data: N users with deterministic random UUIDs (v4, lowercase), bulk-loaded with
//! plain SQL through each engine's own CLI (sqlite3, psql COPY, mariadb multi-row INSERT), after
//! `keel migrate` created the schema. The same rows go into every engine, so keel on MariaDB and
//! the Flask baseline read the very same table.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

pub(crate) struct Dataset {
    /// All ids, sorted (insertion order: keeps B-tree inserts sequential).
    pub ids: Vec<String>,
    /// The cache-hit set (requested once to warm the cache, then at random by wrk).
    pub hit: Vec<String>,
    /// The cache-miss walk: every other id, shuffled, each used at most once per run.
    pub miss: Vec<String>,
    /// One timestamp for every row, in the three engines' spellings.
    pub ts_rfc3339: String,
    pub ts_pg: String,
    pub ts_mysql: String,
}

impl Dataset {
    pub(crate) fn generate(n: usize, hit_n: usize, seed: u64) -> Dataset {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut uuids: Vec<uuid::Uuid> = (0..n)
            .map(|_| {
                let mut b = [0u8; 16];
                rng.fill(&mut b);
                uuid::Builder::from_random_bytes(b).into_uuid()
            })
            .collect();
        uuids.sort_unstable();
        uuids.dedup();
        let ids: Vec<String> = uuids.iter().map(|u| u.hyphenated().to_string()).collect();
        let mut order: Vec<usize> = (0..ids.len()).collect();
        rng.shuffle(&mut order);
        let hit_n = hit_n.min(ids.len());
        let hit = order[..hit_n].iter().map(|&i| ids[i].clone()).collect();
        let miss = order[hit_n..].iter().map(|&i| ids[i].clone()).collect();
        let now = chrono::Utc::now();
        Dataset {
            ids,
            hit,
            miss,
            ts_rfc3339: now.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            ts_pg: now.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
            ts_mysql: now.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        }
    }

    pub(crate) fn write_id_files(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, list) in [("hit-ids.txt", &self.hit), ("miss-ids.txt", &self.miss)] {
            let mut w = BufWriter::new(File::create(dir.join(name))?);
            for id in list {
                writeln!(w, "{id}")?;
            }
            w.flush()?;
        }
        Ok(())
    }

    fn row(&self, i: usize) -> (&str, String, String) {
        (
            &self.ids[i],
            format!("Bench User {i}"),
            format!("user{i}@bench.example"),
        )
    }
}

/// Pipe generated SQL into a CLI, its output going to `log`.
fn pipe_into(
    mut cmd: Command,
    log: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let logf = File::options().create(true).append(true).open(log)?;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
    {
        let stdin = child.stdin.take().context("no stdin")?;
        let mut w = BufWriter::with_capacity(1 << 20, stdin);
        let res = write(&mut w).and_then(|_| w.flush());
        if let Err(e) = res {
            let _ = child.wait();
            bail!(
                "writing SQL to {:?}: {e} (see {})",
                cmd.get_program(),
                log.display()
            );
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "{:?} exited with {status} (see {})",
            cmd.get_program(),
            log.display()
        );
    }
    Ok(())
}

/// Run a CLI and fail with its output.
pub(crate) fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed ({}): {}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const BATCH: usize = 1000;

pub(crate) fn seed_sqlite(data: &Dataset, db: &Path, log: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new("sqlite3");
    cmd.arg("-bail").arg(db);
    pipe_into(cmd, log, |w| {
        writeln!(w, ".timeout 10000\nBEGIN;")?;
        for chunk_start in (0..data.ids.len()).step_by(BATCH) {
            write!(
                w,
                "INSERT INTO users (id, name, email, created_at, updated_at, version) VALUES "
            )?;
            for i in chunk_start..(chunk_start + BATCH).min(data.ids.len()) {
                let (id, name, email) = data.row(i);
                let sep = if i == chunk_start { "" } else { "," };
                write!(
                    w,
                    "{sep}('{id}','{name}','{email}','{ts}','{ts}',1)",
                    ts = data.ts_rfc3339
                )?;
            }
            writeln!(w, ";")?;
        }
        writeln!(
            w,
            "COMMIT;\nANALYZE;\nSELECT 'sqlite rows: ' || count(*) FROM users;"
        )
    })
}

pub(crate) fn psql(url: &str) -> Command {
    let mut c = Command::new("psql");
    c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url]);
    c
}

pub(crate) fn seed_postgres(data: &Dataset, url: &str, log: &Path) -> anyhow::Result<()> {
    pipe_into(psql(url), log, |w| {
        writeln!(
            w,
            "COPY users (id, name, email, created_at, updated_at, version) FROM STDIN;"
        )?;
        for i in 0..data.ids.len() {
            let (id, name, email) = data.row(i);
            writeln!(w, "{id}\t{name}\t{email}\t{ts}\t{ts}\t1", ts = data.ts_pg)?;
        }
        writeln!(
            w,
            "\\.\nVACUUM ANALYZE users;\nSELECT 'postgres rows: ' || count(*) FROM users;"
        )
    })
}

pub(crate) fn mariadb(db: Option<&str>) -> Command {
    let mut c = Command::new("mariadb");
    c.args([
        "-h",
        "127.0.0.1",
        "-P",
        "3306",
        "-u",
        "root",
        "--batch",
        "--skip-column-names",
    ]);
    if let Some(db) = db {
        c.arg(db);
    }
    c
}

pub(crate) fn seed_mariadb(data: &Dataset, db: &str, log: &Path) -> anyhow::Result<()> {
    pipe_into(mariadb(Some(db)), log, |w| {
        writeln!(
            w,
            "SET autocommit=0; SET unique_checks=0; SET foreign_key_checks=0;"
        )?;
        for chunk_start in (0..data.ids.len()).step_by(BATCH) {
            write!(
                w,
                "INSERT INTO users (id, name, email, created_at, updated_at, version) VALUES "
            )?;
            for i in chunk_start..(chunk_start + BATCH).min(data.ids.len()) {
                let (id, name, email) = data.row(i);
                let sep = if i == chunk_start { "" } else { "," };
                write!(
                    w,
                    "{sep}('{id}','{name}','{email}','{ts}','{ts}',1)",
                    ts = data.ts_mysql
                )?;
            }
            writeln!(w, ";")?;
        }
        writeln!(
            w,
            "COMMIT; SET unique_checks=1; ANALYZE TABLE users;\nSELECT CONCAT('mariadb rows: ', COUNT(*)) FROM users;"
        )
    })
}

/// Used only when `keel migrate` cannot run (no keel binary): the schema keel's MariaDB
/// migration is documented to create, so the Flask baseline can still be measured.
pub(crate) const MARIADB_FALLBACK_DDL: &str = "CREATE TABLE IF NOT EXISTS users (
  id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  email VARCHAR(320) NOT NULL UNIQUE,
  created_at DATETIME(6) NOT NULL,
  updated_at DATETIME(6) NOT NULL,
  version BIGINT NOT NULL DEFAULT 1
)";
