"""Crash-loop containment: when a partition whose flush keeps failing is claimed again, when it is parked, and
when a consumer actor that died is replaced.

Pure (no Ray, no I/O, no clock of its own: times are seconds passed in); the coordinator applies it every
round (:mod:`loom_ray.coordinator`).

**Partitions.** A *fault* is a partition a consumer dropped because its own flush failed for a reason nobody
classified: a bug or a broken invariant (``IngestWorker.stats()["faults"]``). Its *signature* is the
exception class and SQLSTATE: the same bug fails the same way every time, while its message may name another
offset. Per partition, :func:`record` keeps the faults since it was last clean and :func:`decide` says:

- no fault, or none for :data:`CLEAN_AFTER_S` (it has been committing since): claim it now; it starts clean;
- :data:`PARK_AFTER_FAULTS` faults with one signature within :data:`FAULT_WINDOW_S`: park it. It is not
  claimed again until a person unparks it (``python -m loom_ray.ctl unpark``); its place (the offset row) is
  kept, its neighbours keep flowing;
- otherwise: claim it again :func:`reclaim_delay` seconds after its latest fault.

A bug that fails every flush of a partition therefore parks it after about 5 + 10 = 15 seconds of backoff and
three flushes; faults that keep changing signature are claimed again ever more slowly, at most every
:data:`RECLAIM_CAP_S`. :class:`ParkingLot` keeps the histories of every faulted partition and the parked
ones (:class:`Parked`: why and since when).

**Consumers.** A consumer actor that dies (RayActorError, silent past the session timeout, or failing to
start) is replaced at once the first time. Deaths in a row, each without a healthy interval before it, delay
the next start (:func:`record_death`, :func:`restart_at`) instead of replacing it at once for ever. A healthy
interval is a consumer that committed records before it died (it was doing its work: a random crash, a kill,
a lost node), or :data:`RESTART_HEALTHY_S` without a death; a consumer that dies before it commits anything,
again and again, is a crash loop. The partitions of a dead consumer do not wait: they move to the live
consumers at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from loom_ray.policy.assignment import TopicPartition
from loom_ray.policy.backoff import backoff_ceiling

PARK_AFTER_FAULTS = 3  # faults with one signature ...
FAULT_WINDOW_S = 600.0  # ... within 10 minutes park a partition
CLEAN_AFTER_S = 600.0  # no fault for 10 minutes: the partition starts clean (its history is forgotten)
# Claiming again after the n-th fault since the partition was clean: 5 * 2**(n - 1) s, at most 5 minutes. The cap
# stays below CLEAN_AFTER_S, so a partition waiting out its backoff is never forgotten meanwhile.
RECLAIM_BASE_S = 5.0
RECLAIM_CAP_S = 300.0
# Replacing a consumer after the n-th death in a row: at once for the first, then 5 * 2**(n - 2) s, at most 5
# minutes. A death after RESTART_HEALTHY_S without one, or of a consumer that had committed records, starts anew.
RESTART_BASE_S = 5.0
RESTART_CAP_S = 300.0
RESTART_HEALTHY_S = 600.0

Signature = tuple[str, str | None]  # (exception class, SQLSTATE or None)


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault of a partition, as the coordinator read it: when (its clock, seconds), the signature, and
    the error (``"Class: first line of message"``) to show."""

    at: float
    signature: Signature
    error: str


@dataclass(frozen=True, slots=True)
class FaultHistory:
    """A partition's faults since it was last clean: how many, the first one's time, and the faults within
    :data:`FAULT_WINDOW_S` of the newest (oldest first, the newest last)."""

    count: int
    first_at: float
    recent: tuple[Fault, ...]

    @property
    def newest(self) -> Fault:
        return self.recent[-1]

    def repeats(self) -> int:
        """How many of the recent faults have the newest one's signature (the newest included)."""
        return sum(1 for fault in self.recent if fault.signature == self.newest.signature)


class Action(enum.Enum):
    """What to do with a partition now."""

    CLAIM = "claim"  # claim it (again) now
    WAIT = "wait"  # claim it again at Decision.at, not before
    PARK = "park"  # do not claim it until a person unparks it


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    at: float | None = None  # WAIT: when it may be claimed again


def reclaim_delay(count: int) -> float:
    """Seconds between a partition's ``count``-th fault since it was clean (from 1) and its next claim."""
    return backoff_ceiling(count - 1, RECLAIM_BASE_S, RECLAIM_CAP_S)


def record(history: FaultHistory | None, fault: Fault) -> FaultHistory:
    """The history after ``fault``. One that comes :data:`CLEAN_AFTER_S` or more after the newest starts a
    new history (the partition was clean in between); faults older than :data:`FAULT_WINDOW_S` before it
    leave the recent ones."""
    if history is None or fault.at - history.newest.at >= CLEAN_AFTER_S:
        return FaultHistory(1, fault.at, (fault,))
    recent = tuple(f for f in history.recent if f.at >= fault.at - FAULT_WINDOW_S)
    return FaultHistory(history.count + 1, history.first_at, (*recent, fault))


def decide(history: FaultHistory | None, now: float) -> Decision:
    """Claim, wait or park a partition with this history (None: never faulted); see the module docstring.
    Parking wins over being clean: a parked partition stays parked however long ago its faults were, so the
    coordinator moves it out of the histories once this answers PARK."""
    if history is None:
        return Decision(Action.CLAIM)
    if history.repeats() >= PARK_AFTER_FAULTS:
        return Decision(Action.PARK)
    if is_clean(history, now):
        return Decision(Action.CLAIM)
    at = history.newest.at + reclaim_delay(history.count)
    return Decision(Action.CLAIM) if now >= at else Decision(Action.WAIT, at)


def is_clean(history: FaultHistory, now: float) -> bool:
    """Whether the partition has had no fault for :data:`CLEAN_AFTER_S`: it has been committing since (or
    waiting to be claimed, which never lasts that long), and its history can be forgotten."""
    return now - history.newest.at >= CLEAN_AFTER_S


@dataclass(frozen=True, slots=True)
class Deaths:
    """Consumer deaths in a row and the latest's time. Deaths noticed in one round count once: several actors
    lost together (a node) are one event."""

    streak: int
    last_at: float


def record_death(previous: Deaths | None, now: float, committed: bool) -> Deaths:
    """The streak after consumers died at ``now``; ``committed``: one of them had committed records since it
    started (a healthy interval: the streak starts anew, as it does :data:`RESTART_HEALTHY_S` after a death)."""
    if previous is None or committed or now - previous.last_at >= RESTART_HEALTHY_S:
        return Deaths(1, now)
    return Deaths(previous.streak + 1, now)


def restart_delay(streak: int) -> float:
    """Seconds between the ``streak``-th death in a row (from 1) and the next consumer start: 0 for the first."""
    return 0.0 if streak <= 1 else backoff_ceiling(streak - 2, RESTART_BASE_S, RESTART_CAP_S)


def restart_at(deaths: Deaths | None) -> float:
    """The earliest time a consumer may be started (any time, as ``-inf``, without deaths)."""
    return float("-inf") if deaths is None else deaths.last_at + restart_delay(deaths.streak)


@dataclass(frozen=True, slots=True)
class Parked:
    """Why and since when a partition is parked (times in epoch seconds)."""

    error: str  # the newest fault's "ExceptionClass: first line of its message"
    faults: int  # faults since the partition was last clean
    first_fault_at: float
    parked_at: float

    def as_dict(self) -> dict[str, Any]:
        """``status()["parked"]``'s entry: ``error``, ``faults``, ``since`` (when it was parked)."""
        return {"error": self.error, "faults": self.faults, "since": self.parked_at}


@dataclass(slots=True)
class ParkingLot:
    """The faulted partitions a coordinator knows: each one's fault history, and the parked ones.

    Fed with the faults the consumers report (:meth:`fault`), planned once per round (:meth:`plan`), asked
    which partitions wait out a backoff (:meth:`waiting`). Pure state: the coordinator reads and writes
    ``loom_parked`` around it (:mod:`loom_ray.parked`) and unparks on an operator's request (:meth:`unpark`).
    """

    histories: dict[TopicPartition, FaultHistory] = field(default_factory=dict)
    parked: dict[TopicPartition, Parked] = field(default_factory=dict)
    unsaved: set[TopicPartition] = field(default_factory=set)  # parked here, not yet written to loom_parked

    def fault(self, tp: TopicPartition, fault: Fault) -> FaultHistory | None:
        """Record a fault of ``tp``; its history now, or None when ``tp`` is parked already (a late report)."""
        if tp in self.parked:
            return None
        self.histories[tp] = record(self.histories.get(tp), fault)
        return self.histories[tp]

    def plan(self, now: float) -> list[TopicPartition]:
        """Park each partition whose history says so (:func:`decide`) and forget the histories of those clean
        again; the partitions parked now."""
        parked = []
        for tp, history in list(self.histories.items()):
            if decide(history, now).action is Action.PARK:
                del self.histories[tp]
                self.parked[tp] = Parked(history.newest.error, history.count, history.first_at, now)
                self.unsaved.add(tp)
                parked.append(tp)
            elif is_clean(history, now):
                del self.histories[tp]
        return parked

    def waiting(self, now: float) -> dict[TopicPartition, float]:
        """The partitions whose backoff lasts at ``now``, each with the time it may be claimed again."""
        found = {}
        for tp, history in self.histories.items():
            decision = decide(history, now)
            if decision.action is Action.WAIT and decision.at is not None:
                found[tp] = decision.at
        return found

    def unpark(self, tp: TopicPartition) -> Parked:
        """Let ``tp`` be claimed again, clean; what it was parked for. Raises KeyError when it is not parked."""
        self.unsaved.discard(tp)
        return self.parked.pop(tp)
