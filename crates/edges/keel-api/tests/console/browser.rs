//! The console in a real browser: Debian's chromium, driven by playwright-core
//! (`tests/browser/console.mjs`), signs in, lists, filters, groups by cause, opens a patient,
//! edits its payload, replays it after a dry run, replays a filtered set after its dry run,
//! discards one with a reason and reads the audit log — against the console served on
//! 127.0.0.1 over a real SQLite hospital and queue. Then the broker and the hospital are checked.
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci` in `tests/browser` (scripts/test.sh installs
//! all three); without them this test fails, it does not skip.

use keel_api::console;
use keel_domain::Caller;
use keel_domain::{Hospital, PatientState};
use keel_test_support::ward::{TRACEPARENT, ward};

/// The operator's account id, as the audit log names it.
const OPERATOR: &str = "0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee";

/// Stands in for keel's API guard, which signs people in and hands the console a [`Caller`]
/// (tested with the real sign-in in keel's `browser_signin` test): the browser names its
/// roles in `x-test-roles`; without it, no caller.
async fn test_guard(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let roles = request
        .headers()
        .get("x-test-roles")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect()
        });
    if let Some(roles) = roles {
        request.extensions_mut().insert(Caller {
            user: OPERATOR.parse().unwrap(),
            roles,
        });
    }
    next.run(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_deals_with_patients_in_a_real_browser() {
    keel_test_support::browser::require_toolchain();
    let ward = ward().await;

    // Patients: one to edit and replay, three timeouts to replay as a set, one hostile payload
    // to discard.
    let edit = ward
        .publish(
            "order.created",
            "{\"order\": 1, \"currency\": \"XXX\"} permanent: invalid currency",
            Some("order-1"),
        )
        .await;
    let mut timeouts = Vec::new();
    for n in 0..3 {
        timeouts.push(
            ward.publish("order.created", &format!("slow {n}"), None)
                .await,
        );
    }
    let discard = ward
        .publish(
            "order.created",
            "permanent: <img src=x onerror=\"window.__pwned=1\">",
            None,
        )
        .await;
    ward.drain().await;
    let id = |m: &keel_domain::Outgoing| {
        let hospital = ward.hospital.clone();
        let message = m.id;
        async move {
            hospital
                .list(100)
                .await
                .unwrap()
                .into_iter()
                .find(|p| p.message_id == message)
                .unwrap()
                .id
        }
    };
    let edit_id = id(&edit).await;
    let discard_id = id(&discard).await;
    let mut timeout_ids = Vec::new();
    for m in &timeouts {
        timeout_ids.push(id(m).await);
    }
    let all: Vec<i64> = ward
        .hospital
        .list(100)
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    let new_body = "ok {\"order\": 1, \"currency\": \"EUR\"}";
    let reason = "test order from the load generator; never to be charged";

    let csrf = keel_http::CsrfKey::new(&[9; 32]);
    let app =
        console::router(ward.service.clone(), csrf).layer(axum::middleware::from_fn(test_guard));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let seed = serde_json::json!({
        "all": all,
        "edit": edit_id,
        "timeouts": timeout_ids,
        "discard": discard_id,
        "trace_id": &TRACEPARENT[3..35],
        "new_body": new_body,
        "reason": reason,
    });
    let seen = keel_test_support::browser::run_script(
        "console.mjs",
        &[
            ("BASE_URL", format!("http://{addr}")),
            ("OPERATOR", OPERATOR.to_owned()),
            ("SEED", seed.to_string()),
        ],
    )
    .await;
    assert_eq!(seen["steps"].as_array().unwrap().len(), 11, "{seen}");
    server.abort();

    // The broker holds exactly what the browser replayed: the edited message and the three
    // timeouts, in the group that failed them; the discarded one is not there.
    assert_eq!(ward.depth("billing").await, 4);
    assert_eq!(ward.depth("ledger").await, 0);
    ward.consumers
        .healed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    ward.drain().await;
    assert_eq!(
        ward.consumers.effect("billing", edit.id).as_deref(),
        Some(new_body.as_bytes()),
        "the edited payload was replayed with the message's id"
    );
    for m in &timeouts {
        assert_eq!(ward.consumers.successes("billing", m.id), 1);
    }
    assert_eq!(ward.consumers.successes("billing", discard.id), 0);

    // And the hospital records who did what.
    let patient = ward.hospital.get(edit_id).await.unwrap().unwrap();
    assert_eq!(patient.state, PatientState::Replayed);
    assert_eq!(patient.settled.unwrap().by, format!("console:{OPERATOR}"));
    assert_eq!(patient.edited.unwrap().by, format!("console:{OPERATOR}"));
    for id in &timeout_ids {
        assert_eq!(
            ward.hospital.get(*id).await.unwrap().unwrap().state,
            PatientState::Replayed
        );
    }
    let discarded = ward.hospital.get(discard_id).await.unwrap().unwrap();
    assert_eq!(discarded.state, PatientState::Discarded);
    assert_eq!(discarded.settled.unwrap().note.as_deref(), Some(reason));
    let mut actions: Vec<String> = ward
        .hospital
        .audit_log(None, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    actions.reverse();
    assert_eq!(
        actions,
        ["edit", "replay", "replay", "replay", "replay", "discard"]
    );
}
