#!/usr/bin/env bash
# with-stack.sh COMMAND [ARGS...]: run COMMAND with Kafka + PostgreSQL at hand.
# Uses LOOM_KAFKA_BOOTSTRAP_SERVERS and LOOM_DB_DSN when both are set; otherwise starts the local stack
# (scripts/dev-stack.sh), exports its endpoints, and stops it afterwards only if it started it here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
started=""
if [ -z "${LOOM_KAFKA_BOOTSTRAP_SERVERS:-}" ] || [ -z "${LOOM_DB_DSN:-}" ]; then
  # Not `status | grep -q`: grep exits at the first match, status may then die of SIGPIPE, and with
  # pipefail the test fails, so a stack started here would be left running.
  if [[ $(./scripts/dev-stack.sh status) == *stopped* ]]; then started=1; fi
  ./scripts/dev-stack.sh up
  eval "$(./scripts/dev-stack.sh env)"
fi
cleanup() { if [ -n "$started" ]; then ./scripts/dev-stack.sh down || true; fi; }
trap cleanup EXIT
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
"$@"
