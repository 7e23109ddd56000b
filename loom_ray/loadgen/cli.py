"""The command line of ``python -m loom_ray.loadgen``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from loom_ray.loadgen.produce import run
from loom_ray.loadgen.topic import LoadgenError
from loom_ray.loadgen.values import DEFAULT_OVERSIZE_BYTES, MALFORMED_KINDS, MAX_VALUE_BYTES

_LOG = logging.getLogger(__name__)
BOOTSTRAP_ENV = "LOOM_KAFKA_BOOTSTRAP_SERVERS"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


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
    "\ndelivery failed; 2 bad arguments; 130 / 143 stopped by SIGINT / SIGTERM (what was produced is"
    "\nflushed for up to 10 s first)."
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
        return run(args, kinds)
    except LoadgenError as exc:
        _LOG.error("%s", exc)
        return 1
