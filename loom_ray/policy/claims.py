"""Where a claimed partition resumes: the pure rule behind :func:`loom_ray.offsets.claim`.

Runs in the coordinator for every claim, with the partition's ``loom_offsets`` row locked and the broker's
watermarks read after the lock (so no flush can move the row past them). The stored ``next_offset`` is
where reading resumes, unless the broker's partition is no longer the one it was read from:

- the topic's id changed (deleted and created again), or the stored offset is above the high watermark and
  no id was stored to tell: a new *incarnation* starts at the new log's first offset, and the old one's
  unread tail is recorded as a ``topic_recreated`` gap;
- the same topic, but its log ends below the stored offset (an unclean leader election truncated it): a new
  incarnation starts at the high watermark, so the offsets the broker will reuse cannot collide with rows
  already stored, and the stored-but-truncated range is recorded as ``log_truncated``.

Offsets below the log start (retention) are not handled here: the consumer meets them as an out-of-range
fetch and records an ``offset_out_of_range`` gap with the batch that follows.
"""

from __future__ import annotations

from dataclasses import dataclass

TOPIC_RECREATED = "topic_recreated"
LOG_TRUNCATED = "log_truncated"


@dataclass(frozen=True, slots=True)
class StoredOffset:
    """A partition's ``loom_offsets`` row as the claim found it."""

    next_offset: int
    incarnation: int
    topic_id: str | None


@dataclass(frozen=True, slots=True)
class BrokerPartition:
    """The partition as the broker has it now: watermarks (read_committed) and the topic's id."""

    low: int
    high: int
    topic_id: str | None


@dataclass(frozen=True, slots=True)
class ResetGap:
    """Offsets of the *old* incarnation that end as neither row nor dead letter (a loom_gaps row)."""

    incarnation: int
    from_offset: int
    to_offset: int | None  # None: the old log's end is unknown
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class ClaimPlan:
    """Where the claim resumes, in which incarnation, and the gap that a reset leaves (if any)."""

    next_offset: int
    incarnation: int
    gap: ResetGap | None = None


def plan_claim(stored: StoredOffset | None, broker: BrokerPartition, from_end: bool) -> ClaimPlan:
    """The claim's start; a partition never claimed before starts at its log start, or at its end when
    ``from_end`` (LOOM_KAFKA_AUTO_OFFSET_RESET=latest, for the partitions a topic had when first seen)."""
    if stored is None:
        return ClaimPlan(broker.high if from_end else broker.low, 0)
    ids_differ = stored.topic_id is not None and broker.topic_id is not None and stored.topic_id != broker.topic_id
    beyond = stored.next_offset > broker.high
    if ids_differ or (beyond and stored.topic_id is None):
        why = (
            f"topic id {stored.topic_id} -> {broker.topic_id}"
            if ids_differ
            else f"stored next_offset {stored.next_offset} is above the high watermark {broker.high}"
        )
        gap = ResetGap(
            stored.incarnation,
            stored.next_offset,
            None,
            TOPIC_RECREATED,
            f"the topic was deleted and created again ({why}); records of incarnation {stored.incarnation} "
            f"from offset {stored.next_offset} on were never read; incarnation {stored.incarnation + 1} "
            f"starts at offset {broker.low}",
        )
        return ClaimPlan(broker.low, stored.incarnation + 1, gap)
    if beyond:
        gap = ResetGap(
            stored.incarnation,
            broker.high,
            stored.next_offset,
            LOG_TRUNCATED,
            f"the broker's log ends at {broker.high}, below the stored next_offset {stored.next_offset} "
            f"(truncated by an unclean leader election?): offsets {broker.high}..{stored.next_offset - 1} "
            f"are stored but the broker no longer has them; incarnation {stored.incarnation + 1} starts at "
            f"{broker.high}",
        )
        return ClaimPlan(broker.high, stored.incarnation + 1, gap)
    return ClaimPlan(stored.next_offset, stored.incarnation)
