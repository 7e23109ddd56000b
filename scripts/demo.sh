#!/usr/bin/env bash
# README's first command: the whole job on the embedded default.
# Starts the local Kafka + PostgreSQL stack, loads 100 000 JSON messages (1 % malformed) over 12
# partitions, runs `python -m loom_ray.main --exit-when-drained` on a local Ray, and prints the summary and
# the row counts. The stack keeps running afterwards (scripts/dev-stack.sh down stops it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
./scripts/bootstrap.sh
./scripts/dev-stack.sh up
eval "$(./scripts/dev-stack.sh env)"
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} RAY_USAGE_STATS_ENABLED=0
topic=${DEMO_TOPIC:-demo-$(date +%s)}
export LOOM_KAFKA_TOPICS=$topic LOOM_KAFKA_GROUP_ID=loom-demo
# A laptop is no cluster: let the default 3 consumer actors share the local cores.
export LOOM_ACTOR_NUM_CPUS=${LOOM_ACTOR_NUM_CPUS:-0.5} LOOM_ACTOR_MEMORY_BYTES=${LOOM_ACTOR_MEMORY_BYTES:-0}
echo "== loading 100000 messages into topic $topic (12 partitions, 1% malformed)"
.venv/bin/python -m loom_ray.loadgen --topic "$topic" --partitions 12 --messages 100000 --size 200 \
  --malformed-ratio 0.01
echo "== running python -m loom_ray.main --exit-when-drained"
.venv/bin/python -m loom_ray.main --exit-when-drained
echo "== what PostgreSQL holds for $topic"
psql "$LOOM_DB_DSN" -X -q -c "
  SELECT 'loom_messages' AS \"table\", count(*) AS rows FROM loom_messages WHERE topic = '$topic'
  UNION ALL SELECT 'loom_dead_letters', count(*) FROM loom_dead_letters WHERE topic = '$topic'
  UNION ALL SELECT 'committed offsets (sum)', sum(next_offset) FROM loom_offsets WHERE topic = '$topic';" \
  -c "SELECT error_class, stage, count(*) FROM loom_dead_letters WHERE topic = '$topic' GROUP BY 1, 2 ORDER BY 3 DESC;"
