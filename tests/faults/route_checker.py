"""After a run with routes drains: does each route's table hold what the topic says, exactly once?

Computed from the topic alone, read back with a read_committed consumer (:mod:`loom_bench.topic_fold`),
and from the tables, never from loom-ray's own conversions:

- upsert route: the table must equal the last-writer-wins fold of the topic by key (a tombstone deletes
  the key; a record the test's ``expected_row`` calls bad changes nothing). ``missing``: keys the fold has
  and the table lacks; ``extra``: the reverse; ``stale``: keys whose row differs (an older write won, or a
  replay applied out of order: rows carry their source offset, so this shows). The fold is blind to a
  record applied twice, so per partition the records the flushes applied and dead-lettered
  (``loom_route_counts``, written in the flush transaction) must add up to the records in the topic:
  ``applied_twice`` counts the excess, ``unapplied`` the shortfall;
- upsert route with a version, its key read from the value (records of a key in every partition): the table
  must equal the fold by highest version (``missing``, ``extra``, ``stale``: a row that is not the newest
  record of its key), and per partition the records applied, left out as older and dead-lettered must add up
  to the records in the topic (``applied_twice``, ``unapplied``);
- insert route: each good record's (partition, offset) is in the table exactly once (``duplicated``,
  ``lost``), and no other row is (``extra``);
- both: every bad record is one open dead letter (``dead_letters_off``: the difference per partition; a dead
  letter a replay or rewind resolved counts as its row), and ``loom_offsets.next_offset`` is at the high
  watermark (``at_end``).

After a rewind, an upsert route applied the records it read again once more: ``loom_rereads.reapplied`` says
how many per partition, and they are not counted as applied twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from loom_bench.topic_fold import Record, last_writer_fold, read_topic
from tests.support.pipeline import high_watermarks

ExpectedRow = Callable[[Record], tuple[Any, ...] | None]
Version = Callable[[tuple[Any, ...]], Any]  # the version of an expected row


@dataclass
class RouteReport:
    """Violations of one route; all zero (and ``at_end``) when the table is what the topic says."""

    route: str
    records: int = 0
    rows: int = 0
    dead_letters: int = 0
    missing: int = 0
    extra: int = 0
    stale: int = 0
    applied_twice: int = 0
    unapplied: int = 0
    duplicated: int = 0
    lost: int = 0
    dead_letters_off: int = 0
    at_end: bool = False

    @property
    def ok(self) -> bool:
        violations = (self.missing, self.extra, self.stale, self.applied_twice, self.unapplied, self.duplicated)
        return not any(violations) and self.lost == 0 and self.dead_letters_off == 0 and self.at_end

    def counts(self) -> str:
        return (
            f"route={self.route} records={self.records:,} rows={self.rows:,} dead_letters={self.dead_letters} "
            f"missing={self.missing} extra={self.extra} stale={self.stale} applied_twice={self.applied_twice} "
            f"unapplied={self.unapplied} duplicated={self.duplicated} lost={self.lost} "
            f"dead_letters_off={self.dead_letters_off} at_end={self.at_end}"
        )


async def _fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _rows(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(_fetch(dsn, sql, *args))


def _common(report: RouteReport, dsn: str, kafka: str, topic: str, records: list[Record], bad: list[Record]) -> None:
    """Dead letters per partition and the committed offsets, for either mode."""
    report.records = len(records)
    dead = {
        r["partition"]: r["n"]
        for r in _rows(
            dsn,
            'SELECT "partition", count(*) AS n FROM loom_dead_letters WHERE topic = $1 AND resolved_at IS NULL '
            "GROUP BY 1",
            topic,
        )
    }
    report.dead_letters = sum(dead.values())
    wanted = Counter(r.partition for r in bad)
    report.dead_letters_off = sum(abs(dead.get(p, 0) - wanted.get(p, 0)) for p in set(dead) | set(wanted))
    stored = {
        r["partition"]: r["next_offset"]
        for r in _rows(dsn, 'SELECT "partition", next_offset FROM loom_offsets WHERE topic = $1', topic)
    }
    report.at_end = all(stored.get(p) == high for p, (_, high) in high_watermarks(kafka, topic).items())


def check_upsert(
    dsn: str, kafka: str, topic: str, route: str, table: str, select: str, expected_row: ExpectedRow
) -> RouteReport:
    """The upsert ``table`` (its rows by ``select``, key first) against the last-writer fold of ``topic``."""
    records = read_topic(kafka, topic)
    fold = {row[0]: row for row in last_writer_fold(records, expected_row).values()}
    return _against(RouteReport(route), dsn, kafka, topic, table, select, expected_row, records, fold)


def check_versioned(
    dsn: str, kafka: str, topic: str, route: str, table: str, select: str, expected_row: ExpectedRow, version: Version
) -> RouteReport:
    """The upsert ``table`` of a route with a version (rows by ``select``, key first) against the fold of
    ``topic`` by highest ``version``, whatever partition each record is in and whatever order they were read."""
    records = read_topic(kafka, topic)
    fold: dict[Any, tuple[Any, ...]] = {}
    for record in records:
        row = None if record.value is None else expected_row(record)
        if row is not None and (row[0] not in fold or version(row) >= version(fold[row[0]])):
            fold[row[0]] = row
    return _against(RouteReport(route), dsn, kafka, topic, table, select, expected_row, records, fold)


def _against(
    report: RouteReport,
    dsn: str,
    kafka: str,
    topic: str,
    table: str,
    select: str,
    expected_row: ExpectedRow,
    records: list[Record],
    fold: dict[Any, tuple[Any, ...]],
) -> RouteReport:
    """Compare the table with ``fold`` (key -> row); each record counted once by the flushes that took it."""
    stored = {tuple(r)[0]: tuple(r) for r in _rows(dsn, f"SELECT {select} FROM {table}")}
    report.rows = len(stored)
    report.missing = len(fold.keys() - stored.keys())
    report.extra = len(stored.keys() - fold.keys())
    report.stale = sum(1 for key in fold.keys() & stored.keys() if fold[key] != stored[key])
    in_topic = Counter(r.partition for r in records)
    applied = {
        r["partition"]: r["n"]
        for r in _rows(
            dsn,
            'SELECT "partition", sum(upserted + deleted + stale + dead_letters) - coalesce(('
            'SELECT sum(x.reapplied) FROM loom_rereads AS x WHERE x.topic = c.topic AND x."partition" = c."partition"'
            "), 0) AS n FROM loom_route_counts AS c WHERE route = $1 AND topic = $2 GROUP BY c.topic, 1",
            report.route,
            topic,
        )
    }
    for partition in set(in_topic) | set(applied):
        difference = applied.get(partition, 0) - in_topic.get(partition, 0)
        report.applied_twice += max(difference, 0)
        report.unapplied += max(-difference, 0)
    bad = [r for r in records if r.value is not None and expected_row(r) is None]
    _common(report, dsn, kafka, topic, records, bad)
    return report


def check_insert(dsn: str, kafka: str, topic: str, route: str, table: str, expected_row: ExpectedRow) -> RouteReport:
    """The insert ``table`` (columns ``src_partition``, ``src_offset``): each good record exactly once."""
    report = RouteReport(route)
    records = read_topic(kafka, topic)
    good = {(r.partition, r.offset) for r in records if r.value is not None and expected_row(r) is not None}
    stored = Counter(
        (r["src_partition"], r["src_offset"]) for r in _rows(dsn, f"SELECT src_partition, src_offset FROM {table}")
    )
    report.rows = sum(stored.values())
    report.duplicated = sum(n - 1 for n in stored.values())
    report.lost = len(good - stored.keys())
    report.extra = len(stored.keys() - good)
    bad = [r for r in records if r.value is None or expected_row(r) is None]
    _common(report, dsn, kafka, topic, records, bad)
    return report
