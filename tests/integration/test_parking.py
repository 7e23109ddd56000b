"""Crash-loop containment in the coordinator, in-process without Ray, on the real PostgreSQL and broker (claims
need both). Consumer handles (:class:`tests.support.holders.FaultyHolder`) fault partitions and die on cue, and
the coordinator's clock is the test's, so every backoff is exact:

- a faulted partition is claimed again after its backoff (5 s, then 10 s), not before, each fault counted once;
- the third fault with one error parks it: ``status()["parked"]``, a ``loom_parked`` row, a ``parked`` alert,
  its offset row untouched, the consumer that faulted it kept, its neighbours owned by live consumers (also when
  a consumer holding them dies); a restarted coordinator keeps it parked; ``unpark()`` lets it be claimed again;
- consumers that die in a row without committing anything are replaced after 0, 5, 10 s, their partitions
  moving to the survivors at once; one that had committed records, or 10 minutes without a death, starts anew.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from confluent_kafka.admin import AdminClient, NewTopic

from loom_ray.coordinator import Coordinator
from loom_ray.settings import Settings
from tests.integration.conftest import Body
from tests.support.holders import FaultyHolder
from tests.support.services import Endpoints

PARTITIONS = 4
T0 = 1_800_000_000.0  # the test clock's start, epoch seconds
_OFFSET_SQL = 'SELECT epoch, next_offset, owner FROM loom_offsets WHERE topic = $1 AND "partition" = $2'
_ALERT_SQL = """
SELECT detail FROM v_consumer_alerts WHERE topic = $1 AND "partition" = $2 AND alert_kind = 'parked'
"""


class Clock:
    """The coordinator's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    """A coordinator over a 4-partition topic with 2 consumer handles, its clock and every handle it made."""

    endpoints: Endpoints
    schema: str
    topic: str
    clock: Clock = field(default_factory=Clock)
    holders: list[FaultyHolder] = field(default_factory=list)
    parked_gauge: dict[tuple[str, int], bool] = field(default_factory=dict)

    def coordinator(self) -> Coordinator:
        settings = Settings.from_env(
            kafka_bootstrap_servers=self.endpoints.kafka,
            db_dsn=self.endpoints.dsn,
            db_schema=self.schema,
            kafka_topics=(self.topic,),
            min_actors=2,
            max_actors=2,
            scale_catchup_s=0,
            lag_sample_interval_s=0.01,
        )

        def factory(name: str) -> FaultyHolder:
            self.holders.append(FaultyHolder(name))
            return self.holders[-1]

        def gauge(topic: str, partition: int, parked: bool) -> None:
            self.parked_gauge[(topic, partition)] = parked

        return Coordinator(settings, factory, on_parked=gauge, clock=self.clock)

    def holder_of(self, partition: int) -> FaultyHolder:
        [holder] = [h for h in self.holders if not h.gone and (self.topic, partition) in h.claims]
        return holder

    def live(self) -> list[FaultyHolder]:
        return [h for h in self.holders if not h.gone]


async def _rounds(coordinator: Coordinator, count: int = 1) -> dict[str, Any]:
    for _ in range(count):
        await coordinator.reconcile()
    return await coordinator.status()


def _run(endpoints: Endpoints, in_schema: Callable[[Body], None], topic: str, test: Callable[..., Any]) -> None:
    admin = AdminClient({"bootstrap.servers": endpoints.kafka})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)

    async def body(schema: str, conn: asyncpg.Connection) -> None:
        await test(Rig(endpoints, schema, topic), conn)

    in_schema(body)


async def _fault_three_times(rig: Rig, coordinator: Coordinator, conn: asyncpg.Connection) -> None:
    """Partition 1 faults three times with one error, each time once its backoff has passed."""
    key = f"{rig.topic}[1]"
    status = await _rounds(coordinator, 2)
    assert status["assigned"] == PARTITIONS and len(rig.live()) == 2
    first = rig.holder_of(1)
    first.fault(rig.topic, 1)
    status = await _rounds(coordinator)
    assert key not in status["owners"] and status["waiting"][key]["claim_in_s"] == 5.0  # 5 * 2**0
    assert status["assigned"] == PARTITIONS - 1 and not status["drained"]
    rig.clock.now += 4.9
    assert key not in (await _rounds(coordinator, 2))["owners"]  # the same fault read again: still one
    rig.clock.now += 0.1  # T0 + 5
    epoch = (await conn.fetchrow(_OFFSET_SQL, rig.topic, 1))["epoch"]
    assert key in (await _rounds(coordinator))["owners"]
    assert (await conn.fetchrow(_OFFSET_SQL, rig.topic, 1))["epoch"] == epoch + 1  # claimed again
    rig.holder_of(1).fault(rig.topic, 1)
    status = await _rounds(coordinator)
    assert status["waiting"][key] == {"error": first.faults[0]["error"], "faults": 2, "claim_in_s": 10.0}
    rig.clock.now += 10.0  # T0 + 15
    assert key in (await _rounds(coordinator))["owners"]
    rig.holder_of(1).fault(rig.topic, 1)


def test_a_partition_faulting_again_and_again_is_parked_and_unparked(
    endpoints: Endpoints, in_schema: Callable[[Body], None], topic_name: str
) -> None:
    async def test(rig: Rig, conn: asyncpg.Connection) -> None:
        coordinator = rig.coordinator()
        await coordinator.start()
        key = f"{rig.topic}[1]"
        try:
            await _fault_three_times(rig, coordinator, conn)
            place = await conn.fetchrow(_OFFSET_SQL, rig.topic, 1)
            status = await _rounds(coordinator)
            assert status["parked"] == {
                key: {"error": rig.holders[0].faults[0]["error"], "faults": 3, "since": T0 + 15}
            }
            assert key not in status["owners"] and status["assigned"] == PARTITIONS - 1 and not status["drained"]
            assert rig.parked_gauge[(rig.topic, 1)] is True and rig.parked_gauge[(rig.topic, 0)] is False
            assert len(rig.holders) == 2  # no consumer restarted: the one that faulted keeps its other partitions
            assert {owner for k, owner in status["owners"].items()} == {h.name for h in rig.holders}
            row = await conn.fetchrow(
                """SELECT error, faults, extract(epoch FROM first_fault_at) AS first, unparked_at
                   FROM loom_parked WHERE topic = $1 AND "partition" = 1""",
                rig.topic,
            )
            assert (row["error"], row["faults"], float(row["first"]), row["unparked_at"]) == (
                rig.holders[0].faults[0]["error"],
                3,
                T0,
                None,
            )
            assert "after 3 faults" in await conn.fetchval(_ALERT_SQL, rig.topic, 1)
            # Parked for good: an hour later and a few rounds on, nothing claimed it and its place is as it was.
            rig.clock.now += 3600
            assert key in (await _rounds(coordinator, 3))["parked"]
            assert await conn.fetchrow(_OFFSET_SQL, rig.topic, 1) == place
            # Its neighbours stay with live consumers, also when the one holding them dies.
            victim = rig.holder_of(0)
            victim.die()
            status = await _rounds(coordinator)
            assert status["assigned"] == PARTITIONS - 1 and victim.name not in status["owners"].values()
            assert key in status["parked"]
            # A restarted coordinator keeps it parked.
            await coordinator.shutdown()
            coordinator = rig.coordinator()
            await coordinator.start()
            status = await _rounds(coordinator, 2)
            assert key in status["parked"] and key not in status["owners"]
            assert status["assigned"] == PARTITIONS - 1
            assert (await conn.fetchrow(_OFFSET_SQL, rig.topic, 1))["epoch"] == place["epoch"]
            # Unparked: claimed again at the next round, from where it stopped.
            unparked = await coordinator.unpark([(rig.topic, 1), (rig.topic, 2)], by="ops")
            assert list(unparked) == [key] and unparked[key]["unparked_by"] == "ops" and unparked[key]["faults"] == 3
            assert rig.parked_gauge[(rig.topic, 1)] is False
            status = await _rounds(coordinator)
            assert key in status["owners"] and status["parked"] == {} and status["assigned"] == PARTITIONS
            assert (await conn.fetchrow(_OFFSET_SQL, rig.topic, 1))["next_offset"] == place["next_offset"]
            assert await conn.fetchval(_ALERT_SQL, rig.topic, 1) is None
            closed = await conn.fetchrow('SELECT unparked_at, unparked_by FROM loom_parked WHERE "partition" = 1')
            assert closed["unparked_at"] is not None and closed["unparked_by"] == "ops"
            assert await coordinator.unpark(None) == {}
        finally:
            await coordinator.shutdown()

    _run(endpoints, in_schema, topic_name, test)


def test_unpark_all_records_the_database_role(
    endpoints: Endpoints, in_schema: Callable[[Body], None], topic_name: str
) -> None:
    async def test(rig: Rig, conn: asyncpg.Connection) -> None:
        coordinator = rig.coordinator()
        await coordinator.start()
        try:
            await _fault_three_times(rig, coordinator, conn)
            assert f"{rig.topic}[1]" in (await _rounds(coordinator))["parked"]
            unparked = await coordinator.unpark(None)
            assert unparked[f"{rig.topic}[1]"]["unparked_by"] == await conn.fetchval("SELECT current_user")
        finally:
            await coordinator.shutdown()

    _run(endpoints, in_schema, topic_name, test)


def test_consumers_dying_in_a_row_are_replaced_after_a_growing_backoff(
    endpoints: Endpoints, in_schema: Callable[[Body], None], topic_name: str
) -> None:
    async def test(rig: Rig, conn: asyncpg.Connection) -> None:
        coordinator = rig.coordinator()
        await coordinator.start()
        try:
            await _rounds(coordinator, 2)
            # A fault read, then its consumer dies: counted once, and the replacement's seq 1 is a fault of its own.
            rig.holder_of(3).fault(rig.topic, 3)
            await _rounds(coordinator)
            rig.live()[0].die()
            status = await _rounds(coordinator)  # the first death: replaced at once
            assert len(rig.holders) == 3 and len(status["actors"]) == 2 and status["restart_in_s"] == 0
            assert status["waiting"][f"{rig.topic}[3]"]["faults"] == 1
            for delay in (5.0, 10.0):  # 5 * 2**0, 5 * 2**1
                rig.live()[0].die()
                status = await _rounds(coordinator)
                assert len(status["actors"]) == 1 and status["restart_in_s"] == delay
                # The dead consumer's partitions moved to the survivor at once (all but the one waiting).
                assert status["assigned"] == PARTITIONS - (1 if f"{rig.topic}[3]" in status["waiting"] else 0)
                rig.clock.now += delay - 0.1
                assert len((await _rounds(coordinator))["actors"]) == 1
                rig.clock.now += 0.1
                assert len((await _rounds(coordinator))["actors"]) == 2
            assert len(rig.holders) == 5
            # A consumer that had committed records dies (a kill, a random crash): replaced at once.
            worker = rig.live()[0]
            worker.rows = 10
            await _rounds(coordinator)  # its report with the records
            worker.die()
            status = await _rounds(coordinator)
            assert len(status["actors"]) == 2 and len(rig.holders) == 6 and status["restart_in_s"] == 0
            rig.live()[0].die()  # committed nothing: the second in a row again, 5 s
            assert (await _rounds(coordinator))["restart_in_s"] == 5.0
            # Ten minutes without a death: the next one is replaced at once again.
            rig.clock.now += 600
            assert len((await _rounds(coordinator))["actors"]) == 2
            rig.live()[0].die()
            status = await _rounds(coordinator)
            assert len(status["actors"]) == 2 and len(rig.holders) == 8 and status["assigned"] == PARTITIONS
        finally:
            await coordinator.shutdown()

    _run(endpoints, in_schema, topic_name, test)
