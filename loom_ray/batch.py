"""Per-partition batch buffers and the pure rule that says when one must be flushed.

A :class:`PartitionBatch` collects rows and dead letters for one partition, in offset order, from
``start`` (the offset the database expects next) to ``end`` (one past the last offset it accounts for).
Offsets between its records that hold none (transaction markers, aborted records, compacted ones) are
covered by :meth:`PartitionBatch.skip_to`; offsets the broker no longer has by a recorded :class:`Gap`.
The pipeline hands batches to the sink when :func:`flush_due` says one is due (:func:`take_together` adds the
ones close to it); the sink advances the stored offset
from ``start`` to ``end`` in the same transaction as the rows, dead letters and gaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loom_ray.routes.convert import RoutePlan

# A loom_messages record, in sink.postgres.MESSAGE_COLUMNS order; kafka_ts is an int, microseconds since
# 2000-01-01 UTC (sink.codecs), or None. In a routed batch, a loom_ray.routes.convert.RoutedRecord.
Row = tuple[Any, ...]
DeadLetter = tuple[Any, ...]  # a loom_dead_letters record, in sink.postgres.DEAD_LETTER_COLUMNS order

# Memory a buffered record holds beyond its value's bytes: the row tuple, its key, offset and timestamp
# objects and the decoded text's header (checked with tracemalloc by tests/unit/test_hot_path.py).
RECORD_OVERHEAD_BYTES = 256


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets ``[from_offset, to_offset)`` that hold no record we can read any more, and why (loom_gaps)."""

    from_offset: int
    to_offset: int
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class FlushLimits:
    """When a batch is due: ``max_messages`` (LOOM_KAFKA_BATCH_SIZE), ``max_bytes``, ``max_age_s``."""

    max_messages: int
    max_bytes: int
    max_age_s: float


@dataclass(slots=True)
class PartitionBatch:
    """Messages of one partition waiting for one transaction."""

    topic: str
    partition: int
    epoch: int
    start: int
    end: int = -1
    incarnation: int = 0  # of the topic (loom_offsets.incarnation), stored with every record
    # The topic's route (LOOM_ROUTES_FILE) and the table shape its records were converted for; None: rows go to
    # loom_messages. A batch keeps the plan it was opened with; the next one takes the consumer's current plan.
    plan: RoutePlan | None = None
    # Offsets below it were read before a rewind (loom_offsets.reread_until): a flush of a batch that starts
    # below it lets loom_ray.ops.reread skip what is already stored.
    reread_until: int = 0
    rows: list[Row] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    size_bytes: int = 0
    opened_at: float = 0.0

    def __post_init__(self) -> None:
        if self.end < 0:
            self.end = self.start

    @property
    def count(self) -> int:
        """Messages in the batch, rows and dead letters together."""
        return len(self.rows) + len(self.dead_letters)

    @property
    def held_bytes(self) -> int:
        """About the memory the batch holds: its values' bytes and :data:`RECORD_OVERHEAD_BYTES` per record
        (what LOOM_BUFFER_MAX_BYTES bounds; ``size_bytes``, the values alone, is what fills a batch)."""
        return self.size_bytes + self.count * RECORD_OVERHEAD_BYTES

    @property
    def rereads(self) -> bool:
        """Whether the batch holds offsets read before a rewind."""
        return self.start < self.reread_until

    @property
    def advances(self) -> bool:
        """Whether committing the batch moves the stored offset (records, gaps or offsets without a record)."""
        return self.end > self.start

    def after(self, plan: RoutePlan | None = None) -> PartitionBatch:
        """An empty batch that starts where this one ends, with the same claim (and ``plan``, for a routed
        topic: the plan its records will be converted by)."""
        return PartitionBatch(
            self.topic,
            self.partition,
            self.epoch,
            self.end,
            incarnation=self.incarnation,
            plan=plan,
            reread_until=self.reread_until,
        )

    def skip_to(self, offset: int, now: float) -> None:
        """Account for offsets up to ``offset`` that hold no record for a read_committed consumer."""
        if offset > self.end:
            self._open(now)
            self.end = offset

    def add_gap(self, to_offset: int, reason: str, detail: str, now: float) -> None:
        """Record that ``[end, to_offset)`` can no longer be read, and move past it."""
        if to_offset > self.end:
            self._open(now)
            self.gaps.append(Gap(self.end, to_offset, reason, detail))
            self.end = to_offset

    def add_row(self, offset: int, row: Row, size: int, now: float) -> None:
        """Append a decoded message; ``now`` opens the batch's age clock on the first one."""
        self._advance(offset, size, now)
        self.rows.append(row)

    def add_dead_letter(self, offset: int, dead_letter: DeadLetter, size: int, now: float) -> None:
        """Append a message that failed decoding or validation."""
        self._advance(offset, size, now)
        self.dead_letters.append(dead_letter)

    def _advance(self, offset: int, size: int, now: float) -> None:
        if offset < self.end:
            raise ValueError(f"{self.topic}[{self.partition}] offset {offset} is behind the batch end {self.end}")
        self._open(now)
        self.end = offset + 1
        self.size_bytes += size

    def _open(self, now: float) -> None:
        """Start the age clock when the batch takes its first offset."""
        if self.end == self.start:
            self.opened_at = now


def flush_due(batch: PartitionBatch, limits: FlushLimits, now: float, paused: bool = False) -> bool:
    """Whether the batch must be flushed now: full by count or bytes, or its oldest message too old.

    While fetching is ``paused`` (the buffers are full) every non-empty batch is due: no message arrives
    to fill it, and fetching resumes only once the buffers drain, so waiting for the batch timer
    (up to LOOM_KAFKA_BATCH_TIMEOUT, 60 s at most) would stall the partition for nothing.
    """
    if not batch.advances:
        return False
    return (
        paused
        or batch.count >= limits.max_messages
        or batch.size_bytes >= limits.max_bytes
        or now - batch.opened_at >= limits.max_age_s
    )


def take_together(
    batches: Sequence[PartitionBatch], limits: FlushLimits, now: float, paused: bool = False
) -> list[PartitionBatch]:
    """The batches one flush takes now: none unless :func:`flush_due` says one must go; then those, and every
    other batch at least half ``max_age_s`` old.

    A batch that would be due within half a timeout rides along: the consumer commits its partitions in one
    transaction instead of a stream of small ones (each of which costs PostgreSQL a commit and an offset update
    per partition), and their age clocks, restarted together, stay in step. Younger batches wait, so a cold
    partition still costs one offset update per half timeout at most however often a hot one fills.
    """
    due = [flush_due(b, limits, now, paused) for b in batches]
    if not any(due):
        return []
    half = limits.max_age_s / 2
    return [b for b, d in zip(batches, due, strict=True) if d or (b.advances and now - b.opened_at >= half)]
