"""Lag health on the real PostgreSQL and broker: Burrow's rules through ``v_consumer_lag_health`` and
``v_consumer_alerts`` (the unit-test table, so the SQL and ``loom_ray.policy.lag_health`` agree), the real
Coordinator's ``status()`` (what ``python -m loom_ray.ctl status`` prints) and the exit code of
``scripts/monitor-consumer-lag.sh``, for a stalled partition and a healthy one. In-process, without Ray: the
consumers are :class:`~tests.support.holders.Holder` handles and the test commits for them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from loom_ray.coordinator import Coordinator
from loom_ray.settings import Settings
from tests.integration.conftest import Body, _start_head, _stop_head
from tests.support.holders import Holder
from tests.support.lag_health_cases import CASES
from tests.support.pipeline import pipeline_env, scalar, start_main, stop_group, wait_until
from tests.support.services import ROOT, Endpoints

SCRIPT = ROOT / "scripts" / "monitor-consumer-lag.sh"
HEALTH_KINDS = ["lag_warn", "lag_stop", "lag_stall", "lag_rewind"]
SAMPLE_S = 0.5  # LOOM_LAG_SAMPLE_INTERVAL_S here


def _monitor(dsn: str, schema: str) -> subprocess.CompletedProcess[str]:
    """Run the script against ``schema`` (libpq's ``options`` puts it on the search_path)."""
    parts = urllib.parse.urlsplit(dsn)
    query = [*urllib.parse.parse_qsl(parts.query), ("options", f"-csearch_path={schema}")]
    env = {
        "PATH": "/usr/bin:/bin",
        "LOOM_DB_DSN": urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query))),
    }
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def own_head(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A ``ray start --head`` on free ports of its own (Ray's defaults for the client server and the agents
    collide with any other head on the machine); yields its GCS and metrics ports."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(7)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        gcs, metrics, agent, agent_grpc, runtime_env, client, node_manager = (s.getsockname()[1] for s in sockets)
    log = tmp_path / "head.log"
    head = _start_head(
        log,
        "--num-cpus=4",
        "--object-store-memory=200000000",
        "--include-dashboard=false",
        f"--metrics-export-port={metrics}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--ray-client-server-port={client}",
        f"--node-manager-port={node_manager}",
        port=gcs,
    )

    def up() -> bool:
        assert head.poll() is None, log.read_text()[-3000:]
        return "Ray runtime started" in log.read_text()

    try:
        wait_until(up, 180, "the Ray head", interval_s=2)
        yield gcs, metrics
    finally:
        _stop_head(head)


def test_the_view_follows_the_rules_table(endpoints: Endpoints, in_schema: Callable[[Body], None]) -> None:
    async def body(name: str, conn: asyncpg.Connection) -> None:
        for partition, (_, samples, current_lag, _) in enumerate(CASES):
            for age, offset, lag in samples:
                await conn.execute(
                    """INSERT INTO consumer_lag_history (sampled_at, topic, "partition", next_offset, high_watermark)
                       VALUES (now() - make_interval(secs => $1), 'events', $2, $3, $4)""",
                    float(age),
                    partition,
                    offset,
                    offset + lag,
                )
            high = samples[-1][1] + samples[-1][2] if samples else current_lag
            # The committed offset now: the newest high watermark minus the current lag.
            await conn.execute(
                """INSERT INTO loom_offsets (topic, "partition", next_offset, epoch, owner)
                   VALUES ('events', $1, $2, 1, 'c')""",
                partition,
                high - current_lag,
            )
        rows = await conn.fetch('SELECT "partition", status, severity, detail FROM v_consumer_lag_health')
        got = {r["partition"]: r["status"] for r in rows}
        assert got == {partition: case[3].name for partition, case in enumerate(CASES)}
        for row in rows:
            assert row["severity"] == {"STOP": "ERR", "STALL": "ERR", "REWIND": "ERR"}.get(row["status"], row["status"])
            assert (row["detail"] is None) == (row["status"] == "OK")
        alerts = await conn.fetch(
            'SELECT "partition", alert_kind FROM v_consumer_alerts WHERE alert_kind = ANY($1::text[])', HEALTH_KINDS
        )
        assert {(a["partition"], a["alert_kind"]) for a in alerts} == {
            (p, f"lag_{case[3].name.lower()}") for p, case in enumerate(CASES) if case[3].name != "OK"
        }
        # The script's exit code is the worst severity: ERR (2), then without the errors WARN (1), then OK (0).
        for severity, code in (("ERR", 2), ("WARN", 1), ("OK", 0)):
            result = _monitor(endpoints.dsn, name)
            assert result.returncode == code, result.stdout + result.stderr
            assert f"lag health: {severity}" in result.stdout
            worst = [p for p, case in enumerate(CASES) if case[3].name != "OK" and (case[3] >= 2) == (code == 2)]
            await conn.execute('DELETE FROM consumer_lag_history WHERE "partition" = ANY($1::int[])', worst)
            await conn.execute('DELETE FROM loom_offsets WHERE "partition" = ANY($1::int[])', worst)

    in_schema(body)


def test_a_stalled_and_a_healthy_partition(
    endpoints: Endpoints, in_schema: Callable[[Body], None], topic_name: str
) -> None:
    in_schema(lambda name, conn: _stall_then_recover(endpoints, name, conn, topic_name))


async def _stall_then_recover(endpoints: Endpoints, name: str, conn: asyncpg.Connection, topic: str) -> None:
    """Partition 0 is committed up to its high watermark after each round, partition 1 never: STALL and ERR
    (at once, from an earlier coordinator's samples, and from this one's); then partition 1 catches up (OK)."""
    admin = AdminClient({"bootstrap.servers": endpoints.kafka})
    await asyncio.to_thread(admin.create_topics([NewTopic(topic, 2, 1)])[topic].result, 30)
    producer = Producer({"bootstrap.servers": endpoints.kafka})
    for i in range(40):
        producer.produce(topic, b"{}", partition=i % 2)
    assert producer.flush(30) == 0
    settings = Settings.from_env(
        kafka_bootstrap_servers=endpoints.kafka,
        db_dsn=endpoints.dsn,
        db_schema=name,
        kafka_topics=(topic,),
        min_actors=1,
        max_actors=1,
        scale_catchup_s=0,
        lag_sample_interval_s=SAMPLE_S,
    )
    published: dict[tuple[str, int], int] = {}
    coordinator = Coordinator(
        settings,
        lambda consumer: Holder(consumer, fenced=set()),
        on_health=lambda t, p, s: published.update({(t, p): s}),
    )
    await coordinator.start()

    async def rounds(count: int, committed: tuple[int, ...]) -> None:
        for _ in range(count):
            await conn.execute(
                'UPDATE loom_offsets SET next_offset = 20 WHERE topic = $1 AND "partition" = ANY($2::int[])',
                topic,
                list(committed),
            )
            await asyncio.sleep(SAMPLE_S)
            await coordinator.reconcile()

    async def view() -> dict[int, str]:
        rows = await conn.fetch('SELECT "partition", status FROM v_consumer_lag_health WHERE topic = $1', topic)
        return {r["partition"]: r["status"] for r in rows}

    try:
        # Samples an earlier coordinator wrote: partition 1 stalled for 30 s. The first round reads them back.
        await conn.execute(
            """INSERT INTO consumer_lag_history (sampled_at, topic, "partition", next_offset, high_watermark)
               SELECT now() - make_interval(secs => age), $1, 1, 0, 20 FROM unnest(ARRAY[30, 20, 10]) AS age""",
            topic,
        )
        await rounds(1, committed=(0,))
        stalled_status = {"status": "ERR", "partitions": {f"{topic}[1]": "STALL"}}
        assert (await coordinator.status())["lag_health"] == stalled_status
        await rounds(3, committed=(0,))
        assert (await coordinator.status())["lag_health"] == stalled_status
        assert published == {(topic, 0): 0, (topic, 1): 3}  # the gauge: OK, STALL
        assert await view() == {0: "OK", 1: "STALL"}
        kinds = await conn.fetch(
            "SELECT alert_kind FROM v_consumer_alerts WHERE alert_kind = ANY($1::text[])", HEALTH_KINDS
        )
        assert [k["alert_kind"] for k in kinds] == ["lag_stall"]
        stalled = await asyncio.to_thread(_monitor, endpoints.dsn, name)
        assert stalled.returncode == 2, stalled.stdout + stalled.stderr
        assert "lag health: ERR" in stalled.stdout

        await rounds(2, committed=(0, 1))
        assert (await coordinator.status())["lag_health"] == {"status": "OK", "partitions": {}}
        assert await view() == {0: "OK", 1: "OK"}
        healthy = await asyncio.to_thread(_monitor, endpoints.dsn, name)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert "lag health: OK" in healthy.stdout
    finally:
        await coordinator.shutdown()
        await asyncio.to_thread(admin.delete_topics([topic])[topic].result, 30)


def test_a_running_job_shows_a_stalled_partition_everywhere(
    endpoints: Endpoints, topic_name: str, own_head: tuple[int, int], tmp_path: Path
) -> None:
    """The real pipeline on a ``ray start --head``, two partitions. The test holds partition 1's offset row
    locked, so its consumer's flushes wait while messages arrive: STALL in the view,
    in ``python -m loom_ray.ctl status``, in the ``ray_loom_lag_health`` gauge (3) and as the script's exit
    code (2); partition 0 stays OK. Unlocked, everything is OK again and the script exits 0."""
    topic = topic_name
    admin = AdminClient({"bootstrap.servers": endpoints.kafka})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    _produce(endpoints, topic, partition=0, count=50)
    schema = f"loom_health_{uuid.uuid4().hex[:10]}"  # the job's own tables: the script sees only its partitions
    env = pipeline_env(endpoints, topic, min_actors=2, max_actors=2, db_schema=schema)
    gcs_port, metrics_port = own_head
    env["RAY_ADDRESS"] = f"127.0.0.1:{gcs_port}"
    log = tmp_path / "main.log"
    process = start_main(env, "--actors", "2", log=log)
    loop = asyncio.new_event_loop()
    lock = loop.run_until_complete(asyncpg.connect(endpoints.dsn))
    try:
        # Each consumer holds one partition (the second consumer may start after the first took both).
        owners = f"SELECT count(DISTINCT owner) FROM {schema}.loom_offsets WHERE topic = $1 AND owner IS NOT NULL"
        wait_until(
            lambda: _ready(endpoints, schema) and scalar(endpoints, owners, topic) == 2,
            180,
            "each partition claimed by a consumer of its own",
            running=(process, log),
        )
        wait_until(
            lambda: _statuses(endpoints, schema, topic) == {0: "OK", 1: "OK"}, 60, "lag samples", running=(process, log)
        )
        # The consumer of partition 1 can read but no longer commit (its compare-and-set waits on the row).
        loop.run_until_complete(
            lock.execute(
                f"""BEGIN; SELECT 1 FROM {schema}.loom_offsets WHERE topic = '{topic}' AND "partition" = 1 FOR UPDATE"""
            )
        )
        _produce(endpoints, topic, partition=1, count=50)
        wait_until(
            lambda: _statuses(endpoints, schema, topic) == {0: "OK", 1: "STALL"},
            120,
            "STALL in the view",
            running=(process, log),
        )
        wait_until(
            lambda: _ctl_health(env) == {"status": "ERR", "partitions": {f"{topic}[1]": "STALL"}},
            60,
            "STALL in ctl status",
            running=(process, log),
        )
        wait_until(
            lambda: _gauge(metrics_port, topic) == {0: 0.0, 1: 3.0},
            60,
            "the ray_loom_lag_health gauge",
            running=(process, log),
        )
        stalled = _monitor(endpoints.dsn, schema)
        assert stalled.returncode == 2, stalled.stdout + stalled.stderr

        loop.run_until_complete(lock.execute("ROLLBACK"))
        wait_until(
            lambda: _statuses(endpoints, schema, topic) == {0: "OK", 1: "OK"},
            120,
            "OK again in the view",
            running=(process, log),
        )
        wait_until(
            lambda: _ctl_health(env) == {"status": "OK", "partitions": {}},
            60,
            "OK in ctl status",
            running=(process, log),
        )
        healthy = _monitor(endpoints.dsn, schema)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()[-3000:]
    finally:
        loop.run_until_complete(lock.close())
        loop.close()
        stop_group(process)
        admin.delete_topics([topic])[topic].result(30)
        scalar(endpoints, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _ready(endpoints: Endpoints, schema: str) -> bool:
    """Whether the driver has applied the migrations in ``schema``."""
    return scalar(endpoints, "SELECT to_regclass($1) IS NOT NULL", f"{schema}.v_consumer_lag_health") is True


def _produce(endpoints: Endpoints, topic: str, partition: int, count: int) -> None:
    producer = Producer({"bootstrap.servers": endpoints.kafka})
    for _ in range(count):
        producer.produce(topic, b"{}", partition=partition)
    assert producer.flush(30) == 0


def _statuses(endpoints: Endpoints, schema: str, topic: str) -> dict[int, str]:
    rows = scalar(
        endpoints,
        f"""SELECT coalesce(jsonb_object_agg("partition", status), '{{}}')::text FROM {schema}.v_consumer_lag_health
            WHERE topic = $1""",
        topic,
    )
    return {int(p): s for p, s in json.loads(rows).items()}


def _ctl_health(env: dict[str, str]) -> Any:
    ctl = subprocess.run(
        [sys.executable, "-m", "loom_ray.ctl", "status"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert ctl.returncode == 0, ctl.stderr[-2000:]
    return json.loads(ctl.stdout[ctl.stdout.index("{") :])["lag_health"]


def _gauge(port: int, topic: str) -> dict[int, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("ray_loom_lag_health{") and f'topic="{topic}"' in line:
            partition = re.search(r'partition="(\d+)"', line)
            assert partition is not None, line
            found[int(partition.group(1))] = float(line.rsplit(" ", 1)[1])
    return found
