#!/usr/bin/env bash
# Full-size fault runs (reliability.md §7.2) on the dedicated fault stack; prints one figure line per run.
#
#   scripts/chaos.sh [--seeds "1 2 3"] [--only T1,T5,...] [--list]
#
# Each run is a test of tests/faults with its sizes raised through LOOM_FAULT_* variables; the checker
# (tests/faults/checker.py) decides PASS/FAIL. Sizes can be changed by environment:
#   CHAOS_MESSAGES (1000000)   messages of T5, T6 (T1: 20 kills every 5-15 s at CHAOS_RATE, about 1.4 M)
#   CHAOS_RATE     (8000)      producer rate in msgs/s for those (the pipeline must keep up)
#   CHAOS_T10_SECONDS (240)    sustained-load duration of T10, at CHAOS_T10_RATE (6000) msgs/s
#   CHAOS_T12_RATE (4000)      transactional producer rate of T12 (20 kills every 5-15 s)
#   T13, T14: CHAOS_MESSAGES / 2 per phase (before and after the retention or the re-creation)
# The stack: LOOM_FAULT_STACK_DIR (.stack-faults), LOOM_FAULT_KAFKA_PORT (49092), LOOM_FAULT_PG_PORT
# (45432); started if needed (and then left running: `scripts/dev-stack.sh down` with the same variables).
# Figures are appended to LOOM_FAULT_FIGURES (default .stack-faults/chaos-<time>.txt) and printed at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

seeds="1 2 3"
only=""
while [ $# -gt 0 ]; do
  case $1 in
    --seeds) seeds=$2; shift 2 ;;
    --only) only=",$2,"; shift 2 ;;
    --list) only="list"; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "chaos.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

messages=${CHAOS_MESSAGES:-1000000}
rate=${CHAOS_RATE:-8000}
export LOOM_FAULT_FIGURES=${LOOM_FAULT_FIGURES:-$root/.stack-faults/chaos-$(date +%Y%m%dT%H%M%S).txt}
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
mkdir -p "$(dirname "$LOOM_FAULT_FIGURES")"
failed=0

# run ID TEST [VAR=VALUE ...]: one pytest run per seed; a failure is recorded, the next run goes on.
run() {
  local id=$1 test=$2; shift 2
  if [ "$only" = "list" ]; then echo "$id  $test  $*"; return; fi
  if [ -n "$only" ] && [[ $only != *",$id,"* ]]; then return; fi
  for seed in $seeds; do
    echo "chaos: $id seed=$seed $*" >&2
    env LOOM_FAULT_SEED="$seed" "$@" .venv/bin/python -m pytest "tests/faults/$test" -q -p no:cacheprovider \
      -o timeout=7200 || failed=1
  done
}

run T1c  "test_checker.py::test_negative_control_is_flagged"      LOOM_FAULT_T1C_MESSAGES=100000
run T1   "test_processes.py::test_t1_kill_9_of_actors"            LOOM_FAULT_T1_KILLS=20 LOOM_FAULT_RATE="$rate"
for point in after_poll:0.002 after_offset_cas:0.01 after_data_copy:0.01 after_commit:0.01; do
  run T1b "test_processes.py::test_t1b_crash_points"              LOOM_FAULT_MESSAGES=200000 LOOM_FAULT_RATE=4000 \
    LOOM_FAULT_CRASH_AT="$point"
done
run T2   "test_processes.py::test_t2_cold_restart"                LOOM_FAULT_MESSAGES=500000 LOOM_FAULT_RATE="$rate"
run T3   "test_handover.py::test_t3_partition_moves_with_batches_in_flight" LOOM_FAULT_T3_RESIZES=20
run T4   "test_handover.py::test_t4_zombie_paused_across_a_handover" LOOM_FAULT_T4_ROUNDS=10
run T4b  "test_handover.py::test_t4b_zombie_holding_the_row_lock"
run T5   "test_outages.py::test_t5_postgres_restart_and_crash"    LOOM_FAULT_MESSAGES="$messages" LOOM_FAULT_RATE="$rate"
run T5c  "test_outages.py::test_t5c_lost_asynchronous_commit"
run T6   "test_outages.py::test_t6_broker_kill_and_pause"         LOOM_FAULT_MESSAGES="$messages" LOOM_FAULT_RATE="$rate" \
  LOOM_FAULT_KAFKA_DOWN_S=10 LOOM_FAULT_KAFKA_PAUSE_S=20
run T7   "test_outages.py::test_t7_network_faults_between_actors_and_postgres" LOOM_FAULT_T7_SCALE=3
run T8   "test_poison.py::test_t8_poison_messages"                LOOM_FAULT_T8_MESSAGES=101000
run T10  "test_memory.py::test_t10_rss_stays_flat_under_sustained_load" \
  LOOM_FAULT_T10_SECONDS="${CHAOS_T10_SECONDS:-240}" LOOM_FAULT_T10_RATE="${CHAOS_T10_RATE:-6000}" LOOM_FAULT_T10_WARMUP_S=30
run T10b "test_memory.py::test_t10b_cold_backlog_drains_in_bounded_memory" LOOM_FAULT_T10B_MESSAGES=2000000
run T11  "test_security.py"
run T12  "test_topic_changes.py::test_t12_transactions_with_aborts_while_consumers_are_killed" LOOM_FAULT_T12_KILLS=20 \
  LOOM_FAULT_RATE="${CHAOS_T12_RATE:-4000}"
run T13  "test_topic_changes.py::test_t13_retention_while_the_job_is_down" LOOM_FAULT_T13_MESSAGES="$((messages / 2))"
run T14  "test_topic_changes.py::test_t14_topic_recreated_while_the_job_is_down" LOOM_FAULT_T14_MESSAGES="$((messages / 2))"

if [ "$only" != "list" ]; then
  echo "== figures ($LOOM_FAULT_FIGURES)"
  cat "$LOOM_FAULT_FIGURES" 2>/dev/null || true
fi
exit $failed
