#!/usr/bin/env bash
# README's test command: ./scripts/test.sh [pytest args]
# From a fresh clone: creates .venv from the lock, starts the local Kafka + PostgreSQL stack (unless
# LOOM_KAFKA_BOOTSTRAP_SERVERS and LOOM_DB_DSN point at running ones), runs the whole suite, and stops
# what it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
./scripts/bootstrap.sh
started=""
if [ -z "${LOOM_KAFKA_BOOTSTRAP_SERVERS:-}" ] || [ -z "${LOOM_DB_DSN:-}" ]; then
  if ./scripts/dev-stack.sh status | grep -q stopped; then started=1; fi
  ./scripts/dev-stack.sh up
  eval "$(./scripts/dev-stack.sh env)"
fi
cleanup() { [ -n "$started" ] && ./scripts/dev-stack.sh down || true; }
trap cleanup EXIT
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
.venv/bin/python -m pytest "$@"
