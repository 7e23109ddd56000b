#!/usr/bin/env bash
# Per-partition consumer lag of loom-ray (the seed's scripts/monitor-consumer-lag.sh).
#
#   scripts/monitor-consumer-lag.sh [--kafka] [--watch N]
#
# PostgreSQL is the truth: committed progress is loom_offsets.next_offset, compared with the newest high
# watermark the coordinator sampled into consumer_lag_history (view v_consumer_performance_monitor).
# --kafka adds the Kafka consumer group's view: the offsets loom-ray mirrors to the group for lag tools,
# against the brokers' high watermarks now. The mirror trails PostgreSQL by up to
# LOOM_KAFKA_AUTO_COMMIT_INTERVAL_MS and is never read back.
#
# Lag health (Burrow's rules over each partition's newest lag samples, view v_consumer_lag_health; see
# loom_ray/policy/lag_health.py) sets the exit code, so the script can back a Kubernetes probe or a cron alert:
#   0  OK     every partition OK
#   1  WARN   some partition consumes but its lag never went down over the window
#   2  ERR    some partition STOP (no lag sample lately: the job is not running), STALL (offset not moving,
#             lag above zero) or REWIND (committed offset went back)
#   3  the health could not be read (bad arguments, LOOM_DB_DSN unset, PostgreSQL out of reach)
# With --watch it runs until interrupted and the code is that of the last round.
#
# Environment: LOOM_DB_DSN (required; never printed), and for --kafka the LOOM_KAFKA_* settings
# (LOOM_KAFKA_BOOTSTRAP_SERVERS, LOOM_KAFKA_TOPICS, LOOM_KAFKA_GROUP_ID (default loom-ray), SASL/SSL).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=$root/.venv/bin/python

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
  echo "Options:"
  echo "  --kafka     also show the Kafka group offsets and high watermarks (needs $root/.venv)"
  echo "  --watch N   repeat every N seconds until interrupted"
  echo "  -h, --help  this text"
}

kafka=0
watch=0
while [ $# -gt 0 ]; do
  case $1 in
    --kafka) kafka=1 ;;
    --watch)
      [ $# -ge 2 ] && [[ $2 =~ ^[0-9]+$ ]] && [ "$2" -gt 0 ] || { echo "--watch needs a whole number of seconds > 0" >&2; exit 3; }
      watch=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 3 ;;
  esac
  shift
done

[ -n "${LOOM_DB_DSN:-}" ] || { echo "LOOM_DB_DSN is not set (e.g. eval \"\$(scripts/dev-stack.sh env)\")" >&2; exit 3; }
if [ $kafka = 1 ] && [ ! -x "$python" ]; then
  echo "--kafka needs the project venv at $root/.venv (confluent-kafka)" >&2; exit 3
fi

# Keep the password out of psql's command line (visible in ps): move it from the URI to PGPASSWORD.
dsn=$LOOM_DB_DSN
if [[ $dsn =~ ^(postgres(ql)?://)([^:@/]*):([^@/]*)@(.*)$ ]]; then
  password=${BASH_REMATCH[4]}
  password=${password//\\/\\\\}
  PGPASSWORD=$(printf '%b' "${password//%/\\x}")  # URIs percent-encode special characters
  export PGPASSWORD
  dsn=${BASH_REMATCH[1]}${BASH_REMATCH[3]}@${BASH_REMATCH[5]}
fi

postgres_lag() {
  psql -X -q -v ON_ERROR_STOP=1 -P pager=off -P footer=off "$dsn" <<'SQL'
\echo '== PostgreSQL (committed offsets vs newest sampled high watermark)'
SELECT topic, "partition", coalesce(owner, '-') AS owner, next_offset, high_watermark, lag,
       round(extract(epoch FROM now() - lag_sampled_at)) AS sample_age_s,
       msgs_per_s, seconds_since_update AS idle_s
FROM v_consumer_performance_monitor
ORDER BY topic, "partition";
SELECT count(*) AS partitions, sum(lag) AS total_lag, count(*) FILTER (WHERE owner IS NULL) AS unowned,
       sum(msgs_per_s) AS msgs_per_s
FROM v_consumer_performance_monitor;
SQL
}

# Prints the partitions that are not OK, then sets $health to 0 (OK), 1 (WARN) or 2 (ERR). One read of the view
# (it evaluates every partition's window).
lag_health() {
  echo "== Lag health (Burrow's rules, v_consumer_lag_health)"
  local rows
  rows=$(psql -X -q -At -F $'\t' -v ON_ERROR_STOP=1 "$dsn" -c "
    SELECT topic, \"partition\", status, severity, lag, samples, detail
    FROM v_consumer_lag_health WHERE status <> 'OK' ORDER BY topic, \"partition\"") || return
  health=0
  if [ -n "$rows" ]; then
    printf 'topic\tpartition\tstatus\tseverity\tlag\tsamples\tdetail\n%s\n' "$rows"
    case $rows in *$'\tERR\t'*) health=2 ;; *) health=1 ;; esac
  fi
  echo "lag health: $(case $health in 0) echo OK ;; 1) echo WARN ;; *) echo ERR ;; esac)"
}

kafka_lag() {
  echo "== Kafka group mirror (committed group offsets vs high watermarks now)"
  PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} "$python" - <<'PY'
import sys

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from loom_ray.errors import ConfigError
from loom_ray.settings import Settings

TIMEOUT_S = 10.0

try:
    settings = Settings.from_env()
except ConfigError as exc:
    sys.exit(str(exc))
admin = AdminClient(settings.kafka_client_config())
group = settings.kafka_group_id
metadata = admin.list_topics(timeout=TIMEOUT_S)
partitions = []
for topic in settings.kafka_topics:
    if topic not in metadata.topics:
        print(f"topic {topic}: not found")
        continue
    partitions += [TopicPartition(topic, p) for p in sorted(metadata.topics[topic].partitions)]
if not partitions:
    sys.exit(0)
request = [ConsumerGroupTopicPartitions(group, partitions)]
committed_tps = admin.list_consumer_group_offsets(request)[group].result(timeout=TIMEOUT_S).topic_partitions
committed = {(tp.topic, tp.partition): tp.offset for tp in committed_tps}
latest = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions}, request_timeout=TIMEOUT_S)
print(f"group {group}")
print(f"{'topic':<24} {'partition':>9} {'committed':>12} {'high_watermark':>14} {'lag':>10}")
total = 0
for tp in partitions:
    high = latest[tp].result(timeout=TIMEOUT_S).offset
    offset = committed.get((tp.topic, tp.partition), -1)
    lag = high - offset if offset >= 0 else None  # negative offsets: nothing committed yet
    total += lag or 0
    shown = offset if offset >= 0 else "-"
    print(f"{tp.topic:<24} {tp.partition:>9} {shown:>12} {high:>14} {lag if lag is not None else '-':>10}")
print(f"total lag (partitions with a committed offset): {total}")
PY
}

health=3
while :; do
  [ "$watch" -gt 0 ] && echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  postgres_lag || exit 3
  lag_health || exit 3
  if [ $kafka = 1 ]; then kafka_lag || exit 3; fi
  [ "$watch" -gt 0 ] || break
  sleep "$watch"
  echo
done
exit "$health"
