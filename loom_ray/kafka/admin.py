"""Partition discovery and watermarks, for the coordinator and the drain check."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from loom_ray.settings import Settings

_CREDENTIALS = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})


class KafkaMetadata:
    """A metadata-only client (never assigned, never commits). Blocking calls: run them in a thread."""

    def __init__(self, settings: Settings) -> None:
        config: dict[str, object] = {
            **settings.kafka_client_config(),
            "group.id": f"{settings.kafka_group_id}-metadata",
            "enable.auto.commit": False,
            "error_cb": self._on_error,
        }
        self.errors: deque[KafkaError] = deque(maxlen=20)  # the latest connection-level errors librdkafka reported
        self._client = Consumer(config)
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

    def watermarks(self, topic: str, partition: int, timeout_s: float = 10.0) -> tuple[int, int]:
        """(low, high) watermark of one partition."""
        low, high = self._client.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        return int(low), int(high)

    def close(self) -> None:
        """Release the client."""
        self._client.close()


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
