#!/usr/bin/env bash
# keel's queue benchmark, one command:  bash bench/queue.sh [keel-bench queue flags...]
#
# Builds keel-bench in release mode and runs `keel-bench queue`: for each backend (the embedded
# SQLite queue, the SQL queue on PostgreSQL, RabbitMQ, NATS JetStream) a raw row (the broker's
# client library alone, in a minimal loop: the ceiling) and a keel row (keel's Broker adapter and
# Worker, every guarantee on), 100,000 persistent 1 KiB messages, 4 consumers; prints msg/s and
# p50/p99 publish-to-handle latency, the keel/raw ratios against the targets, and writes
# bench/out/queue.txt and queue.json. Needs the machine's PostgreSQL, RabbitMQ and NATS (with
# JetStream) on their usual ports; scripts/services.sh starts them if they are down.
# Flags and env (KEEL_BENCH_QUEUE_BACKENDS, KEEL_BENCH_QUEUE_MESSAGES, ...): see
# `target/release/keel-bench queue --help`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/services.sh >&2
printf '[bench/queue.sh] building keel-bench (release)\n' >&2
cargo build --release -p keel-bench
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
exec "$TARGET/release/keel-bench" queue "$@"
