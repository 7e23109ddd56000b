"""The flush of routed batches: each route's records into its own table, inside the flush transaction.

Called by :meth:`loom_ray.sink.postgres.PostgresSink.write` after the offset compare-and-set, in the same
transaction as the rows, dead letters and offsets of every other partition. Per route with records in the
flush, three statements whatever the number of records:

1. create the route's temporary staging table if this connection has none (``ON COMMIT DELETE ROWS``);
2. binary COPY the records into it, numbered by ``_loom_ord`` (offset order within each partition);
3. one set-based statement into the route's table (:func:`loom_ray.routes.sql.apply_sql`): insert, or
   upsert with last-writer-wins per key and deletes for tombstones.

A record PostgreSQL refuses at step 2 or 3 (a CHECK, a NOT NULL, a foreign key of the user's table) is
found by bisecting under savepoints (:mod:`loom_ray.sink.isolate`) and becomes a dead letter; the rest
commits. Last, one statement adds the flush's counts to ``loom_route_counts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from loom_ray.batch import PartitionBatch
from loom_ray.routes.convert import RoutedRecord
from loom_ray.routes.model import Route
from loom_ray.routes.sql import apply_sql, create_stage_sql, stage_columns, stage_name
from loom_ray.sink.isolate import copy_isolating, isolate

_COUNTS_SQL = """
INSERT INTO loom_route_counts AS c (route, topic, "partition", inserted, upserted, deleted, dead_letters)
SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
ON CONFLICT (route, topic, "partition") DO UPDATE SET
    inserted = c.inserted + EXCLUDED.inserted, upserted = c.upserted + EXCLUDED.upserted,
    deleted = c.deleted + EXCLUDED.deleted, dead_letters = c.dead_letters + EXCLUDED.dead_letters,
    updated_at = now()
"""


@dataclass(slots=True)
class RouteCounts:
    """Records of one route (and partition) a flush applied or dead-lettered."""

    inserted: int = 0
    upserted: int = 0
    deleted: int = 0
    dead_letters: int = 0

    @property
    def written(self) -> int:
        """Records applied to the route's table (inserted, upserted or deleted)."""
        return self.inserted + self.upserted + self.deleted

    def add(self, other: RouteCounts) -> None:
        self.inserted += other.inserted
        self.upserted += other.upserted
        self.deleted += other.deleted
        self.dead_letters += other.dead_letters


@dataclass(slots=True)
class RoutedOutcome:
    """What :meth:`RoutedWriter.write` did: the records PostgreSQL refused (to dead-letter), and counts per
    (route, topic, partition)."""

    refused: list[tuple[PartitionBatch, RoutedRecord, Exception]] = field(default_factory=list)
    counts: dict[tuple[str, str, int], RouteCounts] = field(default_factory=dict)

    @property
    def written(self) -> int:
        return sum(c.written for c in self.counts.values())


class RoutedWriter:
    """Writes the routed batches of one flush; one instance per sink, SQL built once per route."""

    def __init__(self, default_schema: str) -> None:
        self._default_schema = default_schema
        self._sql: dict[str, tuple[str, str, str, tuple[str, ...]]] = {}

    async def write(self, conn: asyncpg.Connection, batches: Sequence[PartitionBatch]) -> RoutedOutcome:
        """Apply ``batches`` (each with a route) inside the caller's transaction; row errors are isolated."""
        outcome = RoutedOutcome()
        by_route: dict[str, list[PartitionBatch]] = {}
        for batch in batches:
            assert batch.route is not None
            by_route.setdefault(batch.route.name, []).append(batch)
        for group in by_route.values():
            await self._write_route(conn, group, outcome)
        rows = [(key, counts) for key, counts in outcome.counts.items() if counts.written or counts.dead_letters]
        if rows:
            await conn.execute(
                _COUNTS_SQL,
                [route for (route, _, _), _ in rows],
                [topic for (_, topic, _), _ in rows],
                [partition for (_, _, partition), _ in rows],
                [c.inserted for _, c in rows],
                [c.upserted for _, c in rows],
                [c.deleted for _, c in rows],
                [c.dead_letters for _, c in rows],
            )
        return outcome

    async def _write_route(
        self, conn: asyncpg.Connection, batches: list[PartitionBatch], outcome: RoutedOutcome
    ) -> None:
        route = batches[0].route
        assert route is not None
        create_stage, stage, apply, columns = self._statements(route)
        records: list[RoutedRecord] = [r for b in batches for r in b.rows]  # type: ignore[misc]  # routed rows
        refused: list[tuple[int, Exception]] = []
        if records:
            await conn.execute(create_stage)
            staged = [(ord_, record.delete, *record.values) for ord_, record in enumerate(records)]
            refused_copy = await copy_isolating(conn, stage, staged, columns)
            refused += [(row[0], exc) for row, exc in refused_copy]
            skipped = {ord_ for ord_, _ in refused}
            ords = [ord_ for ord_ in range(len(records)) if ord_ not in skipped] if skipped else range(len(records))

            async def run(part: Sequence[int]) -> object:
                return await conn.execute(apply, part[0], part[-1] + 1)

            refused += await isolate(conn, ords, run)
        refused.sort(key=lambda r: r[0])
        first = 0
        for batch in batches:
            rows: list[RoutedRecord] = batch.rows  # type: ignore[assignment]  # a routed batch's rows
            end = first + len(rows)
            here = [(ord_, exc) for ord_, exc in refused if first <= ord_ < end]
            outcome.refused += [(batch, records[ord_], exc) for ord_, exc in here]
            gone = {ord_ for ord_, _ in here}
            deleted = sum(1 for ord_, r in enumerate(rows, first) if r.delete and ord_ not in gone)
            counts = outcome.counts.setdefault((route.name, batch.topic, batch.partition), RouteCounts())
            counts.dead_letters += len(batch.dead_letters) + len(gone)
            counts.deleted += deleted
            if route.mode == "upsert":
                counts.upserted += len(rows) - len(gone) - deleted
            else:
                counts.inserted += len(rows) - len(gone) - deleted
            first = end

    def _statements(self, route: Route) -> tuple[str, str, str, tuple[str, ...]]:
        found = self._sql.get(route.name)
        if found is None:
            found = (
                create_stage_sql(route),
                stage_name(route),
                apply_sql(route, self._default_schema),
                stage_columns(route),
            )
            self._sql[route.name] = found
        return found
