"""What of a flush's records reaches the table (:mod:`loom_ray.routes.reduce`): the net effect per key equals a
record-at-a-time writer, wherever the batches end.

The model of the table here is independent of loom-ray: a dict of key -> (row, version, value), where row is
the key of the row that was there before (updated in place) or ``NEW`` for a row created since (a delete
removed the old one: its identity and defaults are new), and the statements' comparison with the row already
there (:mod:`loom_ray.routes.sql`) is replayed by :func:`_apply`.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest

from loom_ray.routes import reduce
from loom_ray.routes.reduce import DELETED, DUPLICATE, INSERTED, STALE, UPSERTED, Staged


@dataclass(frozen=True)
class Op:
    key: str
    delete: bool
    version: int | None
    value: int


Table = dict[str, tuple[str, int | None, int]]  # key -> (row, version, value)
NEW = "new"


def _one_at_a_time(table: Table, ops: list[Op]) -> dict[int, str]:
    """The reference: each record applied alone against the row as it stands; each record's outcome."""
    outcomes = {}
    for n, op in enumerate(ops):
        row = table.get(op.key)
        if row is not None and op.version is not None and row[1] is not None and op.version < row[1]:
            outcomes[n] = STALE
        elif op.delete:
            table.pop(op.key, None)
            outcomes[n] = DELETED
        else:
            table[op.key] = (row[0] if row is not None else NEW, op.version, op.value)
            outcomes[n] = UPSERTED
    return outcomes


def _apply(table: Table, ops: list[Op], part: list[int], versioned: bool) -> dict[int, str]:
    """loom-ray's way for the records numbered ``part``: with a version, learn which records are older than the
    rows the table holds (as :func:`loom_ray.routes.sql.compare_sql` does); the reduction; then a delete by key
    and a write per key, the write kept from a row with a greater version; each record's outcome."""
    stored = None
    if versioned:
        stored = {}
        for n in part:
            row = table.get(ops[n].key)
            if row is not None:
                older = ops[n].version is not None and row[1] is not None and ops[n].version < row[1]
                stored.setdefault(ops[n].key, set()).update({n} if older else set())
    chosen = reduce.upserts((Staged(n, ops[n].key, ops[n].delete, ops[n].version) for n in part), stored)
    for n in chosen.deletes:
        table.pop(ops[n].key, None)
    for n in chosen.writes:
        op, row = ops[n], table.get(ops[n].key)
        if row is not None and row[1] is not None and op.version is not None and row[1] > op.version:
            chosen.outcomes[n] = STALE
        else:
            table[op.key] = (row[0] if row is not None else NEW, op.version, op.value)
    return chosen.outcomes


def _random_ops(rng: random.Random, versioned: bool, deletes_versioned: bool) -> list[Op]:
    ops = []
    for value in range(rng.randint(1, 40)):
        delete = rng.random() < 0.25
        version = rng.randint(0, 12) if versioned and (deletes_versioned or not delete) else None
        ops.append(Op(rng.choice("abcd"), delete, version, value))
    return ops


@pytest.mark.parametrize("seed", range(300))
def test_the_net_effect_equals_one_record_at_a_time_wherever_the_batches_end(seed: int) -> None:
    rng = random.Random(seed)
    versioned, deletes_versioned = rng.random() < 0.7, rng.random() < 0.5
    ops = _random_ops(rng, versioned, deletes_versioned)
    before: Table = {k: (k, rng.randint(0, 12) if versioned else None, -1) for k in "ab"}
    expected = dict(before)
    expected_outcomes = _one_at_a_time(expected, ops)
    cuts = sorted(rng.sample(range(1, len(ops)), min(len(ops) - 1, rng.randint(0, 3)))) if len(ops) > 1 else []
    table = dict(before)
    outcomes = {}
    for start, end in itertools.pairwise([0, *cuts, len(ops)]):
        outcomes.update(_apply(table, ops, list(range(start, end)), versioned))
    assert table == expected  # rows included: a delete then a write makes a new row, in one batch or two
    assert outcomes == expected_outcomes  # every record counted as it was applied: stale ones too


def test_a_tombstone_then_a_write_of_one_key_in_one_batch_makes_a_new_row() -> None:
    chosen = reduce.upserts([Staged(0, "k", True), Staged(1, "k", False)])
    assert (chosen.deletes, chosen.writes) == ([0], [1])
    assert chosen.outcomes == {0: DELETED, 1: UPSERTED}


def test_the_last_record_of_a_key_is_written_once() -> None:
    chosen = reduce.upserts([Staged(0, "k", False), Staged(1, "j", False), Staged(2, "k", False)])
    assert (chosen.deletes, chosen.writes) == ([], [1, 2])
    assert chosen.outcomes == {0: UPSERTED, 1: UPSERTED, 2: UPSERTED}  # records, not rows: 0 was overwritten


def test_an_older_version_after_a_newer_one_is_stale_and_left_out() -> None:
    chosen = reduce.upserts([Staged(0, "k", False, 5), Staged(1, "k", False, 3), Staged(2, "k", False, 5)], {})
    assert chosen.writes == [2]  # an equal version is not older: the later record wins
    assert chosen.outcomes == {0: UPSERTED, 1: STALE, 2: UPSERTED}


def test_a_tombstone_without_a_version_always_deletes() -> None:
    chosen = reduce.upserts([Staged(0, "k", False, 9), Staged(1, "k", True, None), Staged(2, "k", False, 1)], {})
    assert chosen.writes == [2]  # the row is gone: version 1 creates it again
    assert chosen.deletes == []  # the table held no row of k: nothing to delete there


def test_records_older_than_the_tables_row_are_stale_until_a_tombstone_removes_it() -> None:
    records = [Staged(0, "k", False, 3), Staged(1, "k", True, 9), Staged(2, "k", True, 5), Staged(3, "k", False, 4)]
    chosen = reduce.upserts(records, {"k": {0, 2, 3}})  # the row holds version 8
    assert chosen.outcomes == {0: STALE, 1: DELETED, 2: DELETED, 3: UPSERTED}
    assert (chosen.deletes, chosen.writes) == ([1], [3])


def test_an_insert_that_ignores_duplicates_keeps_the_first_of_each_key() -> None:
    chosen = reduce.first_of_each_key([Staged(0, "k", False), Staged(1, "k", False), Staged(2, "j", False)])
    assert chosen.writes == [0, 2]
    assert chosen.outcomes == {0: INSERTED, 1: DUPLICATE, 2: INSERTED}
