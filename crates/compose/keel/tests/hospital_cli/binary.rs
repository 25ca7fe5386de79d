//! `keel hospital …`: the real binary on the embedded queue and hospital under `--data-dir`.

use std::sync::Arc;
use std::time::Duration;

use keel_domain::{AdmissionReason, Broker, Hospital, Outgoing, PatientState};
use keel_sql_sqlite::{QueueLimits, SqliteQueue};

fn keel(data_dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = keel_test_support::process::command(crate::KEEL)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("hospital")
        .args(args)
        .env_remove("KEEL_DATA_DIR")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test]
async fn keel_hospital_lists_shows_replays_and_discards() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = keel(dir.path(), &["list"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "only the header: {out}");

    // Two patients in the data directory's queue database.
    let url = format!("sqlite://{}", dir.path().join("queue.db").display());
    let queue = Arc::new(
        SqliteQueue::open(&url, QueueLimits::default())
            .await
            .unwrap(),
    );
    let hospital = queue.hospital(100);
    queue.bind("billing", "order.#").await.unwrap();
    let mut ids = Vec::new();
    for body in ["first", "second"] {
        queue
            .publish("order.created", Outgoing::new(body.as_bytes().to_vec()))
            .await
            .unwrap();
        let d = queue
            .fetch("billing", 1, Duration::from_secs(30))
            .await
            .unwrap()
            .pop()
            .unwrap();
        hospital
            .record_attempt(&d, &format!("{body} failed: code 42"))
            .await
            .unwrap();
        ids.push(
            hospital
                .admit(&d, AdmissionReason::Permanent)
                .await
                .unwrap(),
        );
        queue.ack(d.tag).await.unwrap();
    }

    let (ok, out, err) = keel(dir.path(), &["list"]);
    assert!(ok, "{err}");
    assert!(out.contains("first failed: code 42") && out.contains("second failed"));
    let (ok, out, _) = keel(dir.path(), &["show", &ids[0].to_string()]);
    assert!(ok);
    assert!(out.contains("body (5 bytes)\nfirst\n"), "{out}");

    let (ok, out, _) = keel(dir.path(), &["replay", "--all", "--dry-run"]);
    assert!(ok);
    assert!(
        out.ends_with("2 would replay, 0 failed, 2 in all\n"),
        "{out}"
    );
    let (ok, out, err) = keel(dir.path(), &["replay", &ids[0].to_string()]);
    assert!(ok, "{err}");
    assert!(out.ends_with("1 replayed, 0 failed, 1 in all\n"), "{out}");
    assert_eq!(queue.depth("billing").await.unwrap().ready, 1);

    let (ok, _, err) = keel(
        dir.path(),
        &["discard", &ids[1].to_string(), "--reason", ""],
    );
    assert!(!ok, "a discard needs a reason");
    assert!(err.contains("reason"), "{err}");
    let (ok, _, err) = keel(
        dir.path(),
        &[
            "discard",
            &ids[1].to_string(),
            "--reason",
            "known bad input",
        ],
    );
    assert!(ok, "{err}");
    let patient = hospital.get(ids[1]).await.unwrap().unwrap();
    assert_eq!(patient.state, PatientState::Discarded);
    assert!(patient.settled.unwrap().by.starts_with("cli:"));
    let (ok, out, _) = keel(dir.path(), &["audit"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 2, "{out}");
}
