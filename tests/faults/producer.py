"""loadgen as a subprocess for the fault tests, writing the ack log the checker reads.

loadgen writes ``partition offset kind sha256`` per acknowledged record. When the producing process has ended,
:func:`record_contents` reads those records back from the broker and completes each line with the record's
key (hex, ``-`` for none) and payload digest (:func:`tests.faults.checker.payload_digest`), so the checker can
tell a stored row from another offset's record of the same partition.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from confluent_kafka import Consumer, Message, TopicPartition

from loom_ray import loadgen
from tests.faults.checker import payload_digest
from tests.faults.stack import FaultStack
from tests.support.services import ROOT


def env_int(name: str, default: int) -> int:
    """A size knob: quick defaults in CI, larger values from scripts/chaos.sh."""
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def read_records(bootstrap: str, topic: str, ranges: Mapping[int, tuple[int, int]]) -> Iterator[Message]:
    """The records of ``topic`` at offsets ``[start, end)`` of each partition, as the broker holds them now,
    records of aborted transactions included (read_uncommitted). Fails on a consumer error (an offset the
    broker no longer has) or if a partition's end is not reached within 120 s."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-back-{topic}",
            "isolation.level": "read_uncommitted",
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
        }
    )
    pending = {p: end for p, (start, end) in ranges.items() if end > start}
    try:
        consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in pending])
        deadline = time.monotonic() + 120
        while pending:
            assert time.monotonic() < deadline, f"read-back of {topic} did not reach the end of {sorted(pending)}"
            for message in consumer.consume(1000, 0.1):
                assert message.error() is None, f"read-back of {topic}: {message.error()}"
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None
                if offset < ranges[partition][1]:
                    yield message
            for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                if tp.offset >= pending[tp.partition]:
                    del pending[tp.partition]
    finally:
        consumer.close()


def record_contents(ack_log: Path, bootstrap: str, topic: str) -> None:
    """Complete every line of ``ack_log`` with the key and payload digest of the record at its offset.

    Each record is read back from the broker (:func:`read_records`) and must have the SHA-256 the producer
    acknowledged: an AssertionError says the broker holds another record (or none) at an acknowledged
    offset. Lines already completed are completed again, to the same result.
    """
    acked: dict[tuple[int | None, int | None], list[str]] = {}
    ranges: dict[int, tuple[int, int]] = {}
    for text in ack_log.read_text(encoding="ascii").splitlines():
        fields = text.split()[:4]
        partition, offset = int(fields[0]), int(fields[1])
        acked[partition, offset] = fields
        start, end = ranges.get(partition, (offset, offset + 1))
        ranges[partition] = (min(start, offset), max(end, offset + 1))
    for message in read_records(bootstrap, topic, ranges):
        line = acked.get((message.partition(), message.offset()))
        if line is None:  # not acknowledged to this producer
            continue
        key, value = message.key(), message.value()
        sha = "-" if value is None else hashlib.sha256(value).hexdigest()
        where = f"{topic}[{line[0]}] offset {line[1]}"
        assert sha == line[3], f"{where}: the broker holds a value of SHA-256 {sha}, acknowledged {line[3]}"
        line[4:] = ["-" if key is None else key.hex(), payload_digest(value)]
    missing = [at for at, fields in acked.items() if len(fields) == 4]
    assert not missing, f"{topic}: acknowledged offsets the broker no longer holds: {missing[:10]}"
    completed = ack_log.with_name(ack_log.name + ".tmp")
    completed.write_text("".join(" ".join(fields) + "\n" for fields in acked.values()), encoding="ascii")
    completed.replace(ack_log)


@dataclass
class Producer:
    """loadgen as a subprocess, writing the ack log the checker reads."""

    stack: FaultStack
    topic: str
    workdir: Path
    messages: int
    partitions: int = 12
    rate: float | None = None
    ratio: float = 0.0
    seed: int = 1
    name: str = "acks"
    process: subprocess.Popen[bytes] | None = None

    @property
    def ack_log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def create_topic(self) -> Self:
        """Create the topic empty, so that the job can start before anything is produced."""
        loadgen.ensure_topic(self.stack.kafka, self.topic, self.partitions)
        return self

    def start(self) -> Self:
        """Produce in the background (loadgen creates the topic if needed)."""
        argv = [sys.executable, "-m", "loom_ray.loadgen", "--topic", self.topic, "--partitions", str(self.partitions)]
        argv += ["--messages", str(self.messages), "--size", "200", "--bootstrap-servers", self.stack.kafka]
        argv += ["--malformed-ratio", str(self.ratio), "--seed", str(self.seed), "--ack-log", str(self.ack_log)]
        if self.rate:
            argv += ["--rate", str(self.rate)]
        self._spawn(argv)
        return self

    def _spawn(self, argv: list[str]) -> None:
        """Run the producing process, its output in ``<name>.out``."""
        with (self.workdir / f"{self.name}.out").open("ab") as out:
            self.process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    @property
    def done(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def wait(self, timeout_s: float = 600) -> None:
        """Wait for the last acknowledgement, then complete the ack log; fail if any delivery failed."""
        assert self.process is not None
        code = self.process.wait(timeout_s)
        output = (self.workdir / f"{self.name}.out").read_text()[-2000:]
        assert code == 0, f"loadgen exited {code}: {output}"
        self._record_contents()

    def fill(self) -> Self:
        """Produce everything now (preloaded topic)."""
        self.start().wait()
        return self

    def kill(self) -> None:
        """End a producer that is still running (test teardown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def stop(self) -> None:
        """Stop producing now (SIGINT: loadgen waits for the outstanding acknowledgements, exits 130), then
        complete the ack log."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        code = self.process.wait(60)
        assert code in (0, 130), f"loadgen exited {code}: {(self.workdir / f'{self.name}.out').read_text()[-2000:]}"
        self._record_contents()

    def _record_contents(self) -> None:
        """:func:`record_contents` of the ack log, when the producing process wrote one."""
        if self.ack_log.exists():
            record_contents(self.ack_log, self.stack.kafka, self.topic)
