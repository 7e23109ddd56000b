"""The command line of ``python -m loom_ray.loadgen``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from loom_ray.loadgen.debezium import DEBEZIUM_MALFORMED_KINDS, ENCODINGS
from loom_ray.loadgen.formats import DEFAULT_FORMAT_KINDS, FORMAT_MALFORMED_KINDS, REGISTRY_FORMATS
from loom_ray.loadgen.produce import run
from loom_ray.loadgen.topic import LoadgenError
from loom_ray.loadgen.values import DEFAULT_OVERSIZE_BYTES, MALFORMED_KINDS, MAX_VALUE_BYTES

_LOG = logging.getLogger(__name__)
BOOTSTRAP_ENV = "LOOM_KAFKA_BOOTSTRAP_SERVERS"
REGISTRY_ENV = "LOOM_SCHEMA_REGISTRY_URL"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
FORMATS = ("json", *REGISTRY_FORMATS, "debezium")
# --format -> (the malformed kinds it has, those used when --kinds is not given)
_KINDS = {
    "json": (MALFORMED_KINDS, MALFORMED_KINDS),
    **dict.fromkeys(REGISTRY_FORMATS, (FORMAT_MALFORMED_KINDS, DEFAULT_FORMAT_KINDS)),
    "debezium": (DEBEZIUM_MALFORMED_KINDS, DEBEZIUM_MALFORMED_KINDS),
}


def _parse_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    if not kinds:
        raise argparse.ArgumentTypeError("name at least one kind")
    return kinds


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, ...]:
    """The malformed kinds of ``args.format`` (refusing kinds of another format), after checking that the
    options fit the format."""
    allowed, default = _KINDS[args.format]
    kinds: tuple[str, ...] = args.kinds or default
    unknown = [k for k in kinds if k not in allowed]
    if unknown:
        parser.error(f"unknown kind(s) {','.join(unknown)} for --format {args.format}; choose from {','.join(allowed)}")
    avro_changes = args.format == "debezium" and args.debezium_encoding == "avro"
    if (args.format in REGISTRY_FORMATS or avro_changes) and not args.schema_registry_url:
        parser.error(f"--format {args.format} writes through a Schema Registry: set --schema-registry-url")
    if args.format == "debezium" and args.ack_log:
        parser.error("--ack-log is for the formats whose key is str(seq), not --format debezium")
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
    "malformed kinds of --format json (used in this order, one per window of about 1/R messages):\n"
    + "\n".join(f"  {kind:<15} {_KIND_HELP[kind]}" for kind in MALFORMED_KINDS)
    + "\n\nof --format avro, protobuf, json_schema (default: no_magic_byte,undecodable):\n"
    "  no_magic_byte   the event as plain JSON, without the Confluent framing\n"
    "  undecodable     the valid schema id's framing, then bytes that do not decode with it\n"
    "  unknown_schema_id  a framed payload naming schema id 2147483647 (a consumer waits at it)\n"
    "\nof --format debezium: not_an_event (JSON without op), truncate (an event with op t)"
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
            "fraction R of messages is malformed. Progress and a final summary are logged to stderr.\n"
            "--format avro, protobuf or json_schema writes the same events through a Schema Registry in the\n"
            "Confluent wire format; --format debezium writes the change events of a source table of --keys rows\n"
            "(keyed and partitioned by row; a delete is followed by its tombstone)."
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
        default=None,
        help="malformed kinds to cycle through (default: those of the format listed below)",
    )
    add("--format", choices=FORMATS, default="json", help="how values are written (default: %(default)s)")
    add(
        "--schema-registry-url",
        metavar="URL",
        default=os.environ.get(REGISTRY_ENV),
        help=f"Schema Registry (Confluent API) of the registry formats (default: ${REGISTRY_ENV})",
    )
    add(
        "--keys",
        metavar="K",
        type=_bounded(int, 1, 10**9),
        default=1000,
        help="--format debezium: rows of the source table (default: %(default)s)",
    )
    add(
        "--debezium-encoding",
        choices=ENCODINGS,
        default="envelope",
        help="--format debezium: JSON with Connect's schema envelope, schemaless JSON, or Avro (default: %(default)s)",
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
    parser = _parser()
    args = parser.parse_args(argv)
    kinds = _check(parser, args)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
    _LOG.info(
        "loadgen topic=%s format=%s partitions=%d messages=%d size=%d malformed_ratio=%g kinds=%s seed=%d rate=%s "
        "bootstrap=%s ack_log=%s",
        args.topic,
        args.format,
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
