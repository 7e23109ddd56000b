"""``python -m loom_ray.ctl dead-letters|replay|rewind|skip|pause|resume`` without services: the arguments, the
shared filter, the topics an operation may act on, and what each prints (loom_ray/ops/cli.py, selection.py)."""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from loom_ray import ctl
from loom_ray.errors import OperationError
from loom_ray.main import paused_note
from loom_ray.ops import cli
from loom_ray.ops.deadletters import Summary
from loom_ray.ops.replay import ReplayReport
from loom_ray.ops.selection import Filter, topics_of, where
from loom_ray.policy.positions import BrokerPartition, Kind, StoredOffset
from loom_ray.routes.model import RouteSet
from loom_ray.settings import Settings

ROUTES = RouteSet.model_validate(
    {
        "route": [
            {"name": "orders", "topic": "orders", "table": "shop.orders", "mode": "upsert", "key": ["id"],
             "columns": {"id": {"type": "bigint", "from": "key"}}},
            {"name": "clicks", "topic_pattern": "clicks-.*", "table": "shop.clicks",
             "columns": {"url": {"type": "text"}}},
        ]
    }
)  # fmt: skip
TOPICS = ("orders", "clicks-eu", "clicks-us", "raw")


@pytest.fixture
def called(monkeypatch: pytest.MonkeyPatch) -> list[argparse.Namespace]:
    """Each data command replaced by one that records its arguments (nothing connects anywhere)."""
    seen: list[argparse.Namespace] = []

    async def record(settings: Settings, args: argparse.Namespace) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr(cli, "_COMMANDS", dict.fromkeys(cli.COMMANDS, record))
    return seen


def test_replay_takes_the_shared_filter(called: list[argparse.Namespace]) -> None:
    argv = ["replay", "--topic", "orders", "--topic", "raw", "--route", "orders", "--class", "TooLong"]
    argv += ["--stage", "validate", "--since", "2026-12-01T09:30:00", "--until", "2026-12-02T00:00:00+01:00"]
    assert ctl.main([*argv, "--reason", "widened", "--chunk", "50", "--dry-run"]) == 0
    (args,) = called
    assert cli.filter_of(args) == Filter(
        ("orders", "raw"),
        "orders",
        "TooLong",
        "validate",
        datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
        datetime.fromisoformat("2026-12-02T00:00:00+01:00"),
    )
    assert (args.reason, args.chunk, args.dry_run) == ("widened", 50, True)


@pytest.mark.parametrize(
    "argv",
    [
        ["rewind", "orders[1]"],  # no target
        ["rewind", "orders[1]", "--to-end"],  # only skip goes to the end
        ["skip", "--topic", "t", "--to-end", "--to-offset", "3"],  # one target
        ["replay", "--stage", "nowhere"],
        ["dead-letters", "--since", "yesterday"],
        ["pause", "orders"],
    ],
)
def test_malformed_commands_are_refused_before_anything_connects(
    argv: list[str], called: list[argparse.Namespace]
) -> None:
    with pytest.raises(SystemExit) as info:
        ctl.main(argv)
    assert info.value.code == 2 and not called


def test_moves_take_partitions_topics_and_one_target(called: list[argparse.Namespace]) -> None:
    assert ctl.main(["rewind", "orders[1]", "orders[2]", "--topic", "raw", "--to-time", "2026-12-01"]) == 0
    assert ctl.main(["skip", "raw[0]", "--to-end", "--reason", "poison", "--timeout", "5"]) == 0
    rewind, skip = called
    assert (rewind.partitions, rewind.topic, rewind.to_time) == (
        [("orders", 1), ("orders", 2)],
        ["raw"],
        datetime(2026, 12, 1, tzinfo=UTC),
    )
    assert (skip.partitions, skip.to_end, skip.reason, skip.timeout) == ([("raw", 0)], True, "poison", 5.0)


def test_an_operation_error_exits_2_naming_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def refuse(settings: Settings, args: argparse.Namespace) -> int:
        raise OperationError("no route 'x'")

    monkeypatch.setattr(cli, "_COMMANDS", dict.fromkeys(cli.COMMANDS, refuse))
    assert ctl.main(["pause", "--route", "x"]) == 2
    assert capsys.readouterr().err == "loom-ray ctl pause: no route 'x'\n"


def test_parse_time_reads_iso_8601_and_takes_utc_without_a_zone() -> None:
    assert cli.parse_time("2026-12-01T09:30:00Z") == datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    assert cli.parse_time("2026-12-01") == datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="not an ISO 8601 time"):
        cli.parse_time("last tuesday")


@pytest.mark.parametrize(
    ("selected", "topics"),
    [
        (Filter(), TOPICS),
        (Filter(("raw",)), ("raw",)),
        (Filter(route="clicks"), ("clicks-eu", "clicks-us")),
        (Filter(("clicks-eu", "raw"), "clicks"), ("clicks-eu",)),
        (Filter(route="loom_messages"), ("raw",)),
    ],
)
def test_the_topics_an_operation_acts_on(selected: Filter, topics: tuple[str, ...]) -> None:
    assert topics_of(selected, TOPICS, ROUTES) == topics


@pytest.mark.parametrize(
    ("selected", "message"),
    [
        (Filter(("elsewhere",)), "elsewhere are not among LOOM_KAFKA_TOPICS"),
        (Filter(route="nope"), "no route 'nope' in LOOM_ROUTES_FILE \\(routes: orders, clicks"),
        (Filter(("raw",), "orders"), "route 'orders' takes none of the topics raw"),
    ],
)
def test_topics_an_operation_may_not_act_on(selected: Filter, message: str) -> None:
    with pytest.raises(OperationError, match=message):
        topics_of(selected, TOPICS, ROUTES)


def test_the_filter_becomes_bound_conditions() -> None:
    since = datetime(2026, 12, 1, tzinfo=UTC)
    conditions, parameters = where(Filter(error_class="TooLong", stage="validate", since=since), ("a", "b"))
    assert conditions == (
        "d.topic = ANY($1::text[]) AND d.error_class = $2 AND d.stage = $3 AND d.failed_at >= $4::text::timestamptz"
    )
    assert parameters == [["a", "b"], "TooLong", "validate", "2026-12-01T00:00:00+00:00"]
    assert where(Filter(), None) == ("true", [])
    assert Filter(("a",), error_class="X", since=since).as_dict() == {
        "topics": ["a"],
        "class": "X",
        "since": "2026-12-01T00:00:00+00:00",
    }


def test_the_dead_letter_summary_is_a_table_with_a_total() -> None:
    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    rows = [Summary("orders", "TooLong", "validate", 20, 3, at, at), Summary("raw", "Oversize", "decode", 4, 0, at, at)]
    lines = cli.summary_lines(rows, {"orders": "orders", "raw": "loom_messages"}.__getitem__)
    assert [line.split() for line in lines[:3]] == [
        ["topic", "route", "class", "stage", "open", "resolved", "first", "failed", "last", "failed"],
        ["orders", "orders", "TooLong", "validate", "20", "3", at.isoformat(), at.isoformat()],
        ["raw", "loom_messages", "Oversize", "decode", "4", "0", at.isoformat(), at.isoformat()],
    ]
    assert lines[3] == "24 open, 3 resolved"
    assert cli.summary_lines([], str) == ["no dead letters match"]


def test_the_replay_line_says_what_happened_to_each_dead_letter() -> None:
    report = ReplayReport(selected=12, resolved=6, stale=2, failing=Counter(TooLong=3), unreadable=1)
    assert cli.replay_line(report, 7) == (
        "replay 7: resolved 8 of 12 dead letters selected (6 written, 2 stale: older than their key's row); "
        "still failing: TooLong=3; unreadable (the broker no longer has the record): 1; of an older incarnation: 0"
    )
    assert cli.replay_line(ReplayReport(), None).startswith("dry run, nothing changed: would resolve 0 of 0")
    assert report.handled == 11
    assert report.as_dict()["failing"] == {"TooLong": 3}


def test_a_dry_move_prints_each_partition_and_what_the_policy_refuses() -> None:
    stored = {("t", 0): StoredOffset(80, 0, "A"), ("t", 1): StoredOffset(40, 0, "A")}
    broker = {tp: BrokerPartition(0, 100, "A") for tp in stored}
    lines, refused = cli.plan_lines(Kind.REWIND, {("t", 0): 30, ("t", 1): 30}, stored, broker)
    assert (lines, refused) == (
        ["t[0]: 80 -> 30 (reads 50 offsets again)", "t[1]: 40 -> 30 (reads 10 offsets again)"],
        False,
    )
    lines, refused = cli.plan_lines(Kind.SKIP, {("t", 0): 100, ("t", 1): 30}, stored, broker)
    assert lines[0] == "t[0]: 80 -> 100 (a skipped gap of 20 offsets)"
    assert lines[1].startswith("t[1]: refused: skip to 30 is behind the committed offset 40") and refused


def test_the_progress_line_names_paused_topics_and_how_to_resume_them() -> None:
    assert paused_note({}) == ""
    status: dict[str, Any] = {
        "paused": {
            "orders": {"since": 0.0, "by": "ops", "reason": None, "operation": 3, "partitions": 6},
            "raw": {"since": 0.0, "by": "loom", "reason": "x", "operation": 4, "partitions": 2},
        }
    }
    assert paused_note(status) == (
        ", 8 partitions paused (orders by ops, raw by loom); python -m loom_ray.ctl resume --topic orders --topic raw"
    )


def test_a_dry_move_says_when_the_broker_did_not_answer() -> None:
    lines, refused = cli.plan_lines(Kind.REWIND, {("t", 0): 30}, {("t", 0): StoredOffset(80, 0, "A")}, {})
    assert lines == ["t[0]: the broker did not answer for its watermarks"] and refused
