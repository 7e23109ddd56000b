#!/usr/bin/env bash
# README's test command: ./scripts/test.sh [pytest args]
# From a fresh clone: creates .venv from the lock, starts the local Kafka + PostgreSQL stack (unless
# LOOM_KAFKA_BOOTSTRAP_SERVERS and LOOM_DB_DSN point at running ones), runs the whole suite, and stops
# what it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
./scripts/bootstrap.sh
# The tree's own bytecode, for the same reason as the dependencies' (scripts/bootstrap.sh): the suite starts
# hundreds of Python processes.
.venv/bin/python -m compileall -q loom_ray tests >/dev/null
./scripts/with-stack.sh .venv/bin/python -m pytest "$@"
