//! `keel hospital …` in process on a real SQLite hospital and queue: what each command prints and
//! does, with the arguments parsed by clap as the binary parses them.

use clap::Parser;
use keel::hospital::{CliError, HospitalCommand, Progress, cli_as};
use keel_domain::{Hospital, PatientState};

use keel_test_support::ward::ward;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: HospitalCommand,
}

/// Runs `keel hospital <args>`, returning its result, standard output and progress output.
async fn run(
    ward: &keel_test_support::ward::Ward,
    args: &[&str],
) -> (Result<(), CliError>, String, String) {
    let command = Args::try_parse_from(std::iter::once("hospital").chain(args.iter().copied()))
        .unwrap()
        .command;
    let mut out = Vec::new();
    let mut progress = Progress::new(Vec::new(), false);
    let result = cli_as(
        command,
        &ward.service,
        "cli:tester",
        &mut out,
        &mut progress,
    )
    .await;
    (
        result,
        String::from_utf8(out).unwrap(),
        String::from_utf8(progress.into_inner()).unwrap(),
    )
}

#[tokio::test]
async fn list_show_replay_and_discard_from_the_command_line() {
    let ward = ward().await;
    let mut sent = Vec::new();
    for n in 0..12 {
        sent.push(
            ward.publish(
                "order.created",
                &format!("permanent: order {n} refused"),
                None,
            )
            .await,
        );
    }
    let slow = ward.publish("order.created", "slow", Some("k-9")).await;
    ward.drain().await;

    let (result, out, _) = run(&ward, &["list", "--limit", "5"]).await;
    result.unwrap();
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 7, "header, 5 patients, next: {out}");
    assert!(lines[0].contains("last error"));
    assert!(lines[6].starts_with("next: --cursor "));

    let (result, out, _) = run(&ward, &["list", "--by-cause"]).await;
    result.unwrap();
    assert!(
        out.lines()
            .any(|l| l.contains("12") && l.contains("permanent: order <n> refused")),
        "{out}"
    );

    let slow_patient = ward.patient_of(slow.id).await;
    let (result, out, _) = run(&ward, &["show", &slow_patient.id.to_string()]).await;
    result.unwrap();
    for shown in [
        "state       waiting",
        "key         k-9",
        "trace id    4bf92f3577b34da6a3ce929d0e0e4736",
        "  x-tenant: acme",
        "  #2 at ",
        "Timeout: billing did not answer within 30s (attempt 2)",
    ] {
        assert!(out.contains(shown), "show prints {shown:?}: {out}");
    }

    // A dry run of a filtered replay changes nothing; the real one shows progress lines.
    let (result, out, _) = run(
        &ward,
        &[
            "replay",
            "--error",
            "refused",
            "--group",
            "billing",
            "--dry-run",
        ],
    )
    .await;
    result.unwrap();
    assert!(
        out.ends_with("12 would replay, 0 failed, 12 in all\n"),
        "{out}"
    );
    assert_eq!(ward.depth("billing").await, 0);
    ward.consumers
        .healed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (result, out, progress) = run(&ward, &["replay", "--error", "refused"]).await;
    result.unwrap();
    assert!(out.ends_with("12 replayed, 0 failed, 12 in all\n"), "{out}");
    assert!(!progress.contains('\r'), "{progress:?}");
    assert_eq!(progress.lines().last(), Some("replay: 12/12"));
    ward.drain().await;
    for m in &sent {
        assert_eq!(ward.consumers.successes("billing", m.id), 1);
    }

    let id = slow_patient.id.to_string();
    let (result, _, _) = run(&ward, &["discard", &id, "--reason", " "]).await;
    assert!(matches!(result, Err(CliError::Hospital(_))), "{result:?}");
    let (result, out, _) = run(&ward, &["discard", &id, "--reason", "customer cancelled"]).await;
    result.unwrap();
    assert_eq!(out, format!("{id} discarded\n"));
    let (result, out, _) = run(&ward, &["discard", &id, "--reason", "again"]).await;
    result.unwrap();
    assert_eq!(out, format!("{id} was already discarded: unchanged\n"));
    let patient = ward.hospital.get(slow_patient.id).await.unwrap().unwrap();
    assert_eq!(patient.state, PatientState::Discarded);
    assert_eq!(patient.settled.unwrap().by, "cli:tester");

    let (result, out, _) = run(&ward, &["audit", "--limit", "3"]).await;
    result.unwrap();
    assert_eq!(out.lines().count(), 3);
    assert!(out.lines().next().unwrap().contains("discard"));
}

#[tokio::test]
async fn a_replay_must_name_what_it_replays() {
    let ward = ward().await;
    let (result, _, _) = run(&ward, &["replay"]).await;
    assert!(matches!(result, Err(CliError::Usage(_))), "{result:?}");
    let (result, _, _) = run(&ward, &["replay", "1", "--group", "billing"]).await;
    assert!(matches!(result, Err(CliError::Usage(_))), "{result:?}");
    let (result, out, _) = run(&ward, &["replay", "--all", "--dry-run"]).await;
    result.unwrap();
    assert_eq!(out, "0 would replay, 0 failed, 0 in all\n");
}

#[tokio::test]
async fn a_failed_replay_makes_the_command_fail() {
    let ward = ward().await;
    let sent = ward.publish("order.created", "permanent: big", None).await;
    ward.drain().await;
    let id = ward.patient_of(sent.id).await.id;
    let file = ward.dir.path().join("big.json");
    std::fs::write(&file, vec![b'x'; keel_test_support::ward::MAX_BODY + 1]).unwrap();
    let (result, out, _) = run(
        &ward,
        &[
            "edit",
            &id.to_string(),
            "--body-file",
            file.to_str().unwrap(),
        ],
    )
    .await;
    result.unwrap();
    assert!(out.contains("body replaced"));
    let (result, out, _) = run(&ward, &["replay", &id.to_string()]).await;
    assert!(
        matches!(
            result,
            Err(CliError::Incomplete {
                failed: 1,
                total: 1
            })
        ),
        "{result:?}"
    );
    assert!(out.contains("failed: not sent"), "{out}");
}
