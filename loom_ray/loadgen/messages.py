"""What message ``seq`` is for each ``--format``: its key, value, partition and malformed kind (None: valid).

``json`` (the default) and the registry formats keep the load generator's shape: key ``str(seq)``, partition
``seq % P``, a seeded fraction of malformed kinds (:func:`loom_ray.loadgen.values.plan`). ``debezium`` writes a
source table's change events instead (:mod:`loom_ray.loadgen.debezium`): keyed and partitioned by row, a
delete followed by its tombstone.
"""

from __future__ import annotations

import argparse
import time
from typing import Protocol

from loom_ray.loadgen.debezium import ChangeEncoder, ChangeStream
from loom_ray.loadgen.formats import FormatEncoder
from loom_ray.loadgen.values import malformed_value, plan, utc_iso, valid_value

Produced = tuple[bytes | None, bytes | None, int, str | None]  # key, value, partition, malformed kind


class Messages(Protocol):
    """The messages of one ``seq`` (usually one)."""

    def at(self, seq: int) -> list[Produced]: ...


class JsonMessages:
    """W1's JSON events and the ten malformed kinds."""

    def __init__(self, args: argparse.Namespace, kinds: tuple[str, ...]) -> None:
        self._args = args
        self._kinds = kinds

    def at(self, seq: int) -> list[Produced]:
        args = self._args
        kind = plan(seq, args.malformed_ratio, args.seed, self._kinds)
        value: bytes | None
        if kind is None:
            value = valid_value(seq, args.size, ts=utc_iso(time.time()))
        else:
            value = malformed_value(kind, seq, oversize_bytes=args.oversize_bytes)
        return [(str(seq).encode(), value, seq % args.partitions, kind)]


class FormatMessages:
    """W1's events in a registry format (:mod:`loom_ray.loadgen.formats`)."""

    def __init__(self, args: argparse.Namespace, kinds: tuple[str, ...]) -> None:
        self._args = args
        self._kinds = kinds
        self._encoder = FormatEncoder(args.format, args.topic, args.schema_registry_url)

    def at(self, seq: int) -> list[Produced]:
        args = self._args
        kind = plan(seq, args.malformed_ratio, args.seed, self._kinds)
        if kind is None:
            value = self._encoder.valid(seq, args.size, ts=utc_iso(time.time()))
        else:
            value = self._encoder.malformed(kind, seq, args.size)
        return [(str(seq).encode(), value, seq % args.partitions, kind)]


class ChangeMessages:
    """A source table's Debezium change events (:mod:`loom_ray.loadgen.debezium`)."""

    def __init__(self, args: argparse.Namespace, kinds: tuple[str, ...]) -> None:
        self._args = args
        self._kinds = kinds
        self._stream = ChangeStream(args.keys, args.seed)
        self._encoder = ChangeEncoder(args.debezium_encoding, args.topic, args.schema_registry_url)

    def at(self, seq: int) -> list[Produced]:
        args = self._args
        kind = plan(seq, args.malformed_ratio, args.seed, self._kinds)
        if kind is not None:
            row = seq % args.keys
            key, value = self._encoder.malformed(kind, row, seq)
            return [(key, value, row % args.partitions, kind)]
        op, row, before, after = self._stream.change(seq)
        changes = self._encoder.messages(op, row, before, after, seq)
        return [(key, value, row % args.partitions, None) for key, value in changes]


def messages_for(args: argparse.Namespace, kinds: tuple[str, ...]) -> Messages:
    """The messages of ``args.format``."""
    if args.format == "json":
        return JsonMessages(args, kinds)
    if args.format == "debezium":
        return ChangeMessages(args, kinds)
    return FormatMessages(args, kinds)
