#!/usr/bin/env bash
# Installs what the OpenAPI fuzzing test needs (crates/compose/keel/tests/api/openapi.rs): schemathesis
# from PyPI, at the version pinned in tests/fuzz/requirements.txt, in a virtualenv under
# tests/fuzz/.venv (gitignored). Quick when it is already there; python3-venv is installed
# first on a machine without it.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'fuzz-deps: %s\n' "$*" >&2; }

venv=tests/fuzz/.venv
requirements=tests/fuzz/requirements.txt
stamp=$venv/.installed
if [[ -f $stamp && ! $requirements -nt $stamp ]]; then
  log "schemathesis $("$venv/bin/schemathesis" --version | awk '{print $NF}') ready"
  exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  log "installing python3-venv"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
[[ -x $venv/bin/pip ]] || python3 -m venv "$venv"
log "pip install -r $requirements"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
touch "$stamp"
log "schemathesis $("$venv/bin/schemathesis" --version | awk '{print $NF}') ready"
