//! keel's integration tests, one binary (`cargo test -p keel --test keel`): the API on every
//! database backend (`api`), the real binary killed mid-work (`process`), the gateway in front
//! of it (`gateway`), the operators' commands (`admin_cli`, `hospital_cli`), the sign-in page in
//! chromium (`browser_signin`), and the tidy checks over the source tree and its manifests
//! (`tidy`).

/// The keel binary under test, which every process-starting module runs.
const KEEL: &str = env!("CARGO_BIN_EXE_keel");

mod admin_cli;
mod api;
mod browser_signin;
mod gateway;
mod hospital_cli;
mod process;
mod tidy;
