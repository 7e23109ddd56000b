"""What an operator sees of parked partitions and types to unpark them: the progress line's note
(loom_ray.main.fault_note) and ``python -m loom_ray.ctl unpark`` (its arguments and output, without Ray)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from loom_ray import ctl
from loom_ray.main import fault_note

ERROR = 'UniqueViolationError: duplicate key value violates unique constraint "loom_messages_pkey"'


def _parked(*keys: str) -> dict[str, dict[str, Any]]:
    return {key: {"error": ERROR, "faults": 3, "since": 1_700_000_000.0} for key in keys}


def test_nothing_to_say_when_nothing_is_parked_waiting_or_restarting() -> None:
    assert fault_note({}) == ""
    assert fault_note({"parked": {}, "waiting": {}, "restart_in_s": 0.0}) == ""


def test_a_parked_partition_is_named_with_its_error_and_the_command() -> None:
    assert fault_note({"parked": _parked("orders[3]")}) == (
        f", 1 partitions parked (orders[3]: {ERROR}); fix the cause, then python -m loom_ray.ctl unpark orders[3]"
    )


def test_many_parked_partitions_are_counted_and_unparked_with_all() -> None:
    note = fault_note({"parked": _parked("t[0]", "t[1]", "t[2]", "t[3]", "t[4]")})
    assert note.startswith(", 5 partitions parked (t[0]: ")
    assert note.count(ERROR) == 3 and "… (+2)" in note  # PARKED_LISTED = 3 named, 5 - 3 = 2 more
    assert note.endswith("python -m loom_ray.ctl unpark --all")


def test_waiting_partitions_and_the_restart_backoff_are_said() -> None:
    status = {"waiting": {"t[1]": {"error": ERROR, "faults": 1, "claim_in_s": 4.6}}, "restart_in_s": 9.5}
    assert fault_note(status) == (
        ", 1 faulted partitions wait to be claimed again (t[1] in 5s), "
        "consumers died in a row: the next one starts in 10s"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("orders[3]", ("orders", 3)), ("a.b-c_d[12]", ("a.b-c_d", 12)), ("x[y][0]", ("x[y]", 0))],
)
def test_parse_partition(text: str, expected: tuple[str, int]) -> None:
    assert ctl.parse_partition(text) == expected


@pytest.mark.parametrize("text", ["orders", "orders[]", "orders[-1]", "orders[3", "[3]", "orders[3] "])
def test_parse_partition_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="<topic>\\[<partition>\\]"):
        ctl.parse_partition(text)


@pytest.mark.parametrize("argv", [["unpark"], ["unpark", "--all", "orders[3]"], ["unpark", "orders"]])
def test_unpark_needs_partitions_or_all(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        ctl.main(argv)
    assert info.value.code == 2  # argparse refuses it before anything connects to Ray
    assert "unpark" in capsys.readouterr().err


def test_unparked_lines_say_what_was_unparked_and_what_was_not_parked() -> None:
    answer = {"orders[3]": {**_parked("orders[3]")["orders[3]"], "unparked_by": "loom"}}
    lines, code = ctl.unparked_lines(answer, [("orders", 3), ("orders", 5)])
    assert lines == [
        f"unparked orders[3] (parked since 2023-11-14T22:13:20+00:00 after 3 faults: {ERROR}) by loom",
        "orders[5] is not parked",
    ]
    assert code == 1
    assert ctl.unparked_lines(answer, [("orders", 3)])[1] == 0


def test_unpark_all_with_nothing_parked() -> None:
    assert ctl.unparked_lines({}, None) == (["no partition is parked"], 0)
