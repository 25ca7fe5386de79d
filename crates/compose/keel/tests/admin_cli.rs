//! `keel admin create`: the first admin comes from the command line with a password read from
//! standard input (never a default), is refused a weak password or a taken email, and can sign
//! in with the admin role.

use std::io::Write as _;
use std::process::Stdio;

use keel_domain::{IdentityStore, UserEmail, UserRepo};

fn admin_create(data_dir: &std::path::Path, email: &str, password: &str) -> (bool, String) {
    let mut child = keel_test_support::process::command(crate::KEEL)
        .args([
            "--data-dir",
            data_dir.to_str().unwrap(),
            "admin",
            "create",
            "--email",
            email,
        ])
        .env("KEEL_TELEMETRY__LOG_LEVEL", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keel runs");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    outcome(child.wait_with_output().unwrap())
}

/// Whether the command succeeded, and what it wrote to stdout and stderr.
fn outcome(output: std::process::Output) -> (bool, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn keel_admin_create_makes_an_admin_and_refuses_weak_passwords_and_taken_emails() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = admin_create(dir.path(), "root@example.com", "password");
    assert!(!ok, "{out}");
    assert!(out.contains("at least 12 characters"), "{out}");

    let (ok, out) = admin_create(dir.path(), "root@example.com", "correct horse battery 42");
    assert!(ok, "{out}");
    assert!(
        out.contains("created with id") && out.contains("roles admin"),
        "{out}"
    );

    let (ok, out) = admin_create(dir.path(), "root@example.com", "another long passphrase");
    assert!(!ok);
    assert!(out.contains("already exists"), "{out}");

    let url = format!("sqlite://{}", dir.path().join("keel.db").display());
    let store = keel_sql_sqlite::SqliteStore::connect(
        &url,
        &keel_sql_sqlite::PoolSettings {
            max_connections: 1,
            acquire_timeout: std::time::Duration::from_secs(5),
        },
    )
    .await
    .unwrap();
    let user = store
        .get_by_email(&UserEmail::parse("root@example.com").unwrap())
        .await
        .unwrap()
        .unwrap();
    let credentials = store.credentials(user.id).await.unwrap().unwrap();
    assert_eq!(credentials.roles, ["admin"]);
    assert!(
        credentials
            .password_hash
            .unwrap()
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
    );
    for secret in ["identity.secret", "identity.keys"] {
        let mode = std::fs::metadata(dir.path().join(secret))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(mode.mode() & 0o777, 0o600, "{secret} is the owner's only");
    }
}

/// Runs `keel admin emails` on `data_dir`: (exit status success, stdout and stderr).
fn admin_emails(data_dir: &std::path::Path) -> (bool, String) {
    let output = keel_test_support::process::command(crate::KEEL)
        .args(["--data-dir", data_dir.to_str().unwrap(), "admin", "emails"])
        .env("KEEL_TELEMETRY__LOG_LEVEL", "error")
        .output()
        .expect("keel runs");
    outcome(output)
}

#[tokio::test]
async fn keel_admin_emails_lists_accounts_that_are_one_mailbox_until_resolved() {
    let dir = tempfile::tempdir().unwrap();
    for email in ["root@example.com", "twin@example.com"] {
        let (ok, out) = admin_create(dir.path(), email, "correct horse battery 42");
        assert!(ok, "{out}");
    }
    let (ok, out) = admin_emails(dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("no two accounts share one"), "{out}");

    // The twin as keel stored it before it normalised addresses: full-width letters.
    let url = format!("sqlite://{}", dir.path().join("keel.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let set = |email: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query("UPDATE users SET email = ? WHERE email <> 'root@example.com'")
                .bind(email)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    let fullwidth = "\u{ff52}\u{ff4f}\u{ff4f}\u{ff54}@example.com";
    set(fullwidth).await;
    let (ok, out) = admin_emails(dir.path());
    assert!(!ok, "a pair left is an exit status of 1: {out}");
    assert!(out.contains("1 pair(s)"), "{out}");
    assert!(
        out.contains("root@example.com\tkeeps: ") && out.contains(fullwidth),
        "{out}"
    );

    // An admin gives the twin another address: nothing is left to resolve.
    set("twin@example.com").await;
    let (ok, out) = admin_emails(dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("no two accounts share one"), "{out}");
    pool.close().await;
}
