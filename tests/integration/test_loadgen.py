"""Integration test: the load generator against a real Kafka broker.

Needs LOOM_KAFKA_BOOTSTRAP_SERVERS; skipped without it.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from loom_ray.loadgen import DEFAULT_OVERSIZE_BYTES, main
from tests.support.pipeline import high_watermarks

pytestmark = pytest.mark.integration

PARTITIONS = 4
MESSAGES = 2000
_DIGIT_RUN = re.compile(rb"\d{1000}")


@pytest.fixture
def bootstrap() -> str:
    servers = os.environ.get("LOOM_KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        pytest.skip("LOOM_KAFKA_BOOTSTRAP_SERVERS is not set; it must point at a Kafka broker")
    return servers


@pytest.fixture
def topic(bootstrap: str) -> Iterator[str]:
    name = f"loadgen-test-{uuid.uuid4().hex}"
    yield name
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if name in admin.list_topics(timeout=10).topics:
        admin.delete_topics([name], operation_timeout=30)[name].result(timeout=30)


def _classify(value: bytes | None) -> str:
    """Name the kind of a consumed value from its content alone, independently of the ack log."""
    if value is None:
        return "null_value"
    if value == b"":
        return "empty"
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    if b"\\ud800" in value:
        return "lone_surrogate"
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        if b"[" * 1000 in value:
            return "deep_nesting"
        if _DIGIT_RUN.search(value):
            return "huge_number"
        if value.startswith(b'{"seq":'):
            return "truncated_json"
        return "not_json"
    if b"\\u0000" in value:
        return "nul_in_string"
    if len(value) > DEFAULT_OVERSIZE_BYTES:
        return "oversize"
    assert doc["kind"] == "event"
    assert hashlib.sha256(doc["pad"].encode()).hexdigest() == doc["sha"]
    return "valid"


def _consume_all(bootstrap: str, topic: str) -> dict[tuple[int, int], tuple[bytes | None, bytes | None]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"loadgen-test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        records: dict[tuple[int, int], tuple[bytes | None, bytes | None]] = {}
        deadline = time.monotonic() + 60
        while len(records) < MESSAGES and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=1.0):
                assert msg.error() is None, msg.error()
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                records[(partition, offset)] = (msg.key(), msg.value())
        watermarks = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in range(PARTITIONS)]
    finally:
        consumer.close()
    assert all(w is not None and w[0] == 0 for w in watermarks)
    assert sum(w[1] for w in watermarks if w is not None) == MESSAGES
    return records


def _read_ack_log(path: Path) -> dict[tuple[int, int], tuple[str, str]]:
    lines = path.read_text(encoding="ascii").splitlines()
    assert len(lines) == MESSAGES
    acks: dict[tuple[int, int], tuple[str, str]] = {}
    for line in lines:
        partition, offset, kind, sha = line.split(" ")
        acks[(int(partition), int(offset))] = (kind, sha)
    assert len(acks) == MESSAGES, "ack log repeats (partition, offset) pairs"
    return acks


def test_loadgen_produces_even_partitions_and_matching_ack_log(bootstrap: str, topic: str, tmp_path: Path) -> None:
    ack_log = tmp_path / "acks.log"
    argv = [
        "--topic", topic,
        "--partitions", str(PARTITIONS),
        "--messages", str(MESSAGES),
        "--size", "200",
        "--malformed-ratio", "0.05",
        "--bootstrap-servers", bootstrap,
        "--ack-log", str(ack_log),
    ]  # fmt: skip
    assert main(argv) == 0

    records = _consume_all(bootstrap, topic)
    acks = _read_ack_log(ack_log)

    assert Counter(partition for partition, _ in records) == {p: MESSAGES // PARTITIONS for p in range(PARTITIONS)}
    assert set(records) == set(acks)
    consumed_kinds: Counter[str] = Counter()
    for (partition, offset), (key, value) in records.items():
        assert key is not None and int(key) % PARTITIONS == partition
        kind = _classify(value)
        consumed_kinds[kind] += 1
        expected_sha = "-" if value is None else hashlib.sha256(value).hexdigest()
        assert acks[(partition, offset)] == (kind, expected_sha)
    assert consumed_kinds == Counter(kind for kind, _ in acks.values())
    assert consumed_kinds["valid"] == MESSAGES - 100
    assert set(consumed_kinds) - {"valid"} == {
        "invalid_utf8", "truncated_json", "not_json", "nul_in_string", "deep_nesting",
        "huge_number", "oversize", "empty", "null_value", "lone_surrogate",
    }  # fmt: skip


def test_loadgen_stopped_by_sigint_flushes_and_logs_every_ack(bootstrap: str, topic: str, tmp_path: Path) -> None:
    """SIGINT while rate-limited (mostly inside poll()): exit 130, and the ack log covers every message in the topic."""
    ack_log = tmp_path / "acks.log"
    argv = [
        sys.executable, "-m", "loom_ray.loadgen",
        "--topic", topic,
        "--partitions", str(PARTITIONS),
        "--messages", "1000000",
        "--size", "200",
        "--rate", "30000",
        "--bootstrap-servers", bootstrap,
        "--ack-log", str(ack_log),
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while (not ack_log.exists() or ack_log.stat().st_size < 10_000) and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr.decode()[-3000:]
    assert b"Traceback" not in stderr
    acked = {tuple(map(int, line.split(" ")[:2])) for line in ack_log.read_text(encoding="ascii").splitlines()}
    marks = high_watermarks(bootstrap, topic)
    in_topic = {(p, offset) for p, (low, high) in marks.items() for offset in range(low, high)}
    assert len(in_topic) < 1_000_000, "the run was not stopped"
    assert acked == in_topic
