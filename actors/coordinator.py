"""The coordinator actor: a named, detached Ray shell over :class:`loom_ray.coordinator.Coordinator`.

One per deployment, named ``loom-coordinator-<deployment>`` (:func:`coordinator_name`). The driver creates
it, or joins it after comparing identities (:mod:`loom_ray.deployment`), and attaches with a token of its
own: only the driver that attached last drains it on exit (:class:`loom_ray.deployment.Ownership`).
``max_restarts=-1``: if its process dies, Ray restarts it, the consumers it owned die with it, and the new
one claims every partition again with a new epoch, rebuilding its view from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray.exceptions import RayActorError

from actors.consumer import ConsumerActor
from actors.metrics import ConsumerCountMetrics, LagHealthMetrics, LagMetrics, ParkedMetrics, PausedMetrics
from loom_ray.coordinator import ConsumerGone, Coordinator
from loom_ray.deployment import Ownership
from loom_ray.offsets import Claim
from loom_ray.settings import Settings

log = logging.getLogger(__name__)
COORDINATOR_PREFIX = "loom-coordinator-"


def coordinator_name(deployment: str) -> str:
    """The Ray name of ``deployment``'s coordinator."""
    return f"{COORDINATOR_PREFIX}{deployment}"


class RayConsumer:
    """A :class:`loom_ray.coordinator.ConsumerHandle` backed by a :class:`ConsumerActor`."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.name = name
        self._actor = ConsumerActor.options(  # type: ignore[attr-defined]
            name=name,
            namespace=settings.ray_namespace,
            num_cpus=settings.actor_num_cpus,
            memory=settings.actor_memory_bytes or None,
        ).remote(settings, name)

    async def _call(self, method: str, timeout_s: float | None, *args: Any) -> Any:
        try:
            return await asyncio.wait_for(getattr(self._actor, method).remote(*args), timeout_s)
        except RayActorError as exc:
            raise ConsumerGone(self.name) from exc

    async def start(self, timeout_s: float | None) -> None:
        await self._call("start", timeout_s)

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
        ray.kill(self._actor, no_restart=True)


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0)
class CoordinatorActor:
    """The one coordinator of a deployment; see :class:`loom_ray.coordinator.Coordinator`."""

    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._lag = LagMetrics()
        self._health = LagHealthMetrics()
        self._parked = ParkedMetrics()
        self._paused = PausedMetrics()
        self._consumers = ConsumerCountMetrics()
        self._core = Coordinator(
            settings,
            lambda name: RayConsumer(settings, name),
            self._lag.publish,
            self._health.set,
            self._parked.set,
            on_consumers=self._consumers.set,
            on_paused=self._paused.set,
        )
        self._ownership = Ownership()
        # Async actors run __init__ on their event loop: start at once, also after a restart by Ray.
        loop = asyncio.get_running_loop()
        self._started = loop.create_task(self._core.start())
        self._run = loop.create_task(self._run_when_started())

    async def _run_when_started(self) -> None:
        await self._started
        await self._core.run()

    def identity(self) -> dict[str, Any]:
        """What this deployment is (:class:`loom_ray.deployment.Identity`) and whether it is being stopped;
        answers at once, even while the coordinator starts."""
        return {**self._core.identity.as_dict(), "stopping": self._ownership.stopping}

    def attach(self, token: str) -> bool:
        """A driver (``token``) takes this coordinator over; False while it is being stopped."""
        return self._ownership.attach(token)

    async def status(self, token: str | None = None) -> dict[str, Any]:
        """Progress snapshot; waits for start-up and raises its error if it failed. A watching driver
        (``token``) owns the coordinator again when nobody does (after Ray restarted it)."""
        if token is not None:
            self._ownership.claim(token)
        await self._started
        return await self._core.status()

    async def resize(self, actors: int) -> int:
        """Change the number of consumers with a live hand-off of the moved partitions."""
        await self._started
        return await self._core.resize(actors)

    async def unpark(self, partitions: list[tuple[str, int]] | None, by: str | None) -> dict[str, dict[str, Any]]:
        """Let parked partitions (``None``: all) be claimed again; what was unparked (see
        :meth:`loom_ray.coordinator.Coordinator.unpark`)."""
        await self._started
        return await self._core.unpark(partitions, by)

    async def release_node(self, node: str) -> list[str]:
        """Hand over the partitions of the consumers on ``node`` and stop them (see
        :meth:`loom_ray.coordinator.Coordinator.release_node`)."""
        await self._started
        return await self._core.release_node(node)

    async def shutdown(self, token: str | None = None) -> bool:
        """Drain every consumer and stop, if asked by the driver that owns this coordinator (``token``) or by an
        operator (None); False, doing nothing, for a driver another one took over from."""
        if not self._ownership.may_stop(token):
            return False
        await self._started
        await self._core.shutdown()
        self._run.cancel()
        return True

    def __repr__(self) -> str:
        return "Coordinator"
