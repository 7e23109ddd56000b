"""A bug that fails one partition's flush every time, on the real stack: Kafka, PostgreSQL and a local Ray through
the real driver (``python -m loom_ray.main``), 4 partitions over 2 consumer actors.

The broken invariant is planted before the job starts: a row of ``loom_messages`` at an offset partition 1 will
reach, so that partition's COPY hits a unique violation, which loom-ray classes as a bug (fatal) for its own
table. One job run shows everything: no consumer actor is restarted, the other three partitions drain, partition
1 is parked after repeated faults (``ctl status``, the progress line, a ``parked`` alert, a ``loom_parked`` row)
with its offset where it was; then, the row deleted and ``python -m loom_ray.ctl unpark`` run as an operator
would, the job drains everything exactly once (the planted offset is then a row read from Kafka).

The job's tables live in a schema of its own (``LOOM_DB_SCHEMA``), dropped afterwards: the planted row and the
views it is checked through belong to this test alone.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg

from loom_ray.migrate import migrate
from tests.support.pipeline import (
    account,
    fill,
    high_watermarks,
    pipeline_env,
    scalar,
    start_main,
    stop_group,
    wait_until,
)
from tests.support.services import ROOT, Endpoints

MESSAGES = 400  # 100 per partition (the load generator deals them round-robin)
PLANTED = 50  # the offset of partition 1 whose row is planted: every batch that holds it fails
_PLANT_SQL = """
INSERT INTO loom_messages (topic, "partition", "offset", payload, incarnation) VALUES ($1, 1, $2, '{"planted": 1}', 0)
"""
_PLACE_SQL = (
    """SELECT jsonb_build_array(next_offset, epoch)::text FROM loom_offsets WHERE topic = $1 AND "partition" = 1"""
)
_PARKED_SQL = """
SELECT jsonb_build_object('error', error, 'faults', faults, 'unparked_at', unparked_at,
                          'unparked_by', unparked_by)::text
FROM loom_parked WHERE topic = $1 AND "partition" = 1
"""
_ALERT_SQL = """
SELECT detail FROM v_consumer_alerts WHERE topic = $1 AND "partition" = 1 AND alert_kind = 'parked'
"""


async def _migrated(dsn: str, schema: str) -> None:
    """loom-ray's tables in ``schema``, as the driver creates them at start (the planted row needs them before)."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        await migrate(conn, schema=schema)
    finally:
        await conn.close()


def _ctl(address: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m loom_ray.ctl --address <the job's Ray> ...``, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "loom_ray.ctl", "--address", address, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _status(address: str, env: dict[str, str]) -> dict[str, Any]:
    done = _ctl(address, env, "status")
    assert done.returncode == 0, done.stderr[-2000:]
    status: dict[str, Any] = json.loads(done.stdout)
    return status


def test_a_partition_whose_flush_always_fails_is_parked_while_the_others_drain(
    endpoints: Endpoints, topic_name: str, tmp_path: Path
) -> None:
    topic, key = topic_name, f"{topic_name}[1]"
    schema = f"loom_{topic.replace('-', '_')}"
    db = replace(endpoints, dsn=f"{endpoints.dsn}{'&' if '?' in endpoints.dsn else '?'}search_path={schema}")
    fill(endpoints, topic, MESSAGES, partitions=4)
    marks = high_watermarks(endpoints.kafka, topic)
    assert marks[1][1] > PLANTED
    asyncio.run(_migrated(endpoints.dsn, schema))
    log = tmp_path / "main.log"
    try:
        scalar(db, _PLANT_SQL, topic, PLANTED)
        env = pipeline_env(endpoints, topic, min_actors=2, max_actors=2, db_schema=schema)
        process = start_main(env, "--exit-when-drained", log=log)
        running = (process, log)
        try:
            wait_until(lambda: "Ray at " in log.read_text(), 180, "the driver to join Ray", running=running)
            address = re.search(r"Ray at (\S+):", log.read_text()).group(1)  # type: ignore[union-attr]

            def others_drained() -> bool:
                stored = scalar(
                    db,
                    """SELECT coalesce(jsonb_object_agg("partition", next_offset), '{}')::text
                       FROM loom_offsets WHERE topic = $1""",
                    topic,
                )
                offsets = {int(p): o for p, o in json.loads(stored).items()}
                return all(offsets.get(p) == marks[p][1] for p in (0, 2, 3))

            wait_until(others_drained, 240, "partitions 0, 2 and 3 drained", running=running)
            wait_until(lambda: scalar(db, _PARKED_SQL, topic), 240, f"{key} parked", running=running)
            parked = json.loads(scalar(db, _PARKED_SQL, topic))
            assert parked["faults"] == 3 and parked["unparked_at"] is None, parked
            assert parked["error"].startswith("UniqueViolationError: duplicate key value"), parked
            note = f"1 partitions parked ({key}: UniqueViolationError: duplicate key value"
            wait_until(lambda: note in log.read_text(), 60, "the progress line to name the parked partition")
            assert f"fix the cause, then python -m loom_ray.ctl unpark {key}" in log.read_text()
            assert "after 3 faults" in scalar(db, _ALERT_SQL, topic)

            status = _status(address, env)
            assert status["parked"][key]["faults"] == 3 and not status["drained"], status
            assert key not in status["owners"] and status["assigned"] == 3
            place = json.loads(scalar(db, _PLACE_SQL, topic))
            assert place[0] <= PLANTED  # nothing at or after the planted offset was committed
            lines = log.read_text().count("progress: ")
            wait_until(lambda: log.read_text().count("progress: ") >= lines + 2, 60, "two more progress lines")
            assert json.loads(scalar(db, _PLACE_SQL, topic)) == place  # parked: its place kept, not claimed

            scalar(db, "DELETE FROM loom_messages WHERE topic = $1 AND payload = '{\"planted\": 1}'", topic)
            unparked = _ctl(address, env, "unpark", key)
            assert unparked.returncode == 0, unparked.stdout + unparked.stderr[-2000:]
            said = rf"unparked {re.escape(key)} \(parked since \S+ after 3 faults: UniqueViolationError: [^\n]+\)"
            assert re.fullmatch(said + r" by \w+\n", unparked.stdout), unparked.stdout
            assert process.wait(300) == 0, log.read_text()[-3000:]
        finally:
            stop_group(process)
        text = log.read_text()
        started = set(re.findall(r"started consumer (loom-consumer-\S+)", text))
        assert len(started) == 2 and " is gone " not in text, started  # no consumer actor restarted
        result = account(db, topic)
        assert result.exact, str(result)
        assert result.expected == MESSAGES and result.rows == MESSAGES
        closed = json.loads(scalar(db, _PARKED_SQL, topic))
        assert closed["unparked_at"] is not None, closed
        assert closed["unparked_by"] == scalar(db, "SELECT current_user"), closed  # the coordinator's role
    finally:
        scalar(endpoints, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
