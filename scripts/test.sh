#!/usr/bin/env bash
# README's test command: ./scripts/test.sh [pytest args]
# From a fresh clone: creates .venv from the lock, starts the local Kafka + PostgreSQL stack (unless
# LOOM_KAFKA_BOOTSTRAP_SERVERS and LOOM_DB_DSN point at running ones), runs the whole suite, and stops
# what it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
./scripts/bootstrap.sh
./scripts/with-stack.sh .venv/bin/python -m pytest "$@"
