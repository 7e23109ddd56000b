"""What a flush does with records read again after a rewind (``loom_offsets.reread_until``).

Called by :class:`loom_ray.sink.postgres.PostgresSink` inside the flush transaction, right after the offset
compare-and-set, only for batches that start below their partition's window end
(:attr:`loom_ray.batch.PartitionBatch.rereads`): :meth:`Rereads.begin` before the rows are written,
:meth:`RereadFlush.settle` before the dead letters are. For each record read again (its offset below the
window end):

- its offset is an open dead letter: it is replayed, as ``ctl replay`` would: a record that fits now is
  written and its dead letter resolved (by the rewind); one that still does not fit keeps its dead letter, with
  the new reason and one more attempt (``failing``);
- otherwise it was stored before (a row, a route's write, or a dead letter resolved since): an upsert route
  applies it again, which converges the table to the fold once a route was fixed (``reapplied``; counted again
  in ``loom_route_counts``, which counts applications); ``loom_messages`` and insert routes skip it
  (``skipped``): nothing is stored twice. A record stored before that does not fit now keeps the account it
  has (``skipped``).

The dead letters of the window are locked first (a replay running beside it resolves each either before or
after, never both), and the counts go to the rewind's ``loom_rereads`` row in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import asyncpg

from loom_ray.batch import DeadLetter, PartitionBatch, Row
from loom_ray.decode import Rejection
from loom_ray.ops import deadletters
from loom_ray.ops.deadletters import CountChange, Key
from loom_ray.routes.convert import RoutedRecord

TopicPartition = tuple[str, int]


@dataclass(slots=True)
class _Window:
    """One partition's batch in a flush that reads again: what was decided for it."""

    until: int
    incarnation: int
    operation: int | None
    route: str | None  # the route's name; None for loom_messages
    open: set[int]  # open dead letters of the batch's offsets read again
    written: set[int] = field(default_factory=set)  # offsets of open dead letters kept as rows to write
    reapplied_at: set[int] = field(default_factory=set)  # offsets an upsert route applies again
    skipped: int = 0
    failing: int = 0
    resolved: int = 0


class Rereads:
    """The flush's hook for records read again after a rewind; stateless, one per sink."""

    async def begin(self, conn: asyncpg.Connection, batches: Sequence[PartitionBatch]) -> RereadFlush | None:
        """Lock the open dead letters of the offsets read again and decide which records to write; the batches
        to write instead of ``batches`` (None when no batch reads again)."""
        again = [b for b in batches if b.rereads]
        if not again:
            return None
        rows = await conn.fetch(
            """SELECT o.topic, o."partition", o.reread_operation FROM loom_offsets AS o
               JOIN unnest($1::text[], $2::int[]) AS b(topic, "partition") USING (topic, "partition")""",
            [b.topic for b in again],
            [b.partition for b in again],
        )
        operations = {(r["topic"], r["partition"]): r["reread_operation"] for r in rows}
        open_ = await deadletters.open_in_ranges(
            conn, [(b.topic, b.partition, b.incarnation, b.start, min(b.end, b.reread_until)) for b in again]
        )
        flush = RereadFlush([])
        for batch in batches:
            if not batch.rereads:
                flush.batches.append(batch)
                continue
            tp = (batch.topic, batch.partition)
            window = _Window(
                batch.reread_until,
                batch.incarnation,
                operations.get(tp),
                None if batch.plan is None else batch.plan.route.name,
                open_.get(tp, set()),
            )
            flush.windows[tp] = window
            upsert = batch.plan is not None and batch.plan.route.mode == "upsert"
            kept: list[Row] = []
            for row in batch.rows:
                offset = _offset(row)
                if offset >= window.until:
                    kept.append(row)
                elif offset in window.open:
                    kept.append(row)
                    window.written.add(offset)
                elif upsert:
                    kept.append(row)
                    window.reapplied_at.add(offset)
                else:
                    window.skipped += 1
            flush.batches.append(replace(batch, rows=kept))
        return flush


def _offset(row: Row) -> int:
    """A batch row's offset: a route's record's, or a ``loom_messages`` row's third column."""
    return row.offset if isinstance(row, RoutedRecord) else int(row[2])


@dataclass(slots=True)
class RereadFlush:
    """One flush's records read again: the batches to write, then :meth:`settle`."""

    batches: list[PartitionBatch]
    windows: dict[TopicPartition, _Window] = field(default_factory=dict)

    async def settle(self, conn: asyncpg.Connection, dead_letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """After the rows were written: resolve the open dead letters whose records were written, keep with a
        new reason those that failed again, count it all; the dead letters the flush still writes (a record
        read again never becomes a second dead letter)."""
        kept: list[DeadLetter] = []
        failed: list[tuple[Key, Rejection]] = []
        refused: set[tuple[str, int, int]] = set()
        counts: dict[tuple[str, str, int], CountChange] = {}
        for letter in dead_letters:
            topic, partition, offset = letter[0], letter[1], letter[2]
            window = self.windows.get((topic, partition))
            if window is None or offset >= window.until:
                kept.append(letter)
                continue
            if window.route is not None:  # the route's flush counted it as a dead letter once more
                counts.setdefault((window.route, topic, partition), CountChange()).dead_letters -= 1
            if offset in window.open:
                failed.append(((topic, partition, window.incarnation, offset), Rejection(*letter[8:12])))
                window.failing += 1
            else:
                window.skipped += 1
                window.reapplied_at.discard(offset)  # a row the table refused: not applied again after all
            refused.add((topic, partition, offset))
        resolved: list[tuple[Key, int | None]] = []
        for (topic, partition), window in self.windows.items():
            done = sorted(o for o in window.written if (topic, partition, o) not in refused)
            resolved += [((topic, partition, window.incarnation, o), window.operation) for o in done]
            window.resolved = len(done)
            if window.route is not None and done:  # counted once as a dead letter, now as what it is
                counts.setdefault((window.route, topic, partition), CountChange()).dead_letters -= len(done)
        await deadletters.resolve(conn, resolved)
        await deadletters.fail_again(conn, failed)
        await deadletters.recount(conn, counts)
        await self._tally(conn)
        return kept

    async def _tally(self, conn: asyncpg.Connection) -> None:
        """Add this flush's counts to each rewind's ``loom_rereads`` row."""
        items = [(tp, w) for tp, w in self.windows.items() if w.operation is not None]
        if not items:
            return
        await conn.execute(
            """UPDATE loom_rereads AS r
               SET skipped = r.skipped + x.skipped, reapplied = r.reapplied + x.reapplied,
                   resolved = r.resolved + x.resolved, failing = r.failing + x.failing
               FROM unnest($1::bigint[], $2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
                    AS x(operation, topic, "partition", skipped, reapplied, resolved, failing)
               WHERE r.operation = x.operation AND r.topic = x.topic AND r."partition" = x."partition\"""",
            [w.operation for _, w in items],
            [t for (t, _), _ in items],
            [p for (_, p), _ in items],
            [w.skipped for _, w in items],
            [len(w.reapplied_at) for _, w in items],
            [w.resolved for _, w in items],
            [w.failing for _, w in items],
        )
