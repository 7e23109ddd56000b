"""In-process consumer handles for driving the real Coordinator without Ray."""

from __future__ import annotations

from typing import Any

from loom_ray.offsets import Claim


class Holder:
    """An in-process consumer handle: keeps the claims it is given and hands them back at once, except
    the partitions in ``fenced``, whose release answers as a fenced one does (None)."""

    def __init__(self, name: str, fenced: set[int]) -> None:
        self.name = name
        self.claims: dict[tuple[str, int], Claim] = {}
        self._fenced = fenced

    async def start(self, timeout_s: float) -> None:
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
