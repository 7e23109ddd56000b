"""Rewinds and skips (``python -m loom_ray.ctl rewind|skip``): asked by ctl, applied by the coordinator.

ctl records the operation as ``pending`` in ``loom_operations``, with each partition's target offset (a time
is turned into offsets first, by the broker's ``offsets_for_times``). The coordinator of the deployment that
ingests the topics applies it at its next round: its consumers flush and hand the partitions back, then
:func:`apply_move` claims them, for nobody, at the new positions (:func:`loom_ray.offsets.move_many`: the policy of
:mod:`loom_ray.policy.positions` decides; the new epoch fences any owner whatever it does), records a
rewind's window (``loom_rereads``) and closes the operation, in one transaction; the round's own rebalance
then claims the partitions for consumers from there. No offset is edited behind the coordinator's back.
While no coordinator runs (the deployment is stopped, or has not been seen for
``LOOM_KAFKA_SESSION_TIMEOUT_MS``), ctl calls :func:`apply_move` itself: the same code path, and the next
coordinator starts from the positions it leaves. An operation is applied once: whoever takes it first locks
its row, the other finds it done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from loom_ray import offsets
from loom_ray.errors import PositionRefusedError
from loom_ray.offsets import BrokerRead, ClaimRequest, Moved
from loom_ray.ops import audit
from loom_ray.ops.audit import Operation
from loom_ray.policy.positions import Kind, Target

TopicPartition = tuple[str, int]


def partition_key(tp: TopicPartition) -> str:
    """``orders[3]``: how operations name a partition."""
    return f"{tp[0]}[{tp[1]}]"


def parse_key(text: str) -> TopicPartition:
    """The partition :func:`partition_key` named."""
    topic, _, rest = text.rpartition("[")
    return topic, int(rest.rstrip("]"))


def selection(kind: Kind, targets: dict[TopicPartition, int], asked: dict[str, Any]) -> dict[str, Any]:
    """What a rewind or skip asked (``asked``: the offset or time as given) and each partition's target offset,
    for ``loom_operations.selection``."""
    return {**asked, "kind": str(kind), "targets": {partition_key(tp): o for tp, o in sorted(targets.items())}}


def targets_of(operation: Operation) -> dict[TopicPartition, int]:
    """Each partition's target offset of a rewind or skip."""
    return {parse_key(key): int(offset) for key, offset in operation.selection["targets"].items()}


@dataclass(frozen=True, slots=True)
class Applied:
    """A rewind or skip applied: each partition as it was, where it is now, and the claims that put it there
    (their epochs fence any owner); or, with ``error``, refused, nothing moved."""

    operation: Operation
    moved: list[Moved]
    error: str | None = None

    def result(self) -> dict[str, Any]:
        """Positions before and after, and the gap a skip left, for ``loom_operations.result``."""
        found: dict[str, Any] = {}
        for moved in self.moved:
            before = moved.before.next_offset if moved.before is not None else None
            entry: dict[str, Any] = {"from": before, "to": moved.position.next_offset}
            if moved.position.gap is not None:
                entry["gap"] = [moved.position.gap.from_offset, moved.position.gap.to_offset]
            found[partition_key((moved.claim.topic, moved.claim.partition))] = entry
        return found

    @property
    def offsets(self) -> int:
        """Offsets the partitions moved by, back (rewind) or forward (skip)."""
        return sum(abs(m.position.next_offset - m.before.next_offset) for m in self.moved if m.before is not None)


class NotAnswered(Exception):
    """Some of the operation's partitions could not be moved now (the broker did not answer for them, or
    their offset row was held past the coordinator's lock_timeout): nothing was applied, try again."""


async def apply_move(conn: asyncpg.Connection, operation: int, broker: BrokerRead, applied_by: str) -> Applied | None:
    """Apply a pending rewind or skip, in one transaction (see the module docstring). None when it is not
    pending any more (applied, failed) or someone applies it right now. A move the policy refuses closes the
    operation as failed, with the reason, and moves nothing; raises :class:`NotAnswered` (nothing changed)
    when a partition could not be moved now."""
    async with conn.transaction():
        taken = await audit.take_pending(conn, operation)
        if taken is None:
            return None
        kind = Kind(taken.kind)
        why = f"skipped by {taken.requested_by} (operation {taken.id})" + (f": {taken.reason}" if taken.reason else "")
        targets = targets_of(taken)
        requests = [
            ClaimRequest(t, p, None, target=Target(kind, offset, why)) for (t, p), offset in sorted(targets.items())
        ]
        try:
            moved = await offsets.move_many(conn, requests, broker, operation=taken.id)
        except PositionRefusedError as exc:
            await audit.finish(conn, taken.id, audit.FAILED, applied_by, 0, {"error": str(exc)})
            return Applied(taken, [], str(exc))
        if len(moved) < len(requests):
            raise NotAnswered(
                f"operation {taken.id}: the broker did not answer for every partition, or an offset row was held"
            )
        done = Applied(taken, moved)
        if kind is Kind.REWIND:
            await _windows(conn, taken.id, moved)
        await audit.finish(conn, taken.id, audit.DONE, applied_by, done.offsets, done.result())
        return done


async def _windows(conn: asyncpg.Connection, operation: int, moved: Sequence[Moved]) -> None:
    """Record each rewound partition's window: ``[where it reads again from, where it had been read up to)``."""
    rows = [m for m in moved if m.position.reread_until > m.position.next_offset]
    if rows:
        await conn.execute(
            """INSERT INTO loom_rereads (operation, topic, "partition", incarnation, from_offset, to_offset)
               SELECT $1, * FROM unnest($2::text[], $3::int[], $4::int[], $5::bigint[], $6::bigint[])""",
            operation,
            [m.claim.topic for m in rows],
            [m.claim.partition for m in rows],
            [m.position.incarnation for m in rows],
            [m.position.next_offset for m in rows],
            [m.position.reread_until for m in rows],
        )


async def live_deployments(conn: asyncpg.Connection, topics: Sequence[str], live_s: float) -> list[str]:
    """The deployments whose coordinator ingests one of ``topics`` and was seen within ``live_s``."""
    rows = await conn.fetch(
        """SELECT deployment FROM loom_deployments
           WHERE stopped_at IS NULL AND topics && $1::text[] AND heartbeat_at > now() - make_interval(secs => $2)
           ORDER BY deployment""",
        list(topics),
        live_s,
    )
    return [row["deployment"] for row in rows]
