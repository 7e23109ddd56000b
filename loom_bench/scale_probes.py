"""Instruments for the coordinator scale benchmark (:mod:`loom_bench.scale`).

In-process consumer handles that hold claims without reading Kafka (:mod:`loom_bench.scale_ray` puts them
in Ray actors), and counters of the Kafka admin
requests and PostgreSQL statements a :class:`~loom_ray.coordinator.Coordinator` makes. The counters wrap one
coordinator's own client and pool after :meth:`Coordinator.start`; production code is not changed.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from loom_ray.coordinator import ConsumerGone, ConsumerHandle, Coordinator
from loom_ray.kafka.admin import KafkaMetadata
from loom_ray.offsets import Claim

# Broker requests each KafkaMetadata method sends (watermarks: one list_offsets for low, one for high).
ADMIN_REQUESTS = {"discover": 1, "high_watermarks": 1, "watermarks": 2, "partitions": 1}


@dataclass(slots=True)
class _Held:
    epoch: int
    committed: int


class FakeConsumer:
    """A :class:`~loom_ray.coordinator.ConsumerHandle` that accepts claims and reports them.

    ``stats()`` has the shape of :meth:`loom_ray.pipeline.IngestWorker.stats` (each held partition with its
    claim's epoch and start offset as committed), so the coordinator's health and lost-commit checks see
    consistent data. After :meth:`die` every ``stats()`` raises :class:`ConsumerGone`, as a dead actor does.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.held: dict[tuple[str, int], _Held] = {}
        self.gone = False
        self.killed = False

    async def start(self, timeout_s: float | None) -> None:
        """Nothing to start."""

    async def assign(self, claims: list[Claim], timeout_s: float) -> None:
        """Hold each claim from its start offset."""
        for claim in claims:
            self.held[(claim.topic, claim.partition)] = _Held(claim.epoch, claim.next_offset)

    async def release(self, topic: str, partition: int, timeout_s: float) -> int | None:
        """Drop the partition; its committed offset, or None when it was not held."""
        held = self.held.pop((topic, partition), None)
        return None if held is None else held.committed

    async def stats(self, timeout_s: float) -> dict[str, Any]:
        """The held partitions; raises ConsumerGone once :meth:`die` was called."""
        if self.gone:
            raise ConsumerGone(self.name)
        parts = {f"{t}[{p}]": {"epoch": h.epoch, "committed": h.committed} for (t, p), h in self.held.items()}
        return {
            "name": self.name,
            "partitions": parts,
            "committed": {key: part["committed"] for key, part in parts.items()},
            "blocked": None,
            "totals": {"rows": 0, "dead_letters": 0},
        }

    async def stop(self, drain: bool, timeout_s: float) -> None:
        """Drop every partition."""
        self.held.clear()

    def kill(self) -> None:
        """Mark the handle killed and drop its partitions, as a killed actor loses them."""
        self.killed = True
        self.held.clear()

    def die(self) -> None:
        """From now on, fail every health check as a dead actor would."""
        self.gone = True

    async def holding(self) -> list[tuple[str, int]]:
        """The partitions held now."""
        return list(self.held)


class BenchHandle(ConsumerHandle, Protocol):
    """A consumer handle the benchmark can kill behind the coordinator's back and ask what it holds."""

    gone: bool  # die() was called
    killed: bool  # the coordinator killed it

    def die(self) -> None: ...
    async def holding(self) -> list[tuple[str, int]]: ...


@dataclass(slots=True)
class Fleet:
    """Every handle the coordinator created, by name (the factory it is given); ``make`` builds one
    (in-process :class:`FakeConsumer` by default, or :class:`loom_bench.scale_ray.RayFakeConsumer`)."""

    make: Callable[[str], BenchHandle] = FakeConsumer
    handles: dict[str, BenchHandle] = field(default_factory=dict)

    def __call__(self, name: str) -> BenchHandle:
        handle = self.make(name)
        self.handles[name] = handle
        return handle

    async def holders(self) -> dict[str, list[str]]:
        """``"topic[partition]" -> names`` of the live, unkilled handles that hold it."""
        live = [h for h in self.handles.values() if not (h.killed or h.gone)]
        held = await asyncio.gather(*(h.holding() for h in live))
        found: dict[str, list[str]] = {}
        for handle, partitions in zip(live, held, strict=True):
            for topic, partition in partitions:
                found.setdefault(f"{topic}[{partition}]", []).append(handle.name)
        return found


@dataclass(slots=True)
class Counts:
    """Calls of the KafkaMetadata methods and PostgreSQL statements/transactions seen so far."""

    admin_calls: Counter[str] = field(default_factory=Counter)
    statements: int = 0
    transactions: int = 0
    rows_inserted: int = 0  # rows sent by executemany (lag samples): one statement, many rows
    admin_s: float = 0.0  # seconds spent in the counted KafkaMetadata calls (they may overlap)
    admin_seconds: dict[str, float] = field(default_factory=dict)  # the same, per method
    sql_s: float = 0.0  # seconds spent in statements, as asyncpg's query logger times them

    def admin_requests(self) -> int:
        """Broker requests the counted calls sent (see ADMIN_REQUESTS)."""
        return sum(ADMIN_REQUESTS.get(name, 1) * calls for name, calls in self.admin_calls.items())

    def snapshot(self) -> dict[str, float]:
        """The totals now, to subtract from a later snapshot."""
        return {
            "admin_requests": self.admin_requests(),
            "statements": self.statements,
            "transactions": self.transactions,
            "rows_inserted": self.rows_inserted,
            "admin_s": self.admin_s,
            "sql_s": self.sql_s,
            **{f"calls_{name}": calls for name, calls in sorted(self.admin_calls.items())},
            **{f"{name}_s": seconds for name, seconds in sorted(self.admin_seconds.items())},
        }


def count_metadata(metadata: KafkaMetadata, counts: Counts) -> None:
    """Wrap this instance's request methods so each call is counted in ``counts.admin_calls``."""
    for name in ADMIN_REQUESTS:
        method = getattr(metadata, name)
        setattr(metadata, name, _counted(method, name, counts))


def _counted(method: Callable[..., Any], name: str, counts: Counts) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        counts.admin_calls[name] += 1
        started = time.monotonic()
        try:
            return method(*args, **kwargs)
        finally:
            seconds = time.monotonic() - started
            counts.admin_s += seconds
            counts.admin_seconds[name] = counts.admin_seconds.get(name, 0.0) + seconds

    return call


_FIRST_WORD = re.compile(r"\s*([A-Za-z]+)")


class _StatementLog:
    """A query logger for one connection: counts statements and transactions (an explicit BEGIN..COMMIT is
    one; a statement outside it is one of its own)."""

    def __init__(self, counts: Counts) -> None:
        self._counts = counts
        self._in_transaction = False

    def __call__(self, record: asyncpg.connection.LoggedQuery) -> None:
        self._counts.sql_s += record.elapsed
        match = _FIRST_WORD.match(record.query)
        word = match.group(1).upper() if match else ""
        if word in ("BEGIN", "START"):
            self._in_transaction = True
            return
        if word in ("COMMIT", "ROLLBACK", "END"):
            self._in_transaction = False
            self._counts.transactions += 1
            return
        self._counts.statements += 1
        if record.args and isinstance(record.args, list) and isinstance(record.args[0], tuple | list):
            self._counts.rows_inserted += len(record.args)  # executemany: the argument rows
        if not self._in_transaction:
            self._counts.transactions += 1


async def instrument(coordinator: Coordinator, counts: Counts) -> None:
    """Count the requests of a started coordinator: its metadata client's methods, and every statement on
    its pool's connections (all of them are opened here, so none escapes; a connection the pool replaces
    later would go uncounted). Reaches into the coordinator's private client and pool on purpose."""
    metadata, pool = coordinator._metadata, coordinator._pool
    assert metadata is not None and pool is not None
    count_metadata(metadata, counts)
    connections = [await pool.acquire() for _ in range(pool.get_max_size())]
    for conn in connections:
        conn.add_query_logger(_StatementLog(counts))
    await asyncio.gather(*(pool.release(conn) for conn in connections))
