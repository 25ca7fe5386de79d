#!/usr/bin/env bash
# keel's gateway benchmark, one command:  bash bench/gateway.sh [--quick] [keel-bench gateway flags...]
#
# Installs what it needs (wrk, nginx, sqlite3, util-linux's taskset from Debian), builds keel
# and keel-bench in release mode, then runs `keel-bench gateway`: two `keel serve` instances on
# one seeded SQLite file (pinned to core 1), and wrk (core 0) on the API's cached read
# `GET /users/{id}` with a bearer token, five rows: direct to one keel serve (the ceiling), keel
# gateway and nginx in front of one upstream, then of two (round robin); the proxy is unpinned.
# Prints req/s, p50, p99 per row and the ratios against the targets, writes
# bench/out/gateway.json (logs and configurations under bench/out/gateway/). Needs no service.
# Flags and env (KEEL_BENCH_DURATION, KEEL_BENCH_WARMUP, KEEL_BENCH_CONNECTIONS,
# KEEL_BENCH_GATEWAY_ROUNDS, ...): see `target/release/keel-bench gateway --help`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '[bench/gateway.sh] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

apt_install() {
  # apt_install PACKAGE...: install, refreshing the package lists once if needed
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "$@" >/dev/null 2>&1; then
    say "apt-get install $* failed; running apt-get update first"
    $SUDO apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "$@" >/dev/null
  fi
}

have_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt_install "${need[@]}"
fi
if ! have_nginx; then
  # nginx-light is the small build (a transitional name for nginx on newer Debian releases)
  say "installing nginx"
  apt_install nginx-light || apt_install nginx
fi

say "building keel and keel-bench (release)"
cargo build --release -p keel -p keel-bench
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

# The orchestrator stays on the load generator's core, off the upstreams' core; it starts the
# proxy with an explicit taskset over every core, so the proxy does not inherit this pinning.
exec taskset -c 0 "$TARGET/release/keel-bench" gateway --keel-bin "$TARGET/release/keel" "$@"
