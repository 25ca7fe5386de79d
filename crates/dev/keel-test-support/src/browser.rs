//! Running a browser script of `tests/browser` (Debian's chromium driven by playwright-core):
//! the toolchain check and the run, shared by every real-browser test.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// `tests/browser`, once its toolchain is there; fails with what to install otherwise (tests
/// that need a browser fail without one, they do not skip).
pub fn require_toolchain() -> PathBuf {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: `apt-get install -y chromium` (scripts/test.sh does it)"
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: `apt-get install -y nodejs npm` (scripts/test.sh does it)"
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: `npm ci` in {} (scripts/test.sh does it)",
        dir.display()
    );
    dir
}

/// Runs `script` (a file of `tests/browser`) with `env`, within 3 minutes, and returns the JSON
/// line it printed last after checking that it ran to the end (`"ok": true`). Screenshots go
/// to `$KEEL_BROWSER_SCREENSHOTS` when it is set.
pub async fn run_script(script: &str, env: &[(&str, String)]) -> serde_json::Value {
    let dir = require_toolchain();
    let shots = std::env::var("KEEL_BROWSER_SCREENSHOTS").unwrap_or_default();
    let mut command = tokio::process::Command::new("node");
    command
        .arg(script)
        .current_dir(&dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("SCREENSHOTS", shots)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .expect("the browser run finishes within 3 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a JSON line")).unwrap();
    assert_eq!(seen["ok"], true, "{seen}");
    seen
}
