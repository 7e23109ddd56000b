"""A transactional producer for the fault tests (T12, and the checker's read_committed cases).

It writes loadgen's events (``seq`` -> key ``str(seq)``, partition ``seq % P``, :func:`valid_value`) in
Kafka transactions, commits most of them, aborts a seeded share, and always ends on an aborted transaction
that touches every partition, so each partition's log ends on an abort marker. Every record the broker
acknowledged becomes an ack-log line in loadgen's format (``partition offset valid sha256``), records of
aborted transactions included: they are in the log, and a read_committed consumer is never handed them.

``python -m tests.faults.transactions --bootstrap B --topic T --partitions P --messages N --ack-log FILE
--summary FILE.json [--rate R] [--seed S] [--abort-ratio A]``; SIGINT/SIGTERM aborts the open transaction,
writes the final aborted one, and exits 130/143. The summary counts what a read_committed reader must skip:
``aborted_records`` (acknowledged, then aborted) plus ``markers`` (one control record per partition per
finished transaction).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Self

from confluent_kafka import KafkaError, Message
from confluent_kafka import Producer as KafkaProducer

from loom_ray.loadgen.produce import TokenBucket
from loom_ray.loadgen.values import utc_iso, valid_value
from tests.faults.producer import Producer


@dataclass
class TransactionSummary:
    """What the transactions left in the log, as the producer saw it."""

    committed: int = 0
    aborted: int = 0
    committed_records: int = 0
    aborted_records: int = 0  # acknowledged records of aborted transactions
    markers: int = 0  # control records: one per partition a finished transaction touched
    failed: int = 0  # delivery reports with an error

    @property
    def no_record(self) -> int:
        """Offsets a read_committed consumer is not handed: aborted records and markers."""
        return self.aborted_records + self.markers


@dataclass
class TransactionalWriter:
    """One ``transactional.id`` writing whole transactions of loadgen events to ``topic``."""

    bootstrap: str
    topic: str
    partitions: int
    transactional_id: str
    ack_log: IO[str]
    rate: float | None = None
    summary: TransactionSummary = field(default_factory=TransactionSummary)

    def __post_init__(self) -> None:
        config = {
            "bootstrap.servers": self.bootstrap,
            "transactional.id": self.transactional_id,
            "linger.ms": 5,
            "on_delivery": self._delivered,
        }
        self._producer = KafkaProducer(config)
        self._producer.init_transactions(60)
        self._bucket = TokenBucket(self.rate) if self.rate else None
        self._acked = 0

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.summary.failed += 1
            return
        self._acked += 1
        sha = hashlib.sha256(msg.value() or b"").hexdigest()
        self.ack_log.write(f"{msg.partition()} {msg.offset()} valid {sha}\n")

    def transaction(self, seqs: Iterable[int], commit: bool, stop: threading.Event | None = None) -> bool:
        """Write ``seqs`` in one transaction, then commit it (or abort it: always when ``stop`` is set
        meanwhile, which also ends producing early). Every record is acknowledged before the decision.
        Returns whether it was committed."""
        self._producer.begin_transaction()
        self._acked, touched = 0, set()
        for seq in seqs:
            if stop is not None and stop.is_set():
                commit = False
                break
            self._pace()
            partition = seq % self.partitions
            value = valid_value(seq, 200, ts=utc_iso(time.time()))
            self._producer.produce(self.topic, value=value, key=str(seq).encode(), partition=partition)
            touched.add(partition)
            self._producer.poll(0)
        self._producer.flush(60)
        if commit:
            self._producer.commit_transaction(60)
            self.summary.committed += 1
            self.summary.committed_records += self._acked
        else:
            self._producer.abort_transaction(60)
            self.summary.aborted += 1
            self.summary.aborted_records += self._acked
        self.summary.markers += len(touched)
        return commit

    def _pace(self) -> None:
        while self._bucket is not None and (wait := self._bucket.wait_s()) > 0:
            self._producer.poll(wait)


def run(args: argparse.Namespace, stop: threading.Event) -> TransactionSummary:
    """Seeded transactions of 20-200 records until ``--messages`` or ``stop``; the last one aborted."""
    rng = random.Random(args.seed)
    with Path(args.ack_log).open("w", encoding="ascii") as ack_log:
        writer = TransactionalWriter(
            args.bootstrap, args.topic, args.partitions, f"loom-faults-{args.topic}", ack_log, args.rate
        )
        seq, budget = 0, args.messages - args.partitions  # the final abort takes one record per partition
        while seq < budget and not stop.is_set():
            size = min(rng.randint(20, 200), budget - seq)
            writer.transaction(range(seq, seq + size), rng.random() >= args.abort_ratio, stop)
            seq += size
        writer.transaction(range(seq, seq + args.partitions), commit=False)
    return writer.summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.transactions", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--ack-log", required=True)
    parser.add_argument("--summary", required=True, help="JSON counts written at the end")
    parser.add_argument("--rate", type=float, default=None, help="records per second (default: unlimited)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--abort-ratio", type=float, default=0.25, help="share of transactions aborted")
    args = parser.parse_args(argv)
    stop, received = threading.Event(), []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    summary = run(args, stop)
    Path(args.summary).write_text(json.dumps(asdict(summary)))
    if summary.failed:
        print(f"{summary.failed} deliveries failed", file=sys.stderr)
        return 1
    return 128 + received[0] if received else 0


class TransactionalProducer(Producer):
    """:class:`Producer` that runs this module instead of loadgen (same ack log, stop and kill)."""

    @property
    def summary_path(self) -> Path:
        return self.workdir / f"{self.name}.summary.json"

    def start(self) -> Self:
        argv = [sys.executable, "-m", "tests.faults.transactions", "--bootstrap", self.stack.kafka]
        argv += ["--topic", self.topic, "--partitions", str(self.partitions), "--messages", str(self.messages)]
        argv += ["--ack-log", str(self.ack_log), "--summary", str(self.summary_path), "--seed", str(self.seed)]
        if self.rate:
            argv += ["--rate", str(self.rate)]
        self._spawn(argv)
        return self

    def summary(self) -> TransactionSummary:
        """The counts the process wrote when it ended."""
        return TransactionSummary(**json.loads(self.summary_path.read_text()))


if __name__ == "__main__":
    raise SystemExit(main())
