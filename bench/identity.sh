#!/usr/bin/env bash
# keel's identity benchmark, one command:  bash bench/identity.sh [keel-bench identity flags...]
#
# Builds keel-bench in release mode and runs `keel-bench identity`: access-token (EdDSA JWT)
# verifications per second on one thread and on every core, tokens signed per second, and login
# latency (argon2id password verification, p50/p99) at keel's default parameters (OWASP's
# minimum: m=19456 KiB, t=2, p=1) or those given (--memory-kib, --iterations, --parallelism).
# Writes bench/out/identity.json. Needs no server.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

printf '[bench/identity.sh] building keel-bench (release)\n' >&2
cargo build --release -p keel-bench
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
exec "$TARGET/release/keel-bench" identity "$@"
