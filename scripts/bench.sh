#!/usr/bin/env bash
# The benchmark: ./scripts/bench.sh [--quick] [--workload W1|W2|W3|all] [python -m loom_bench options]
# The coordinator at scale: ./scripts/bench.sh --scale [python -m loom_bench.scale options]
# Creates .venv (scripts/bootstrap.sh) and the bench venv for quixstreams (.cache/bench-venv, from
# requirements-bench.lock: quixstreams pins confluent-kafka and pydantic below loom-ray's, so it cannot
# share .venv), fetches B6's Kafka Connect worker and Debezium JDBC sink from Maven Central (mvn, Java 17:
# loom_bench/connect/pom.xml -> .cache/connect), starts the local Kafka + PostgreSQL stack unless LOOM_KAFKA_BOOTSTRAP_SERVERS and
# LOOM_DB_DSN point at running ones, runs the harness, and stops only what it started.
# Results: bench-results/latest.json, bench-results/YYYY-MM-DD-<mode>.json, BENCHMARKS.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
./scripts/bootstrap.sh
if [ "${1:-}" = --scale ]; then  # the real Coordinator with in-process handles: no bench venv needed
  shift
  exec ./scripts/with-stack.sh .venv/bin/python -m loom_bench.scale "$@"
fi
bench_venv=.cache/bench-venv
stamp=$bench_venv/.installed-$(sha256sum requirements-bench.lock | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -x $bench_venv/bin/python ] || .venv/bin/uv venv -q --python .venv/bin/python $bench_venv
  .venv/bin/uv pip sync -q --compile-bytecode --python $bench_venv/bin/python requirements-bench.lock
  rm -f $bench_venv/.installed-* && touch "$stamp"
  echo "bench: $bench_venv ready" >&2
fi
.venv/bin/python -m loom_bench.fetch
./scripts/with-stack.sh .venv/bin/python -m loom_bench --bench-python "$bench_venv/bin/python" "$@"
