"""The checker can fail: seeded violations on hand-written tables, and the naive consumer (T1c)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from loom_ray import loadgen
from tests.faults.checker import audit_overlaps, check, discontinuities
from tests.faults.conftest import Figures
from tests.faults.harness import fetch
from tests.faults.producer import Producer, env_int
from tests.faults.scenario import Figure, conclude
from tests.faults.stack import FaultStack
from tests.support.pipeline import wait_until
from tests.support.services import ROOT

_MESSAGES = 10
_AUDIT_BY_HAND = """
INSERT INTO loom_audit (topic, "partition", start_offset, end_offset, rows, dead_letters, epoch, owner)
VALUES ($1, $2, $3, $4, $5, 0, 1, 'by-hand')
"""


async def _ingest_by_hand(dsn: str, topic: str, mutation: str) -> None:
    """Write what an exactly-once run would (rows + audit ranges of 5), then apply one violation."""
    rows = [(topic, 0, o, str(o).encode(), loadgen.valid_value(o, 200).decode()) for o in range(_MESSAGES)]
    audit = [(topic, 0, start, start + 5, 5) for start in range(0, _MESSAGES, 5)]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            'INSERT INTO loom_messages (topic, "partition", "offset", key, payload) VALUES ($1, $2, $3, $4, $5)', rows
        )
        if mutation == "reordered":
            audit.reverse()
        for item in audit:  # one transaction each, so txid order is the list order
            await conn.execute(_AUDIT_BY_HAND, *item)
        await conn.execute(
            'INSERT INTO loom_offsets (topic, "partition", next_offset, epoch) VALUES ($1, 0, $2, 1)', topic, _MESSAGES
        )
        mutations = {
            "lost": 'DELETE FROM loom_messages WHERE topic = $1 AND "offset" = 7',
            "duplicated": 'INSERT INTO loom_audit (topic, "partition", start_offset, end_offset, rows, dead_letters, '
            "epoch, owner) VALUES ($1, 0, 3, 6, 3, 0, 2, 'zombie')",
            "both": 'INSERT INTO loom_dead_letters (topic, "partition", "offset", error_class, error_message, stage) '
            "VALUES ($1, 0, 4, 'X', 'x', 'decode')",
            "corrupted": "UPDATE loom_messages SET payload = jsonb_set(payload, '{pad}', '\"tampered\"') "
            'WHERE topic = $1 AND "offset" = 2',
            "unaudited": "DELETE FROM loom_audit WHERE topic = $1 AND start_offset = 0",
            "not_at_end": "UPDATE loom_offsets SET next_offset = 9 WHERE topic = $1",
        }
        if mutation in mutations:
            await conn.execute(mutations[mutation], topic)
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        ("exact", {}),
        ("lost", {"lost": 1}),
        ("duplicated", {"duplicated": 3, "nonmonotonic": 1}),
        ("both", {"both": 1, "corrupted": 1}),  # a valid event dead-lettered at decode is also misrouted
        ("corrupted", {"corrupted": 1}),
        ("reordered", {"nonmonotonic": 2}),  # [5,10) first: not at the low mark, then 0 after 10
        ("unaudited", {"unaudited": 5, "nonmonotonic": 1}),
        ("not_at_end", {"not_at_end": 1}),
    ],
)
def test_checker_reports_each_violation(
    fault_stack: FaultStack, topic: str, tmp_path: Path, mutation: str, expected: dict[str, int]
) -> None:
    producer = Producer(fault_stack, topic, tmp_path, _MESSAGES, partitions=1).fill()
    asyncio.run(_ingest_by_hand(fault_stack.dsn, topic, mutation))
    report = check(fault_stack.dsn, fault_stack.kafka, topic, [producer.ack_log])
    assert report.violations == expected, report.table()


def test_overlap_and_order_arithmetic() -> None:
    # [0,5) [5,10) [3,6): offsets 3, 4, 5 twice -> 3 duplicates; the third range starts at 3, not 10.
    assert audit_overlaps([(0, 5), (5, 10), (3, 6)]) == 3
    assert discontinuities([(0, 5), (5, 10), (3, 6)]) == 1
    # Three covers of [0,2): each offset counted twice.
    assert audit_overlaps([(0, 2), (0, 2), (0, 2)]) == 4
    assert discontinuities([(0, 5), (5, 10)]) == 0


def _naive(stack: FaultStack, topic: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "tests.faults.negative_control", "--bootstrap", stack.kafka, "--dsn", stack.dsn]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*argv, "--topic", topic, *extra], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _rows(stack: FaultStack, topic: str) -> int:
    rows = asyncio.run(fetch(stack.dsn, "SELECT count(*) AS n FROM loom_messages WHERE topic = $1", topic))
    return int(rows[0]["n"])


def test_negative_control_is_flagged(fault_stack: FaultStack, topic: str, tmp_path: Path, figures: Figures) -> None:
    """T1c: auto-commit + in-memory batches + kill -9 mid-batch must show lost > 0 or duplicated > 0."""
    seed = env_int("LOOM_FAULT_SEED", 11)
    messages = env_int("LOOM_FAULT_T1C_MESSAGES", 30_000)
    started = time.monotonic()
    producer = Producer(fault_stack, topic, tmp_path, messages, rate=3000, seed=seed).start()
    log = tmp_path / "naive.log"
    kills = 0
    try:
        for _ in range(2):
            naive = _naive(fault_stack, topic, log)
            try:
                floor = _rows(fault_stack, topic)
                wait_until(lambda f=floor: _rows(fault_stack, topic) > f + 3000, 120, "the naive consumer to write")
            finally:
                os.killpg(naive.pid, signal.SIGKILL)  # mid-batch: it flushes once a second, Kafka commits every 100 ms
                naive.wait(30)
                kills += 1
        producer.wait()
    finally:
        producer.kill()
    last = _naive(fault_stack, topic, log, "--idle-exit-s", "3")
    assert last.wait(300) == 0, log.read_text()[-2000:]
    figure = Figure("T1c", seed, f"{kills} (kill -9, naive auto-commit consumer)", started)
    report, line = conclude(figure, fault_stack, topic, [producer], [log])
    figures.add(f"{line} (negative control: a violation is the expected result)")
    assert report.total("lost") > 0 or report.total("duplicated") > 0, report.table()
