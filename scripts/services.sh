#!/usr/bin/env bash
# Starts every local server keel's tests talk to (PostgreSQL, MariaDB, Redis, RabbitMQ, NATS)
# if it is not running, with the commands this kind of machine uses, then waits until each answers.
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }

wait_for() { # name, probe command...
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "$name did not come up"; return 1
}

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
wait_for PostgreSQL pg_isready -h 127.0.0.1 -p 5432 -q

if ! mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1; then
  log "starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
fi
wait_for MariaDB mariadb-admin -h 127.0.0.1 -u root ping

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! rabbitmqctl -q status >/dev/null 2>&1; then
  log "starting RabbitMQ"
  rabbitmq-server -detached || true
fi
# `await_startup` returns once the broker accepts connections, not merely once the node runs.
wait_for RabbitMQ rabbitmqctl -q await_startup

if ! port_open 4222; then
  log "starting NATS (JetStream)"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
fi
wait_for NATS port_open 4222

# Databases left behind by interrupted test runs (each test makes its own keel_test_<random>).
for db in $(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'keel_test_%'"); do
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\"" || true
done
for db in $(mariadb -h 127.0.0.1 -u root -N -e "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'keel\\_test\\_%'"); do
  mariadb -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS \`$db\`" || true
done
log "PostgreSQL, MariaDB, Redis, RabbitMQ and NATS are up"
