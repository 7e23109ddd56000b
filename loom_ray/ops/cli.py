"""The data commands of ``python -m loom_ray.ctl``: ``dead-letters``, ``replay``, ``rewind``, ``skip``, ``pause``,
``resume``.

They need no Ray: they work on PostgreSQL and the broker with the deployment's own settings (``LOOM_*``), so
they run beside a live job and while it is stopped alike. Each but ``dead-letters`` takes ``--reason`` and
``--dry-run`` (print what would happen, change nothing, record nothing) and is recorded in ``loom_operations``
(:mod:`loom_ray.ops.audit`). Exit codes: 0 done; 1 refused or failed (a rewind or skip the position policy
refuses, one the coordinator did not apply within ``--timeout``); 2 a bad setting or selection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from loom_ray import db
from loom_ray.errors import ConfigError, OperationError, PositionRefusedError
from loom_ray.kafka.admin import KafkaMetadata
from loom_ray.offsets import BrokerRead
from loom_ray.ops import audit, deadletters, moves, pause
from loom_ray.ops.deadletters import Summary
from loom_ray.ops.records import Conversion, RecordReader
from loom_ray.ops.replay import Replay, ReplayReport
from loom_ray.ops.selection import Filter, route_name, topics_of
from loom_ray.policy.positions import BrokerPartition, Kind, StoredOffset, Target, known_id, plan
from loom_ray.routes.catalog import read_shape
from loom_ray.routes.fit import problems
from loom_ray.settings import Settings
from loom_ray.sink.codecs import install_codecs
from loom_ray.sink.routed import RouteTables

COMMANDS = ("dead-letters", "replay", "rewind", "skip", "pause", "resume")
STAGES = ("decode", "validate", "db_row")
_WAIT_POLL_S = 0.5
_PROGRESS_S = 5.0  # a replay's progress line at most this often

TopicPartition = tuple[str, int]


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is UTC. Raises ArgumentTypeError for anything else."""
    try:
        found = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time, e.g. 2026-12-01T09:30:00Z") from None
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)


def add_commands(commands: Any, parse_partition: Callable[[str], TopicPartition]) -> None:
    """Add the data commands to ctl's subparsers (``parse_partition`` reads ``topic[p]``)."""
    summary = commands.add_parser("dead-letters", help="dead letters by topic, route, error class and stage")
    _filter(summary)
    replay = commands.add_parser("replay", help="run dead letters again through today's decoder and routes")
    _filter(replay)
    replay.add_argument("--chunk", type=int, default=500, help="dead letters per transaction (default 500)")
    _recorded(replay)
    for kind, what in (("rewind", "read partitions again from an offset or a time"),
                       ("skip", "move partitions forward past offsets nobody wants (a recorded gap)")):  # fmt: skip
        move = commands.add_parser(kind, help=what)
        move.add_argument("partitions", nargs="*", type=parse_partition, metavar="TOPIC[PARTITION]")
        move.add_argument("--topic", action="append", default=[], help="every partition of this topic (repeatable)")
        where = move.add_mutually_exclusive_group(required=True)
        where.add_argument("--to-offset", type=int, help="the offset to read from next")
        where.add_argument("--to-time", type=parse_time, help="the first offset at or after this time (ISO 8601)")
        if kind == "skip":
            where.add_argument("--to-end", action="store_true", help="the high watermark: skip what is there now")
        move.add_argument(
            "--timeout", type=float, default=60.0, help="seconds to wait for the coordinator (default 60)"
        )
        _recorded(move)
    for kind, what in (("pause", "stop fetching and flushing topics, keeping their place"),
                       ("resume", "read paused topics again from where they stopped")):  # fmt: skip
        toggle = commands.add_parser(kind, help=what)
        toggle.add_argument("--topic", action="append", default=[], help="a topic (repeatable)")
        toggle.add_argument("--route", help="the topics of this route")
        _recorded(toggle)


def _filter(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", action="append", default=[], help="only this topic (repeatable)")
    parser.add_argument("--route", help="only the topics of this route (loom_messages: those no route takes)")
    parser.add_argument("--class", dest="error_class", help="only this error class, e.g. TooLong")
    parser.add_argument("--stage", choices=STAGES, help="only this stage")
    parser.add_argument("--since", type=parse_time, help="failed at or after this time (ISO 8601; UTC if no zone)")
    parser.add_argument("--until", type=parse_time, help="failed before this time")


def _recorded(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", help="why, recorded with the operation in loom_operations")
    parser.add_argument("--dry-run", action="store_true", help="print what would happen; change nothing")


def filter_of(args: argparse.Namespace) -> Filter:
    """The shared filter of a parsed command line."""
    return Filter(
        tuple(args.topic),
        getattr(args, "route", None),
        getattr(args, "error_class", None),
        getattr(args, "stage", None),
        getattr(args, "since", None),
        getattr(args, "until", None),
    )


def run(args: argparse.Namespace) -> int:
    """Run a data command; its exit code (see the module docstring)."""
    try:
        settings = Settings.from_env()
        code: int = asyncio.run(_COMMANDS[args.command](settings, args))
        return code
    except (ConfigError, OperationError) as exc:
        print(f"loom-ray ctl {args.command}: {exc}", file=sys.stderr)
        return 2


async def _connect(settings: Settings) -> asyncpg.Connection:
    return await db.connect(settings, f"loom-ctl pid={os.getpid()}")


# -- dead-letters -------------------------------------------------------------------------------------------


def summary_lines(rows: list[Summary], route_of: Callable[[str], str]) -> list[str]:
    """What ``dead-letters`` prints: one aligned line per topic, class and stage, with a header and a total."""
    if not rows:
        return ["no dead letters match"]
    table = [("topic", "route", "class", "stage", "open", "resolved", "first failed", "last failed")]
    for row in rows:
        first, last = (t.astimezone(UTC).isoformat(timespec="seconds") for t in (row.first_failed, row.last_failed))
        table.append((row.topic, route_of(row.topic), row.error_class, row.stage, str(row.open), str(row.resolved),
                      first, last))  # fmt: skip
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in table]
    lines.append(f"{sum(r.open for r in rows)} open, {sum(r.resolved for r in rows)} resolved")
    return lines


async def _dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    selected = filter_of(args)
    topics = topics_of(selected, settings.kafka_topics, settings.routes) if selected.route else selected.topics
    conn = await _connect(settings)
    try:
        rows = await deadletters.summary(conn, selected, topics or None)
    finally:
        await conn.close()
    print("\n".join(summary_lines(rows, lambda topic: route_name(settings.routes, topic))))
    return 0


# -- replay -------------------------------------------------------------------------------------------------


def replay_line(report: ReplayReport, operation: int | None) -> str:
    """What ``replay`` prints at the end (``operation`` None: a dry run)."""
    counts = report.as_dict()
    failing = ", ".join(f"{k}={v}" for k, v in counts["failing"].items()) or "none"
    head = "dry run, nothing changed: would resolve" if operation is None else f"replay {operation}: resolved"
    return (
        f"{head} {report.resolved + report.stale} of {report.selected} dead letters selected "
        f"({report.resolved} written, {report.stale} stale: older than their key's row); still failing: {failing}; "
        f"unreadable (the broker no longer has the record): {report.unreadable}; "
        f"of an older incarnation: {report.older}"
    )


class _Progress:
    """Prints how far a long replay got, at most every :data:`_PROGRESS_S` seconds."""

    def __init__(self, operation: int | None) -> None:
        self._operation = operation
        self._printed = time.monotonic()

    def chunk(self, report: ReplayReport) -> None:
        now = time.monotonic()
        if now - self._printed >= _PROGRESS_S:
            self._printed = now
            which = "dry run" if self._operation is None else f"replay {self._operation}"
            print(f"{which}: {report.handled} of {report.selected} dead letters handled so far", flush=True)


async def route_tables(conn: asyncpg.Connection, settings: Settings) -> RouteTables | None:
    """The routes' tables as the catalog has them now (a column widened since the job started included);
    None without routes. Raises :class:`OperationError` for a table that no longer fits its route."""
    if not settings.routes.routes:
        return None
    shapes = {}
    for route in settings.routes.routes:
        shape = await read_shape(conn, route.label(settings.db_schema), settings.db_schema)
        unfit = [f"table {route.label(settings.db_schema)} does not exist"] if shape is None else problems(route, shape)
        if shape is None or unfit:
            raise OperationError(f"route {route.name!r}: " + "; ".join(unfit))
        shapes[route.name] = shape
    return RouteTables(settings.routes.with_tables(shapes), settings.db_schema)


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    selected = filter_of(args)
    topics = topics_of(selected, settings.kafka_topics, settings.routes)
    conn = await _connect(settings)
    reader = RecordReader(settings)
    try:
        await install_codecs(conn)
        operation = None
        if not args.dry_run:
            recorded = await audit.record(conn, audit.REPLAY, topics, selected.as_dict(), args.reason, audit.RUNNING)
            operation = recorded.id
            print(f"replay {operation} by {recorded.requested_by}: running", flush=True)
        conversion = Conversion(settings, asyncio.get_running_loop())
        replay = Replay(conn, settings, await route_tables(conn, settings), reader, conversion, args.chunk, operation)
        try:
            await replay.run(selected, topics, _Progress(operation).chunk)
        except Exception as exc:
            if operation is not None:
                await audit.finish(conn, operation, audit.FAILED, "ctl", replay.report.handled,
                                   {**replay.report.as_dict(), "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
            raise
        if operation is not None:
            await audit.finish(conn, operation, audit.DONE, "ctl", replay.report.handled, replay.report.as_dict())
        print(replay_line(replay.report, operation))
        return 0
    finally:
        reader.close()
        await conn.close()


# -- rewind, skip -------------------------------------------------------------------------------------------


class _Broker:
    """The broker's side of a claim ctl makes itself (no coordinator runs), or of a dry run."""

    def __init__(self, settings: Settings) -> None:
        self.metadata = KafkaMetadata(settings)
        self._ids: dict[str, str | None] = {}

    def partitions(self, topics: list[str]) -> list[TopicPartition]:
        found = self.metadata.discover()
        missing = [t for t in topics if t not in found.partitions]
        if missing:
            raise OperationError(f"the broker has no topic {', '.join(missing)} ({found.errors})")
        self._ids = {t: known_id(i) for t, i in found.topic_ids.items()}
        return sorted((t, p) for t in topics for p in found.partitions[t])

    async def read(self, tps: list[TopicPartition]) -> dict[TopicPartition, BrokerPartition]:
        marks = await asyncio.to_thread(self.metadata.watermarks, tps)
        return {tp: BrokerPartition(low, high, self._ids.get(tp[0])) for tp, (low, high) in marks.items()}

    def targets(self, kind: Kind, args: argparse.Namespace, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Each partition's target offset: ``--to-offset``, ``--to-time`` (the broker's offsets_for_times; the
        end where every record is older) or ``--to-end``."""
        if args.to_offset is not None:
            return dict.fromkeys(tps, args.to_offset)
        marks = self.metadata.watermarks(tps)
        if kind is Kind.SKIP and args.to_end:
            return {tp: marks[tp][1] for tp in tps}
        found = self.metadata.offsets_for_times(tps, int(args.to_time.timestamp() * 1000))
        return {tp: marks[tp][1] if found[tp] < 0 else found[tp] for tp in tps}

    def close(self) -> None:
        self.metadata.close()


def _asked(kind: Kind, args: argparse.Namespace) -> dict[str, Any]:
    if args.to_offset is not None:
        return {"to_offset": args.to_offset}
    if kind is Kind.SKIP and args.to_end:
        return {"to_end": True}
    return {"to_time": args.to_time.isoformat()}


async def _stored(conn: asyncpg.Connection, tps: list[TopicPartition]) -> dict[TopicPartition, StoredOffset]:
    rows = await conn.fetch(
        """SELECT topic, "partition", next_offset, incarnation, topic_id, reread_until FROM loom_offsets
           JOIN unnest($1::text[], $2::int[]) AS r(topic, "partition") USING (topic, "partition")""",
        [t for t, _ in tps],
        [p for _, p in tps],
    )
    return {
        (r["topic"], r["partition"]): StoredOffset(r["next_offset"], r["incarnation"], r["topic_id"], r["reread_until"])
        for r in rows
    }


def plan_lines(
    kind: Kind,
    targets: dict[TopicPartition, int],
    stored: dict[TopicPartition, StoredOffset],
    broker: dict[TopicPartition, BrokerPartition],
) -> tuple[list[str], bool]:
    """What a dry run of a rewind or skip prints, per partition, and whether the policy would refuse any."""
    lines, refused = [], False
    for tp, offset in sorted(targets.items()):
        key = moves.partition_key(tp)
        if tp not in broker:
            lines.append(f"{key}: the broker did not answer for its watermarks")
            refused = True
            continue
        try:
            position = plan(stored.get(tp), broker[tp], False, Target(kind, offset, "(dry run)"))
        except PositionRefusedError as exc:
            lines.append(f"{key}: refused: {exc}")
            refused = True
            continue
        before = stored[tp].next_offset
        moved = abs(position.next_offset - before)
        what = f"reads {moved} offsets again" if kind is Kind.REWIND else f"a skipped gap of {moved} offsets"
        lines.append(f"{key}: {before} -> {position.next_offset} ({what})")
    return lines, refused


async def _move(settings: Settings, args: argparse.Namespace) -> int:
    kind = Kind(args.command)
    named = sorted(set(args.partitions))
    topics = sorted({t for t, _ in named} | set(args.topic))
    if not topics:
        raise OperationError(f"{kind}: name partitions (e.g. 'orders[3]') or --topic")
    topics_of(Filter(tuple(topics)), settings.kafka_topics, settings.routes)
    broker = _Broker(settings)
    conn = await _connect(settings)
    try:
        everything = await asyncio.to_thread(broker.partitions, topics)
        unknown = sorted(set(named) - set(everything))
        if unknown:
            raise OperationError(f"no such partitions: {', '.join(moves.partition_key(tp) for tp in unknown)}")
        tps = sorted(set(named) | {tp for tp in everything if tp[0] in args.topic})
        targets = await asyncio.to_thread(broker.targets, kind, args, tps)
        if args.dry_run:
            lines, refused = plan_lines(kind, targets, await _stored(conn, tps), await broker.read(tps))
            print("dry run, nothing changed:\n" + "\n".join(lines))
            return 1 if refused else 0
        recorded = await audit.record(
            conn, str(kind), topics, moves.selection(kind, targets, _asked(kind, args)), args.reason, audit.PENDING
        )
        print(f"{kind} {recorded.id} by {recorded.requested_by}: pending", flush=True)
        return await _see_applied(conn, settings, recorded.id, broker.read, args.timeout)
    finally:
        broker.close()
        await conn.close()


async def _see_applied(
    conn: asyncpg.Connection, settings: Settings, operation: int, broker: BrokerRead, timeout_s: float
) -> int:
    """Wait for the coordinator to apply the operation; apply it here when none runs (or none took it within
    ``timeout_s``). Print the outcome; 0 when applied, 1 when refused or when the broker did not answer (then
    it stays pending)."""
    found = await audit.fetch(conn, operation)
    assert found is not None
    live = await moves.live_deployments(conn, found.topics, settings.kafka_session_timeout_ms / 1000)
    if live:
        print(f"waiting for the coordinator of {', '.join(live)} to apply it at its next round", flush=True)
        deadline = time.monotonic() + timeout_s
        while found.state == audit.PENDING and time.monotonic() < deadline:
            await asyncio.sleep(_WAIT_POLL_S)
            found = await audit.fetch(conn, operation)
            assert found is not None
    if found.state == audit.PENDING:
        if live:
            print(f"no coordinator applied it within {timeout_s:.0f}s: applying it here (new epochs fence any owner)")
        try:
            await moves.apply_move(conn, operation, broker, "ctl")
        except moves.NotAnswered as exc:
            print(f"{exc}; it stays pending: a coordinator applies it at its next round, or run ctl again",
                  file=sys.stderr)  # fmt: skip
            return 1
        found = await audit.fetch(conn, operation)
        assert found is not None
    if found.state != audit.DONE:
        print(f"{found.kind} {operation} refused: {found.result.get('error', found.state)}", file=sys.stderr)
        return 1
    for key, moved in sorted(found.result.items()):
        gap = f", gap {moved['gap'][0]}..{moved['gap'][1] - 1} skipped" if "gap" in moved else ""
        print(f"{key}: {moved['from']} -> {moved['to']}{gap}")
    print(f"{found.kind} {operation} done: {found.records} offsets moved")
    return 0


# -- pause, resume ------------------------------------------------------------------------------------------


async def _toggle(settings: Settings, args: argparse.Namespace) -> int:
    pausing = args.command == "pause"
    if not args.topic and args.route is None:
        raise OperationError(f"{args.command}: name --topic or --route")
    selected = Filter(tuple(args.topic), args.route)
    topics = topics_of(selected, settings.kafka_topics, settings.routes)
    conn = await _connect(settings)
    try:
        already = set(await pause.paused(conn, topics))
        changing = sorted(set(topics) - already if pausing else set(topics) & already)
        if args.dry_run:
            print(f"dry run, nothing changed: would {args.command} {', '.join(changing) or 'no topic'}")
            return 0
        async with conn.transaction():
            recorded = await audit.record(
                conn, args.command, topics, selected.as_dict(), args.reason, audit.DONE, "ctl"
            )
            changed = await (pause.pause(conn, topics, recorded.id, args.reason) if pausing
                             else pause.resume(conn, topics, recorded.id))  # fmt: skip
            await audit.progress(conn, recorded.id, len(changed), {"topics": changed})
    finally:
        await conn.close()
    verb = "paused" if pausing else "resumed"
    untouched = sorted(set(topics) - set(changed))
    print(
        f"{args.command} {recorded.id} by {recorded.requested_by}: {verb} {', '.join(changed) or 'no topic'}"
        + (f" ({', '.join(untouched)} already {verb})" if untouched else "")
        + ("; the coordinator hands their partitions back at its next round" if pausing and changed else "")
        + ("; the coordinator claims their partitions again at its next round" if not pausing and changed else "")
    )
    return 0


_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Any]] = {
    "dead-letters": _dead_letters,
    "replay": _replay,
    "rewind": _move,
    "skip": _move,
    "pause": _toggle,
    "resume": _toggle,
}
