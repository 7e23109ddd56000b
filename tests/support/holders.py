"""In-process consumer handles for driving the real Coordinator without Ray."""

from __future__ import annotations

import time
from typing import Any

from loom_ray.coordinator import ConsumerGone
from loom_ray.offsets import Claim


class Holder:
    """An in-process consumer handle: keeps the claims it is given and hands them back at once, except
    the partitions in ``fenced``, whose release answers as a fenced one does (None)."""

    def __init__(self, name: str, fenced: set[int]) -> None:
        self.name = name
        self.claims: dict[tuple[str, int], Claim] = {}
        self._fenced = fenced

    async def start(self, timeout_s: float | None) -> None:
        return None

    async def assign(self, claims: list[Claim], timeout_s: float) -> None:
        self.claims.update({(claim.topic, claim.partition): claim for claim in claims})

    async def release(self, topic: str, partition: int, timeout_s: float) -> int | None:
        claim = self.claims.pop((topic, partition))
        return None if partition in self._fenced else claim.next_offset

    async def stats(self, timeout_s: float) -> dict[str, Any]:
        held = {f"{t}[{p}]": {"epoch": c.epoch, "committed": c.next_offset} for (t, p), c in self.claims.items()}
        return {"partitions": held}

    async def stop(self, drain: bool, timeout_s: float) -> None:
        return None

    def kill(self) -> None:
        return None


class FaultyHolder(Holder):
    """A :class:`Holder` whose partitions can fault and which can die. A fault drops the partition and reports
    it in ``stats()["faults"]`` as :class:`loom_ray.pipeline.IngestWorker` does (a ``seq`` per holder, from 1,
    kept in every later report); ``rows`` is what it reports as committed since it started; after :meth:`die`
    every call raises ConsumerGone, as a dead actor's does."""

    def __init__(self, name: str) -> None:
        super().__init__(name, fenced=set())
        self.faults: list[dict[str, Any]] = []
        self.rows = 0
        self.gone = False

    def fault(self, topic: str, partition: int, error_class: str = "UniqueViolationError") -> None:
        """Drop ``topic[partition]`` because its flush failed with ``error_class`` (SQLSTATE 23505)."""
        claim = self.claims.pop((topic, partition))
        self.faults.append(
            {
                "seq": len(self.faults) + 1,
                "topic": topic,
                "partition": partition,
                "epoch": claim.epoch,
                "error_class": error_class,
                "sqlstate": "23505",
                "error": f'{error_class}: duplicate key value violates unique constraint "loom_messages_pkey"',
                "at": time.time(),
            }
        )

    def die(self) -> None:
        self.gone = True

    async def stats(self, timeout_s: float) -> dict[str, Any]:
        if self.gone:
            raise ConsumerGone(self.name)
        totals = {"rows": self.rows, "dead_letters": 0}
        return {**await super().stats(timeout_s), "faults": list(self.faults), "totals": totals}
