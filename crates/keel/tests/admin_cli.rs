//! `keel admin create`: the first admin comes from the command line with a password read from
//! standard input (never a default), is refused a weak password or a taken email, and can sign
//! in with the admin role.

use std::io::Write as _;
use std::process::{Command, Stdio};

use keel_domain::{IdentityStore, UserEmail, UserRepo};

fn admin_create(data_dir: &std::path::Path, email: &str, password: &str) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
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
    let output = child.wait_with_output().unwrap();
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
    let store = keel_store_sqlite::SqliteStore::connect(
        &url,
        &keel_store_sqlite::PoolSettings {
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
