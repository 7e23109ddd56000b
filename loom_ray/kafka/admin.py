"""Partition discovery and watermarks, for the coordinator and the drain check."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from loom_ray.settings import Settings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Discovery:
    """One round's view of the configured topics: partitions and topic ids of the topics that answered, and
    why the others did not (deleted, unauthorised, timed out); ``missing`` are those the broker says do not
    exist."""

    partitions: dict[str, list[int]] = field(default_factory=dict)
    topic_ids: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)


_CREDENTIALS = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})


class KafkaMetadata:
    """A metadata-only client (never assigned, never commits). Blocking calls: run them in a thread."""

    def __init__(self, settings: Settings) -> None:
        config: dict[str, object] = {
            **settings.kafka_client_config(),
            "group.id": f"{settings.kafka_group_id}-metadata",
            "enable.auto.commit": False,
            "isolation.level": settings.kafka_isolation_level,
            "error_cb": self._on_error,
        }
        self.errors: deque[KafkaError] = deque(maxlen=20)  # the latest connection-level errors librdkafka reported
        self._client = Consumer(config)
        admin_config: dict[str, Any] = {**settings.kafka_client_config(), "error_cb": self._on_error}
        self._admin = AdminClient(admin_config)
        self._topics = settings.kafka_topics

    def _on_error(self, error: KafkaError) -> None:
        self.errors.append(error)

    def partitions(self, timeout_s: float = 10.0) -> list[tuple[str, int]]:
        """Every partition of the configured topics; a missing topic raises KafkaException."""
        try:
            metadata = self._client.list_topics(timeout=timeout_s)
        except KafkaException:
            self._client.poll(0)  # serves the error callbacks: why the brokers did not answer
            raise
        found: list[tuple[str, int]] = []
        for topic in self._topics:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                raise KafkaException(f"topic {topic!r} not found: {info.error if info else 'no metadata'}")
            found.extend((topic, p) for p in info.partitions)
        return sorted(found)

    def discover(self, timeout_s: float = 10.0) -> Discovery:
        """Partitions and topic ids of every configured topic, in one request; a topic that fails is reported
        in ``errors`` and does not hide the others."""
        found = Discovery()
        futures = self._admin.describe_topics(TopicCollection(list(self._topics)), request_timeout=timeout_s)
        for topic, future in futures.items():
            try:
                description = future.result()
            except KafkaException as exc:
                error = exc.args[0] if exc.args else exc
                found.errors[topic] = str(error)
                if isinstance(error, KafkaError) and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    found.missing.add(topic)
                continue
            found.partitions[topic] = sorted(p.id for p in description.partitions)
            found.topic_ids[topic] = str(description.topic_id)
        return found

    def high_watermarks(
        self, partitions: Iterable[tuple[str, int]], timeout_s: float = 10.0
    ) -> dict[tuple[str, int], int]:
        """The high watermark (the last stable offset under read_committed) of each partition, in one request
        per partition leader; a partition whose request failed is left out."""
        return self._offsets(partitions, OFFSET_END, timeout_s)

    def watermarks(
        self, partitions: list[tuple[str, int]], timeout_s: float = 10.0
    ) -> dict[tuple[str, int], tuple[int, int]]:
        """(low, high) watermarks of each partition, asked of the brokers now in two requests per partition
        leader (a partition added since the last metadata refresh included); a partition with either
        missing is left out."""
        low = self._offsets(partitions, OFFSET_BEGINNING, timeout_s)
        high = self._offsets(partitions, OFFSET_END, timeout_s)
        return {tp: (low[tp], high[tp]) for tp in partitions if tp in low and tp in high}

    def offsets_for_times(
        self, partitions: list[tuple[str, int]], timestamp_ms: int, timeout_s: float = 10.0
    ) -> dict[tuple[str, int], int]:
        """Per partition, the first offset whose record's timestamp is at or after ``timestamp_ms`` (ms since
        1970), or -1 when there is none (every record is older: the end of the log); a partition whose request
        failed is left out."""
        answered = self._client.offsets_for_times(
            [TopicPartition(t, p, timestamp_ms) for t, p in partitions], timeout_s
        )
        return {(a.topic, a.partition): a.offset for a in answered if a.error is None}

    def _offsets(
        self, partitions: Iterable[tuple[str, int]], which: int, timeout_s: float, refreshed: bool = False
    ) -> dict[tuple[str, int], int]:
        """One ListOffsets per leader for ``which`` (OFFSET_BEGINNING or OFFSET_END, asked as the timestamp
        the protocol reserves for it), under the client's isolation level.

        The consumer's ``offsets_for_times`` answers in one list; ``AdminClient.list_offsets`` would build a
        Python future per partition, which dominates a round at thousands of partitions. It finds leaders in
        the client's metadata cache, which does not know partitions added to a topic since its last refresh
        (``_UNKNOWN_PARTITION``): those topics' metadata is asked for and their partitions asked again, once.
        A partition that still fails (its topic deleted, say) is left out alone; a request that fails as a
        whole (brokers out of reach, every partition failing) leaves its partitions out.
        """
        wanted = list(partitions)
        if not wanted:
            return {}
        try:
            answered = self._client.offsets_for_times([TopicPartition(t, p, which) for t, p in wanted], timeout_s)
        except KafkaException as exc:
            if not refreshed and _unknown_partition(exc.args[0] if exc.args else None):
                return self._refreshed(wanted, which, timeout_s)
            log.warning("no offsets for %d partitions: %s", len(wanted), exc)
            return {}
        found: dict[tuple[str, int], int] = {}
        unknown: list[tuple[str, int]] = []
        for answer in answered:
            if answer.error is None and answer.offset >= 0:
                found[(answer.topic, answer.partition)] = answer.offset
            elif not refreshed and _unknown_partition(answer.error):
                unknown.append((answer.topic, answer.partition))
            else:
                log.warning("no offset for %s[%d]: %s", answer.topic, answer.partition, answer.error)
        if unknown:
            found.update(self._refreshed(unknown, which, timeout_s))
        return found

    def _refreshed(self, partitions: list[tuple[str, int]], which: int, timeout_s: float) -> dict[tuple[str, int], int]:
        """Refresh the metadata of ``partitions``' topics (one request each), then ask for their offsets again."""
        for topic in sorted({t for t, _ in partitions}):
            try:
                self._client.list_topics(topic, timeout=timeout_s)
            except KafkaException as exc:
                log.warning("cannot refresh the metadata of %s: %s", topic, exc)
        return self._offsets(partitions, which, timeout_s, refreshed=True)

    def close(self) -> None:
        """Release the client."""
        self._client.close()


def _unknown_partition(error: object) -> bool:
    """Whether ``error`` is librdkafka's "no such partition in my metadata" (a partition added since)."""
    return isinstance(error, KafkaError) and error.code() == KafkaError._UNKNOWN_PARTITION


def unreachable(failure: KafkaException, errors: Iterable[KafkaError]) -> bool:
    """Whether a failed metadata request at start means only that no broker answered (worth waiting for), not
    refused credentials, a failed TLS handshake or a missing topic (configuration to fix)."""
    if any(e.code() in _CREDENTIALS or e.code() == KafkaError._SSL for e in errors):
        return False
    error = failure.args[0] if failure.args else None
    return isinstance(error, KafkaError) and error.code() in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT)


def explain(failure: KafkaException, errors: Iterable[KafkaError], bootstrap: str) -> str:
    """What a failed metadata request at start means, and which variables to check (no secret in it).

    ``errors`` are the client's recent connection errors; refused credentials or a failed TLS handshake
    explain the failure even when a later error (all brokers down) followed them.
    """
    seen = list(errors)
    refused = [e for e in seen if e.code() in _CREDENTIALS]
    if refused:
        return (
            f"Kafka refused the credentials ({refused[-1].str()}): check LOOM_KAFKA_SASL_USERNAME, "
            "LOOM_KAFKA_SASL_PASSWORD and LOOM_KAFKA_SASL_MECHANISM"
        )
    tls = [e for e in seen if e.code() == KafkaError._SSL]
    if tls:
        return (
            f"TLS to Kafka failed ({tls[-1].str()}): check LOOM_KAFKA_SSL_CA_LOCATION and LOOM_KAFKA_SECURITY_PROTOCOL"
        )
    error = failure.args[0] if failure.args else None
    if isinstance(error, KafkaError) and error.code() in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT):
        detail = f"; last error: {seen[-1].str()}" if seen else ""
        return (
            f"Kafka at {bootstrap} did not answer ({error.str()}{detail}): check LOOM_KAFKA_BOOTSTRAP_SERVERS "
            "and LOOM_KAFKA_SECURITY_PROTOCOL"
        )
    return f"{failure}; create the topic or fix LOOM_KAFKA_TOPICS"
