"""loom_ray/policy/parking.py: when a faulted partition is claimed again or parked, and when a dead consumer is
replaced. Arithmetic on explicit times; the maths in the comments."""

from __future__ import annotations

import pytest

from loom_ray.policy.parking import (
    CLEAN_AFTER_S,
    FAULT_WINDOW_S,
    PARK_AFTER_FAULTS,
    RECLAIM_CAP_S,
    RESTART_HEALTHY_S,
    Action,
    Deaths,
    Decision,
    Fault,
    FaultHistory,
    Parked,
    ParkingLot,
    decide,
    reclaim_delay,
    record,
    record_death,
    restart_at,
    restart_delay,
)

UNIQUE = ("UniqueViolationError", "23505")
ASSERTION = ("AssertionError", None)


def history(*faults: tuple[float, tuple[str, str | None]]) -> FaultHistory:
    """The history after these (time, signature) faults, recorded in order."""
    found: FaultHistory | None = None
    for at, signature in faults:
        found = record(found, Fault(at, signature, f"{signature[0]}: at {at}"))
    assert found is not None
    return found


def test_the_constants_say_what_the_issue_asks() -> None:
    assert (PARK_AFTER_FAULTS, FAULT_WINDOW_S, CLEAN_AFTER_S) == (3, 600.0, 600.0)
    # A partition waiting out its backoff must not be forgotten meanwhile (it would start clean, never park).
    assert RECLAIM_CAP_S < CLEAN_AFTER_S


@pytest.mark.parametrize(
    ("count", "delay"),
    [
        (1, 5.0),  # 5 * 2**0
        (2, 10.0),  # 5 * 2**1
        (3, 20.0),
        (6, 160.0),  # 5 * 2**5
        (7, 300.0),  # 5 * 2**6 = 320, capped at 300
        (1000, 300.0),
    ],
)
def test_reclaim_delay(count: int, delay: float) -> None:
    assert reclaim_delay(count) == delay


def test_a_partition_that_never_faulted_is_claimed() -> None:
    assert decide(None, 0.0) == Decision(Action.CLAIM)


@pytest.mark.parametrize(
    ("faults", "now", "expected"),
    [
        # One fault at 100: claimed again at 100 + 5 = 105, not before.
        ([(100, UNIQUE)], 104.9, Decision(Action.WAIT, 105.0)),
        ([(100, UNIQUE)], 105.0, Decision(Action.CLAIM)),
        # Two: the second at 110 waits 10 s, to 120.
        ([(100, UNIQUE), (110, UNIQUE)], 119.0, Decision(Action.WAIT, 120.0)),
        ([(100, UNIQUE), (110, UNIQUE)], 120.0, Decision(Action.CLAIM)),
        # Three with one signature within 10 minutes: parked, whenever asked.
        ([(100, UNIQUE), (110, UNIQUE), (125, UNIQUE)], 125.0, Decision(Action.PARK)),
        ([(100, UNIQUE), (110, UNIQUE), (125, UNIQUE)], 100_000.0, Decision(Action.PARK)),
        # The window includes its end: 0, 300 and 600 are within 10 minutes of each other.
        ([(0, UNIQUE), (300, UNIQUE), (600, UNIQUE)], 600.0, Decision(Action.PARK)),
        # 600.5 - 600 = 0.5 > 0: the first fault left the window, two remain (the third fault waits 5 * 2**2 = 20 s).
        ([(0, UNIQUE), (300, UNIQUE), (600.5, UNIQUE)], 600.5, Decision(Action.WAIT, 620.5)),
        # Three faults, two signatures: no signature repeats three times; backoff 5 * 2**2 = 20 s.
        ([(100, UNIQUE), (110, ASSERTION), (125, UNIQUE)], 130.0, Decision(Action.WAIT, 145.0)),
        # ... a third of one signature among others parks it.
        ([(100, UNIQUE), (110, ASSERTION), (125, UNIQUE), (150, ASSERTION), (200, UNIQUE)], 200, Decision(Action.PARK)),
        # No fault for 10 minutes: clean again, claimed now.
        ([(100, UNIQUE), (110, UNIQUE)], 710.0, Decision(Action.CLAIM)),
    ],
)
def test_decide(faults: list[tuple[float, tuple[str, str | None]]], now: float, expected: Decision) -> None:
    assert decide(history(*faults), now) == expected


def test_a_fault_after_ten_clean_minutes_starts_a_new_history() -> None:
    # 100 and 110, then nothing until 710 = 110 + 600: the third fault counts as the first again.
    found = history((100, UNIQUE), (110, UNIQUE), (710, UNIQUE))
    assert (found.count, found.first_at, [f.at for f in found.recent]) == (1, 710, [710])
    assert decide(found, 710) == Decision(Action.WAIT, 715.0)  # 710 + 5, not parked


def test_faults_a_little_less_than_ten_minutes_apart_keep_the_history_but_not_the_window() -> None:
    # Every 590 s, one signature: never three within 600 s, but never clean either, so the backoff grows.
    found = history((0, UNIQUE), (590, UNIQUE), (1180, UNIQUE), (1770, UNIQUE))
    assert found.count == 4 and found.first_at == 0
    assert [f.at for f in found.recent] == [1180, 1770]  # 590 is 1180 s before 1770: out of the window
    assert decide(found, 1770) == Decision(Action.WAIT, 1770 + 40.0)  # 5 * 2**3


def test_the_newest_fault_carries_the_error_shown() -> None:
    found = history((1, UNIQUE), (2, ASSERTION))
    assert found.newest.error == "AssertionError: at 2" and found.repeats() == 1


@pytest.mark.parametrize(
    ("streak", "delay"),
    [
        (1, 0.0),  # the first death: replaced at once
        (2, 5.0),  # 5 * 2**0
        (3, 10.0),
        (7, 160.0),  # 5 * 2**5
        (8, 300.0),  # 5 * 2**6 = 320, capped at 300
    ],
)
def test_restart_delay(streak: int, delay: float) -> None:
    assert restart_delay(streak) == delay


@pytest.mark.parametrize(
    ("deaths", "expected_streak", "expected_at"),
    [
        # (time, whether the consumer had committed records): deaths of consumers that committed nothing.
        ([(100.0, False)], 1, 100.0),  # replaced at once
        ([(100.0, False), (130.0, False)], 2, 135.0),  # 130 + 5
        ([(100.0, False), (130.0, False), (150.0, False)], 3, 160.0),  # 150 + 10
        ([(100.0, False), (130.0, False), (150.0, False), (170.0, False)], 4, 190.0),  # 170 + 20
        # 10 minutes without a death between 150 and 750: a new streak, replaced at once.
        ([(100.0, False), (150.0, False), (150.0 + RESTART_HEALTHY_S, False)], 1, 750.0),
        ([(100.0, False), (150.0, False), (749.0, False)], 3, 759.0),  # 749 - 150 = 599 < 600: in a row; 749 + 10
        # A consumer that had committed records died (a kill, a random crash): a new streak, replaced at once.
        ([(100.0, False), (130.0, False), (150.0, True)], 1, 150.0),
        ([(100.0, False), (130.0, True), (150.0, False)], 2, 155.0),  # in a row again after it: 150 + 5
    ],
)
def test_consecutive_deaths_delay_the_next_start(
    deaths: list[tuple[float, bool]], expected_streak: int, expected_at: float
) -> None:
    found: Deaths | None = None
    for at, committed in deaths:
        found = record_death(found, at, committed)
    assert found is not None and found.streak == expected_streak
    assert restart_at(found) == expected_at


def test_without_deaths_a_consumer_may_start_at_any_time() -> None:
    assert restart_at(None) == float("-inf")


def test_the_lot_parks_after_three_faults_ignores_late_ones_and_unparks_clean() -> None:
    lot = ParkingLot()
    tp = ("orders", 3)
    for at in (100.0, 106.0, 117.0):  # each after its backoff: 100 + 5, 106 + 10
        assert lot.plan(at) == []
        lot.fault(tp, Fault(at, UNIQUE, "UniqueViolationError: duplicate key"))
    assert lot.waiting(117.0) == {}  # the third fault's history parks, it does not wait
    assert lot.plan(117.0) == [tp]
    assert lot.parked[tp] == Parked("UniqueViolationError: duplicate key", 3, 100.0, 117.0)
    assert lot.unsaved == {tp} and tp not in lot.histories
    assert lot.fault(tp, Fault(118.0, UNIQUE, "late")) is None  # reported after it was parked: ignored
    assert lot.plan(10_000.0) == [] and tp in lot.parked  # parked however long ago its faults were
    assert lot.unpark(tp).faults == 3
    assert tp not in lot.parked and not lot.unsaved and tp not in lot.histories  # claimed again, clean


def test_the_lot_says_who_waits_and_forgets_partitions_clean_again() -> None:
    lot = ParkingLot()
    lot.fault(("t", 0), Fault(100.0, UNIQUE, "e"))
    lot.fault(("t", 1), Fault(100.0, ASSERTION, "e"))
    lot.fault(("t", 1), Fault(103.0, ASSERTION, "e"))
    assert lot.waiting(104.0) == {("t", 0): 105.0, ("t", 1): 113.0}  # 100 + 5; 103 + 10
    assert lot.waiting(105.0) == {("t", 1): 113.0}
    lot.plan(702.9)  # t[0]: 702.9 - 100 = 602.9 >= 600, clean; t[1]: 702.9 - 103 = 599.9 < 600, kept
    assert set(lot.histories) == {("t", 1)}
    lot.plan(703.0)
    assert lot.histories == {}


def test_unparking_a_partition_that_is_not_parked_raises() -> None:
    with pytest.raises(KeyError):
        ParkingLot().unpark(("t", 0))
