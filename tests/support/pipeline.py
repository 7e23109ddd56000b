"""Run loom-ray's real entry point against real services, and account for every offset afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from confluent_kafka import Consumer, TopicPartition

from loom_ray import loadgen
from loom_ray.migrate import migrate
from tests.support.services import ROOT, Endpoints


def pipeline_env(endpoints: Endpoints, topic: str, **overrides: Any) -> dict[str, str]:
    """Environment for ``python -m loom_ray.main`` in tests: small actors, fast health checks, audit on."""
    env = dict(os.environ)
    env.update(
        {
            "LOOM_KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka,
            "LOOM_DB_DSN": endpoints.dsn,
            "LOOM_KAFKA_TOPICS": topic,
            "LOOM_KAFKA_GROUP_ID": f"loom-{topic}",
            "LOOM_ACTOR_NUM_CPUS": "0.25",
            "LOOM_ACTOR_MEMORY_BYTES": "0",
            "LOOM_HEALTH_CHECK_INTERVAL_S": "1",
            "LOOM_KAFKA_SESSION_TIMEOUT_MS": "10000",
            "LOOM_LAG_SAMPLE_INTERVAL_S": "2",
            "LOOM_AUDIT": "true",
            "LOOM_RAY_DASHBOARD": "0",
            "LOOM_DB_MAX_POOL_SIZE": "4",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update({f"LOOM_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


def start_main(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    """Start the driver in its own process group (so Ray's local processes can be stopped with it)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "loom_ray.main", "--progress-interval", "2", *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run_until_drained(env: dict[str, str], log: Path, timeout_s: float) -> str:
    """Run the driver with ``--exit-when-drained``; it must exit 0 within ``timeout_s``. Its output."""
    process = start_main(env, "--exit-when-drained", log=log)
    try:
        assert process.wait(timeout_s) == 0, log.read_text()[-3000:]
    finally:
        stop_group(process)
    return log.read_text()


def stop_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal the driver's whole process group (the driver and the local Ray it started), by pid."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    process.wait(60)


def terminate_group(process: subprocess.Popen[bytes], grace_s: float = 10) -> None:
    """SIGTERM a process started in a session of its own, then SIGKILL its group if it is still there after
    ``grace_s`` (by pid, never by name)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(grace_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def high_watermarks(bootstrap: str, topic: str) -> dict[int, tuple[int, int]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in meta.partitions}
    finally:
        consumer.close()


@dataclass
class Accounting:
    """Per-topic audit of what landed in PostgreSQL versus what Kafka holds."""

    expected: int
    rows: int
    dead_letters: int
    lost: int
    duplicated: int  # counted from loom_audit ranges: the primary keys cannot hide a repeat there
    in_both: int
    offsets_at_end: bool
    max_epoch: int

    @property
    def exact(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.in_both == 0 and self.offsets_at_end

    def __str__(self) -> str:
        return (
            f"expected={self.expected} rows={self.rows} dead_letters={self.dead_letters} lost={self.lost} "
            f"duplicated={self.duplicated} in_both={self.in_both} offsets_at_end={self.offsets_at_end}"
        )


async def _account(dsn: str, topic: str, marks: dict[int, tuple[int, int]]) -> Accounting:
    conn = await asyncpg.connect(dsn)
    try:
        landed = await conn.fetch(
            """SELECT "partition", "offset", count(*) AS n FROM (
                   SELECT "partition", "offset" FROM loom_messages WHERE topic = $1
                   UNION ALL SELECT "partition", "offset" FROM loom_dead_letters WHERE topic = $1) AS t
               GROUP BY 1, 2""",
            topic,
        )
        rows = await conn.fetchval("SELECT count(*) FROM loom_messages WHERE topic = $1", topic)
        dead = await conn.fetchval("SELECT count(*) FROM loom_dead_letters WHERE topic = $1", topic)
        audit = await conn.fetchval(
            """SELECT coalesce(sum(end_offset - start_offset), 0) - count(DISTINCT o)
               FROM loom_audit a, generate_series(a.start_offset, a.end_offset - 1) AS o
               WHERE a.topic = $1""",
            topic,
        )
        audit_dups = await conn.fetchval(
            """SELECT coalesce(sum(n - 1), 0) FROM (
                   SELECT "partition", o, count(*) AS n FROM loom_audit a,
                          generate_series(a.start_offset, a.end_offset - 1) AS o
                   WHERE a.topic = $1 GROUP BY 1, 2) AS t""",
            topic,
        )
        stored = await conn.fetch('SELECT "partition", next_offset, epoch FROM loom_offsets WHERE topic = $1', topic)
    finally:
        await conn.close()
    del audit
    seen = {(r["partition"], r["offset"]): r["n"] for r in landed}
    expected = {(p, o) for p, (low, high) in marks.items() for o in range(low, high)}
    next_offsets = {r["partition"]: r["next_offset"] for r in stored}
    return Accounting(
        expected=len(expected),
        rows=rows,
        dead_letters=dead,
        lost=len(expected - seen.keys()),
        duplicated=int(audit_dups),
        in_both=sum(1 for n in seen.values() if n > 1),
        offsets_at_end=all(next_offsets.get(p) == high for p, (_, high) in marks.items()),
        max_epoch=max((r["epoch"] for r in stored), default=0),
    )


def account(endpoints: Endpoints, topic: str) -> Accounting:
    """Compare PostgreSQL with the topic's watermarks: every offset exactly once, offsets at the end."""
    return asyncio.run(_account(endpoints.dsn, topic, high_watermarks(endpoints.kafka, topic)))


async def _scalar(dsn: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def scalar_at(dsn: str, sql: str, *args: Any) -> Any:
    """The first column of the first row of one statement (or None), on a connection of its own."""
    return asyncio.run(_scalar(dsn, sql, *args))


def scalar(endpoints: Endpoints, sql: str, *args: Any) -> Any:
    return scalar_at(endpoints.dsn, sql, *args)


def wait_until(
    predicate: Any,
    timeout_s: float,
    what: str,
    interval_s: float = 0.5,
    running: tuple[subprocess.Popen[bytes], Path] | None = None,
) -> None:
    """Poll ``predicate``; fail after ``timeout_s``, or at once if the ``running`` (process, log) has exited.

    Either failure quotes the end of the ``running`` log.
    """
    deadline = time.monotonic() + timeout_s

    def tail() -> str:
        return f":\n{running[1].read_text()[-3000:]}" if running is not None else ""

    while not predicate():
        if running is not None and running[0].poll() is not None:
            raise AssertionError(f"the job exited ({running[0].returncode}) while waiting for {what}{tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}{tail()}")
        time.sleep(interval_s)


@contextmanager
def slow_rows(endpoints: Endpoints, topic: str, every: int = 1) -> Iterator[None]:
    """While open, each ``every``-th of ``topic``'s rows costs its writer a millisecond in PostgreSQL (a row
    trigger on ``loom_messages``): ingestion then takes seconds however fast the machine, so what a test does
    mid-run (a kill, a scale-up) finds a backlog. Dropped on the way out. Migrates the database first: the trigger
    needs the table."""
    slow = f"loom_test_slow_{topic.replace('-', '_')}"

    async def install() -> None:
        conn = await asyncpg.connect(endpoints.dsn)
        try:
            await migrate(conn)
            await conn.execute(
                f"CREATE FUNCTION {slow}() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END $$"
            )
            await conn.execute(
                f"CREATE TRIGGER {slow} BEFORE INSERT ON loom_messages FOR EACH ROW "
                f"WHEN (NEW.topic = '{topic}' AND NEW.\"offset\" % {every} = 0) EXECUTE FUNCTION {slow}()"
            )
        finally:
            await conn.close()

    asyncio.run(install())
    try:
        yield
    finally:
        scalar(endpoints, f"DROP FUNCTION {slow}() CASCADE")  # and its trigger


def fill(
    endpoints: Endpoints, topic: str, messages: int, partitions: int = 12, ratio: float = 0.0, **extra: str
) -> None:
    argv = ["--topic", topic, "--partitions", str(partitions), "--messages", str(messages), "--size", "200"]
    argv += ["--bootstrap-servers", endpoints.kafka, "--malformed-ratio", str(ratio)]
    for name, value in extra.items():
        argv += [f"--{name.replace('_', '-')}", value]
    assert loadgen.main(argv) == 0


def committed(endpoints: Endpoints, topic: str) -> int:
    return int(scalar(endpoints, "SELECT coalesce(sum(next_offset), 0) FROM loom_offsets WHERE topic = $1", topic))


def pids_of(endpoints: Endpoints, application: str, actors: set[str] | None = None) -> list[int]:
    """Pids of the processes holding connections named ``<application> ... pid=N`` (actors name theirs), only
    those of ``actors`` when given (consumers name theirs ``loom-ray <actor> pid=N``)."""
    names = scalar(
        endpoints,
        "SELECT array_agg(DISTINCT application_name) FROM pg_stat_activity WHERE application_name LIKE $1",
        f"{application} %",
    )
    if actors is not None:
        names = [name for name in names or [] if name.split(" ")[1] in actors]
    return sorted({int(m.group(1)) for name in names or [] if (m := re.search(r"pid=(\d+)", name))})


def group_offsets(endpoints: Endpoints, topic: str, partitions: int) -> dict[int, int]:
    """The offsets loom-ray mirrored to the Kafka group (for lag tools)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": endpoints.kafka})
    request = ConsumerGroupTopicPartitions(f"loom-{topic}", [TopicPartition(topic, p) for p in range(partitions)])
    result = admin.list_consumer_group_offsets([request])[f"loom-{topic}"].result()
    return {tp.partition: tp.offset for tp in result.topic_partitions}


def read_committed_offsets(bootstrap: str, topic: str) -> dict[int, set[int]]:
    """The offsets a read_committed consumer is handed, per partition: every offset that holds a record
    (aborted records, transaction markers and compacted offsets are not among them)."""
    marks = high_watermarks(bootstrap, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "read-committed-check",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
        }
    )
    found: dict[int, set[int]] = {p: set() for p in marks}
    try:
        pending = {p for p, (low, high) in marks.items() if high > low}
        consumer.assign([TopicPartition(topic, p, marks[p][0]) for p in pending])
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                if message.error() is None:
                    found[message.partition()].add(message.offset())  # type: ignore[index]
            for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                if tp.offset >= marks[tp.partition][1]:
                    pending.discard(tp.partition)
        assert not pending, f"read_committed reader did not reach the end of {sorted(pending)}"
    finally:
        consumer.close()
    return found


def stored_offsets(endpoints: Endpoints, topic: str, incarnation: int = 0) -> dict[int, list[int]]:
    """Per partition, the offsets stored as rows or dead letters of one incarnation, with repeats."""
    rows = scalar(
        endpoints,
        """SELECT coalesce(jsonb_object_agg(p, offs), '{}'::jsonb)::text FROM (
               SELECT "partition" AS p, jsonb_agg("offset" ORDER BY "offset") AS offs FROM (
                   SELECT "partition", "offset" FROM loom_messages WHERE topic = $1 AND incarnation = $2
                   UNION ALL
                   SELECT "partition", "offset" FROM loom_dead_letters WHERE topic = $1 AND incarnation = $2) AS u
               GROUP BY 1) AS t""",
        topic,
        incarnation,
    )
    return {int(p): offs for p, offs in json.loads(rows).items()}
