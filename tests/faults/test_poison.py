"""T8: poison input. 1 % of the messages are malformed, cycling through loadgen's ten kinds, and a CHECK
constraint refuses some valid events at write time. Every bad message must end in the dead-letter table
with its class, stage and a readable reason; valid data exactly once; no actor restarted by bad input.
The class and stage each kind must get are this module's table (:data:`EXPECTED`), not the decoder's answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from loom_ray.loadgen import MALFORMED_KINDS, plan
from loom_ray.settings import Settings
from tests.faults.checker import read_acks
from tests.faults.conftest import Figures
from tests.faults.harness import Job, fetch
from tests.faults.monitor import Monitor
from tests.faults.producer import Producer, env_int
from tests.faults.scenario import Figure, conclude
from tests.faults.stack import FaultStack

_REFUSED_EVERY = 997  # the CHECK refuses valid events whose seq is a multiple of this
# What each loadgen kind must become: (error_class, stage, sqlstate) of its dead letter. Stated here, not asked
# of loom_ray.decode, so that a decoder that files a kind under another class or stage fails T8.
EXPECTED: dict[str, tuple[str, str, str | None]] = {
    "invalid_utf8": ("InvalidUtf8", "decode", None),
    "truncated_json": ("InvalidJson", "decode", None),
    "not_json": ("InvalidJson", "decode", None),
    "nul_in_string": ("NulCharacter", "validate", None),  # JSON, but jsonb cannot store \u0000
    "deep_nesting": ("InvalidJson", "decode", None),  # past the parser's nesting limit
    "huge_number": ("InvalidJson", "decode", None),  # overflows a double
    "oversize": ("Oversize", "decode", None),  # over LOOM_MAX_MESSAGE_BYTES, never parsed
    "empty": ("EmptyValue", "decode", None),
    "null_value": ("NullValue", "decode", None),
    "lone_surrogate": ("InvalidJson", "decode", None),
}
_REFUSED = ("CheckViolationError", "db_row", "23514")  # a valid event the CHECK refuses at write time
_KEEP_BYTES = Settings.model_fields["dead_letter_max_bytes"].default
_DEAD_LETTERS_SQL = """
SELECT "partition", "offset", convert_from(key, 'UTF8') AS key, error_class, stage, sqlstate, error_message,
       value_len, octet_length(raw_value) AS kept
FROM loom_dead_letters WHERE topic = $1
"""


@pytest.fixture
def check_constraint(fault_stack: FaultStack, topic: str) -> Iterator[None]:
    """A CHECK on loom_messages scoped to this test's topic (other topics are untouched)."""
    name = f"reject_{topic.replace('-', '_')}"
    fault_stack.execute(
        f"ALTER TABLE loom_messages ADD CONSTRAINT {name} "
        f"CHECK (topic <> '{topic}' OR (payload->>'seq')::bigint % {_REFUSED_EVERY} <> 0) NOT VALID"
    )
    try:
        yield
    finally:
        fault_stack.execute(f"ALTER TABLE loom_messages DROP CONSTRAINT {name}")


def _problem(row: Mapping[str, Any], kind: str) -> str | None:
    """What is wrong with one dead letter of a record of ``kind``, or None: class, stage and SQLSTATE as
    :data:`EXPECTED` says (a valid event: only the CHECK's refusal), a readable reason, the kept bytes capped."""
    seq = int(row["key"])
    expected = EXPECTED.get(kind) or (_REFUSED if seq % _REFUSED_EVERY == 0 else None)
    got = (row["error_class"], row["stage"], row["sqlstate"])
    if got != expected:
        return f"{kind} seq={seq}: got {got}, expected {expected}"
    if len(row["error_message"]) < 10:
        return f"{kind} seq={seq}: reason {row['error_message']!r} says nothing"
    if row["kept"] is not None and row["kept"] > min(_KEEP_BYTES, row["value_len"]):
        return f"{kind} seq={seq}: kept {row['kept']} bytes of {row['value_len']}"
    return None


def test_t8_poison_messages(
    fault_stack: FaultStack,
    topic: str,
    tmp_path: Path,
    job_factory: Callable[..., Job],
    figures: Figures,
    check_constraint: None,
) -> None:
    seed = env_int("LOOM_FAULT_SEED", 12)
    messages = env_int("LOOM_FAULT_T8_MESSAGES", 40_000)
    producer = Producer(fault_stack, topic, tmp_path, messages, ratio=0.01, seed=seed).fill()
    job = job_factory()
    started = time.monotonic()
    job.start()
    with Monitor(job) as monitor:
        job.finish()
    acks = read_acks([producer.ack_log])
    kinds: Counter[str] = Counter()
    problems = []
    for row in asyncio.run(fetch(fault_stack.dsn, _DEAD_LETTERS_SQL, topic)):
        kind = acks[row["partition"]][row["offset"]].kind
        kinds[kind] += 1
        problems.append(_problem(row, kind))
    refused = kinds.pop("valid", 0)
    malformed = sum(kinds.values())
    log = job.log_text()
    figure = Figure(
        "T8", seed, f"{malformed + refused} ({malformed} malformed of {len(kinds)} kinds, {refused} CHECK)", started
    )
    figure.extra = f"restarts={log.count(' is gone ')}"
    report, line = conclude(figure, fault_stack, topic, [producer], [job.log], monitor=monitor)
    figures.add(line)
    assert report.ok, report.table()
    assert not any(problems), "\n".join(p for p in problems if p)
    planned = Counter(ack.kind for part in acks.values() for ack in part.values() if ack.kind != "valid")
    assert kinds == planned and set(kinds) == set(MALFORMED_KINDS), kinds
    assert refused == sum(1 for seq in range(0, messages, _REFUSED_EVERY) if plan(seq, 0.01, seed) is None) > 0
    assert " is gone " not in log, "bad input restarted an actor"


def _dead_letter(kind: str, seq: int, filed_as: tuple[str, str, str | None]) -> dict[str, Any]:
    """A dead-letter row of message ``seq`` filed under ``(error_class, stage, sqlstate)``, reason and kept
    bytes as the pipeline writes them."""
    error_class, stage, sqlstate = filed_as
    return {
        "key": str(seq),
        "error_class": error_class,
        "stage": stage,
        "sqlstate": sqlstate,
        "error_message": f"value: {kind} refused",
        "value_len": 64,
        "kept": 64,
    }


def test_t8_expects_a_class_and_stage_for_every_kind() -> None:
    assert set(EXPECTED) == set(MALFORMED_KINDS)
    for kind, filed_as in EXPECTED.items():
        assert _problem(_dead_letter(kind, 1, filed_as), kind) is None
    assert _problem(_dead_letter("valid", 2 * _REFUSED_EVERY, _REFUSED), "valid") is None


@pytest.mark.parametrize(
    ("kind", "seq", "filed_as"),
    [
        ("invalid_utf8", 1, ("InvalidJson", "decode", None)),  # bytes parsed without the UTF-8 decode first
        ("empty", 1, ("InvalidJson", "decode", None)),  # the empty value handed to the parser
        ("nul_in_string", 1, ("NulCharacter", "decode", None)),  # the right class at the wrong stage
        ("valid", 1, ("InvalidJson", "decode", None)),  # a valid event dead-lettered
        ("valid", _REFUSED_EVERY, ("CheckViolationError", "db_row", None)),  # the SQLSTATE not kept
    ],
)
def test_t8_flags_a_dead_letter_filed_under_another_class(
    kind: str, seq: int, filed_as: tuple[str, str, str | None]
) -> None:
    """A decoder that files a kind under another class or stage fails T8, whatever loom_ray.decode says now."""
    problem = _problem(_dead_letter(kind, seq, filed_as), kind)
    assert problem is not None and f"got {filed_as}" in problem
