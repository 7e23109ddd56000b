"""Load generator: fill a Kafka topic with JSON events and seeded malformed messages.

Run ``python -m loom_ray.loadgen --help``. Message ``seq`` (0 .. N-1) has key ``str(seq)`` and goes to
partition ``seq % P``, so every partition gets an even share. A seeded, reproducible fraction of messages
is malformed (see ``MALFORMED_KINDS``); ``plan()`` says which ones.

With ``--ack-log FILE`` every acknowledged message becomes one line ``partition offset kind sha256``, where
kind is ``valid`` or a malformed kind and sha256 is the hex digest of the value as produced (``-`` for a
tombstone, whose value is null).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import logging
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

__all__ = (
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_OVERSIZE_BYTES",
    "MALFORMED_KINDS",
    "LoadgenError",
    "ensure_topic",
    "main",
    "malformed_value",
    "plan",
    "valid_value",
)

_LOG = logging.getLogger("loom_ray.loadgen")  # not __name__: that is "__main__" under -m

BOOTSTRAP_ENV = "LOOM_KAFKA_BOOTSTRAP_SERVERS"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_OVERSIZE_BYTES = 300 * 1024
# The broker refuses records above message.max.bytes (default 1048588) and the producer refuses requests
# above its own message.max.bytes (default 1000000); stay well below both.
MAX_VALUE_BYTES = 900 * 1024
TOMBSTONE_SHA = "-"

MALFORMED_KINDS: tuple[str, ...] = (
    "invalid_utf8",
    "truncated_json",
    "not_json",
    "nul_in_string",
    "deep_nesting",
    "huge_number",
    "oversize",
    "empty",
    "null_value",
    "lone_surrogate",
)

_NESTING_DEPTH = 100_000
_NESTED = b"[" * _NESTING_DEPTH + b"]" * _NESTING_DEPTH
_HUGE_DIGITS = 10_000
_HUGE_INT = b"1" + b"0" * (_HUGE_DIGITS - 1)
# A fixed, seeded block of filler; a pad is a slice of it starting at an offset chosen by seq, so pads
# differ between messages without calling random per message.
_FILLER_BLOCK_LEN = 4093
_FILLER_BLOCK = "".join(
    random.Random(20240901).choices(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=_FILLER_BLOCK_LEN
    )
).encode("ascii")
_FILLER = _FILLER_BLOCK * (MAX_VALUE_BYTES // _FILLER_BLOCK_LEN + 2)
# Deterministic timestamps (when no ts is given) start here: 2025-01-01T00:00:00Z, one millisecond per seq.
_EPOCH_S = 1_735_689_600
_TAGS = (("red",), ("red", "blue"), ("green",), ())
# Bytes that wrap the pad and sha: ',"pad":"' + pad + '","sha":"' + 64 hex chars + '"}' minus the '}'
# already counted in the serialised head.
_PAD_SHA_OVERHEAD = len(b',"pad":"') + len(b'","sha":"') + 64 + len(b'"')
_POLL_EVERY = 1000
_PROGRESS_EVERY_S = 2.0
_MASK64 = (1 << 64) - 1


class LoadgenError(RuntimeError):
    """Raised when the load cannot be produced: broker unreachable, wrong topic shape, bad arguments."""


@functools.lru_cache(maxsize=4)
def _utc_second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def _utc_iso(t: float) -> str:
    """Format a Unix time as ISO-8601 UTC with milliseconds, e.g. ``2025-01-01T00:00:00.000Z``."""
    whole = int(t)
    return f"{_utc_second(whole)}.{min(999, int((t - whole) * 1000)):03d}Z"


def _pad(seq: int, length: int) -> bytes:
    """Return ``length`` filler bytes whose start depends on ``seq``; ValueError beyond MAX_VALUE_BYTES."""
    if length > MAX_VALUE_BYTES:
        raise ValueError(f"pad of {length} bytes exceeds MAX_VALUE_BYTES={MAX_VALUE_BYTES}")
    start = (seq * 7919) % _FILLER_BLOCK_LEN
    return _FILLER[start : start + length]


def valid_value(seq: int, size: int, *, ts: str | None = None, kind: str = "event") -> bytes:
    """Build a valid JSON event of ``size`` bytes (never smaller than its ~190-byte skeleton).

    ``ts`` defaults to a timestamp derived from ``seq``, so the result depends only on the arguments.
    """
    head = orjson.dumps(
        {
            "seq": seq,
            "ts": ts if ts is not None else _utc_iso(_EPOCH_S + seq / 1000),
            "kind": kind,
            "user": f"u-{seq % 10007:05d}",
            "amount": ((seq * 7919) % 1_000_000) / 100,
            "tags": _TAGS[seq % len(_TAGS)],
        }
    )
    pad = _pad(seq, max(0, size - len(head) - _PAD_SHA_OVERHEAD))
    sha = hashlib.sha256(pad).hexdigest().encode("ascii")
    return b"".join((head[:-1], b',"pad":"', pad, b'","sha":"', sha, b'"}'))


def malformed_value(kind: str, seq: int, *, oversize_bytes: int = DEFAULT_OVERSIZE_BYTES) -> bytes | None:
    """Build the bad value of ``kind`` for message ``seq``; raise ValueError for an unknown kind."""
    if kind == "invalid_utf8":
        return b'\xff\xfe{"seq": %d, "kind": "invalid_utf8"}' % seq
    if kind == "truncated_json":
        whole = valid_value(seq, 200, kind=kind)
        return whole[: len(whole) // 2]
    if kind == "not_json":
        return b"not json: plain text message %d" % seq
    if kind == "nul_in_string":
        return b'{"seq": %d, "kind": "nul_in_string", "text": "before\\u0000after"}' % seq
    if kind == "deep_nesting":
        return b'{"seq": %d, "kind": "deep_nesting", "d": %s}' % (seq, _NESTED)
    if kind == "huge_number":
        return b'{"seq": %d, "kind": "huge_number", "n": %s}' % (seq, _HUGE_INT)
    if kind == "oversize":
        return valid_value(seq, oversize_bytes + 1024, kind=kind)
    if kind == "empty":
        return b""
    if kind == "null_value":
        return None
    if kind == "lone_surrogate":
        return b'{"seq": %d, "kind": "lone_surrogate", "text": "x\\ud800y"}' % seq
    raise ValueError(f"unknown malformed kind {kind!r}; expected one of {', '.join(MALFORMED_KINDS)}")


def _mix64(seed: int, k: int) -> int:
    """Hash (seed, k) to a well-spread 64-bit integer (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + k + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _window_start(k: int, ratio: float) -> int:
    return math.floor(k / ratio)


def plan(seq: int, ratio: float, seed: int, kinds: Sequence[str] = MALFORMED_KINDS) -> str | None:
    """Return the malformed kind message ``seq`` gets, or None if it is valid.

    Messages are split into consecutive windows of about 1/ratio messages; window k holds exactly one bad
    message, at a seeded position, of kind ``kinds[k % len(kinds)]``. So the bad fraction is ratio, the
    kinds cycle in order, and the positions (hence partitions) are spread by the seed.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be within [0, 1], got {ratio!r}")
    if ratio == 0.0 or not kinds:
        return None
    k = int(seq * ratio)
    while k > 0 and _window_start(k, ratio) > seq:
        k -= 1
    while _window_start(k + 1, ratio) <= seq:
        k += 1
    start = _window_start(k, ratio)
    width = _window_start(k + 1, ratio) - start
    if seq != start + _mix64(seed, k) % width:
        return None
    return kinds[k % len(kinds)]


def _topic_partition_count(admin: AdminClient, topic: str, timeout_s: float) -> int | None:
    """Return the topic's partition count, or None if the broker does not know the topic."""
    try:
        metadata = admin.list_topics(timeout=max(timeout_s, 0.1))
    except KafkaException as exc:
        raise LoadgenError(f"cannot reach Kafka within {timeout_s:.0f} s: {exc.args[0]}") from exc
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return None
    return len(found.partitions)


def _wait_for_leaders(admin: AdminClient, topic: str, partitions: int, deadline: float) -> None:
    """Block until metadata shows every partition with a leader; LoadgenError at the deadline."""
    while True:
        remaining = deadline - time.monotonic()
        try:
            found = admin.list_topics(topic=topic, timeout=max(remaining, 0.1)).topics.get(topic)
        except KafkaException:
            found = None
        if (
            found is not None
            and found.error is None
            and len(found.partitions) == partitions
            and all(p.leader >= 0 for p in found.partitions.values())
        ):
            return
        if remaining <= 0:
            raise LoadgenError(f"topic {topic} was created but its {partitions} partitions have no leaders yet")
        time.sleep(0.1)


def ensure_topic(bootstrap: str, topic: str, partitions: int, timeout_s: float = 30) -> None:
    """Create ``topic`` with ``partitions`` partitions (replication factor 1) unless it already exists.

    Runs before producing. Raises LoadgenError if the broker cannot be reached within ``timeout_s`` or the
    topic exists with a different partition count; returns once every partition has a leader.
    """
    deadline = time.monotonic() + timeout_s
    admin = AdminClient({"bootstrap.servers": bootstrap}, logger=_LOG)
    existing = _topic_partition_count(admin, topic, timeout_s)
    if existing is None:
        _LOG.info("creating topic=%s partitions=%d replication_factor=1", topic, partitions)
        futures = admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
            request_timeout=timeout_s,
        )
        try:
            futures[topic].result(timeout=timeout_s)
        except KafkaException as exc:
            error = exc.args[0]
            if not isinstance(error, KafkaError) or error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise LoadgenError(f"cannot create topic {topic}: {error}") from exc
            existing = _topic_partition_count(admin, topic, deadline - time.monotonic())
    if existing is not None and existing != partitions:
        raise LoadgenError(
            f"topic {topic} already exists with {existing} partitions but {partitions} were requested; "
            f"pass --partitions {existing} or delete the topic"
        )
    _wait_for_leaders(admin, topic, partitions, deadline)


class _TokenBucket:
    """Rate limiter: ``wait_s()`` takes one token, or says how long to wait until one is available."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        # 50 ms worth of burst keeps production smooth for latency tests.
        self._capacity = max(1.0, rate * 0.05)
        self._tokens = 1.0
        self._last = time.monotonic()

    def wait_s(self) -> float:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


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


def _value_for(seq: int, args: argparse.Namespace, kinds: tuple[str, ...]) -> tuple[str | None, bytes | None]:
    kind = plan(seq, args.malformed_ratio, args.seed, kinds)
    if kind is None:
        return None, valid_value(seq, args.size, ts=_utc_iso(time.time()))
    return kind, malformed_value(kind, seq, oversize_bytes=args.oversize_bytes)


def _produce(
    producer: Producer, args: argparse.Namespace, kinds: tuple[str, ...], stats: _Stats, deliveries: _Deliveries
) -> None:
    """Produce every message; returns after the last produce() call, before the final flush."""
    bucket = _TokenBucket(args.rate) if args.rate else None
    topic, partitions = args.topic, args.partitions
    for seq in range(args.messages):
        if bucket is not None:
            while (wait := bucket.wait_s()) > 0:
                producer.poll(wait)
            stats.maybe_report()
        if deliveries.fatal is not None:
            raise LoadgenError(f"producer failed fatally: {deliveries.fatal}")
        kind, value = _value_for(seq, args, kinds)
        while True:
            try:
                producer.produce(topic, value=value, key=str(seq).encode(), partition=seq % partitions)
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


def _flush(producer: Producer, stats: _Stats) -> None:
    """Wait for every outstanding delivery report, logging progress while waiting."""
    while (waiting := producer.flush(1.0)) > 0:
        stats.maybe_report(waiting)


def _summary(args: argparse.Namespace, stats: _Stats, deliveries: _Deliveries) -> None:
    seconds = max(time.monotonic() - stats.started, 1e-9)
    bad = ",".join(f"{k}:{stats.bad_by_kind[k]}" for k in MALFORMED_KINDS if stats.bad_by_kind[k])
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


def _run(args: argparse.Namespace, kinds: tuple[str, ...]) -> int:
    """Create the topic, produce, flush and summarise; returns the exit code."""
    ensure_topic(args.bootstrap_servers, args.topic, args.partitions, timeout_s=args.connect_timeout_s)
    with contextlib.ExitStack() as stack:
        ack_log = stack.enter_context(open(args.ack_log, "w", encoding="ascii")) if args.ack_log else None
        deliveries = _Deliveries(args.malformed_ratio, args.seed, kinds, ack_log)
        producer = Producer(_producer_config(args.bootstrap_servers, deliveries, ack_log is not None))
        stats = _Stats()
        try:
            _produce(producer, args, kinds, stats, deliveries)
            _flush(producer, stats)
        except KeyboardInterrupt:
            _LOG.warning("interrupted after %d messages; flushing for up to 10 s", stats.produced)
            producer.flush(10.0)
            _summary(args, stats, deliveries)
            return 130
    if ack_log is None:
        deliveries.acked = stats.produced - deliveries.failed
    _summary(args, stats, deliveries)
    if deliveries.failed:
        _LOG.error("%d deliveries failed; first: %s", deliveries.failed, deliveries.first_error)
        return 1
    return 0


def _parse_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in MALFORMED_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind(s) {','.join(unknown) or '(none)'}; choose from {','.join(MALFORMED_KINDS)}"
        )
    return kinds


def _bounded(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], int | float]:
    """Build an argparse ``type=`` that parses ``kind`` and rejects values outside [low, high]."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from exc
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is outside [{low:g}, {high:g}]")
        return value

    return parse


_KIND_HELP = {
    "invalid_utf8": "bytes starting 0xff 0xfe, not UTF-8",
    "truncated_json": "a valid event cut in half",
    "not_json": "plain text",
    "nul_in_string": 'valid JSON with a "\\u0000" escape (PostgreSQL jsonb refuses it)',
    "deep_nesting": "valid JSON nested 100000 arrays deep",
    "huge_number": "a 10000-digit integer literal",
    "oversize": "a valid event larger than --oversize-bytes",
    "empty": "an empty (zero-byte) value",
    "null_value": "a null value (tombstone)",
    "lone_surrogate": 'JSON with an unpaired "\\ud800" escape',
}
_EPILOG = (
    "malformed kinds (used in this order, one per window of about 1/R messages):\n"
    + "\n".join(f"  {kind:<15} {_KIND_HELP[kind]}" for kind in MALFORMED_KINDS)
    + "\n\nexit status: 0 all acknowledged; 1 broker unreachable, topic has another partition count or a"
    "\ndelivery failed; 2 bad arguments; 130 interrupted."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loom_ray.loadgen",
        description=(
            "Create a Kafka topic if needed (replication factor 1) and produce N JSON events to it as fast as\n"
            "possible or at --rate. Message seq has key str(seq) and goes to partition seq % P. A seeded\n"
            "fraction R of messages is malformed. Progress and a final summary are logged to stderr."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--topic", required=True, metavar="T", help="topic to fill; created if missing")
    add(
        "--partitions",
        required=True,
        metavar="P",
        type=_bounded(int, 1, 100_000),
        help="partition count; an existing topic must have exactly this many",
    )
    add("--messages", required=True, metavar="N", type=_bounded(int, 0, 10**12), help="messages to produce")
    add(
        "--size",
        required=True,
        metavar="BYTES",
        type=_bounded(int, 1, MAX_VALUE_BYTES),
        help="size of each valid value in bytes (at least its ~190-byte skeleton)",
    )
    add(
        "--malformed-ratio",
        metavar="R",
        type=_bounded(float, 0.0, 1.0),
        default=0.0,
        help="fraction of messages that are malformed, 0..1 (default: %(default)s)",
    )
    add(
        "--kinds",
        metavar="K1,K2,...",
        type=_parse_kinds,
        default=MALFORMED_KINDS,
        help="malformed kinds to cycle through (default: all, listed below)",
    )
    add(
        "--oversize-bytes",
        metavar="BYTES",
        type=_bounded(int, 1, MAX_VALUE_BYTES - 1024),
        default=DEFAULT_OVERSIZE_BYTES,
        help="'oversize' values exceed this by 1 KiB (default: %(default)s)",
    )
    add(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        default=os.environ.get(BOOTSTRAP_ENV, DEFAULT_BOOTSTRAP),
        help=f"Kafka bootstrap servers (default: ${BOOTSTRAP_ENV}, else {DEFAULT_BOOTSTRAP})",
    )
    add(
        "--seed",
        metavar="S",
        type=int,
        default=1,
        help="seed choosing which messages are malformed (default: %(default)s)",
    )
    add(
        "--rate",
        metavar="MSGS_PER_S",
        type=_bounded(float, 1e-3, 1e9),
        default=None,
        help="produce at most this many messages per second (default: unlimited)",
    )
    add(
        "--ack-log",
        metavar="FILE",
        default=None,
        help="write 'partition offset kind sha256(value)' per acknowledged message; kind is 'valid' or a "
        "malformed kind, sha is '-' for a null value",
    )
    add(
        "--connect-timeout-s",
        metavar="SECONDS",
        type=_bounded(float, 0.1, 3600),
        default=30.0,
        help="fail if the broker cannot be reached within this time (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (see --help)."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
    kinds: tuple[str, ...] = tuple(args.kinds)
    _LOG.info(
        "loadgen topic=%s partitions=%d messages=%d size=%d malformed_ratio=%g kinds=%s seed=%d rate=%s "
        "bootstrap=%s ack_log=%s",
        args.topic,
        args.partitions,
        args.messages,
        args.size,
        args.malformed_ratio,
        ",".join(kinds),
        args.seed,
        args.rate or "unlimited",
        args.bootstrap_servers,
        args.ack_log or "-",
    )
    try:
        return _run(args, kinds)
    except LoadgenError as exc:
        _LOG.error("%s", exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
