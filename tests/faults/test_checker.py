"""The checker can fail: seeded violations on hand-written tables, and the naive consumers (T1c)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import asyncpg
import pytest

from loom_ray import loadgen
from tests.faults.checker import audit_overlaps, check, discontinuities
from tests.faults.conftest import Figures
from tests.faults.producer import Producer, env_int, read_records, record_contents
from tests.faults.scenario import Figure, conclude
from tests.faults.stack import FaultStack
from tests.faults.topics import delete_records
from tests.faults.transactions import TransactionalWriter
from tests.support.pipeline import wait_until
from tests.support.services import ROOT

_MESSAGES = 10
_AUDIT_BY_HAND = """
INSERT INTO loom_audit (topic, "partition", start_offset, end_offset, rows, dead_letters, epoch, owner)
VALUES ($1, $2, $3, $4, $5, 0, 1, 'by-hand')
"""


def _exact_rows(
    stack: FaultStack, topic: str, stored: Iterable[int], end: int
) -> list[tuple[str, int, int, bytes, str]]:
    """The rows an exactly-once run stores at offsets ``stored`` of partition 0: each the record the broker
    holds there; at an offset that holds none (a transaction marker), an event of its own."""
    records = {m.offset(): (m.key(), m.value()) for m in read_records(stack.kafka, topic, {0: (0, end)})}
    rows = []
    for offset in stored:
        key, value = records.get(offset) or (str(offset).encode(), loadgen.valid_value(offset, 200))
        assert key is not None and value is not None
        rows.append((topic, 0, offset, key, value.decode()))
    return rows


async def _ingest_by_hand(
    stack: FaultStack, topic: str, mutation: str, stored: Iterable[int] = range(_MESSAGES), end: int = _MESSAGES
) -> None:
    """Write what an exactly-once run would (rows at ``stored``, audit ranges of 5 up to ``end``), then apply
    one violation."""
    rows = _exact_rows(stack, topic, stored, end)
    audit = [(topic, 0, start, min(start + 5, end), 5) for start in range(0, end, 5)]
    conn = await asyncpg.connect(stack.dsn)
    try:
        await conn.executemany(
            'INSERT INTO loom_messages (topic, "partition", "offset", key, payload) VALUES ($1, $2, $3, $4, $5)', rows
        )
        if mutation == "reordered":
            audit.reverse()
        for item in audit:  # one transaction each, so txid order is the list order
            await conn.execute(_AUDIT_BY_HAND, *item)
        await conn.execute(
            'INSERT INTO loom_offsets (topic, "partition", next_offset, epoch) VALUES ($1, 0, $2, 1)', topic, end
        )
        mutations = {
            "lost": 'DELETE FROM loom_messages WHERE topic = $1 AND "offset" = 7',
            "duplicated": 'INSERT INTO loom_audit (topic, "partition", start_offset, end_offset, rows, dead_letters, '
            "epoch, owner) VALUES ($1, 0, 3, 6, 3, 0, 2, 'zombie')",
            "both": 'INSERT INTO loom_dead_letters (topic, "partition", "offset", error_class, error_message, stage) '
            "VALUES ($1, 0, 4, 'X', 'x', 'decode')",
            "corrupted": "UPDATE loom_messages SET payload = jsonb_set(payload, '{pad}', '\"tampered\"') "
            'WHERE topic = $1 AND "offset" = 2',
            # Offsets 2 and 3 hold each other's record: each row agrees with itself, not with its offset.
            "swapped": "UPDATE loom_messages AS m SET key = o.key, payload = o.payload FROM loom_messages AS o "
            'WHERE m.topic = $1 AND o.topic = $1 AND (m."offset", o."offset") IN ((2, 3), (3, 2))',
            # A field outside pad, sha and seq edited: the row still agrees with itself.
            "edited": "UPDATE loom_messages SET payload = jsonb_set(payload, '{amount}', '-1') "
            'WHERE topic = $1 AND "offset" = 6',
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
        ("swapped", {"corrupted": 2}),
        ("edited", {"corrupted": 1}),
        ("reordered", {"nonmonotonic": 2}),  # [5,10) first: not at the low mark, then 0 after 10
        ("unaudited", {"unaudited": 5, "nonmonotonic": 1}),
        ("not_at_end", {"not_at_end": 1}),
    ],
)
def test_checker_reports_each_violation(
    fault_stack: FaultStack, topic: str, tmp_path: Path, mutation: str, expected: dict[str, int]
) -> None:
    producer = Producer(fault_stack, topic, tmp_path, _MESSAGES, partitions=1).fill()
    asyncio.run(_ingest_by_hand(fault_stack, topic, mutation))
    report = check(fault_stack.dsn, fault_stack.kafka, topic, [producer.ack_log])
    assert report.violations == expected, report.table()
    if mutation == "exact":  # without gaps or the reader, the figure's counts keep their format
        assert report.counts() == "lost=0 dup=0 both=0 corrupted=0 nonmonotonic=0 unseen=0 fenced=0"


_GAP_BY_HAND = """
INSERT INTO loom_gaps (topic, "partition", incarnation, from_offset, to_offset, reason, detail)
VALUES ($1, 0, {incarnation}, {start}, {end}, '{reason}', 'by hand')
"""
_DROP_3_4 = 'DELETE FROM loom_messages WHERE topic = $1 AND "offset" IN (3, 4)'
_GAP_3_5 = _GAP_BY_HAND.format(incarnation=0, start=3, end=5, reason="offset_out_of_range")
_GAP_CASES = {
    # (log start set by DeleteRecords, statements after an exact ingestion)
    "gap_recorded": (5, [_DROP_3_4, _GAP_3_5]),
    "gap_missing": (5, [_DROP_3_4]),
    "stored_in_gap": (5, [_GAP_3_5]),
    "readable_gap": (
        0,
        [
            'DELETE FROM loom_messages WHERE topic = $1 AND "offset" = 7',
            _GAP_BY_HAND.format(incarnation=0, start=7, end=8, reason="offset_out_of_range"),
        ],
    ),
    # The exact run is incarnation 1; incarnation 0 left a dead letter at 4, a repeated range and a gap
    # that would each be a violation if they were counted.
    "old_incarnation": (
        0,
        [
            *(
                f"UPDATE {t} SET incarnation = 1 WHERE topic = $1"
                for t in ("loom_messages", "loom_audit", "loom_offsets")
            ),
            'INSERT INTO loom_dead_letters (topic, "partition", "offset", error_class, error_message, stage) '
            "VALUES ($1, 0, 4, 'X', 'x', 'decode')",
            'INSERT INTO loom_audit (topic, "partition", start_offset, end_offset, rows, dead_letters, epoch, owner) '
            "VALUES ($1, 0, 3, 6, 3, 0, 2, 'old')",
            _GAP_BY_HAND.format(incarnation=0, start=0, end="NULL", reason="topic_recreated"),
        ],
    ),
}


@pytest.mark.parametrize(
    ("case", "expected_gaps", "expected"),
    [
        ("gap_recorded", 1, {}),
        ("gap_recorded", 2, {"gaps": 1}),  # a test expecting two gaps fails with one
        ("gap_missing", None, {"lost": 2}),  # retention took 3 and 4 unread, and nothing says so
        ("stored_in_gap", None, {"stored_in_gap": 2}),
        ("readable_gap", None, {"readable_gap": 1}),
        ("old_incarnation", 1, {}),
    ],
)
def test_checker_accounts_gaps_and_incarnations(
    fault_stack: FaultStack, topic: str, tmp_path: Path, case: str, expected_gaps: int | None, expected: dict[str, int]
) -> None:
    producer = Producer(fault_stack, topic, tmp_path, _MESSAGES, partitions=1).fill()
    log_start, statements = _GAP_CASES[case]
    asyncio.run(_ingest_by_hand(fault_stack, topic, "exact"))
    if log_start:
        delete_records(fault_stack.kafka, topic, {0: log_start})
    for sql in statements:
        fault_stack.execute(sql, topic)
    report = check(fault_stack.dsn, fault_stack.kafka, topic, [producer.ack_log], expected_gaps=expected_gaps)
    assert report.violations == expected, report.table()
    if case == "gap_recorded":
        assert report.total("gapped") == 2
        assert f"gaps=1/expected {expected_gaps} gapped=2 stored_in_gap=0 fenced=0" in report.counts()


# One partition, written in three transactions: 0-4 committed (marker 5), 6-8 aborted (marker 9), 10-11
# committed (marker 12). A read_committed consumer is handed 0-4, 10 and 11.
_HANDED = [*range(5), 10, 11]


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (_HANDED, {}),
        ([*_HANDED, 7], {"aborted_read": 1}),  # a record of the aborted transaction stored
        ([*_HANDED, 5], {"aborted_read": 1}),  # a commit marker's offset stored
        ([o for o in _HANDED if o != 10], {"lost": 1}),  # the reader does not excuse a committed record
    ],
)
def test_checker_reads_back_read_committed(
    fault_stack: FaultStack, topic: str, tmp_path: Path, stored: list[int], expected: dict[str, int]
) -> None:
    ack_log = tmp_path / "acks.log"
    Producer(fault_stack, topic, tmp_path, 0, partitions=1).create_topic()
    with ack_log.open("w", encoding="ascii") as out:
        writer = TransactionalWriter(fault_stack.kafka, topic, 1, f"check-{topic}", out)
        for seqs, commit in ((range(5), True), (range(5, 8), False), (range(8, 10), True)):
            writer.transaction(seqs, commit)
    assert writer.summary.no_record == 6
    record_contents(ack_log, fault_stack.kafka, topic)
    asyncio.run(_ingest_by_hand(fault_stack, topic, "exact", stored=stored, end=13))
    report = check(fault_stack.dsn, fault_stack.kafka, topic, [ack_log], read_committed=True)
    assert report.violations == expected, report.table()
    assert report.total("no_record") == 6
    assert "aborted_read=" in report.counts() and " no_record=6 " in report.counts()
    if not expected:  # without the reader, the aborted records look lost and the markers unseen
        blind = check(fault_stack.dsn, fault_stack.kafka, topic, [ack_log])
        assert blind.violations == {"lost": 3, "unseen": 3}, blind.table()


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


_HOLDING = re.compile(r"holding (\d+) messages: ")


def _kill_in_window(stack: FaultStack, topic: str, log: Path, commit: str) -> int:
    """Start a naive consumer (``--commit commit --hold``), ``kill -9`` it once it holds its first batch inside
    its window (see :mod:`tests.faults.negative_control`); return the batch's size."""
    naive = _naive(stack, topic, log, "--commit", commit, "--hold")
    try:
        wait_until(lambda: _HOLDING.search(log.read_text()), 120, f"{commit} to hold", running=(naive, log))
    finally:
        os.killpg(naive.pid, signal.SIGKILL)
        naive.wait(30)
    held = _HOLDING.search(log.read_text())
    assert held is not None
    return int(held.group(1))


def test_negative_control_is_flagged(fault_stack: FaultStack, topic: str, tmp_path: Path, figures: Figures) -> None:
    """T1c: the naive consumers, each ``kill -9``ed inside its window while the producer runs, must show the
    loss and the duplicates they cause, to the message: the auto-commit one loses the batch Kafka committed
    and it never wrote (``lost``); the commit-after-write one, whose batch is written and not committed, has
    it written again by its successor (``dup``, seen only in the audit: the primary key absorbed the rows)."""
    seed = env_int("LOOM_FAULT_SEED", 11)
    messages = env_int("LOOM_FAULT_T1C_MESSAGES", 30_000)
    started = time.monotonic()
    producer = Producer(fault_stack, topic, tmp_path, messages, rate=3000, seed=seed).start()
    try:
        in_memory = _kill_in_window(fault_stack, topic, tmp_path / "naive-auto.log", "auto")
        written = _kill_in_window(fault_stack, topic, tmp_path / "naive-after-write.log", "after-write")
        producer.wait()
    finally:
        producer.kill()
    log = tmp_path / "naive-drain.log"
    last = _naive(fault_stack, topic, log, "--commit", "after-write", "--idle-exit-s", "3")
    assert last.wait(300) == 0, log.read_text()[-2000:]
    faults = "2 (kill -9: naive auto-commit consumer before its write, naive commit-after-write one before its commit)"
    report, line = conclude(Figure("T1c", seed, faults, started), fault_stack, topic, [producer], [log])
    figures.add(f"{line} (negative control: a violation is the expected result)")
    assert (report.total("lost"), report.total("duplicated")) == (in_memory, written), report.table()
    assert in_memory > 0 and written > 0 and not report.ok
