"""The consumer actor: a Ray shell over :class:`loom_ray.pipeline.IngestWorker`.

Created by the coordinator with ``num_cpus``/``memory`` from settings, so that Ray's autoscaler (KubeRay)
adds a worker pod when one cannot be placed. ``max_restarts=0``: a dead consumer is replaced by the
coordinator with fresh claims, never restarted with stale ones.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from actors.metrics import FlushMetrics
from loom_ray.offsets import Claim
from loom_ray.pipeline import IngestWorker
from loom_ray.settings import Settings


@ray.remote(max_restarts=0, max_task_retries=0)
class ConsumerActor:
    """One consumer, named ``loom-consumer-N`` in Ray (the Actors page's *Name*); its methods are called by
    the coordinator only."""

    def __init__(self, settings: Settings, name: str) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._worker = IngestWorker(settings, name, FlushMetrics(name))
        self._run: asyncio.Task[None] | None = None
        self._node = ray.get_runtime_context().get_node_id()

    async def start(self) -> None:
        """Connect to PostgreSQL and Kafka and start the consume loop."""
        await self._worker.start()
        self._run = asyncio.get_running_loop().create_task(self._worker.run())

    async def assign(self, claims: list[Claim]) -> None:
        """Take claimed partitions (one call per hand-over round)."""
        for claim in claims:
            await self._worker.assign(claim)

    async def release(self, topic: str, partition: int) -> int | None:
        """Flush and hand back a partition; the committed offset, or None if it was fenced."""
        return await self._worker.release(topic, partition)

    async def stats(self) -> dict[str, Any]:
        """Health check and progress, with the Ray node it runs on (``node``: ``release-node`` hands over the
        consumers of a node that is going away); raises the loop's error if the loop died."""
        if self._run is not None and self._run.done():
            self._run.result()
            raise RuntimeError("consume loop ended")
        return {**self._worker.stats(), "node": self._node}

    async def stop(self, drain: bool = True) -> None:
        """Stop consuming; with ``drain``, flush and commit everything buffered first."""
        await self._worker.stop(drain=drain)
        if self._run is not None:
            self._run.cancel()

    def __repr__(self) -> str:
        """The dashboard's Actors page shows this as *Repr*. Ray records it once, when the actor is created,
        so it names the consumer only; the partitions it holds and its throughput are in the job's log (the
        driver's per-consumer lines) and in the metrics (tag ``consumer``)."""
        return f"ConsumerActor({self._worker.name})"
