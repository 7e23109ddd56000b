"""The flush: rows, dead letters and offsets of several partitions in one PostgreSQL transaction.

Called by the pipeline with the batches that are due. Step by step, inside one transaction:

1. compare-and-set each partition's ``loom_offsets`` row from ``batch.start`` to ``batch.end`` where the
   epoch is still ours; a row that does not match means another owner claimed the partition: roll back,
   report it fenced, and retry the other partitions' batches; batches holding offsets read again after a
   rewind then go through the ``rereads`` hook (:mod:`loom_ray.ops.reread`: nothing is stored twice);
2. binary COPY the rows into ``loom_messages``; a row PostgreSQL refuses (a CHECK, a jsonb quirk) or asyncpg
   cannot encode is found by bisecting under savepoints and becomes a dead letter (stage ``db_row``), the
   rest still commit; the batches of routed topics go to their routes' tables instead
   (:mod:`loom_ray.sink.routed`: a staging COPY and one set-based statement per route, refused rows
   isolated the same way);
3. COPY the dead letters into ``loom_dead_letters``, the recorded gaps into ``loom_gaps`` (and the batch
   ranges into ``loom_audit`` if asked);
4. commit.

A batch may hold no record at all and still advance the offset (over transaction markers, aborted
records or a gap): it is committed the same way.

Outages (:data:`loom_ray.db.TRANSIENT_ERRORS`) propagate; the caller resolves an in-doubt commit with
:meth:`PostgresSink.resolve`, which reads the offset row: it is the witness of what committed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import asyncpg

from loom_ray.batch import DeadLetter, PartitionBatch, Row
from loom_ray.crashpoints import crash_point
from loom_ray.decode import DB_ROW, capped, sha256
from loom_ray.errors import ColumnTypeChangedError, FencedError
from loom_ray.policy.sink_errors import refuses_message
from loom_ray.routes.convert import RoutedRecord
from loom_ray.sink.isolate import copy_isolating
from loom_ray.sink.refusals import Refusal, message_refusal, route_refusal
from loom_ray.sink.routed import RouteCounts, RoutedWriter, RouteTables, TableTakenIn

log = logging.getLogger(__name__)
T = TypeVar("T")

MESSAGE_COLUMNS = (
    "topic",
    "partition",
    "offset",
    "key",
    "payload",
    "headers",
    "kafka_ts",
    "incarnation",
    "schema_id",  # the Schema Registry id a registry format's record was written with (NULL for json)
)
DEAD_LETTER_COLUMNS = (
    "topic",
    "partition",
    "offset",
    "key",
    "raw_value",
    "value_len",
    "value_sha256",
    "headers",
    "error_class",
    "error_message",
    "stage",
    "sqlstate",
    "incarnation",
)
_GAP_COLUMNS = ("topic", "partition", "incarnation", "from_offset", "to_offset", "reason", "detail")
_AUDIT_COLUMNS = (
    "topic",
    "partition",
    "start_offset",
    "end_offset",
    "rows",
    "dead_letters",
    "epoch",
    "owner",
    "incarnation",
)


_CAS_SQL = """
UPDATE loom_offsets AS o SET next_offset = b.end_offset, updated_at = now()
FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[], $5::bigint[])
     AS b(topic, "partition", epoch, start_offset, end_offset)
WHERE o.topic = b.topic AND o."partition" = b."partition"
  AND o.epoch = b.epoch AND o.next_offset = b.start_offset
RETURNING o.topic, o."partition"
"""


class RereadFlush(Protocol):
    """One flush's records read again after a rewind (:mod:`loom_ray.ops.reread`): the batches to write, then
    ``settle`` the dead letters."""

    batches: list[PartitionBatch]

    async def settle(self, conn: asyncpg.Connection, dead_letters: Sequence[DeadLetter]) -> list[DeadLetter]: ...


class RereadHook(Protocol):
    """Asked right after the compare-and-set when a batch holds offsets read again (``PartitionBatch.rereads``)."""

    async def begin(self, conn: asyncpg.Connection, batches: Sequence[PartitionBatch]) -> RereadFlush | None: ...


@dataclass(slots=True)
class FlushResult:
    """What one :meth:`PostgresSink.write` did."""

    committed: list[PartitionBatch] = field(default_factory=list)
    fenced: list[PartitionBatch] = field(default_factory=list)
    faulted: list[PartitionBatch] = field(default_factory=list)  # dropped: their flush fails for a bug
    rows: int = 0  # rows into loom_messages, plus records applied to routes' tables
    dead_letters: int = 0
    routes: dict[tuple[str, str, int], RouteCounts] = field(default_factory=dict)  # (route, topic, partition)


class PostgresSink:
    """Writes due batches of one consumer actor; one transaction per call (plus retries after a fence)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        owner: str,
        dead_letter_max_bytes: int,
        audit: bool = False,
        routes: RouteTables | None = None,
        rereads: RereadHook | None = None,
    ) -> None:
        self._pool = pool
        self._rereads = rereads
        self._owner = owner
        self._dead_letter_max_bytes = dead_letter_max_bytes
        self._audit = audit
        self._routed = None if routes is None else RoutedWriter(routes)

    async def write(self, batches: Sequence[PartitionBatch]) -> FlushResult:
        """Commit ``batches``; fenced ones are returned, not written. Outages, blockers and bugs raise."""
        result = FlushResult()
        pending = [b for b in batches if b.advances]
        while pending:
            try:
                result.rows, result.dead_letters, result.routes = await self._write_once(pending)
            except FencedError as exc:
                lost = set(exc.partitions)
                result.fenced.extend(b for b in pending if (b.topic, b.partition) in lost)
                pending = [b for b in pending if (b.topic, b.partition) not in lost]
                log.warning("flush fenced, rolled back and retrying the rest: %s", exc)
                continue
            except TableTakenIn as exc:
                log.info("%s", exc)
                continue
            result.committed = pending
            break
        return result

    async def _write_once(
        self, batches: list[PartitionBatch]
    ) -> tuple[int, int, dict[tuple[str, str, int], RouteCounts]]:
        try:
            return await self._transaction(batches)
        except BaseException:
            if self._routed is not None:
                self._routed.forget_stages()  # a staging table created in the rolled-back transaction is gone
            raise

    async def _transaction(
        self, batches: list[PartitionBatch]
    ) -> tuple[int, int, dict[tuple[str, str, int], RouteCounts]]:
        async with self._pool.acquire() as conn, conn.transaction():
            matched = await conn.fetch(
                _CAS_SQL,
                [b.topic for b in batches],
                [b.partition for b in batches],
                [b.epoch for b in batches],
                [b.start for b in batches],
                [b.end for b in batches],
            )
            if len(matched) != len(batches):
                won = {(r["topic"], r["partition"]) for r in matched}
                raise FencedError([(b.topic, b.partition) for b in batches if (b.topic, b.partition) not in won])
            crash_point("after_offset_cas")
            reread = None
            if self._rereads is not None and any(b.rereads for b in batches):
                reread = await self._rereads.begin(conn, batches)
            if reread is not None:
                batches = reread.batches
            rows = [row for b in batches if b.plan is None for row in b.rows]
            refused = await _loom_tables(copy_isolating(conn, "loom_messages", rows, MESSAGE_COLUMNS, refuses_message))
            routed = [b for b in batches if b.plan is not None]
            outcome = None
            if routed:
                assert self._routed is not None, "routed batches need the sink's RouteTables"
                outcome = await self._routed.write(conn, routed)
            crash_point("after_data_copy")
            dead_letters = [dl for b in batches for dl in b.dead_letters]
            dead_letters.extend(self._refused_row(row, exc) for row, exc in refused)
            if outcome is not None:
                dead_letters.extend(self._refused_record(b, record, exc) for b, record, exc in outcome.refused)
            if reread is not None:
                dead_letters = await reread.settle(conn, dead_letters)
            gaps = [
                (b.topic, b.partition, b.incarnation, g.from_offset, g.to_offset, g.reason, g.detail)
                for b in batches
                for g in b.gaps
            ]
            await _loom_tables(self._bookkeeping(conn, dead_letters, gaps, batches))
        crash_point("after_commit")
        if outcome is None:
            return len(rows) - len(refused), len(dead_letters), {}
        return len(rows) - len(refused) + outcome.records, len(dead_letters), outcome.counts

    async def _bookkeeping(
        self,
        conn: asyncpg.Connection,
        dead_letters: list[DeadLetter],
        gaps: Sequence[tuple[object, ...]],
        batches: list[PartitionBatch],
    ) -> None:
        """COPY the flush's dead letters, gaps and (if asked) audit rows."""
        if dead_letters:
            await conn.copy_records_to_table("loom_dead_letters", records=dead_letters, columns=DEAD_LETTER_COLUMNS)
        if gaps:
            await conn.copy_records_to_table("loom_gaps", records=gaps, columns=_GAP_COLUMNS)
        if self._audit:
            await conn.copy_records_to_table(
                "loom_audit", records=[self._audit_row(b) for b in batches], columns=_AUDIT_COLUMNS
            )

    def _refused_row(self, row: Row, exc: Exception) -> DeadLetter:
        topic, partition, offset, key, payload, headers, _, incarnation, _ = row
        raw = payload.encode("utf-8", "surrogatepass")
        refusal = message_refusal(exc)
        return self._db_row_dead_letter(topic, partition, offset, key, raw, headers, incarnation, refusal)

    def _refused_record(self, batch: PartitionBatch, record: RoutedRecord, exc: Exception) -> DeadLetter:
        assert batch.plan is not None
        route = batch.plan.route
        error_class, error_message, sqlstate = route_refusal(exc, batch.plan.table.label)
        refusal = (error_class, f"route {route.name!r}: {error_message}", sqlstate)
        return self._db_row_dead_letter(
            batch.topic,
            batch.partition,
            record.offset,
            record.key,
            record.value,
            record.headers,
            batch.incarnation,
            refusal,
        )

    def _db_row_dead_letter(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        raw: bytes | None,
        headers: str | None,
        incarnation: int,
        refusal: Refusal,
    ) -> DeadLetter:
        error_class, error_message, sqlstate = refusal
        return (
            topic,
            partition,
            offset,
            key,
            capped(raw, self._dead_letter_max_bytes),
            None if raw is None else len(raw),
            sha256(raw),
            headers,
            error_class,
            error_message[:2000],
            DB_ROW,
            sqlstate,
            incarnation,
        )

    def _audit_row(self, batch: PartitionBatch) -> tuple[object, ...]:
        return (
            batch.topic,
            batch.partition,
            batch.start,
            batch.end,
            len(batch.rows),
            len(batch.dead_letters),
            batch.epoch,
            self._owner,
            batch.incarnation,
        )

    async def resolve(self, batches: Sequence[PartitionBatch]) -> tuple[list[PartitionBatch], list[PartitionBatch]]:
        """After an outage, split ``batches`` into (already committed, fenced); the rest must be retried.

        The offset row is the commit witness: at ``batch.end`` with our epoch, the lost COMMIT did land.
        """
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT o.topic, o."partition", o.next_offset, o.epoch
                   FROM loom_offsets o JOIN unnest($1::text[], $2::int[]) AS b(topic, "partition")
                   USING (topic, "partition")""",
                [b.topic for b in batches],
                [b.partition for b in batches],
            )
        stored = {(r["topic"], r["partition"]): (r["next_offset"], r["epoch"]) for r in rows}
        done, fenced = [], []
        for batch in batches:
            next_offset, epoch = stored.get((batch.topic, batch.partition), (None, None))
            if epoch != batch.epoch or next_offset not in (batch.start, batch.end):
                fenced.append(batch)
            elif next_offset == batch.end:
                done.append(batch)
        return done, fenced


async def _loom_tables(write: Awaitable[T]) -> T:
    """Await a write of loom's own tables; asyncpg's TypeError there means a column's type is not the one sql/
    defines (someone altered it): :class:`ColumnTypeChangedError`, a blocker the consumer retries and reports."""
    try:
        return await write
    except TypeError as exc:
        raise ColumnTypeChangedError(f"a column's type is not the one sql/ defines: {exc}") from exc
