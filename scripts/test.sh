#!/usr/bin/env bash
# keel's whole test gate, the README's test command: formatting, lints, cargo-deny, then every
# test (with cargo-nextest) against
# the embedded defaults (SQLite, in-process cache) and the real servers (PostgreSQL, MariaDB,
# Redis), which it starts first if they are down, and the console in a real browser (chromium,
# installed first if missing), and the OpenAPI fuzzer (schemathesis, in a virtualenv).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh
bash scripts/browser-deps.sh
bash scripts/fuzz-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Licences, duplicate majors and sources (deny.toml); installed once per machine.
command -v cargo-deny >/dev/null || cargo install cargo-deny --locked --version 0.20.2
cargo deny --locked check bans licenses sources
# Every test in its own process, two at a time (.config/nextest.toml): this machine's two cores
# spend the gate waiting on servers and browsers more than computing. The workspace has no
# doctests; `cargo test --doc` would only compile.
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
cargo nextest run --workspace --locked
