#!/usr/bin/env bash
# Installs what the real-browser tests need (crates/edges/keel-api/tests/console/browser.rs): Debian's
# chromium, Node.js with npm, and tests/browser's locked npm packages (playwright-core, and
# openid-client for crates/compose/keel/tests/api/oidc_rp.rs). A fresh machine has none of them; the
# tests fail rather than skip without them.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'browser-deps: %s\n' "$*" >&2; }

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Exactly the locked versions; skipped when they are already in place.
lock=tests/browser/package-lock.json
stamp=tests/browser/node_modules/.package-lock.json
if [[ ! -f $stamp || $lock -nt $stamp ]]; then
  log "npm ci in tests/browser"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
log "chromium $(chromium --version 2>/dev/null | awk '{print $2}'), node $(node --version), playwright-core ready"
