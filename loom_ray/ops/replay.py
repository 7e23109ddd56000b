"""Dead letters run again through today's decoder and routes, exactly once (``python -m loom_ray.ctl replay``).

Runs in ctl, beside the job or without it. The open dead letters the filter selects, of the partitions'
current incarnations, are taken partition by partition in offset order, in chunks; each chunk is one
transaction:

1. lock the partition's ``loom_offsets`` row (a consumer's flush of the partition waits for the chunk) and
   the chunk's dead letters still open (a concurrent replay, or a rewind's re-read, may have resolved some);
2. read their records from the broker (:class:`~loom_ray.ops.records.RecordReader`; one whose value's
   SHA-256 is not the dead letter's, or that the broker no longer has, is left as it is: ``unreadable``);
3. convert each as the consumer does today (:mod:`loom_ray.ops.records`); a record that fits becomes its
   ``loom_messages`` row or its route write (:class:`~loom_ray.sink.routed.RoutedWriter`, the flush's own
   statements: a row the table refuses is isolated and stays a dead letter);
4. an upsert never overwrites a newer row of its key: with the route's ``version`` the statements leave an
   older record out (``stale``); without one the source offset is the guard: a record of which a later record
   of its key (in its partition, below where the partition was read up to, not itself an open dead letter
   or in a gap) was applied is ``stale`` and not written;
5. resolve the dead letters whose records were written or found stale (``resolved_at``, ``resolved_by``: this
   replay), keep the others with their new reason and one more attempt, move the route counts from
   ``dead_letters`` to what each record is now, and record the replay's progress in ``loom_operations``;
6. commit.

So a resolved dead letter always has its row, a replay killed at any point leaves whole chunks, and a second
replay finds nothing open that now fits. With ``dry_run`` every chunk is rolled back at its end: the same
work, nothing kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from itertools import groupby
from typing import Any

import asyncpg

from loom_ray import db
from loom_ray.batch import PartitionBatch, Row
from loom_ray.decode import DB_ROW, Rejection, sha256
from loom_ray.ops import audit, deadletters
from loom_ray.ops.deadletters import CountChange, Key
from loom_ray.ops.records import Conversion, RecordReader
from loom_ray.ops.selection import Filter
from loom_ray.policy.backoff import backoff_delay
from loom_ray.policy.sink_errors import refuses_message
from loom_ray.routes.convert import RoutedRecord, RoutePlan
from loom_ray.routes.model import Route
from loom_ray.settings import Settings
from loom_ray.sink.isolate import copy_isolating
from loom_ray.sink.postgres import MESSAGE_COLUMNS
from loom_ray.sink.refusals import message_refusal, route_refusal
from loom_ray.sink.routed import RoutedWriter, RouteTables, TableTakenIn

log = logging.getLogger(__name__)

_RETRIES = 5  # a chunk that meets a deadlock or an outage is tried again this many times


@dataclass(slots=True)
class ReplayReport:
    """What a replay did (or, dry, would do)."""

    selected: int = 0
    resolved: int = 0  # written: a row, or a route's write
    stale: int = 0  # fits now, but older than its key's row: resolved, not written
    failing: Counter[str] = field(default_factory=Counter)  # still do not fit, by their new error class
    unreadable: int = 0  # the broker no longer has the record, or holds another at its offset: left as it was
    older: int = 0  # of an older incarnation of the partition: its log is gone, left as it was

    @property
    def handled(self) -> int:
        """Dead letters this replay resolved or tried again."""
        return self.resolved + self.stale + sum(self.failing.values())

    def add(self, chunk: _Outcome) -> None:
        """Count a chunk that committed (or, dry, was rolled back)."""
        self.resolved += len(chunk.resolved) - chunk.stale
        self.stale += chunk.stale
        self.failing.update(rejection.error_class for _, rejection in chunk.failed)
        self.unreadable += chunk.unreadable
        self.older += chunk.older

    def as_dict(self) -> dict[str, Any]:
        """The counts, for ``loom_operations.result`` and what ctl prints."""
        return {
            "selected": self.selected,
            "resolved": self.resolved,
            "stale": self.stale,
            "failing": dict(sorted(self.failing.items())),
            "unreadable": self.unreadable,
            "older_incarnation": self.older,
        }


@dataclass(slots=True)
class _Outcome:
    """One chunk's decisions, applied in its transaction."""

    resolved: list[Key] = field(default_factory=list)  # written or stale
    failed: list[tuple[Key, Rejection]] = field(default_factory=list)
    stale: int = 0
    unreadable: int = 0
    older: int = 0
    counts: dict[tuple[str, str, int], CountChange] = field(default_factory=dict)


class _RolledBack(Exception):
    """Ends a dry run's chunk: its transaction is rolled back, its outcome counted."""

    def __init__(self, outcome: _Outcome) -> None:
        super().__init__("dry run")
        self.outcome = outcome


class Replay:
    """One replay: ``operation`` is its ``loom_operations`` row (None for a dry run)."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        settings: Settings,
        tables: RouteTables | None,
        reader: RecordReader,
        conversion: Conversion,
        chunk: int,
        operation: int | None,
    ) -> None:
        """``conn`` has the sink's codecs (:func:`loom_ray.sink.codecs.install_codecs`); ``tables``: the
        routes' tables as they are now (None without routes)."""
        self._conn = conn
        self._settings = settings
        self._tables = tables
        self._writer = None if tables is None else RoutedWriter(tables)
        self._reader = reader
        self._conversion = conversion
        self._chunk = chunk
        self._operation = operation
        self.report = ReplayReport()

    async def run(self, selected: Filter, topics: tuple[str, ...], on_chunk: Callable[[ReplayReport], None]) -> None:
        """Replay what ``selected`` picks among ``topics``; ``on_chunk`` after each chunk (ctl's progress)."""
        found = await deadletters.candidates(self._conn, selected, topics)
        self.report.selected = len(found)
        self.report.older = sum(1 for c in found if not c.current)
        current = [c for c in found if c.current]
        for (topic, partition, incarnation), group in groupby(
            current, key=lambda c: (c.topic, c.partition, c.incarnation)
        ):
            offsets = [c.offset for c in group]
            guard = await self._guard(topic, partition, incarnation, offsets)
            for start in range(0, len(offsets), self._chunk):
                await self._retrying(topic, partition, incarnation, offsets[start : start + self._chunk], guard)
                on_chunk(self.report)

    async def _guard(self, topic: str, partition: int, incarnation: int, offsets: list[int]) -> _Newer | None:
        """For an upsert route without a version, the source-offset guard of this partition's records."""
        route = self._settings.routes.route_for(topic)
        if route is None or route.mode != "upsert" or route.version is not None:
            return None
        plan = self._plan(route)

        def keys_of() -> set[Hashable]:
            records = [
                self._conversion.routed_record(plan, m) for m in self._reader.read(topic, partition, offsets).values()
            ]
            return {plan.key_of(r.values) for r in records if isinstance(r, RoutedRecord)}

        keys = await asyncio.to_thread(keys_of)
        gaps = await self._conn.fetch(
            """SELECT from_offset, coalesce(to_offset, from_offset) AS to_offset FROM loom_gaps
               WHERE topic = $1 AND "partition" = $2 AND incarnation = $3""",
            topic,
            partition,
            incarnation,
        )
        newer = _Newer(
            self._reader, self._conversion, plan, topic, partition, keys, offsets[0] + 1,
            [(g["from_offset"], g["to_offset"]) for g in gaps],
        )  # fmt: skip
        # Read ahead as far as the partition was read now, outside any transaction: a chunk then reads only
        # what was committed since, while it holds the partition's offset row.
        read_to = await self._conn.fetchval(
            'SELECT greatest(next_offset, reread_until) FROM loom_offsets WHERE topic = $1 AND "partition" = $2',
            topic,
            partition,
        )
        await asyncio.to_thread(newer.extend, read_to or 0)
        return newer

    def _plan(self, route: Route) -> RoutePlan:
        assert self._tables is not None
        return self._tables.plan_for(route)

    async def _retrying(
        self, topic: str, partition: int, incarnation: int, offsets: list[int], guard: _Newer | None
    ) -> None:
        """One chunk, tried again after a deadlock or an outage (the transaction rolled back whole) and at once
        after a route's widened table was taken in."""
        attempt = 0
        while True:
            try:
                self.report.add(await self._one_chunk(topic, partition, incarnation, offsets, guard))
                return
            except _RolledBack as dry:
                self.report.add(dry.outcome)
                return
            except TableTakenIn as exc:
                log.info("%s", exc)
            except db.TRANSIENT_ERRORS as exc:
                if attempt >= _RETRIES:
                    raise
                delay = backoff_delay(attempt)
                log.warning("replay of %s[%d] rolled back (%s: %s); again in %.1fs", topic, partition,
                            type(exc).__name__, exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
                attempt += 1
            finally:
                if self._writer is not None:
                    self._writer.forget_stages()  # a staging table made in a rolled-back transaction is gone

    async def _one_chunk(
        self, topic: str, partition: int, incarnation: int, offsets: list[int], guard: _Newer | None
    ) -> _Outcome:
        """Steps 1 to 6 of the module docstring for one chunk; what it did."""
        conn = self._conn
        async with conn.transaction():
            stored = await conn.fetchrow(
                """SELECT next_offset, reread_until, incarnation FROM loom_offsets
                   WHERE topic = $1 AND "partition" = $2 FOR UPDATE""",
                topic,
                partition,
            )
            if stored is None or stored["incarnation"] != incarnation:
                return _Outcome(older=len(offsets))
            open_ = await deadletters.lock_open(conn, topic, partition, incarnation, offsets)
            messages = await asyncio.to_thread(self._reader.read, topic, partition, list(open_))
            readable = {o: m for o, m in messages.items() if sha256(m.value()) == open_[o]}
            route = self._settings.routes.route_for(topic)
            if route is None:
                outcome = await self._rows(topic, partition, incarnation, readable)
            else:
                end = max(stored["next_offset"], stored["reread_until"])
                outcome = await self._routed(route, topic, partition, incarnation, readable, guard, end)
            outcome.unreadable = len(open_) - len(readable)
            await deadletters.resolve(conn, [(key, self._operation) for key in outcome.resolved])
            await deadletters.fail_again(conn, outcome.failed)
            await deadletters.recount(conn, outcome.counts)
            if self._operation is None:
                raise _RolledBack(outcome)
            so_far = replace(self.report, failing=Counter(self.report.failing))
            so_far.add(outcome)
            await audit.progress(conn, self._operation, so_far.handled, so_far.as_dict())
        return outcome

    async def _rows(self, topic: str, partition: int, incarnation: int, messages: dict[int, Any]) -> _Outcome:
        """Records of a topic no route takes: their ``loom_messages`` rows, refused rows isolated."""
        outcome = _Outcome()
        rows: list[Row] = []
        converted = await asyncio.to_thread(
            lambda: [(o, self._conversion.message_row(m, incarnation)) for o, m in sorted(messages.items())]
        )
        for offset, row in converted:
            if isinstance(row, Rejection):
                outcome.failed.append(((topic, partition, incarnation, offset), row))
            else:
                rows.append(row)
        refused = await copy_isolating(self._conn, "loom_messages", rows, MESSAGE_COLUMNS, refuses_message)
        refused_at = {row[2] for row, _ in refused}
        for row, exc in refused:
            error_class, message, sqlstate = message_refusal(exc)
            outcome.failed.append(
                ((topic, partition, incarnation, row[2]), Rejection(error_class, message, DB_ROW, sqlstate))
            )
        outcome.resolved += [(topic, partition, incarnation, row[2]) for row in rows if row[2] not in refused_at]
        return outcome

    async def _routed(
        self,
        route: Route,
        topic: str,
        partition: int,
        incarnation: int,
        messages: dict[int, Any],
        guard: _Newer | None,
        end: int,
    ) -> _Outcome:
        """Records of a routed topic: the route's writes, older upserts left out, refused rows isolated."""
        assert self._writer is not None
        outcome = _Outcome()
        plan = self._plan(route)
        records: list[RoutedRecord] = []
        converted = await asyncio.to_thread(
            lambda: [(o, self._conversion.routed_record(plan, m)) for o, m in sorted(messages.items())]
        )
        counts = outcome.counts.setdefault((route.name, topic, partition), CountChange())
        for offset, record in converted:
            if isinstance(record, Rejection):
                outcome.failed.append(((topic, partition, incarnation, offset), record))
            elif record is None:  # committed without a row now (a Debezium route's ignored event)
                outcome.resolved.append((topic, partition, incarnation, offset))
                counts.dead_letters -= 1
            else:
                records.append(record)
        if guard is not None and records:
            stale = await guard.overwritten(self._conn, incarnation, records, end)
            outcome.stale += len(stale)
            counts.stale += len(stale)
            counts.dead_letters -= len(stale)
            outcome.resolved += [(topic, partition, incarnation, o) for o in sorted(stale)]
            records = [r for r in records if r.offset not in stale]
        if not records:
            return outcome
        batch = PartitionBatch(topic, partition, 0, records[0].offset, incarnation=incarnation, plan=plan)
        for record in records:
            batch.add_row(record.offset, record, 0, 0.0)
        written = await self._writer.write(self._conn, [batch])
        refused_at = set()
        for _, record, exc in written.refused:
            error_class, message, sqlstate = route_refusal(exc, plan.table.label)
            rejection = Rejection(error_class, f"route {route.name!r}: {message}", DB_ROW, sqlstate)
            outcome.failed.append(((topic, partition, incarnation, record.offset), rejection))
            refused_at.add(record.offset)
        left_out = sum(c.stale for c in written.counts.values())
        outcome.stale += left_out
        # Each record was counted as a dead letter when it became one; the write counted it again as what it is
        # now (applied, stale, or a dead letter once more).
        counts.dead_letters -= len(records)
        outcome.resolved += [(topic, partition, incarnation, r.offset) for r in records if r.offset not in refused_at]
        return outcome


class _Newer:
    """The source-offset guard of an upsert route without a version, for one partition: where the keys of the
    records being replayed appear later in it, read from the broker as far as the partition was read."""

    def __init__(
        self,
        reader: RecordReader,
        conversion: Conversion,
        plan: RoutePlan,
        topic: str,
        partition: int,
        keys: set[Hashable],
        start: int,
        gaps: Sequence[tuple[int, int]],
    ) -> None:
        self._reader = reader
        self._conversion = conversion
        self._plan = plan
        self._topic = topic
        self._partition = partition
        self._keys = keys
        self._read_to = start
        self._gaps = gaps
        self._seen: dict[Hashable, list[int]] = {}

    def extend(self, end: int) -> None:
        """Read the records of ``[read_to, end)`` and note where each key of interest appears (blocking: run it
        in a thread)."""
        if end <= self._read_to:
            return
        for message in self._reader.scan(self._topic, self._partition, self._read_to, end):
            record = self._conversion.routed_record(self._plan, message)
            if isinstance(record, RoutedRecord):
                key = self._plan.key_of(record.values)
                if key in self._keys:
                    self._seen.setdefault(key, []).append(record.offset)
        self._read_to = end

    async def overwritten(
        self, conn: asyncpg.Connection, incarnation: int, records: Sequence[RoutedRecord], end: int
    ) -> set[int]:
        """The offsets of ``records`` a later record of their key already overwrote or deleted: one below
        ``end`` (where the partition was read up to), not an open dead letter, not in a gap."""
        await asyncio.to_thread(self.extend, end)
        later = {
            record.offset: [
                o
                for o in self._seen.get(self._plan.key_of(record.values), ())
                if record.offset < o < end and not any(a <= o < b for a, b in self._gaps)
            ]
            for record in records
        }
        never_applied = await deadletters.open_among(
            conn, self._topic, self._partition, incarnation, {o for offsets in later.values() for o in offsets}
        )
        return {offset for offset, offsets in later.items() if any(o not in never_applied for o in offsets)}
