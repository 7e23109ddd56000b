"""Partitions waiting for a schema the registry has not given yet, and the blocker they show as.

A consumer whose codec raised :class:`~loom_ray.formats.base.SchemaNotReady` for a partition's record stops
reading that partition at the record (nothing is dead-lettered, nothing skipped) and calls
:meth:`SchemaWaits.fetch`, which asks the registry for the schema until it gives it, with capped, jittered
backoff (:func:`loom_ray.policy.backoff.backoff_delay`). While it cannot, the reason (the registry is
unreachable, does not know the id, refuses the credentials) is reported like a sink PostgreSQL refuses:
:meth:`SchemaWaits.blocker` is the consumer's ``stats()["blocked"]`` when its flushes are not blocked
themselves (the coordinator records it in ``loom_sink_errors``: a ``sink_blocked`` alert), with one WARNING
per partition when its reason starts or changes. Plain asyncio, no Ray.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from loom_ray.formats.base import Codec
from loom_ray.formats.registry import SchemaFetchError
from loom_ray.policy.backoff import backoff_delay
from loom_ray.policy.sink_errors import Blocker

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class _Waiting:
    schema_id: int
    offset: int  # the partition's first record not read yet: the one whose schema is awaited
    since: float  # epoch seconds
    failure: SchemaFetchError | None = None  # why the registry has not given it, after a failed request


class SchemaWaits:
    """The partitions of one consumer that wait for a schema; ``on_change`` runs when :meth:`blocker` may
    have changed (the consumer updates its gauge)."""

    def __init__(self, consumer: str, on_change: Callable[[], None]) -> None:
        self._consumer = consumer
        self._on_change = on_change
        self._waiting: dict[TopicPartition, _Waiting] = {}

    async def fetch(
        self,
        tp: TopicPartition,
        codec: Codec,
        key: Hashable,
        schema_id: int,
        offset: int,
        held: Callable[[], bool],
    ) -> None:
        """Ask for the schema of ``tp``'s record at ``offset`` until the registry gives it, or until ``held``
        says the consumer no longer holds the partition (or this task is cancelled: the consumer stops)."""
        self._waiting[tp] = _Waiting(schema_id, offset, time.time())
        try:
            attempt = 0
            while held():
                try:
                    await codec.prepare(key, schema_id)
                    return
                except SchemaFetchError as exc:
                    self._failed(tp, exc)
                await asyncio.sleep(backoff_delay(attempt))
                attempt += 1
        finally:
            done = self._waiting.pop(tp, None)
            if done is not None and done.failure is not None:
                log.info(
                    "%s: %s[%d] has schema id %d after %.0fs; reading on from offset %d",
                    self._consumer,
                    *tp,
                    schema_id,
                    time.time() - done.since,
                    offset,
                )
                self._on_change()

    def _failed(self, tp: TopicPartition, exc: SchemaFetchError) -> None:
        before = self._waiting[tp]
        self._waiting[tp] = _Waiting(before.schema_id, before.offset, before.since, exc)
        if before.failure is None or before.failure.condition != exc.condition:
            log.warning(
                "%s: %s[%d] waits at offset %d for schema id %d: %s (%s). Fix: %s. Retrying with backoff; nothing "
                "of the partition is skipped",
                self._consumer,
                *tp,
                before.offset,
                before.schema_id,
                exc,
                exc.condition.name,
                exc.condition.fix,
            )
            self._on_change()

    def blocker(self) -> Blocker | None:
        """What keeps this consumer's partitions waiting: the reason of the one waiting longest, with the
        number of waiting partitions in its message; None while every request only waits for its answer."""
        failed = [(tp, w) for tp, w in self._waiting.items() if w.failure is not None]
        if not failed:
            return None
        (topic, partition), oldest = min(failed, key=lambda item: item[1].since)
        assert oldest.failure is not None
        more = f" (and {len(failed) - 1} more partitions)" if len(failed) > 1 else ""
        message = f"{topic}[{partition}] waits at offset {oldest.offset}{more}: {oldest.failure}"
        return Blocker(oldest.failure.condition, message[:1000], oldest.since)

    def describe(self, tp: TopicPartition) -> dict[str, Any] | None:
        """What ``tp`` waits for (``stats()``), or None."""
        found = self._waiting.get(tp)
        if found is None:
            return None
        return {
            "schema_id": found.schema_id,
            "offset": found.offset,
            "since": found.since,
            "reason": None if found.failure is None else found.failure.condition.name,
        }
