"""A partition whose record needs a schema the registry has not given: the consumer stops reading it at that
record (nothing dead-lettered, nothing skipped, its other records and partitions go on), reports why like a
blocked sink (stats()["blocked"], the gauge), and reads on from that record once the schema came. The
IngestWorker runs without I/O here: a fake codec and a fake Kafka consumer. On the real stack:
tests/integration/test_registry_outage.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any

from confluent_kafka import TIMESTAMP_CREATE_TIME, Message

from loom_ray.batch import PartitionBatch
from loom_ray.decode import Rejection
from loom_ray.formats.base import Codec, SchemaNotReady
from loom_ray.formats.registry import RegistryUnreachableError, SchemaUnknownError
from loom_ray.offsets import Claim
from loom_ray.pipeline import IngestWorker, _Partition
from loom_ray.settings import Settings
from loom_ray.sink.postgres import FlushResult

NOW = 100.0
NEEDS_SCHEMA = b"\x00\x00\x00\x00\x09"  # values starting so name schema id 9, which the fake fetches


class FakeCodec(Codec):
    """Values starting with NEEDS_SCHEMA need schema 9; ``failures`` fetch errors come before it is given.
    ``probe``, when set, runs at each request: what the consumer shows between two requests."""

    format = "avro"
    schema_type = "AVRO"

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.ready = False
        self.asked = 0
        self.asked_twice = asyncio.Event()
        self.probe: Callable[[], None] | None = None

    def text(self, value: bytes) -> tuple[str, int] | Rejection:
        if value.startswith(NEEDS_SCHEMA):
            if not self.ready:
                raise SchemaNotReady(self, 9, 9)
            return '{"late": true}', 9
        return '{"n": 1}', 1

    async def prepare(self, key: Hashable, schema_id: int) -> None:
        self.asked += 1
        if self.probe is not None:
            self.probe()
        if self.asked == 2:
            self.asked_twice.set()
        if self.failures:
            raise self.failures.pop(0)
        self.ready = True

    def _frame(self, value: bytes) -> Any:
        raise NotImplementedError

    def _build(self, key: Hashable, schema_id: int) -> Any:
        raise NotImplementedError

    def _read(self, reader: Any, payload: Any) -> Any:
        raise NotImplementedError


class FakeKafka:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def pause(self, partitions: Any) -> None:
        self.calls.append(("pause", sorted(partitions)))

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        self.calls.append(("seek", topic, partition, offset))

    async def unassign(self, topic: str, partition: int) -> None:
        self.calls.append(("unassign", topic, partition))


class Observer:
    def __init__(self) -> None:
        self.blocked: list[str | None] = []

    def on_flush(self, result: FlushResult, seconds: float) -> None: ...

    def on_outage(self) -> None: ...

    def on_blocked(self, sqlstate: str | None) -> None:
        self.blocked.append(sqlstate)


def _message(partition: int, offset: int, value: bytes) -> Message:
    return Message(topic="t", partition=partition, offset=offset, value=value, timestamp=(TIMESTAMP_CREATE_TIME, 1))


def _worker(codec: Codec, observer: Observer) -> tuple[IngestWorker, FakeKafka]:
    settings = Settings(kafka_topics=["t"], formats=("avro",), schema_registry_url="http://registry:8081")
    worker = IngestWorker(settings, "unit", observer)
    kafka = FakeKafka()
    worker._kafka = kafka  # type: ignore[assignment]
    for p in (0, 1):
        worker._parts[("t", p)] = _Partition(Claim("t", p, 3, 0), 0, PartitionBatch("t", p, 3, 0), 0, codec=codec)
    return worker, kafka


def test_a_partition_waits_at_the_record_whose_schema_is_missing_and_reads_on_from_it() -> None:
    async def scenario() -> None:
        codec = FakeCodec([RegistryUnreachableError(9, "refused"), SchemaUnknownError(9, "404")])
        observer = Observer()
        worker, kafka = _worker(codec, observer)
        shown: list[str | None] = []  # the consumer's blocker as each request starts
        codec.probe = lambda: shown.append((worker.stats()["blocked"] or {}).get("sqlstate"))
        part = worker._parts[("t", 0)]
        batch = [_message(0, 0, b"a"), _message(0, 1, NEEDS_SCHEMA), _message(1, 0, b"b"), _message(0, 2, b"c")]
        worker._add_all(batch, NOW, 0)
        assert [row[2] for row in part.open.rows] == [0]  # offset 1 and after wait; nothing dead-lettered
        assert (part.open.end, part.open.dead_letters, part.stats.messages) == (1, [], 1)
        assert [row[2] for row in worker._parts[("t", 1)].open.rows] == [0]  # its neighbour goes on
        assert part.waiting is not None
        worker._advance_to_positions({("t", 0): 3}, NOW, 0)  # the consumer's position is past what it skipped
        assert part.open.end == 1

        waiting = part.waiting
        await asyncio.wait_for(waiting, 30)
        assert shown == [None, "LR002", "LR003"]  # unreachable, then the id unknown: both shown while waiting
        assert observer.blocked == ["LR002", "LR003", None]
        assert worker.stats()["blocked"] is None
        assert kafka.calls == [("pause", [("t", 0)]), ("seek", "t", 0, 1)]  # read again from offset 1

        worker._add_all(batch[:2] + batch[3:], NOW, 0)  # a consume() started before the seek: ignored
        assert part.open.end == 1
        worker._add_all([_message(0, 1, NEEDS_SCHEMA), _message(0, 2, b"c")], NOW, worker._assignments)
        assert [(row[2], row[4], row[8]) for row in part.open.rows] == [
            (0, '{"n": 1}', 1),
            (1, '{"late": true}', 9),
            (2, '{"n": 1}', 1),
        ]
        assert part.stats.messages == 3

    asyncio.run(scenario())


def test_a_partition_released_while_it_waits_stops_asking() -> None:
    async def scenario() -> None:
        codec = FakeCodec([RegistryUnreachableError(9, "refused")] * 1000)
        worker, kafka = _worker(codec, Observer())
        part = worker._parts[("t", 0)]
        worker._add_all([_message(0, 0, NEEDS_SCHEMA)], NOW, 0)
        task = part.waiting
        assert task is not None
        await asyncio.wait_for(codec.asked_twice.wait(), 30)
        del worker._parts[("t", 0)]  # released (or fenced): the wait ends without a seek
        await asyncio.wait_for(task, 30)
        assert not any(call[0] == "seek" for call in kafka.calls)
        assert worker.stats()["blocked"] is None

    asyncio.run(scenario())


def test_buffers_going_below_their_bound_leave_a_waiting_partition_paused() -> None:
    # Backpressure only stops and restarts consume(): librdkafka's pause flag is the schema wait's alone.
    async def scenario() -> None:
        worker, kafka = _worker(FakeCodec([RegistryUnreachableError(9, "refused")] * 1000), Observer())
        worker._add_all([_message(0, 0, NEEDS_SCHEMA)], NOW, 0)
        await asyncio.sleep(0)  # the wait starts: it pauses its partition
        worker._paused = True
        worker._apply_backpressure()
        assert not worker._paused
        assert kafka.calls == [("pause", [("t", 0)])]
        waiting = worker._parts[("t", 0)].waiting
        assert waiting is not None
        waiting.cancel()

    asyncio.run(scenario())


def test_a_wait_that_fails_for_another_reason_drops_the_partition_as_a_fault() -> None:
    class Broken(FakeCodec):
        async def prepare(self, key: Hashable, schema_id: int) -> None:
            raise RuntimeError("a bug")

    async def scenario() -> None:
        worker, kafka = _worker(Broken([]), Observer())
        worker._add_all([_message(0, 0, b"a"), _message(0, 1, NEEDS_SCHEMA)], NOW, 0)
        waiting = worker._parts[("t", 0)].waiting
        assert waiting is not None
        await asyncio.gather(waiting, return_exceptions=True)
        await asyncio.sleep(0)  # the done callback, then the unassign it started
        assert ("t", 0) not in worker._parts and [f.partition for f in worker.faults] == [0]
        assert worker.faults[0].error == "RuntimeError: a bug"
        assert ("unassign", "t", 0) in kafka.calls

    asyncio.run(scenario())
