"""The position policy's table of cases: where a partition is read from next, and what gap or incarnation that
leaves, for a claim, a fetch out of range, a rewind and a skip (loom_ray/policy/positions.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from loom_ray.errors import PositionRefusedError
from loom_ray.policy.positions import (
    LOG_REWRITTEN,
    LOG_TRUNCATED,
    OFFSET_OUT_OF_RANGE,
    SKIPPED,
    TOPIC_RECREATED,
    ZERO_TOPIC_ID,
    Action,
    BrokerPartition,
    Kind,
    OutOfRange,
    Position,
    StoredOffset,
    Target,
    known_id,
    out_of_range,
    plan,
)

A, B, ZERO = "A", "B", ZERO_TOPIC_ID


def claim(stored: StoredOffset | None, broker: BrokerPartition, from_end: bool = False) -> Position:
    return plan(stored, broker, from_end, None)


def rewind(stored: StoredOffset, broker: BrokerPartition, offset: int) -> Position:
    return plan(stored, broker, False, Target(Kind.REWIND, offset))


def skip(stored: StoredOffset, broker: BrokerPartition, offset: int) -> Position:
    return plan(stored, broker, False, Target(Kind.SKIP, offset, "poison burst"))


def gapless(position: Position) -> tuple[int, int, int]:
    """(next_offset, incarnation, reread_until) of a position that leaves no gap."""
    assert position.gap is None, position.gap
    return position.next_offset, position.incarnation, position.reread_until


def with_gap(position: Position) -> tuple[int, int, tuple[int, int, int | None, str]]:
    """(next_offset, incarnation, (gap incarnation, from, to, reason))."""
    gap = position.gap
    assert gap is not None
    return position.next_offset, position.incarnation, (gap.incarnation, gap.from_offset, gap.to_offset, gap.reason)


# (case, what the policy is asked, what it must answer)
CASES: list[tuple[str, Callable[[], object], object]] = [
    # -- a claim ---------------------------------------------------------------------------------------------
    ("never claimed: the log start", lambda: gapless(claim(None, BrokerPartition(5, 90, A))), (5, 0, 0)),
    ("never claimed, from_end: the end", lambda: gapless(claim(None, BrokerPartition(5, 90, A), True)), (90, 0, 0)),
    (
        "a stored offset within the log resumes there, whatever from_end says",
        lambda: gapless(claim(StoredOffset(40, 2, A), BrokerPartition(5, 90, A), True)),
        (40, 2, 0),
    ),
    (
        "below the log start: left to the consumer's out-of-range fetch",
        lambda: gapless(claim(StoredOffset(3, 0, A), BrokerPartition(50, 90, A))),
        (3, 0, 0),
    ),
    (
        "at the high watermark: not a reset",
        lambda: gapless(claim(StoredOffset(90, 0, None), BrokerPartition(0, 90, A))),
        (90, 0, 0),
    ),
    (
        "a rewind's window is kept by the claims that follow it",
        lambda: gapless(claim(StoredOffset(40, 1, A, reread_until=70), BrokerPartition(0, 90, A))),
        (40, 1, 70),
    ),
    (
        "another topic id: a new incarnation at the new log's start",
        lambda: with_gap(claim(StoredOffset(1_000, 3, A), BrokerPartition(0, 2_000, B), True)),
        (0, 4, (3, 1_000, None, TOPIC_RECREATED)),
    ),
    (
        "no id stored, offset above the high watermark: recreated",
        lambda: with_gap(claim(StoredOffset(1_000, 0, None), BrokerPartition(0, 7, B))),
        (0, 1, (0, 1_000, None, TOPIC_RECREATED)),
    ),
    (
        "the broker reports the zero id (none): a stored offset above the high watermark means recreated, "
        "not truncated (the new topic's first offsets are read)",
        lambda: with_gap(claim(StoredOffset(1_000, 0, ZERO), BrokerPartition(0, 50, ZERO))),
        (0, 1, (0, 1_000, None, TOPIC_RECREATED)),
    ),
    (
        "a zero id stored, a real id now: the ids cannot be compared, so the offsets decide",
        lambda: gapless(claim(StoredOffset(40, 0, ZERO), BrokerPartition(0, 90, A))),
        (40, 0, 0),
    ),
    (
        "the same id, the log ends below the stored offset: truncated, a new incarnation at the end",
        lambda: with_gap(claim(StoredOffset(1_000, 0, A), BrokerPartition(0, 950, A))),
        (950, 1, (0, 950, 1_000, LOG_TRUNCATED)),
    ),
    (
        "an unknown broker id does not reset",
        lambda: gapless(claim(StoredOffset(40, 1, A), BrokerPartition(0, 90, None))),
        (40, 1, 0),
    ),
    (
        "a new incarnation drops the rewind's window",
        lambda: with_gap(claim(StoredOffset(80, 0, A, reread_until=90), BrokerPartition(0, 10, B))),
        (0, 1, (0, 80, None, TOPIC_RECREATED)),
    ),
    # -- a fetch out of range -------------------------------------------------------------------------------
    (
        "below the log start: read on from it, [expected, low) a gap of the same incarnation",
        lambda: (out_of_range(30, 20, 2, 50, 90).action, with_gap(out_of_range(30, 20, 2, 50, 90).position)),
        (Action.READ_ON, (50, 2, (2, 30, 50, OFFSET_OUT_OF_RANGE))),
    ),
    (
        "above the high watermark: hand it back, the claim decides",
        lambda: out_of_range(100, 100, 0, 0, 80),
        OutOfRange(Action.HAND_BACK),
    ),
    (
        "inside the log (truncated and written again before we looked): a new incarnation at the committed "
        "offset, never reading on over the rewritten offsets without a gap",
        lambda: (
            out_of_range(1_000, 960, 0, 0, 1_100).action,
            with_gap(out_of_range(1_000, 960, 0, 0, 1_100).position),
        ),
        (Action.NEW_INCARNATION, (960, 1, (1, 0, 960, LOG_REWRITTEN))),
    ),
    (
        "inside the log, committed below the log start: the new incarnation starts at the log start, no gap",
        lambda: gapless(out_of_range(60, 10, 3, 50, 90).position),
        (50, 4, 0),
    ),
    # -- a rewind -------------------------------------------------------------------------------------------
    (
        "rewind: read again from the offset, offsets up to where it stood marked as read before",
        lambda: gapless(rewind(StoredOffset(80, 1, A), BrokerPartition(0, 100, A), 30)),
        (30, 1, 80),
    ),
    (
        "rewind below the log start: from the log start",
        lambda: gapless(rewind(StoredOffset(80, 1, A), BrokerPartition(20, 100, A), 5)),
        (20, 1, 80),
    ),
    (
        "rewind again inside a window: the window keeps its end",
        lambda: gapless(rewind(StoredOffset(40, 1, A, reread_until=80), BrokerPartition(0, 100, A), 10)),
        (10, 1, 80),
    ),
    (
        "rewind to where it stands: nothing moves",
        lambda: gapless(rewind(StoredOffset(80, 1, A), BrokerPartition(0, 100, A), 80)),
        (80, 1, 80),
    ),
    # -- a skip ---------------------------------------------------------------------------------------------
    (
        "skip: read on from the offset, the range a skipped gap",
        lambda: with_gap(skip(StoredOffset(40, 2, A), BrokerPartition(0, 100, A), 70)),
        (70, 2, (2, 40, 70, SKIPPED)),
    ),
    (
        "skip to the high watermark",
        lambda: with_gap(skip(StoredOffset(40, 0, A), BrokerPartition(0, 100, A), 100)),
        (100, 0, (0, 40, 100, SKIPPED)),
    ),
    (
        "skip to where it stands: no gap",
        lambda: gapless(skip(StoredOffset(40, 0, A), BrokerPartition(0, 100, A), 40)),
        (40, 0, 0),
    ),
    ("known_id: the zero id is unknown", lambda: (known_id(ZERO), known_id(""), known_id(A)), (None, None, A)),
]


@pytest.mark.parametrize(("case", "asked", "answer"), CASES, ids=[c[0] for c in CASES])
def test_position(case: str, asked: Callable[[], object], answer: object) -> None:
    assert asked() == answer, case


REFUSED: list[tuple[str, Callable[[], object], str]] = [
    (
        "rewind forward",
        lambda: rewind(StoredOffset(40, 0, A), BrokerPartition(0, 100, A), 60),
        "forward of the committed offset 40: use skip",
    ),
    (
        "skip backward",
        lambda: skip(StoredOffset(40, 0, A), BrokerPartition(0, 100, A), 10),
        "behind the committed offset 40: use rewind",
    ),
    (
        "skip beyond the high watermark",
        lambda: skip(StoredOffset(40, 0, A), BrokerPartition(0, 100, A), 101),
        "beyond the high watermark 100",
    ),
    (
        "rewind of a recreated topic",
        lambda: rewind(StoredOffset(40, 0, A), BrokerPartition(0, 100, B), 10),
        "not the one stored \\(topic_recreated\\)",
    ),
    (
        "skip of a truncated log",
        lambda: skip(StoredOffset(400, 0, A), BrokerPartition(0, 100, A), 100),
        "not the one stored \\(log_truncated\\)",
    ),
    (
        "rewind of a partition never claimed",
        lambda: plan(None, BrokerPartition(0, 9, A), False, Target(Kind.REWIND, 0)),
        "never claimed",
    ),
]


@pytest.mark.parametrize(("case", "asked", "message"), REFUSED, ids=[c[0] for c in REFUSED])
def test_refused(case: str, asked: Callable[[], object], message: str) -> None:
    with pytest.raises(PositionRefusedError, match=message):
        asked()


def test_details_say_what_happened() -> None:
    recreated = claim(StoredOffset(1_000, 3, A), BrokerPartition(0, 2_000, B)).gap
    assert recreated is not None and "A -> B" in recreated.detail
    above = claim(StoredOffset(1_000, 0, None), BrokerPartition(0, 7, B)).gap
    assert above is not None and "above the high watermark 7" in above.detail
    skipped = skip(StoredOffset(40, 2, A), BrokerPartition(0, 100, A), 70).gap
    assert skipped is not None and skipped.detail == "poison burst"
