"""After a run drains: account for every acknowledged offset, per partition, in Jepsen's vocabulary.

Inputs are the producer's ack log (loadgen ``--ack-log``, completed by
:func:`tests.faults.producer.record_contents`: ``partition offset kind sha256 key payload`` per acknowledged
record, key in hex and payload the record's :func:`payload_digest`), the tables, and the run's logs. Per
partition it counts:

- ``lost``: acknowledged, yet in neither ``loom_messages`` nor ``loom_dead_letters``;
- ``duplicated``: offsets committed more than once, from the append-only ``loom_audit`` ranges (no unique
  key there, so a repeat cannot be absorbed the way the data tables' primary keys would absorb it);
- ``both``: in the data table and in the dead-letter table;
- ``corrupted``: a stored row that is not the record acknowledged at its offset: its key or its payload
  digest differs from the ack log's (another offset's record, or an edited one); an event whose ``sha``
  field is not the SHA-256 of its ``pad`` field, whose ``seq`` is not its key or belongs to another
  partition (the only test for a row at an offset nobody acknowledged); a dead letter whose key or
  ``value_sha256`` is not the acknowledged record's; a valid event dead-lettered outside ``db_row`` or a
  malformed one stored as a row;
- ``nonmonotonic``: audit ranges, in commit (txid) order, that do not start where the previous one ended
  (the first one: at the low watermark);
- ``unseen``: offsets below the high watermark that nobody acknowledged and nothing stored;
- ``unaudited``: stored offsets no audit range covers (then ``duplicated`` would prove nothing);
- ``at_end``: ``loom_offsets.next_offset`` equals the high watermark.

Offsets that end as neither row nor dead letter for a recorded reason are accounted, not forgiven blindly:

- ``gaps``: ``loom_gaps`` rows of the partition, every incarnation (a recreated topic records its
  ``topic_recreated`` gap against the incarnation it ended); a test that knows how many to expect passes
  ``expected_gaps`` and a different total is a violation;
- ``gapped``: offsets inside a gap of the current incarnation (neither ``lost`` nor ``unseen``);
- ``stored_in_gap``: a stored offset inside such a gap (the gap claims it was never read);
- ``readable_gap``: gap offsets at or above the low watermark: the broker still has them, so the gap hides
  records the pipeline skipped;
- with ``read_committed=True`` the topic is read back by a read_committed consumer
  (:func:`tests.support.pipeline.read_committed_offsets`): ``no_record`` counts offsets below the high
  watermark it is not handed (transaction markers, aborted or compacted records; an acknowledged record of
  an aborted transaction is one of them, not ``lost``), and ``aborted_read`` (Jepsen's name) a stored offset
  it was not handed.

Only the partition's current incarnation (``loom_offsets.incarnation``) is accounted: its rows, dead
letters, audit ranges and gaps; an older incarnation's data is neither counted nor in the way.

``fenced`` counts the stale commits the pipeline rejected (``fenced on`` lines in the logs).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import asyncpg
import orjson

from tests.support.pipeline import high_watermarks, read_committed_offsets

_FENCED = re.compile(r"fenced on ")

_OPEN_END = 2**63 - 1  # a topic_recreated gap's unknown end (to_offset NULL)

# Rows of the partition's current incarnation only (0 before its first claim).
_CURRENT = """
FROM {table} AS x LEFT JOIN loom_offsets AS o USING (topic, "partition")
WHERE x.topic = $1 AND x.incarnation = coalesce(o.incarnation, 0)
"""
_MESSAGES_SQL = """
SELECT "partition", x."offset", coalesce(encode(key, 'hex'), '-') AS key, payload::text AS payload,
       coalesce((payload->>'sha') = encode(sha256(convert_to(payload->>'pad', 'UTF8')), 'hex')
                AND key = convert_to(payload->>'seq', 'UTF8')
                AND jsonb_typeof(payload->'seq') = 'number'
                AND (payload->>'seq')::numeric % $2 = "partition", false) AS intact
""" + _CURRENT.format(table="loom_messages")
_DEAD_LETTERS_SQL = """
SELECT "partition", x."offset", encode(value_sha256, 'hex') AS sha, stage, coalesce(encode(key, 'hex'), '-') AS key
""" + _CURRENT.format(table="loom_dead_letters")
_AUDIT_SQL = (
    'SELECT "partition", start_offset, end_offset'
    + _CURRENT.format(table="loom_audit")
    + 'ORDER BY "partition", x.txid'
)
_OFFSETS_SQL = 'SELECT "partition", next_offset, incarnation FROM loom_offsets WHERE topic = $1'
_GAPS_SQL = """
SELECT "partition", incarnation, from_offset, to_offset, reason FROM loom_gaps
WHERE topic = $1 ORDER BY "partition", incarnation, from_offset
"""


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledged record: its kind (``valid`` or a malformed kind), the SHA-256 of its value, its key
    and its payload digest."""

    kind: str
    sha: str  # hex, or "-" for a null value
    key: str  # hex, or "-" for a null key
    payload: str  # payload_digest(value)


def payload_digest(document: bytes | str | None) -> str:
    """SHA-256 (hex) of a JSON document in one canonical form (keys sorted, no spaces), so that the value a
    producer sent and the jsonb text PostgreSQL returns for it digest alike; ``-`` for anything that does
    not parse as JSON (a null value, a malformed one)."""
    if document is None:
        return "-"
    try:
        parsed = orjson.loads(document)
    except orjson.JSONDecodeError:
        return "-"
    return hashlib.sha256(orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class GapRow:
    """One ``loom_gaps`` row: offsets ``[from_offset, to_offset)`` of ``incarnation`` skipped for ``reason``."""

    partition: int
    incarnation: int
    from_offset: int
    to_offset: int | None  # None: the end of a recreated topic's old log is unknown
    reason: str


@dataclass(slots=True)
class PartitionCheck:
    """The counts of one partition (see the module docstring)."""

    partition: int
    incarnation: int = 0
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
    gaps: int = 0
    gapped: int = 0
    stored_in_gap: int = 0
    readable_gap: int = 0
    no_record: int = 0
    aborted_read: int = 0
    at_end: bool = True


_FIGURE_COUNTS = (
    ("lost", "lost"),
    ("dup", "duplicated"),
    ("both", "both"),
    ("corrupted", "corrupted"),
    ("nonmonotonic", "nonmonotonic"),
    ("unseen", "unseen"),
)
_VIOLATIONS = (
    "lost",
    "duplicated",
    "both",
    "corrupted",
    "nonmonotonic",
    "unseen",
    "unaudited",
    "stored_in_gap",
    "readable_gap",
    "aborted_read",
)


@dataclass(slots=True)
class CheckReport:
    """Per-partition counts plus totals; ``ok`` when every violation count is 0 and offsets are at the end.

    ``read_committed``: whether the topic was read back by a read_committed consumer (``no_record`` and
    ``aborted_read`` are counted only then); ``expected_gaps``: the gap rows the test expects, or None.
    """

    topic: str
    partitions: dict[int, PartitionCheck]
    fenced: int = 0
    examples: list[str] = field(default_factory=list)
    gap_rows: list[GapRow] = field(default_factory=list)
    read_committed: bool = False
    expected_gaps: int | None = None

    def total(self, name: str) -> int:
        return sum(int(getattr(p, name)) for p in self.partitions.values())

    @property
    def at_end(self) -> bool:
        return all(p.at_end for p in self.partitions.values())

    @property
    def violations(self) -> dict[str, int]:
        """Non-zero violation counts by name (empty when the run was exactly once).

        ``gaps`` (the rows recorded) is one when the test stated another number.
        """
        found = {name: self.total(name) for name in _VIOLATIONS if self.total(name)}
        if not self.at_end:
            found["not_at_end"] = sum(1 for p in self.partitions.values() if not p.at_end)
        if self.expected_gaps is not None and self.total("gaps") != self.expected_gaps:
            found["gaps"] = self.total("gaps")
        return found

    @property
    def ok(self) -> bool:
        return not self.violations

    def counts(self) -> str:
        """``lost=0 dup=0 both=0 corrupted=0 nonmonotonic=0 unseen=0 fenced=N`` (the figure's middle).

        After ``unseen``: ``aborted_read=N no_record=N`` when the read_committed reader was used, and
        ``gaps=N/expected M gapped=N stored_in_gap=N`` when gaps were expected or recorded.
        """
        text = " ".join(f"{short}={self.total(name)}" for short, name in _FIGURE_COUNTS)
        for name in ("unaudited", "readable_gap"):
            if self.total(name):
                text += f" {name}={self.total(name)}"
        if self.read_committed:
            text += f" aborted_read={self.total('aborted_read')} no_record={self.total('no_record')}"
        if self.expected_gaps is not None or self.total("gaps") or self.total("gapped"):
            expected = "" if self.expected_gaps is None else f"/expected {self.expected_gaps}"
            text += f" gaps={self.total('gaps')}{expected} gapped={self.total('gapped')}"
            text += f" stored_in_gap={self.total('stored_in_gap')}"
        return f"{text} fenced={self.fenced}"

    def table(self) -> str:
        """One line per partition with a violation (or all, if none), for assertion messages."""
        columns = [f.name for f in fields(PartitionCheck)]
        bad = [p for p in self.partitions.values() if any(getattr(p, n) for n in _VIOLATIONS) or not p.at_end]
        lines = [" ".join(f"{c}={getattr(p, c)}" for c in columns) for p in bad or self.partitions.values()]
        return "\n".join([f"topic {self.topic}: {self.counts()}", *lines, *self.examples[:10]])


def read_acks(paths: Iterable[Path]) -> dict[int, dict[int, Ack]]:
    """``partition -> offset -> Ack`` from one or more completed ack logs; ValueError for a line without the
    key and payload digest (the ack log of a producer that was never waited for or stopped)."""
    acks: dict[int, dict[int, Ack]] = {}
    for path in paths:
        with path.open(encoding="ascii") as lines:
            for line in lines:
                parts = line.split()
                if len(parts) != 6:
                    raise ValueError(f"{path}: {line.strip()!r} lacks the key and payload digest (record_contents)")
                partition, offset, kind, sha, key, payload = parts
                acks.setdefault(int(partition), {})[int(offset)] = Ack(kind, sha, key, payload)
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


class Ranges:
    """Half-open ``[start, end)`` ranges, merged, for membership tests and counts."""

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for start, end in sorted(ranges):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._merged = merged
        self._starts = [m[0] for m in merged]

    def __contains__(self, offset: int) -> bool:
        i = bisect.bisect_right(self._starts, offset) - 1
        return i >= 0 and offset < self._merged[i][1]

    def within(self, low: int, high: int) -> int:
        """How many covered offsets lie in ``[low, high)``."""
        return sum(max(0, min(end, high) - max(start, low)) for start, end in self._merged)


def _uncovered(ranges: Sequence[tuple[int, int]], offsets: Iterable[int]) -> int:
    """How many of ``offsets`` no range covers."""
    covered = Ranges(ranges)
    return sum(1 for offset in offsets if offset not in covered)


class _Row(NamedTuple):
    intact: bool  # agrees with itself (sha of pad, seq as key and in this partition)
    key: str  # hex, or "-"
    payload: str  # payload_digest


class _DeadLetter(NamedTuple):
    sha: str | None  # hex of value_sha256; None for a null value
    stage: str
    key: str  # hex, or "-"


@dataclass(slots=True)
class _Stored:
    rows: dict[int, dict[int, _Row]]  # partition -> offset
    dead: dict[int, dict[int, _DeadLetter]]  # partition -> offset
    audit: dict[int, list[tuple[int, int]]]  # partition -> ranges in txid order
    next_offsets: dict[int, int]
    incarnations: dict[int, int] = field(default_factory=dict)
    gaps: list[GapRow] = field(default_factory=list)  # every incarnation

    def gaps_of(self, partition: int) -> list[GapRow]:
        return [g for g in self.gaps if g.partition == partition]


async def _read(dsn: str, topic: str, partitions: int) -> _Stored:
    """The current incarnation's rows, dead letters, audit ranges and offsets; the gaps of every one."""
    conn = await asyncpg.connect(dsn)
    try:
        stored = _Stored({}, {}, {}, {})
        for r in await conn.fetch(_MESSAGES_SQL, topic, partitions):
            row = _Row(r["intact"], r["key"], payload_digest(r["payload"]))
            stored.rows.setdefault(r["partition"], {})[r["offset"]] = row
        for r in await conn.fetch(_DEAD_LETTERS_SQL, topic):
            stored.dead.setdefault(r["partition"], {})[r["offset"]] = _DeadLetter(r["sha"], r["stage"], r["key"])
        for r in await conn.fetch(_AUDIT_SQL, topic):
            stored.audit.setdefault(r["partition"], []).append((r["start_offset"], r["end_offset"]))
        for r in await conn.fetch(_OFFSETS_SQL, topic):
            stored.next_offsets[r["partition"]] = r["next_offset"]
            stored.incarnations[r["partition"]] = r["incarnation"]
        stored.gaps = [GapRow(*r) for r in await conn.fetch(_GAPS_SQL, topic)]
        return stored
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class _Partition:
    """What the checker knows of one partition: watermarks, acks, the read_committed reader's offsets."""

    number: int
    low: int
    high: int
    acks: dict[int, Ack]
    handed: set[int] | None  # None: no read_committed reader

    def holds_no_record(self, offset: int) -> bool:
        """The reader saw the offset's range and was not handed it (a marker, an aborted record)."""
        return self.handed is not None and self.low <= offset < self.high and offset not in self.handed


def _account_gaps(part: _Partition, stored: _Stored, result: PartitionCheck, examples: list[str]) -> Ranges:
    """Count the partition's gap rows and the current incarnation's gapped offsets; return those ranges."""
    rows = stored.gaps_of(part.number)
    result.gaps = len(rows)
    current = Ranges(
        (g.from_offset, _OPEN_END if g.to_offset is None else g.to_offset)
        for g in rows
        if g.incarnation == result.incarnation
    )
    result.gapped = current.within(0, part.high)
    result.readable_gap = current.within(part.low, part.high)
    if result.readable_gap:
        examples.append(f"readable gap {part.number}: {result.readable_gap} offsets at or above low mark {part.low}")
    return current


def _account_offsets(part: _Partition, stored: _Stored, result: PartitionCheck, examples: list[str]) -> None:
    """``lost``, ``unseen``, ``no_record``, ``aborted_read``, ``stored_in_gap`` and the stored-side counts."""
    rows = stored.rows.get(part.number, {})
    dead = stored.dead.get(part.number, {})
    kept = rows.keys() | dead.keys()
    gap = _account_gaps(part, stored, result, examples)
    missing = sorted(o for o in part.acks if o not in kept and o not in gap and not part.holds_no_record(o))
    result.lost = len(missing)
    result.both = sum(1 for o in rows if o in dead)
    result.stored_in_gap = sum(1 for o in kept if o in gap)
    result.unaudited = _uncovered(stored.audit.get(part.number, []), kept)
    nobody = (o for o in range(part.low, part.high) if o not in part.acks and o not in kept and o not in gap)
    result.unseen = sum(1 for o in nobody if not part.holds_no_record(o))
    if part.handed is not None:
        result.no_record = sum(1 for o in range(part.low, part.high) if o not in part.handed)
        aborted = sorted(o for o in kept if part.holds_no_record(o))
        result.aborted_read = len(aborted)
        examples.extend(f"aborted read {part.number}:{o} (stored, not handed to read_committed)" for o in aborted[:3])
    examples.extend(f"lost {part.number}:{o} kind={part.acks[o].kind}" for o in missing[:3])
    examples.extend(f"stored in a gap {part.number}:{o}" for o in sorted(o for o in kept if o in gap)[:3])


def _account_content(part: _Partition, stored: _Stored, result: PartitionCheck, examples: list[str]) -> None:
    """``corrupted``: stored rows and dead letters against the records acknowledged at their offsets."""
    for offset, row in stored.rows.get(part.number, {}).items():
        ack = part.acks.get(offset)
        as_acked = ack is None or (ack.kind == "valid" and (ack.key, ack.payload) == (row.key, row.payload))
        if not (row.intact and as_acked):
            result.corrupted += 1
            examples.append(f"corrupted row {part.number}:{offset} {row} ack={ack}")
    for offset, dead in stored.dead.get(part.number, {}).items():
        ack = part.acks.get(offset)
        if ack is None:
            continue
        misrouted = ack.kind == "valid" and dead.stage != "db_row"
        if misrouted or ((dead.sha or "-"), dead.key) != (ack.sha, ack.key):
            result.corrupted += 1
            examples.append(f"corrupted dead letter {part.number}:{offset} {dead} ack={ack}")


def _check_partition(part: _Partition, stored: _Stored, examples: list[str]) -> PartitionCheck:
    rows = stored.rows.get(part.number, {})
    dead = stored.dead.get(part.number, {})
    audit = stored.audit.get(part.number, [])
    result = PartitionCheck(
        part.number,
        incarnation=stored.incarnations.get(part.number, 0),
        acked=len(part.acks),
        rows=len(rows),
        dead_letters=len(dead),
    )
    _account_offsets(part, stored, result, examples)
    _account_content(part, stored, result, examples)
    result.duplicated = audit_overlaps(audit)
    # The first range starts at the low mark, or below it once retention removed offsets already read.
    result.nonmonotonic = discontinuities([(min(part.low, audit[0][0]),) * 2, *audit]) if audit else 0
    result.at_end = stored.next_offsets.get(part.number, part.low) == part.high
    return result


def check(
    dsn: str,
    bootstrap: str,
    topic: str,
    ack_logs: Sequence[Path],
    logs: Sequence[Path] = (),
    *,
    read_committed: bool = False,
    expected_gaps: int | None = None,
) -> CheckReport:
    """Account for every acknowledged offset of ``topic``; call it after the run drained and stopped.

    ``read_committed``: also read the topic back with a read_committed consumer (``no_record``,
    ``aborted_read``); needed for a topic written by transactional producers, whose markers and aborted
    records are otherwise ``unseen`` and ``lost``. ``expected_gaps``: how many loom_gaps rows the test
    expects (another number fails the check).
    """
    marks = high_watermarks(bootstrap, topic)
    acks = read_acks(ack_logs)
    handed = read_committed_offsets(bootstrap, topic) if read_committed else {}
    stored = asyncio.run(_read(dsn, topic, len(marks)))
    examples: list[str] = []
    partitions = {
        p: _check_partition(
            _Partition(p, *marks[p], acks.get(p, {}), handed.get(p, set()) if read_committed else None),
            stored,
            examples,
        )
        for p in sorted(marks)
    }
    return CheckReport(topic, partitions, count_fenced(logs), examples, stored.gaps, read_committed, expected_gaps)
