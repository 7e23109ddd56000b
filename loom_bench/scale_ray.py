"""Consumer handles as Ray actors for :mod:`loom_bench.scale` (``--handle-kind ray``).

Each handle is a ``num_cpus=0`` actor wrapping a :class:`~loom_bench.scale_probes.FakeConsumer`, called the
way the coordinator's :class:`actors.coordinator.RayConsumer` calls a consumer actor: one remote call per
method, bounded by its timeout, a dead actor (``RayActorError``) raised as
:class:`~loom_ray.coordinator.ConsumerGone`. ``die()`` kills the actor for real, so the reclaim phase
measures the coordinator noticing an actual actor death. Every actor is a worker process of the local Ray
(about 60-100 MiB of RSS each), so the count fits the machine's memory, not 200 on a shared 24 GiB box.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray.exceptions import RayActorError

from loom_bench.scale_probes import FakeConsumer
from loom_ray.coordinator import ConsumerGone
from loom_ray.offsets import Claim


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class FakeConsumerActor:
    """A FakeConsumer in an actor process of its own."""

    def __init__(self, name: str) -> None:
        self._fake = FakeConsumer(name)

    async def assign(self, claims: list[Claim]) -> None:
        await self._fake.assign(claims, 0.0)

    async def release(self, topic: str, partition: int) -> int | None:
        return await self._fake.release(topic, partition, 0.0)

    async def stats(self) -> dict[str, Any]:
        return await self._fake.stats(0.0)

    async def stop(self, drain: bool) -> None:
        await self._fake.stop(drain, 0.0)

    def held(self) -> list[tuple[str, int]]:
        """The partitions held now."""
        return list(self._fake.held)


class RayFakeConsumer:
    """A :class:`~loom_ray.coordinator.ConsumerHandle` over a :class:`FakeConsumerActor`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gone = False
        self.killed = False
        self._actor = FakeConsumerActor.remote(name)  # type: ignore[attr-defined]

    async def _call(self, method: str, timeout_s: float | None, *args: Any) -> Any:
        try:
            return await asyncio.wait_for(getattr(self._actor, method).remote(*args), timeout_s)
        except RayActorError as exc:
            raise ConsumerGone(self.name) from exc

    async def start(self, timeout_s: float | None) -> None:
        """Wait until the actor answers (its process started)."""
        await self._call("held", timeout_s)

    async def assign(self, claims: list[Claim], timeout_s: float) -> None:
        await self._call("assign", timeout_s, claims)

    async def release(self, topic: str, partition: int, timeout_s: float) -> int | None:
        result: int | None = await self._call("release", timeout_s, topic, partition)
        return result

    async def stats(self, timeout_s: float) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("stats", timeout_s)
        return result

    async def stop(self, drain: bool, timeout_s: float) -> None:
        await self._call("stop", timeout_s, drain)

    def kill(self) -> None:
        """Kill the actor (the coordinator's end for a consumer it stops or gives up on)."""
        self.killed = True
        ray.kill(self._actor, no_restart=True)

    def die(self) -> None:
        """Kill the actor behind the coordinator's back, as a crash would."""
        self.gone = True
        ray.kill(self._actor, no_restart=True)

    async def holding(self) -> list[tuple[str, int]]:
        """The partitions the actor holds now."""
        held: list[tuple[str, int]] = await self._call("held", 30.0)
        return held
