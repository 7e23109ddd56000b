"""After a Debezium route drains: does the replica equal the source table, with every change applied once?

Computed from the topic alone (:func:`tests.support.debezium.replica`, read back with a read_committed
consumer) and from the tables, never from loom-ray's own conversions, in the words of
:class:`tests.faults.route_checker.RouteReport`: ``missing``, ``extra`` and ``stale`` compare the replica with
the source table's final state; per partition, the changes the flushes applied, left out as older and
dead-lettered (``loom_route_counts``, written in the flush transaction) must add up to the records that are
not tombstones (a tombstone is committed without a row): ``applied_twice`` counts the excess, ``unapplied``
the shortfall; every record that changes no one row is one dead letter (``dead_letters_off``); and
``loom_offsets.next_offset`` is at the high watermark (``at_end``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import asyncpg

from loom_bench.topic_fold import read_topic
from tests.faults.route_checker import RouteReport
from tests.support.debezium import EventReader, replica
from tests.support.pipeline import high_watermarks

_COUNTS = """SELECT "partition", sum(upserted + deleted + stale + dead_letters)::int AS n FROM loom_route_counts
              WHERE route = $1 AND topic = $2 GROUP BY 1"""
_DEAD = 'SELECT "partition", count(*)::int AS n FROM loom_dead_letters WHERE topic = $1 GROUP BY 1'
_OFFSETS = 'SELECT "partition", next_offset FROM loom_offsets WHERE topic = $1'


async def _query(dsn: str, table: str, route: str, topic: str) -> tuple[list[Any], ...]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f"SELECT id, name, balance, updated_at, note FROM {table}")
        return (
            rows,
            await conn.fetch(_COUNTS, route, topic),
            await conn.fetch(_DEAD, topic),
            await conn.fetch(_OFFSETS, topic),
        )
    finally:
        await conn.close()


def check_replica(dsn: str, kafka: str, topic: str, route: str, table: str, reader: EventReader) -> RouteReport:
    """The replica ``table`` of ``route`` against the source table the changes in ``topic`` leave."""
    records = read_topic(kafka, topic)
    expected, refused = replica(records, reader)
    rows, counts, dead, offsets = asyncio.run(_query(dsn, table, route, topic))
    stored = {r["id"]: tuple(r) for r in rows}
    report = RouteReport(route, records=len(records), rows=len(stored), dead_letters=sum(r["n"] for r in dead))
    report.missing = len(expected.keys() - stored.keys())
    report.extra = len(stored.keys() - expected.keys())
    report.stale = sum(1 for key in expected.keys() & stored.keys() if expected[key] != stored[key])
    changes = Counter(r.partition for r in records if r.value is not None)
    applied = {r["partition"]: r["n"] for r in counts}
    for partition in set(changes) | set(applied):
        difference = applied.get(partition, 0) - changes.get(partition, 0)
        report.applied_twice += max(difference, 0)
        report.unapplied += max(-difference, 0)
    wanted = Counter(r.partition for r in refused)
    found = {r["partition"]: r["n"] for r in dead}
    report.dead_letters_off = sum(abs(found.get(p, 0) - wanted.get(p, 0)) for p in set(found) | set(wanted))
    stored_offsets = {r["partition"]: r["next_offset"] for r in offsets}
    report.at_end = all(stored_offsets.get(p) == high for p, (_, high) in high_watermarks(kafka, topic).items())
    return report
