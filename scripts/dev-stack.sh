#!/usr/bin/env bash
# Local Apache Kafka (KRaft, one broker) + PostgreSQL 15 + a Schema Registry on 127.0.0.1 for development and tests.
#   scripts/dev-stack.sh up        start all three (idempotent) and wait until they answer
#   scripts/dev-stack.sh down      stop what `up` started (by pid file, never by name)
#   scripts/dev-stack.sh status    print what runs
#   scripts/dev-stack.sh env       print `export LOOM_...` lines for the running stack
#   scripts/dev-stack.sh jars      resolve the Kafka jars (once) and print their folder
#   scripts/dev-stack.sh registry  build the Schema Registry (once) and print the folder of its runnable jar
# Ports and folders: LOOM_STACK_DIR (.stack), LOOM_STACK_KAFKA_PORT (29092), LOOM_STACK_PG_PORT (25432),
# LOOM_STACK_REGISTRY_PORT (the Kafka port - 1011: 28081; 0 runs no registry); outside Ray's worker port range
# 10002-19999.
# The Schema Registry is Apicurio Registry 2.4.2 (Confluent-compatible API at /apis/ccompat/v7), built from Maven
# Central by scripts/registry/pom.xml into $LOOM_CACHE_DIR/registry/<the pom's hash>/ the first time; it keeps its
# schemas in the stack's PostgreSQL (database loom_registry), so their ids survive a restart.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
stack=${LOOM_STACK_DIR:-$root/.stack}
cache=${LOOM_CACHE_DIR:-$root/.cache}
kafka_port=${LOOM_STACK_KAFKA_PORT:-29092}
controller_port=$((kafka_port + 1))
pg_port=${LOOM_STACK_PG_PORT:-25432}
registry_port=${LOOM_STACK_REGISTRY_PORT:-$((kafka_port - 1011))}
pg_bin=$(pg_config --bindir)
[ -x "$pg_bin/initdb" ] || pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
libs=$cache/kafka/libs
registry_pom=$root/scripts/registry/pom.xml
registry_app=$cache/registry/$(sha256sum "$registry_pom" | cut -c1-16)

log() { printf 'dev-stack: %s\n' "$*" >&2; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

fetch_kafka() {
  [ -f "$cache/kafka/.complete" ] && return
  log "resolving Apache Kafka jars from Maven Central into $libs (once)"
  mvn -q -B -f "$root/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime
  touch "$cache/kafka/.complete"
}

fetch_registry() {  # build the registry once per change of its pom; only the runnable jar and its libraries are kept
  [ -f "$registry_app/.complete" ] && return
  log "building the Schema Registry from Maven Central into $registry_app (once)"
  local build=$registry_app.build
  rm -rf "$build" "$registry_app"
  # Quarkus fixes the datasource's kind at build time; Apicurio's own properties say h2 for the prod profile.
  mvn -q -B -s "$root/scripts/registry/settings.xml" -f "$registry_pom" -Dregistry.dir="$build" \
    "-D%prod.quarkus.datasource.db-kind=postgresql" package
  mkdir -p "$registry_app"
  mv "$build"/*-runner.jar "$registry_app/registry.jar"
  mv "$build/lib" "$registry_app/lib"
  rm -rf "$build"
  touch "$registry_app/.complete"
}

registry_java() {  # registry_java PORT DATABASE LOG: start one registry in the background; prints its pid
  nohup env REGISTRY_DATASOURCE_URL="jdbc:postgresql://127.0.0.1:$pg_port/$2" REGISTRY_DATASOURCE_USERNAME=loom \
    REGISTRY_DATASOURCE_PASSWORD= java -Xmx160m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$1" \
    "-D%prod.quarkus.datasource.jdbc.min-size=1" "-D%prod.quarkus.datasource.jdbc.initial-size=1" \
    "-D%prod.quarkus.datasource.jdbc.max-size=4" -jar "$registry_app/registry.jar" >"$3" 2>&1 &
  echo $!
}

registry_up() {
  local dir=$stack/registry
  [ "$registry_port" = 0 ] && return
  alive "$dir/pid" && return
  mkdir -p "$dir"
  psql -q -h 127.0.0.1 -p "$pg_port" -U loom -d postgres -tc "SELECT 1 FROM pg_database WHERE datname='loom_registry'" \
    | grep -q 1 || psql -q -h 127.0.0.1 -p "$pg_port" -U loom -d postgres -c "CREATE DATABASE loom_registry" >/dev/null
  registry_java "$registry_port" loom_registry "$dir/registry.log" > "$dir/pid"
  local deadline=$((SECONDS + 90))
  until curl -sf "http://127.0.0.1:$registry_port/apis/ccompat/v7/subjects" >/dev/null; do
    alive "$dir/pid" || { log "the schema registry exited; see $dir/registry.log"; tail -n 30 "$dir/registry.log" >&2; exit 1; }
    [ $SECONDS -lt $deadline ] || { log "the schema registry did not answer in 90 s"; exit 1; }; sleep 0.5
  done
  log "schema registry started (pid $(cat "$dir/pid")) on 127.0.0.1:$registry_port"
}

stop_pid() {  # stop_pid FILE NAME: SIGTERM the process of a pid file, SIGKILL it after 30 s
  if alive "$1"; then
    local pid; pid=$(cat "$1"); kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    log "$2 stopped"
  fi
  rm -f "$1"
}

kafka_java() {  # run a Kafka main class from the resolved jars
  java -Xmx256m -cp "$libs/*" -Dlog4j2.configurationFile="$stack/kafka/log4j2.yaml" "$@"
}

kafka_up() {
  local dir=$stack/kafka
  alive "$dir/pid" && return
  mkdir -p "$dir"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$kafka_port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$kafka_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
unclean.leader.election.enable=false
auto.create.topics.enable=false
log.retention.hours=168
PROPS
  cat > "$dir/log4j2.yaml" <<'YAML'
Configuration:
  Appenders:
    Console: {name: STDOUT, PatternLayout: {pattern: "[%d] %p %m (%c)%n"}}
  Loggers:
    Root: {level: WARN, AppenderRef: [{ref: STDOUT}]}
    Logger: [{name: kafka.server.KafkaServer, level: INFO}, {name: kafka.server.KafkaRaftServer, level: INFO}]
YAML
  if [ ! -f "$dir/data/meta.properties" ]; then
    kafka_java kafka.tools.StorageTool format -t "$(kafka_java kafka.tools.StorageTool random-uuid)" \
      -c "$dir/server.properties" >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; exit 1; }
  fi
  KAFKA_HEAP=${LOOM_STACK_KAFKA_HEAP:-512m}
  nohup java -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -cp "$libs/*" \
    -Dlog4j2.configurationFile="$dir/log4j2.yaml" kafka.Kafka "$dir/server.properties" \
    >"$dir/kafka.log" 2>&1 &
  echo $! > "$dir/pid"
  log "kafka started (pid $(cat "$dir/pid")) on 127.0.0.1:$kafka_port"
}

check_pg_can_reach_stack() {  # as root, PostgreSQL runs as the postgres user: it must get through every parent
  [ "$(id -u)" = 0 ] || return 0
  id postgres >/dev/null 2>&1 || useradd -r -m postgres
  mkdir -p "$stack/pg"
  runuser -u postgres -- test -x "$stack/pg" && return 0
  log "the postgres user cannot reach $stack (a folder above it is closed to others, e.g. mode 0700):"
  log "clone into a folder it can traverse, or point LOOM_STACK_DIR at one"
  exit 1
}

pg_up() {
  local dir=$stack/pg
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown -R postgres "$dir"  # the user exists: check_pg_can_reach_stack ran first
    as_pg_owner "$pg_bin/initdb" -D "$dir/data" -U loom --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
    cat >> "$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
track_commit_timestamp = on
max_connections = 200
shared_buffers = 512MB
max_wal_size = 4GB
checkpoint_timeout = 15min
log_checkpoints = on
fsync = on
synchronous_commit = on
CONF
  fi
  pg_status >/dev/null 2>&1 && return
  as_pg_owner "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "-p $pg_port -k $dir" -w -t 60 start >/dev/null
  log "postgresql started on 127.0.0.1:$pg_port"
}

as_pg_owner() {  # PostgreSQL refuses to run as root: use the postgres user there
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
pg_status() { [ -f "$stack/pg/data/PG_VERSION" ] && as_pg_owner "$pg_bin/pg_ctl" -D "$stack/pg/data" status >/dev/null 2>&1; }

wait_ready() {
  local deadline=$((SECONDS + 90))
  until "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"; do
    [ $SECONDS -lt $deadline ] || { log "postgresql did not answer in 90 s"; exit 1; }; sleep 0.5
  done
  psql -q -h 127.0.0.1 -p "$pg_port" -U loom -d postgres -tc "SELECT 1 FROM pg_database WHERE datname='loom'" \
    | grep -q 1 || psql -q -h 127.0.0.1 -p "$pg_port" -U loom -d postgres -c "CREATE DATABASE loom" >/dev/null
  until (exec 3<>"/dev/tcp/127.0.0.1/$kafka_port") 2>/dev/null && grep -q "Kafka Server started\|started (kafka.server" "$stack/kafka/kafka.log" 2>/dev/null; do
    alive "$stack/kafka/pid" || { log "kafka exited; see $stack/kafka/kafka.log"; tail -n 30 "$stack/kafka/kafka.log" >&2; exit 1; }
    [ $SECONDS -lt $deadline ] || { log "kafka did not answer in 90 s"; exit 1; }; sleep 0.5
  done
}

cmd=${1:-status}
case $cmd in
  up)
    check_pg_can_reach_stack; fetch_kafka; [ "$registry_port" = 0 ] || fetch_registry
    kafka_up; pg_up; wait_ready; registry_up; log "ready" ;;
  jars)  # resolve the Kafka jars only; print their folder (tests start brokers of their own from it)
    fetch_kafka; echo "$libs" ;;
  registry)  # build the registry only; print the folder of registry.jar (tests start registries of their own)
    fetch_registry; echo "$registry_app" ;;
  down)
    stop_pid "$stack/registry/pid" "schema registry"
    stop_pid "$stack/kafka/pid" kafka
    if pg_status; then
      as_pg_owner "$pg_bin/pg_ctl" -D "$stack/pg/data" -m fast -w stop >/dev/null; log "postgresql stopped"
    fi ;;
  status)
    if alive "$stack/kafka/pid"; then echo "kafka: running (pid $(cat "$stack/kafka/pid")) 127.0.0.1:$kafka_port"; else echo "kafka: stopped"; fi
    if pg_status; then echo "postgresql: running 127.0.0.1:$pg_port"; else echo "postgresql: stopped"; fi
    if alive "$stack/registry/pid"; then echo "schema registry: running (pid $(cat "$stack/registry/pid")) 127.0.0.1:$registry_port"; else echo "schema registry: not running"; fi ;;
  env)
    echo "export LOOM_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$kafka_port"
    echo "export LOOM_DB_DSN=postgresql://loom@127.0.0.1:$pg_port/loom"
    [ "$registry_port" = 0 ] || echo "export LOOM_SCHEMA_REGISTRY_URL=http://127.0.0.1:$registry_port/apis/ccompat/v7"
    echo "export LOOM_STACK_DIR=$stack" ;;
  *) echo "usage: $0 up|down|status|env|jars|registry" >&2; exit 2 ;;
esac
