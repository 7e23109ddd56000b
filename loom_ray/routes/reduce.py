"""Which of a flush's records of each key reach the table: one pure rule for upserts and for repeated keys.

Called by the routed flush (:mod:`loom_ray.sink.routed`) for every set of records it applies (the whole
flush, or a part of it while a refused row is isolated), with the records in offset order within each
partition. The rule is the one a record-at-a-time writer follows, so where a batch ends changes nothing:

- **upsert**, per key, in order: a record whose ``version`` is lower than that of the key's row as it stands
  (in the table, or as the records before it left it) is *stale* (not applied); a tombstone deletes the row;
  any other record writes it. Without a version nothing is stale. What reaches the table is the net effect:
  the row the table held is deleted if a tombstone applied while it stood, and the last record written after
  the last tombstone is written (a new row, with its own defaults and identity, when the old one was deleted:
  exactly as a later batch would make it). For a route with a version, the flush first locks the rows of the
  keys it holds and learns which of its records are older than them (:func:`loom_ray.routes.sql.compare_sql`).
- **insert with on_duplicate = "ignore"**: the first record of a key is inserted, later ones in the flush
  are duplicates (the statement finds those the table already holds).

A delete removes the row and keeps no trace of its key: a record older than the tombstone that arrives after
it (from another partition, in a later flush) creates the row again. A tombstone with no version (the version
is read from the value, which a tombstone lacks) always deletes.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

# Outcomes of a routed record (loom_route_counts, ray_loom_route_records_total's outcome tag).
INSERTED = "inserted"
UPSERTED = "upserted"
DELETED = "deleted"
STALE = "stale"
DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Staged:
    """One record as the rule sees it: its number in the flush, key, whether it is a tombstone, and version
    (None without one)."""

    ord: int
    key: Hashable
    delete: bool
    version: Any = None


@dataclass(slots=True)
class Plan:
    """What to apply: the tombstones to delete by and the records to write (at most one of each per key),
    and every record's outcome unless the table's current row decides it (those of ``deletes`` and
    ``writes``: the statements report which were stale or duplicates)."""

    deletes: list[int] = field(default_factory=list)
    writes: list[int] = field(default_factory=list)
    outcomes: dict[int, str] = field(default_factory=dict)


def upserts(records: Iterable[Staged], stored: Mapping[Hashable, AbstractSet[int]] | None = None) -> Plan:
    """The net effect per key of ``records`` (in flush order) for an upsert route; see the module docstring.

    ``stored``, for a route with a version: the keys whose row the table holds, each with the numbers of its
    records older than that row. None without a version: any key may have a row, and no record is older.
    """
    by_key: dict[Hashable, list[Staged]] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(record)
    plan = Plan()
    for key, ops in by_key.items():
        older = () if stored is None else stored.get(key)
        table_row = stored is None or older is not None  # the table may hold a row of the key, still standing
        written: Staged | None = None  # the record the key's row holds now, written by this flush
        delete: int | None = None
        for op in ops:
            if written is not None:
                stale = op.version is not None and written.version is not None and op.version < written.version
            else:
                stale = table_row and older is not None and op.ord in older
            if stale:
                plan.outcomes[op.ord] = STALE
            elif op.delete:
                plan.outcomes[op.ord] = DELETED
                if table_row:  # the first tombstone that applies while the table's row stands deletes it
                    delete = op.ord
                table_row, written = False, None
            else:
                plan.outcomes[op.ord] = UPSERTED
                written = op
        if delete is not None:
            plan.deletes.append(delete)
        if written is not None:
            plan.writes.append(written.ord)
    plan.deletes.sort()
    plan.writes.sort()
    return plan


def first_of_each_key(records: Iterable[Staged]) -> Plan:
    """For an insert route that ignores duplicates: the first record of each key is written, later ones are
    duplicates."""
    seen: set[Hashable] = set()
    plan = Plan()
    for record in records:
        if record.key in seen:
            plan.outcomes[record.ord] = DUPLICATE
            continue
        seen.add(record.key)
        plan.outcomes[record.ord] = INSERTED
        plan.writes.append(record.ord)
    return plan
