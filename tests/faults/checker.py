"""After a run drains: account for every acknowledged offset, per partition, in Jepsen's vocabulary.

Inputs are the producer's ack log (loadgen ``--ack-log``: ``partition offset kind sha256`` per acknowledged
message), the tables, and the run's logs. Per partition it counts:

- ``lost``: acknowledged, yet in neither ``loom_messages`` nor ``loom_dead_letters``;
- ``duplicated``: offsets committed more than once, from the append-only ``loom_audit`` ranges (no unique
  key there, so a repeat cannot be absorbed the way the data tables' primary keys would absorb it);
- ``both``: in the data table and in the dead-letter table;
- ``corrupted``: a stored row whose content is not the producer's: a valid event whose ``sha`` field is not
  the SHA-256 of its ``pad`` field (jsonb normalises the text, so the field is compared, not the bytes),
  whose ``seq`` is not its key or belongs to another partition; a dead letter whose ``value_sha256`` is not
  the producer's; a valid event dead-lettered outside ``db_row`` or a malformed one stored as a row;
- ``nonmonotonic``: audit ranges, in commit (txid) order, that do not start where the previous one ended
  (the first one: at the low watermark);
- ``unseen``: offsets below the high watermark that nobody acknowledged and nothing stored;
- ``unaudited``: stored offsets no audit range covers (then ``duplicated`` would prove nothing);
- ``at_end``: ``loom_offsets.next_offset`` equals the high watermark.

``fenced`` counts the stale commits the pipeline rejected (``fenced on`` lines in the logs).
"""

from __future__ import annotations

import asyncio
import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import asyncpg

from tests.support.pipeline import high_watermarks

_FENCED = re.compile(r"fenced on ")

_MESSAGES_SQL = """
SELECT "partition", "offset",
       coalesce((payload->>'sha') = encode(sha256(convert_to(payload->>'pad', 'UTF8')), 'hex')
                AND key = convert_to(payload->>'seq', 'UTF8')
                AND jsonb_typeof(payload->'seq') = 'number'
                AND (payload->>'seq')::numeric % $2 = "partition", false) AS intact
FROM loom_messages WHERE topic = $1
"""
_DEAD_LETTERS_SQL = """
SELECT "partition", "offset", encode(value_sha256, 'hex') AS sha, stage
FROM loom_dead_letters WHERE topic = $1
"""
_AUDIT_SQL = """
SELECT "partition", start_offset, end_offset FROM loom_audit WHERE topic = $1 ORDER BY "partition", txid
"""
_OFFSETS_SQL = 'SELECT "partition", next_offset FROM loom_offsets WHERE topic = $1'


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledged message: its kind (``valid`` or a malformed kind) and the SHA-256 of its value."""

    kind: str
    sha: str  # hex, or "-" for a null value


@dataclass(slots=True)
class PartitionCheck:
    """The counts of one partition (see the module docstring)."""

    partition: int
    acked: int = 0
    rows: int = 0
    dead_letters: int = 0
    lost: int = 0
    duplicated: int = 0
    both: int = 0
    corrupted: int = 0
    nonmonotonic: int = 0
    unseen: int = 0
    unaudited: int = 0
    at_end: bool = True


_FIGURE_COUNTS = (
    ("lost", "lost"),
    ("dup", "duplicated"),
    ("both", "both"),
    ("corrupted", "corrupted"),
    ("nonmonotonic", "nonmonotonic"),
    ("unseen", "unseen"),
)
_VIOLATIONS = ("lost", "duplicated", "both", "corrupted", "nonmonotonic", "unseen", "unaudited")


@dataclass(slots=True)
class CheckReport:
    """Per-partition counts plus totals; ``ok`` when every violation count is 0 and offsets are at the end."""

    topic: str
    partitions: dict[int, PartitionCheck]
    fenced: int = 0
    examples: list[str] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(int(getattr(p, name)) for p in self.partitions.values())

    @property
    def at_end(self) -> bool:
        return all(p.at_end for p in self.partitions.values())

    @property
    def violations(self) -> dict[str, int]:
        """Non-zero violation counts by name (empty when the run was exactly once)."""
        found = {name: self.total(name) for name in _VIOLATIONS if self.total(name)}
        if not self.at_end:
            found["not_at_end"] = sum(1 for p in self.partitions.values() if not p.at_end)
        return found

    @property
    def ok(self) -> bool:
        return not self.violations

    def counts(self) -> str:
        """``lost=0 dup=0 both=0 corrupted=0 nonmonotonic=0 unseen=0 fenced=N`` (the figure's middle)."""
        text = " ".join(f"{short}={self.total(name)}" for short, name in _FIGURE_COUNTS)
        if self.total("unaudited"):
            text += f" unaudited={self.total('unaudited')}"
        return f"{text} fenced={self.fenced}"

    def table(self) -> str:
        """One line per partition with a violation (or all, if none), for assertion messages."""
        columns = [f.name for f in fields(PartitionCheck)]
        bad = [p for p in self.partitions.values() if any(getattr(p, n) for n in _VIOLATIONS) or not p.at_end]
        lines = [" ".join(f"{c}={getattr(p, c)}" for c in columns) for p in bad or self.partitions.values()]
        return "\n".join([f"topic {self.topic}: {self.counts()}", *lines, *self.examples[:10]])


def read_acks(paths: Iterable[Path]) -> dict[int, dict[int, Ack]]:
    """``partition -> offset -> Ack`` from one or more loadgen ack logs."""
    acks: dict[int, dict[int, Ack]] = {}
    for path in paths:
        with path.open(encoding="ascii") as lines:
            for line in lines:
                partition, offset, kind, sha = line.split()
                acks.setdefault(int(partition), {})[int(offset)] = Ack(kind, sha)
    return acks


def count_fenced(logs: Iterable[Path]) -> int:
    """Stale commits rejected by the epoch check, from the ``fenced on`` lines of the pipeline's logs."""
    return sum(len(_FENCED.findall(path.read_text(errors="replace"))) for path in logs if path.exists())


def audit_overlaps(ranges: Sequence[tuple[int, int]]) -> int:
    """Offsets covered more than once (each extra cover counts), for half-open ``[start, end)`` ranges."""
    duplicated, covered_until = 0, None
    for start, end in sorted(ranges):
        if covered_until is not None:
            duplicated += max(0, min(end, covered_until) - start)
        covered_until = end if covered_until is None else max(covered_until, end)
    return duplicated


def discontinuities(ranges_in_commit_order: Sequence[tuple[int, int]]) -> int:
    """Ranges that do not start where the previously committed one ended (a gap, a repeat or a reorder)."""
    pairs = zip(ranges_in_commit_order, ranges_in_commit_order[1:], strict=False)
    return sum(1 for prev, cur in pairs if cur[0] != prev[1])


def _uncovered(ranges: Sequence[tuple[int, int]], offsets: Iterable[int]) -> int:
    """How many of ``offsets`` no range covers."""
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    starts = [m[0] for m in merged]
    outside = 0
    for offset in offsets:
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0 or offset >= merged[i][1]:
            outside += 1
    return outside


@dataclass(slots=True)
class _Stored:
    rows: dict[int, dict[int, bool]]  # partition -> offset -> intact
    dead: dict[int, dict[int, tuple[str | None, str]]]  # partition -> offset -> (sha, stage)
    audit: dict[int, list[tuple[int, int]]]  # partition -> ranges in txid order
    next_offsets: dict[int, int]


async def _read(dsn: str, topic: str, partitions: int) -> _Stored:
    conn = await asyncpg.connect(dsn)
    try:
        stored = _Stored({}, {}, {}, {})
        for r in await conn.fetch(_MESSAGES_SQL, topic, partitions):
            stored.rows.setdefault(r["partition"], {})[r["offset"]] = r["intact"]
        for r in await conn.fetch(_DEAD_LETTERS_SQL, topic):
            stored.dead.setdefault(r["partition"], {})[r["offset"]] = (r["sha"], r["stage"])
        for r in await conn.fetch(_AUDIT_SQL, topic):
            stored.audit.setdefault(r["partition"], []).append((r["start_offset"], r["end_offset"]))
        stored.next_offsets = {r["partition"]: r["next_offset"] for r in await conn.fetch(_OFFSETS_SQL, topic)}
        return stored
    finally:
        await conn.close()


def _check_partition(
    partition: int, marks: tuple[int, int], acks: dict[int, Ack], stored: _Stored, examples: list[str]
) -> PartitionCheck:
    rows = stored.rows.get(partition, {})
    dead = stored.dead.get(partition, {})
    audit = stored.audit.get(partition, [])
    low, high = marks
    result = PartitionCheck(partition, acked=len(acks), rows=len(rows), dead_letters=len(dead))
    result.lost = sum(1 for o in acks if o not in rows and o not in dead)
    result.both = sum(1 for o in rows if o in dead)
    result.duplicated = audit_overlaps(audit)
    result.nonmonotonic = discontinuities([(low, low), *audit]) if audit else 0  # must start at the low mark
    result.unseen = sum(1 for o in range(low, high) if o not in acks and o not in rows and o not in dead)
    result.unaudited = _uncovered(audit, [*rows, *dead])
    result.at_end = stored.next_offsets.get(partition, low) == high
    for offset, intact in rows.items():
        ack = acks.get(offset)
        if not intact or (ack is not None and ack.kind != "valid"):
            result.corrupted += 1
            examples.append(f"corrupted row {partition}:{offset} intact={intact} ack={ack}")
    for offset, (sha, stage) in dead.items():
        ack = acks.get(offset)
        if ack is None:
            continue
        misrouted = ack.kind == "valid" and stage != "db_row"
        if misrouted or (sha or "-") != ack.sha:
            result.corrupted += 1
            examples.append(f"corrupted dead letter {partition}:{offset} stage={stage} ack={ack}")
    for offset in sorted(o for o in acks if o not in rows and o not in dead)[:3]:
        examples.append(f"lost {partition}:{offset} kind={acks[offset].kind}")
    return result


def check(dsn: str, bootstrap: str, topic: str, ack_logs: Sequence[Path], logs: Sequence[Path] = ()) -> CheckReport:
    """Account for every acknowledged offset of ``topic``; call it after the run drained and stopped."""
    marks = high_watermarks(bootstrap, topic)
    acks = read_acks(ack_logs)
    stored = asyncio.run(_read(dsn, topic, len(marks)))
    examples: list[str] = []
    partitions = {p: _check_partition(p, marks[p], acks.get(p, {}), stored, examples) for p in sorted(marks)}
    return CheckReport(topic, partitions, count_fenced(logs), examples)
