"""The flush of routed batches: each route's records into its own table, inside the flush transaction.

Called by :meth:`loom_ray.sink.postgres.PostgresSink.write` after the offset compare-and-set, in the same
transaction as the rows, dead letters and offsets of every other partition. Per route (and table shape) with
records in the flush:

1. create the staging table on this connection if it has none (``ON COMMIT DELETE ROWS``; once per
   connection);
2. binary COPY every record into it, numbered by ``_loom_ord`` (offset order within each partition);
3. choose what reaches the table (:mod:`loom_ray.routes.reduce`: per key the net effect, stale records left
   out) and apply it in one or two set-based statements (:mod:`loom_ray.routes.sql`): a delete by key for
   the tombstones, then an insert or upsert.

An insert route whose repeated keys are dead letters has nothing to choose, so where a COPY is what an INSERT
is (:meth:`RouteTables.copy_target`) its records skip the staging table: the flush locks the table as an
INSERT would, checks its signature (``loom_route_lock``) and binary COPYs the records into it in offset order,
sparing PostgreSQL the staging COPY and the ``INSERT … SELECT``.

A row the table refuses at step 2 or 3, or in that COPY (a CHECK, a unique key, an exclusion constraint, a
trigger that raises, a domain's check: :func:`loom_ray.policy.sink_errors.refuses_route_row`) is found by bisecting
under savepoints (:mod:`loom_ray.sink.isolate`) and becomes a dead letter naming the route and what refused
it; the rest commits. Deferrable constraints are checked per statement (``SET CONSTRAINTS ALL IMMEDIATE``),
so their refusals are isolated the same way instead of failing the commit. Last, one statement adds the
flush's counts to ``loom_route_counts``.

Every statement first checks the table's signature (``loom_route_guard``; before a direct COPY,
``loom_route_lock``). When it changed,
:class:`RouteTables` reads the table again: if it still fits the route and every column only gained room,
the new shape is taken in (what is buffered is written under it, new records are converted for it; the
pool's statement cache is dropped, as asyncpg encodes a COPY by the column types it cached) and the flush is
tried again at once; otherwise :class:`~loom_ray.errors.RouteTableChangedError` blocks the route's
flushes (retried with backoff, reported as ``sink_blocked``) until a person fixes the table.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import asyncpg

from loom_ray.batch import PartitionBatch
from loom_ray.errors import RouteTableChangedError
from loom_ray.policy.sink_errors import ROUTE_TABLE_CHANGED, refuses_route_row
from loom_ray.routes import reduce
from loom_ray.routes.catalog import read_shape
from loom_ray.routes.convert import RoutedRecord, RoutePlan, plan
from loom_ray.routes.fit import problems, unchanged_or_wider
from loom_ray.routes.model import Route, RouteSet
from loom_ray.routes.sql import (
    compare_sql,
    create_stage_sql,
    delete_sql,
    insert_sql,
    lock_sql,
    stage_columns,
    upsert_sql,
)
from loom_ray.sink.isolate import copy_isolating, isolate

log = logging.getLogger(__name__)

_COUNTS_SQL = """
INSERT INTO loom_route_counts AS c
    (route, topic, "partition", inserted, upserted, deleted, dead_letters, stale, duplicates)
SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
                     $8::bigint[], $9::bigint[])
ON CONFLICT (route, topic, "partition") DO UPDATE SET
    inserted = c.inserted + EXCLUDED.inserted, upserted = c.upserted + EXCLUDED.upserted,
    deleted = c.deleted + EXCLUDED.deleted, dead_letters = c.dead_letters + EXCLUDED.dead_letters,
    stale = c.stale + EXCLUDED.stale, duplicates = c.duplicates + EXCLUDED.duplicates, updated_at = now()
"""


@dataclass(slots=True)
class RouteCounts:
    """Records of one route (and partition) a flush applied, left out or dead-lettered."""

    inserted: int = 0
    upserted: int = 0
    deleted: int = 0
    dead_letters: int = 0
    stale: int = 0  # older than the key's row (version): not applied
    duplicates: int = 0  # insert with on_duplicate = "ignore": the key was there

    @property
    def written(self) -> int:
        """Records applied to the route's table (inserted, upserted or deleted)."""
        return self.inserted + self.upserted + self.deleted

    @property
    def skipped(self) -> int:
        """Records committed without a change to the table (stale, duplicates)."""
        return self.stale + self.duplicates

    @property
    def records(self) -> int:
        """Records the route took, applied or skipped: what the summary's ``rows`` counts of a route."""
        return self.written + self.skipped

    def add(self, other: RouteCounts) -> None:
        self.inserted += other.inserted
        self.upserted += other.upserted
        self.deleted += other.deleted
        self.dead_letters += other.dead_letters
        self.stale += other.stale
        self.duplicates += other.duplicates

    def count(self, outcome: str) -> None:
        """Count one record with a :mod:`loom_ray.routes.reduce` outcome."""
        if outcome == reduce.INSERTED:
            self.inserted += 1
        elif outcome == reduce.UPSERTED:
            self.upserted += 1
        elif outcome == reduce.DELETED:
            self.deleted += 1
        elif outcome == reduce.STALE:
            self.stale += 1
        else:
            self.duplicates += 1


@dataclass(slots=True)
class RoutedOutcome:
    """What :meth:`RoutedWriter.write` did: the records PostgreSQL refused (to dead-letter), and counts per
    (route, topic, partition)."""

    refused: list[tuple[PartitionBatch, RoutedRecord, Exception]] = field(default_factory=list)
    counts: dict[tuple[str, str, int], RouteCounts] = field(default_factory=dict)

    @property
    def records(self) -> int:
        """Records the routes took: applied, or left out as stale or duplicates (not dead letters)."""
        return sum(c.records for c in self.counts.values())


class RouteTables:
    """A consumer's view of its routes' tables: the shape new records are converted for, and the signature
    every buffered record of a route may be written under.

    Starts from the shapes the driver read at start (:meth:`loom_ray.routes.model.RouteSet.with_tables`);
    :meth:`refresh` takes in a table altered while running when that is safe. Plans are built once per
    route and shape (:func:`loom_ray.routes.convert.plan`).
    """

    def __init__(self, routes: RouteSet, loom_schema: str) -> None:
        self._routes = {route.name: route for route in routes.routes}
        self._current = {name: routes.table(name) for name in self._routes}
        self._plans: dict[tuple[str, str], RoutePlan] = {}
        self.loom_schema = loom_schema

    def plan_for(self, route: Route) -> RoutePlan:
        """The plan new records of ``route`` are converted by (for its table as known now)."""
        table = self._current[route.name]
        found = self._plans.get((route.name, table.signature))
        if found is None:
            found = self._plans[(route.name, table.signature)] = plan(route, table)
        return found

    def signature(self, route: str) -> str:
        """The table signature the statements of ``route`` expect."""
        return self._current[route].signature

    def copy_target(self, route: Route) -> tuple[str, str] | None:
        """``(schema, table)`` when the flush COPYs ``route``'s records straight into its table instead of
        through the staging table: an insert route whose repeated keys are dead letters (no record to choose
        or compare, every one is appended) into a table where a COPY is what an INSERT is
        (``TableShape.copy_target``, as known now). None otherwise."""
        if route.mode != "insert" or route.on_duplicate != "dead_letter":
            return None
        return self._current[route.name].copy_target

    async def refresh(self, conn: asyncpg.Connection, route_name: str) -> None:
        """The table of ``route_name`` changed: take the new shape in when it fits and only widens the route's
        columns; otherwise raise :class:`RouteTableChangedError` saying what changed and how to fix it."""
        route = self._routes[route_name]
        before = self._current[route_name]
        after = await read_shape(conn, before.label, self.loom_schema)
        if after is None:
            raise RouteTableChangedError(f"route {route_name!r}: table {before.label} no longer exists")
        if (after.signature, after.copy_target) == (before.signature, before.copy_target):
            return
        unfit = problems(route, after)
        if unfit:
            raise RouteTableChangedError(f"route {route_name!r}: " + "; ".join(unfit))
        if not unchanged_or_wider(route, before, after):
            changed = [
                f"{name} {before.columns[name].sql} -> {after.columns[name].sql}"
                for name in (c.name for c in route.columns)
                if before.columns[name].sql != after.columns[name].sql
            ]
            raise RouteTableChangedError(
                f"route {route_name!r}: table {before.label} changed while loom-ray ran ({', '.join(changed)}), "
                "and the records buffered for it were converted for the old types"
            )
        log.info("route %s: table %s altered while running; taking the new shape in", route_name, before.label)
        await conn.reload_schema_state()
        self._current[route_name] = after


class RoutedWriter:
    """Writes the routed batches of one flush; one instance per sink, SQL built once per plan."""

    def __init__(self, tables: RouteTables) -> None:
        self._tables = tables
        self._sql: dict[str, _PlanSql] = {}
        self._staged: set[tuple[int, str]] = set()  # (backend pid, staging table) created on that connection

    def forget_stages(self) -> None:
        """After a failed flush: create the staging tables again rather than trust a new connection to have
        them (a reconnect may reuse a backend pid)."""
        self._staged.clear()

    async def write(self, conn: asyncpg.Connection, batches: Sequence[PartitionBatch]) -> RoutedOutcome:
        """Apply ``batches`` (each with a route plan) inside the caller's transaction; row errors are isolated.
        Raises :class:`RouteTableChangedError`, or retries at once after taking a widened table in."""
        outcome = RoutedOutcome()
        by_plan: dict[str, list[PartitionBatch]] = {}
        for batch in batches:
            assert batch.plan is not None
            by_plan.setdefault(batch.plan.stage, []).append(batch)
        if any(group[0].plan.table.deferrable for group in by_plan.values()):  # type: ignore[union-attr]
            await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for group in by_plan.values():
            await self._write_plan(conn, group, outcome)
        await _record_counts(conn, outcome.counts)
        return outcome

    async def _write_plan(
        self, conn: asyncpg.Connection, batches: list[PartitionBatch], outcome: RoutedOutcome
    ) -> None:
        route_plan = batches[0].plan
        assert route_plan is not None
        route = route_plan.route
        records: list[RoutedRecord] = [r for b in batches for r in b.rows]  # type: ignore[misc]  # routed rows
        outcomes: dict[int, str] = {}
        refused: list[tuple[int, Exception]] = []
        if records:
            target = self._tables.copy_target(route)
            try:
                if target is None:
                    refused = await self._stage_and_apply(conn, route_plan, records, outcomes)
                else:
                    refused = await self._append(conn, route_plan, target, records, outcomes)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate != ROUTE_TABLE_CHANGED:
                    raise
                await self._tables.refresh(conn, route.name)  # raises when the change is not taken in
                raise TableTakenIn(route.name) from exc
        refused.sort(key=lambda r: r[0])
        first = 0
        for batch in batches:
            rows: list[RoutedRecord] = batch.rows  # type: ignore[assignment]  # a routed batch's rows
            end = first + len(rows)
            here = [(ord_, exc) for ord_, exc in refused if first <= ord_ < end]
            outcome.refused += [(batch, records[ord_], exc) for ord_, exc in here]
            counts = outcome.counts.setdefault((route.name, batch.topic, batch.partition), RouteCounts())
            counts.dead_letters += len(batch.dead_letters) + len(here)
            for ord_ in range(first, end):
                found = outcomes.get(ord_)
                if found is not None:
                    counts.count(found)
            first = end

    async def _append(
        self,
        conn: asyncpg.Connection,
        route_plan: RoutePlan,
        target: tuple[str, str],
        records: list[RoutedRecord],
        outcomes: dict[int, str],
    ) -> list[tuple[int, Exception]]:
        """COPY ``records`` straight into ``target`` (:meth:`RouteTables.copy_target`), after
        ``loom_route_lock``; fills ``outcomes`` with the numbers of those inserted, returns those the table
        refused."""
        schema, table = target
        async with conn.transaction():  # a savepoint: an LR001 leaves the flush's transaction usable to refresh
            await conn.fetchval(
                lock_sql(self._tables.loom_schema),
                route_plan.table.label,
                self._tables.signature(route_plan.route.name),
            )
        columns = [c.name for c in route_plan.columns]

        async def copy(part: Sequence[int]) -> None:
            rows = [records[ord_].values for ord_ in part]
            await conn.copy_records_to_table(table, schema_name=schema, records=rows, columns=columns)

        refused = await isolate(conn, range(len(records)), copy, refuses_route_row)
        skipped = {ord_ for ord_, _ in refused}
        outcomes.update((ord_, reduce.INSERTED) for ord_ in range(len(records)) if ord_ not in skipped)
        return refused

    async def _stage_and_apply(
        self, conn: asyncpg.Connection, route_plan: RoutePlan, records: list[RoutedRecord], outcomes: dict[int, str]
    ) -> list[tuple[int, Exception]]:
        """COPY ``records`` into the plan's staging table, then apply what :mod:`loom_ray.routes.reduce` chose
        of them; fills ``outcomes`` per record applied or left out, returns those the table refused."""
        route = route_plan.route
        statements = self._statements(route_plan)
        await self._stage(conn, route_plan)
        staged = [(ord_, record.delete, *record.values) for ord_, record in enumerate(records)]
        refused_copy = await copy_isolating(conn, route_plan.stage, staged, statements.columns, refuses_route_row)
        refused = [(row[0], exc) for row, exc in refused_copy]
        skipped = {ord_ for ord_, _ in refused}
        ords = [ord_ for ord_ in range(len(records)) if ord_ not in skipped]
        arguments = (route_plan.table.label, self._tables.signature(route.name))
        left_out = reduce.STALE if route.mode == "upsert" else reduce.DUPLICATE

        async def apply(part: Sequence[int]) -> None:
            stored: dict[Hashable, set[int]] | None = None
            if statements.compare is not None:
                stored = {}
                for row in await conn.fetch(statements.compare, list(part), *arguments):
                    older = stored.setdefault(route_plan.key_of(records[row[0]].values), set())
                    if row[1]:
                        older.add(row[0])
            chosen = _choose(route_plan, records, part, stored)
            if chosen.deletes:
                assert statements.delete is not None
                await statements.delete.run(conn, chosen.deletes, *arguments)
            if chosen.writes:
                skipped = await statements.write.run(conn, chosen.writes, *arguments)
                chosen.outcomes.update(dict.fromkeys(skipped, left_out))
            outcomes.update(chosen.outcomes)

        return refused + await isolate(conn, ords, apply, refuses_route_row)

    async def _stage(self, conn: asyncpg.Connection, route_plan: RoutePlan) -> None:
        """Create the plan's staging table on this connection unless it was created on it before."""
        key = (conn.get_server_pid(), route_plan.stage)
        if key not in self._staged:
            await conn.execute(create_stage_sql(route_plan))
            self._staged.add(key)

    def _statements(self, route_plan: RoutePlan) -> _PlanSql:
        found = self._sql.get(route_plan.stage)
        if found is None:
            schema = self._tables.loom_schema
            versioned = route_plan.route.version is not None
            compare = compare_sql(route_plan, schema) if versioned else None
            if route_plan.route.mode == "upsert":
                write = _Statement(upsert_sql(route_plan, schema), versioned)
                delete: _Statement | None = _Statement(delete_sql(route_plan, schema), False)
            else:
                write = _Statement(insert_sql(route_plan, schema), route_plan.route.on_duplicate == "ignore")
                delete = None
            found = self._sql[route_plan.stage] = _PlanSql(stage_columns(route_plan), write, delete, compare)
        return found


@dataclass(frozen=True, slots=True)
class _Statement:
    """An apply statement; ``returns`` when it answers with the numbers of the records it left out."""

    sql: str
    returns: bool

    async def run(self, conn: asyncpg.Connection, ords: list[int], label: str, signature: str) -> list[int]:
        """Apply the staged records numbered ``ords``; the numbers of those left out (stale or duplicates)."""
        if not self.returns:
            await conn.execute(self.sql, ords, label, signature)
            return []
        return [row[0] for row in await conn.fetch(self.sql, ords, label, signature)]


@dataclass(frozen=True, slots=True)
class _PlanSql:
    """A plan's statements, built once: the staging columns, the write (insert or upsert), the delete, and
    for a route with a version the locking comparison with the table's rows."""

    columns: tuple[str, ...]
    write: _Statement
    delete: _Statement | None
    compare: str | None


class TableTakenIn(Exception):
    """A route's table was altered in a way the route takes in (:meth:`RouteTables.refresh`): the flush,
    rolled back, is written again at once."""

    def __init__(self, route: str) -> None:
        super().__init__(f"route {route!r}: its table was altered and taken in; writing the flush again")
        self.route = route


def _choose(
    route_plan: RoutePlan,
    records: Sequence[RoutedRecord],
    part: Sequence[int],
    stored: Mapping[Hashable, AbstractSet[int]] | None,
) -> reduce.Plan:
    """What of the records numbered ``part`` reaches the table (:mod:`loom_ray.routes.reduce`); ``stored`` as
    :func:`loom_ray.routes.reduce.upserts` takes it."""
    route = route_plan.route
    version = route_plan.version_index
    if route.mode == "insert" and route.on_duplicate != "ignore":
        return reduce.Plan(writes=list(part), outcomes=dict.fromkeys(part, reduce.INSERTED))
    staged = (
        reduce.Staged(
            ord_,
            route_plan.key_of(records[ord_].values),
            records[ord_].delete,
            None if version is None else records[ord_].values[version],
        )
        for ord_ in part
    )
    return reduce.upserts(staged, stored) if route.mode == "upsert" else reduce.first_of_each_key(staged)


async def _record_counts(conn: asyncpg.Connection, counts: Mapping[tuple[str, str, int], RouteCounts]) -> None:
    rows = [(key, c) for key, c in counts.items() if c.written or c.skipped or c.dead_letters]
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
            [c.stale for _, c in rows],
            [c.duplicates for _, c in rows],
        )
