"""Producing the load: a fast idempotent producer, optional rate limit, ack log, progress, summary."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import IO

from confluent_kafka import KafkaError, Message, Producer

from loom_ray.loadgen.messages import messages_for
from loom_ray.loadgen.topic import LoadgenError, ensure_topic
from loom_ray.loadgen.values import plan

_LOG = logging.getLogger(__name__)
TOMBSTONE_SHA = "-"
_POLL_EVERY = 1000
_PROGRESS_EVERY_S = 2.0
_STOPPED_FLUSH_S = 10.0  # after SIGINT/SIGTERM: how long to wait for outstanding delivery reports


class TokenBucket:
    """Rate limiter: ``wait_s()`` takes one token, or says how long to wait until one is available.

    A wait is never shorter than ``MIN_WAIT_S``: Producer.poll() counts in whole milliseconds, so the
    microsecond waits of a high rate would round to poll(0) and spin a core that, on a shared machine,
    the pipeline under test needs (about 0.9 core at 25 k msg/s before). Tokens that accumulate during
    the wait are spent in a burst of at most 50 ms worth.
    """

    MIN_WAIT_S = 0.002

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._clock = clock
        # 50 ms worth of burst keeps production smooth for latency tests.
        self._capacity = max(1.0, rate * 0.05)
        self._tokens = 1.0
        self._last = clock()

    def wait_s(self) -> float:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return max((1.0 - self._tokens) / self._rate, self.MIN_WAIT_S)


@dataclass
class _Deliveries:
    """Delivery-report sink; ``on_delivery`` runs inside Producer.poll()/flush() for each report."""

    ratio: float
    seed: int
    kinds: tuple[str, ...]
    ack_log: IO[str] | None
    acked: int = 0
    failed: int = 0
    first_error: str | None = None
    fatal: str | None = None

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = f"partition={msg.partition()} key={msg.key()!r}: {err}"
            return
        self.acked += 1
        if self.ack_log is None:
            return
        key = msg.key()
        kind = plan(int(key), self.ratio, self.seed, self.kinds) if key is not None else None
        value = msg.value()
        sha = TOMBSTONE_SHA if value is None else hashlib.sha256(value).hexdigest()
        self.ack_log.write(f"{msg.partition()} {msg.offset()} {kind or 'valid'} {sha}\n")

    def on_error(self, err: KafkaError) -> None:
        """Runs for client-level errors (e.g. all brokers down); a fatal one stops production."""
        if err.fatal():
            self.fatal = str(err)
            _LOG.error("fatal producer error: %s", err)
        else:
            _LOG.warning("producer error: %s", err)


class _StopSignal:
    """SIGINT/SIGTERM while producing: recorded here, and the produce loop stops at its next check.

    A flag rather than KeyboardInterrupt: an exception raised while librdkafka's wakeable poll() runs
    can surface as "SystemError: returned NULL without setting an exception" and lose the ack log's tail.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum

    def __enter__(self) -> _StopSignal:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _tb: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]


@dataclass
class _Stats:
    produced: int = 0
    value_bytes: int = 0
    bad_by_kind: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    last_report: float = field(default_factory=time.monotonic)
    last_count: int = 0

    def maybe_report(self, waiting: int | None = None) -> None:
        now = time.monotonic()
        if now - self.last_report < _PROGRESS_EVERY_S:
            return
        rate = (self.produced - self.last_count) / (now - self.last_report)
        if waiting is None:
            _LOG.info("progress produced=%d msgs_per_s=%.0f", self.produced, rate)
        else:
            _LOG.info("progress produced=%d awaiting_acks=%d", self.produced, waiting)
        self.last_report, self.last_count = now, self.produced


def _producer_config(bootstrap: str, deliveries: _Deliveries, reports_needed: bool) -> dict[str, object]:
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.size": 1_048_576,
        "compression.type": "none",
        "queue.buffering.max.messages": 2_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        # Without an ack log only failures matter; skipping success reports saves a callback per message.
        "delivery.report.only.error": not reports_needed,
        "on_delivery": deliveries.on_delivery,
        "error_cb": deliveries.on_error,
        "logger": _LOG,
    }


def _produce(
    producer: Producer,
    args: argparse.Namespace,
    kinds: tuple[str, ...],
    stats: _Stats,
    deliveries: _Deliveries,
    stop: _StopSignal,
) -> None:
    """Produce every message, or until ``stop`` is signalled; returns before the final flush."""
    bucket = TokenBucket(args.rate) if args.rate else None
    topic = args.topic
    messages = messages_for(args, kinds)
    for seq in range(args.messages):
        if bucket is not None:
            while (wait := bucket.wait_s()) > 0 and stop.signum is None:
                producer.poll(wait)
            stats.maybe_report()
        if stop.signum is not None:
            return
        if deliveries.fatal is not None:
            raise LoadgenError(f"producer failed fatally: {deliveries.fatal}")
        for key, value, partition, kind in messages.at(seq):
            while True:
                try:
                    producer.produce(topic, value=value, key=key, partition=partition)
                    break
                except BufferError:
                    producer.poll(0.1)
            stats.produced += 1
            if value is not None:
                stats.value_bytes += len(value)
            if kind is not None:
                stats.bad_by_kind[kind] += 1
        if stats.produced % _POLL_EVERY == 0:
            producer.poll(0)
            stats.maybe_report()


def _flush(producer: Producer, stats: _Stats, stop: _StopSignal) -> None:
    """Wait for every outstanding delivery report (at most ``_STOPPED_FLUSH_S`` once stopped), logging progress."""
    deadline: float | None = None
    while (waiting := producer.flush(1.0)) > 0:
        stats.maybe_report(waiting)
        if stop.signum is not None:
            deadline = deadline or time.monotonic() + _STOPPED_FLUSH_S
            if time.monotonic() > deadline:
                _LOG.warning("gave up waiting for %d delivery reports", waiting)
                return


def _summary(args: argparse.Namespace, stats: _Stats, deliveries: _Deliveries) -> None:
    seconds = max(time.monotonic() - stats.started, 1e-9)
    bad = ",".join(f"{kind}:{count}" for kind, count in stats.bad_by_kind.items())
    _LOG.info(
        "done topic=%s messages=%d acked=%d failed=%d bad=%d bad_by_kind=%s seconds=%.2f msgs_per_s=%.0f mb_per_s=%.2f",
        args.topic,
        stats.produced,
        deliveries.acked,
        deliveries.failed,
        sum(stats.bad_by_kind.values()),
        bad or "-",
        seconds,
        stats.produced / seconds,
        stats.value_bytes / seconds / 1e6,
    )


def run(args: argparse.Namespace, kinds: tuple[str, ...]) -> int:
    """Create the topic, produce, flush and summarise; returns the exit code."""
    ensure_topic(args.bootstrap_servers, args.topic, args.partitions, timeout_s=args.connect_timeout_s)
    with contextlib.ExitStack() as stack:
        ack_log = stack.enter_context(open(args.ack_log, "w", encoding="ascii")) if args.ack_log else None
        deliveries = _Deliveries(args.malformed_ratio, args.seed, kinds, ack_log)
        producer = Producer(_producer_config(args.bootstrap_servers, deliveries, ack_log is not None))
        stats = _Stats()
        stop = stack.enter_context(_StopSignal())
        _produce(producer, args, kinds, stats, deliveries, stop)
        if stop.signum is not None:
            _LOG.warning(
                "signal %d after %d messages; flushing for up to %.0f s", stop.signum, stats.produced, _STOPPED_FLUSH_S
            )
        _flush(producer, stats, stop)
    if ack_log is None:
        deliveries.acked = stats.produced - deliveries.failed - len(producer)
    _summary(args, stats, deliveries)
    if stop.signum is not None:
        return 128 + stop.signum
    if deliveries.failed:
        _LOG.error("%d deliveries failed; first: %s", deliveries.failed, deliveries.first_error)
        return 1
    return 0
