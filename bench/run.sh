#!/usr/bin/env bash
# keel's benchmark, one command:  bash bench/run.sh [--quick] [keel-bench run flags...]
#
# Installs what it needs (wrk, sqlite3 from Debian; a venv at bench/.venv with flask,
# gunicorn, redis, pymysql from PyPI), builds keel and keel-bench in release mode, then runs
# `keel-bench run`, which seeds PostgreSQL / MariaDB / SQLite, drives every system under wrk
# (server pinned to core 1, wrk to core 0), prints the table and ratios and writes
# bench/out/results.json. Needs the local PostgreSQL, MariaDB and Redis services running.
# Flags and env (KEEL_BENCH_DURATION, KEEL_BENCH_WARMUP, KEEL_BENCH_CONNECTIONS,
# KEEL_BENCH_USERS, KEEL_BENCH_SYSTEMS, ...): see `target/release/keel-bench run --help`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '[bench/run.sh] %s\n' "$*" >&2; }

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

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt_install "${need[@]}"
fi
for tool in psql mariadb; do
  command -v "$tool" >/dev/null 2>&1 || say "warning: $tool client not found; that engine's rows will fail"
done

VENV="$ROOT/bench/.venv"
if ! "$VENV/bin/python" -c 'import flask, gunicorn, redis, pymysql' >/dev/null 2>&1; then
  say "creating $VENV (flask, gunicorn, redis, pymysql)"
  PY="$(command -v python3)"
  "$PY" -m venv "$VENV" || { apt_install python3-venv; "$PY" -m venv "$VENV"; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/bench/flask/requirements.txt"
fi

say "building keel and keel-bench (release)"
if ! cargo build --release -p keel -p keel-bench; then
  say "!!! keel did not build: its rows will be reported as failed"
  cargo build --release -p keel-bench
  export KEEL_BIN="$ROOT/target/release/keel.did-not-build"
fi

# the orchestrator itself stays on the load generator's core, off the server's
exec taskset -c 0 "$ROOT/target/release/keel-bench" run "$@"
