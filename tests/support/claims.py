"""Claims for tests that drive the worker or the sink without a coordinator."""

from __future__ import annotations

import asyncpg

from loom_ray import offsets
from loom_ray.policy.positions import BrokerPartition


async def claim_at(conn: asyncpg.Connection, topic: str, partition: int, owner: str, low: int = 0) -> offsets.Claim:
    """Claim a partition as the coordinator would, for a log that starts at ``low`` and has not been read."""

    async def broker() -> BrokerPartition:
        return BrokerPartition(low, high=2**62, topic_id=None)

    return await offsets.claim(conn, topic, partition, owner, broker, from_end=False)
