"""Where a partition is read from next, and what gap or new incarnation that leaves: one pure policy.

Its callers, each with the partition's ``loom_offsets`` row as it stands and the broker's watermarks:

- the claim (:func:`loom_ray.offsets.claim_many`: the coordinator's, or ``python -m loom_ray.ctl``'s while the
  job is stopped), with the row locked and the watermarks read after the lock: :func:`plan` with no
  :class:`Target` resumes the partition (:func:`resume`); with one it moves it where an operator asked,
  :func:`rewind` or :func:`skip`;
- the consumer, when the broker answers a fetch with "offset out of range" (:func:`out_of_range`).

The cases (``tests/unit/test_positions.py`` holds them as a table):

- never claimed: the log start, or its end when ``from_end`` (LOOM_KAFKA_AUTO_OFFSET_RESET=latest, for the
  partitions a topic had when first seen);
- the topic's id changed (deleted and created again), or the stored offset is above the high watermark and
  no id tells (none stored, or the broker reports the all-zero id, :func:`known_id`): a new *incarnation*
  starts at the new log's start, and the old one's unread tail is a ``topic_recreated`` gap;
- the same topic, its log ending below the stored offset (an unclean leader election truncated it): a new
  incarnation starts at the high watermark, so offsets the broker reuses cannot collide with rows already
  stored; the stored range the broker lost is a ``log_truncated`` gap;
- otherwise the stored offset (below the log start, the consumer meets an out-of-range fetch: below);
- a fetch out of range below the log start (retention, DeleteRecords): read on from the log start, the
  skipped range an ``offset_out_of_range`` gap; above the high watermark: hand the partition back, the claim
  decides (above); inside the log (it was truncated below the offset and written again before we looked):
  a new incarnation at the committed offset, the offsets below it that were written again never read: a
  ``log_rewritten`` gap of the new incarnation;
- a rewind to an offset (at least the log start, at most the stored offset): read again from there, in the
  same incarnation; offsets below where it stood were read before (``reread_until``), so a record read
  again that is already stored is skipped (:mod:`loom_ray.ops.reread`);
- a skip to an offset (at least the stored offset, at most the high watermark): read on from there, the
  range skipped a ``skipped`` gap with the operator's reason.

A rewind or skip of a partition whose log is not the one stored (it would start a new incarnation) is
refused: the job claims it first.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from loom_ray.errors import PositionRefusedError

# loom_gaps.reason
OFFSET_OUT_OF_RANGE = "offset_out_of_range"
TOPIC_RECREATED = "topic_recreated"
LOG_TRUNCATED = "log_truncated"
LOG_REWRITTEN = "log_rewritten"
SKIPPED = "skipped"

# What Kafka reports as a topic's id when it has none (a broker before ids, some proxies): base64 of 16 zero
# bytes. Compared as an id, it would make a recreated topic look like the same one.
ZERO_TOPIC_ID = "AAAAAAAAAAAAAAAAAAAAAA"


def known_id(topic_id: str | None) -> str | None:
    """A topic id as the policy compares it: None when unknown (none, or the all-zero id)."""
    return None if topic_id in (None, "", ZERO_TOPIC_ID) else topic_id


@dataclass(frozen=True, slots=True)
class StoredOffset:
    """A partition's ``loom_offsets`` row: where reading resumes, in which incarnation, the topic id it was
    read from, and the end of a rewind's window (offsets below it in this incarnation were read before)."""

    next_offset: int
    incarnation: int
    topic_id: str | None
    reread_until: int = 0


@dataclass(frozen=True, slots=True)
class BrokerPartition:
    """The partition as the broker has it now: watermarks (read_committed) and the topic's id."""

    low: int
    high: int
    topic_id: str | None


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets ``[from_offset, to_offset)`` of ``incarnation`` that end as neither row nor dead letter (a
    ``loom_gaps`` row); ``to_offset`` None: the end is unknown."""

    incarnation: int
    from_offset: int
    to_offset: int | None
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Position:
    """Where reading resumes, in which incarnation, the gap that leaves (if any), and the end of the window
    of offsets read before (0: none)."""

    next_offset: int
    incarnation: int
    gap: Gap | None = None
    reread_until: int = 0


class Kind(enum.StrEnum):
    """An operator's move of a partition (``python -m loom_ray.ctl rewind|skip``)."""

    REWIND = "rewind"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Target:
    """Where an operator moves a partition: ``offset``, by ``kind``; ``why`` goes into a skip's gap."""

    kind: Kind
    offset: int
    why: str = ""


def plan(stored: StoredOffset | None, broker: BrokerPartition, from_end: bool, target: Target | None) -> Position:
    """The claim's position: :func:`resume`, or the operator's ``target`` (:func:`rewind`, :func:`skip`)."""
    if target is None:
        return resume(stored, broker, from_end)
    if stored is None:
        raise PositionRefusedError(f"{target.kind} needs a partition read before: this one was never claimed")
    if target.kind is Kind.REWIND:
        return rewind(stored, broker, target.offset)
    return skip(stored, broker, target.offset, target.why)


def resume(stored: StoredOffset | None, broker: BrokerPartition, from_end: bool) -> Position:
    """Where a claim resumes (see the module docstring); ``from_end`` for a partition never claimed."""
    if stored is None:
        return Position(broker.high if from_end else broker.low, 0)
    was, now = known_id(stored.topic_id), known_id(broker.topic_id)
    ids_differ = was is not None and now is not None and was != now
    beyond = stored.next_offset > broker.high
    if ids_differ or (beyond and (was is None or now is None)):
        why = (
            f"topic id {was} -> {now}"
            if ids_differ
            else f"stored next_offset {stored.next_offset} is above the high watermark {broker.high}"
        )
        gap = Gap(
            stored.incarnation,
            stored.next_offset,
            None,
            TOPIC_RECREATED,
            f"the topic was deleted and created again ({why}); records of incarnation {stored.incarnation} "
            f"from offset {stored.next_offset} on were never read; incarnation {stored.incarnation + 1} "
            f"starts at offset {broker.low}",
        )
        return Position(broker.low, stored.incarnation + 1, gap)
    if beyond:
        gap = Gap(
            stored.incarnation,
            broker.high,
            stored.next_offset,
            LOG_TRUNCATED,
            f"the broker's log ends at {broker.high}, below the stored next_offset {stored.next_offset} "
            f"(truncated by an unclean leader election?): offsets {broker.high}..{stored.next_offset - 1} "
            f"are stored but the broker no longer has them; incarnation {stored.incarnation + 1} starts at "
            f"{broker.high}",
        )
        return Position(broker.high, stored.incarnation + 1, gap)
    return Position(stored.next_offset, stored.incarnation, reread_until=stored.reread_until)


def rewind(stored: StoredOffset, broker: BrokerPartition, offset: int) -> Position:
    """Read again from ``offset`` (raised to the log start: the broker has nothing below it), in the same
    incarnation, with the offsets up to where the partition stood marked as read before. Refused forward
    of the stored offset, and for a log that is not the one stored."""
    here = _same_log(stored, broker, Kind.REWIND)
    if offset > here.next_offset:
        raise PositionRefusedError(
            f"rewind to {offset} is forward of the committed offset {here.next_offset}: use skip to move forward"
        )
    start = max(offset, broker.low)
    return Position(start, here.incarnation, reread_until=max(here.next_offset, here.reread_until))


def skip(stored: StoredOffset, broker: BrokerPartition, offset: int, why: str) -> Position:
    """Read on from ``offset``, the offsets from the stored one up to it a ``skipped`` gap saying ``why``.
    Refused backward of the stored offset, beyond the high watermark, and for a log that is not the one
    stored."""
    here = _same_log(stored, broker, Kind.SKIP)
    if offset < here.next_offset:
        raise PositionRefusedError(
            f"skip to {offset} is behind the committed offset {here.next_offset}: use rewind to read again"
        )
    if offset > broker.high:
        raise PositionRefusedError(f"skip to {offset} is beyond the high watermark {broker.high}")
    if offset == here.next_offset:
        return here
    gap = Gap(here.incarnation, here.next_offset, offset, SKIPPED, why)
    return Position(offset, here.incarnation, gap, here.reread_until)


def _same_log(stored: StoredOffset, broker: BrokerPartition, kind: Kind) -> Position:
    """The stored position, when the broker's log is the one it was read from; else refuse ``kind``."""
    here = resume(stored, broker, from_end=False)
    if here.incarnation != stored.incarnation:
        raise PositionRefusedError(
            f"{kind} refused: the broker's log is not the one stored ({here.gap.reason if here.gap else 'reset'}); "
            "start the job so that it claims the partition first"
        )
    return here


class Action(enum.Enum):
    """What the consumer does after a fetch out of range (:func:`out_of_range`)."""

    READ_ON = "read on at the position, its gap committed with the next batch"
    HAND_BACK = "drop the partition: the coordinator claims it again and the claim decides"
    NEW_INCARNATION = "record the position (a new incarnation) under its claim, then drop the partition"


@dataclass(frozen=True, slots=True)
class OutOfRange:
    """The consumer's move after a fetch out of range, and the position it leads to (None: the claim's)."""

    action: Action
    position: Position | None = None


def out_of_range(expected: int, committed: int, incarnation: int, low: int, high: int) -> OutOfRange:
    """The broker had no record at ``expected``, the next offset the consumer reads (``committed``: its
    partition's committed offset); ``low`` and ``high`` are the watermarks asked for since."""
    if expected < low:
        detail = (
            f"the log start moved to {low} (retention or DeleteRecords) before offsets {expected}..{low - 1} were read"
        )
        gap = Gap(incarnation, expected, low, OFFSET_OUT_OF_RANGE, detail)
        return OutOfRange(Action.READ_ON, Position(low, incarnation, gap))
    if expected > high:
        return OutOfRange(Action.HAND_BACK)
    start = max(committed, low)
    rewritten = None
    if start > low:
        rewritten = Gap(
            incarnation + 1,
            low,
            start,
            LOG_REWRITTEN,
            f"offset {expected} was out of range although the log now spans {low}..{high - 1}: it was truncated "
            f"below {expected} and written again; offsets below {start} are stored in incarnation {incarnation} "
            f"up to where it was cut, and those written again were never read; incarnation {incarnation + 1} "
            f"starts at {start}",
        )
    return OutOfRange(Action.NEW_INCARNATION, Position(start, incarnation + 1, rewritten))
