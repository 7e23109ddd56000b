"""Balanced, sticky assignment of topic partitions onto consumer actors.

Runs in the coordinator whenever partitions or actors change. Balanced: every actor holds
``n // k`` or ``n // k + 1`` partitions. Sticky: a partition stays with its owner unless that owner is
gone or holds more than its share, so adding or removing one actor moves as few partitions as possible.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

TopicPartition = tuple[str, int]


def assign(
    partitions: Iterable[TopicPartition], actors: Iterable[str], current: Mapping[TopicPartition, str]
) -> dict[TopicPartition, str]:
    """The new owner of every partition; empty when there are no actors."""
    parts = sorted(set(partitions))
    names = sorted(set(actors))
    if not names:
        return {}
    base, extra = divmod(len(parts), len(names))
    held: dict[str, list[TopicPartition]] = {name: [] for name in names}
    for tp in parts:
        owner = current.get(tp)
        if owner in held:
            held[owner].append(tp)
    # The actors already holding the most get the `extra` larger quotas: fewer moves.
    by_load = sorted(names, key=lambda name: (-len(held[name]), name))
    quota = {name: base + (1 if rank < extra else 0) for rank, name in enumerate(by_load)}
    result: dict[TopicPartition, str] = {}
    count = dict.fromkeys(names, 0)
    for name in names:
        for tp in held[name][: quota[name]]:
            result[tp] = name
        count[name] = min(len(held[name]), quota[name])
    free = [tp for tp in parts if tp not in result]
    taken = 0
    for name in sorted(names, key=lambda name: (count[name], name)):
        room = quota[name] - count[name]
        for tp in free[taken : taken + room]:
            result[tp] = name
        taken += room
    return result


def moves(old: Mapping[TopicPartition, str], new: Mapping[TopicPartition, str]) -> list[TopicPartition]:
    """Partitions whose owner changes (including newly owned ones), in a stable order."""
    return sorted(tp for tp, owner in new.items() if old.get(tp) != owner)


def dropped(owners: Mapping[TopicPartition, str], reports: Mapping[str, Iterable[str]]) -> list[TopicPartition]:
    """Partitions the coordinator gave a consumer that the consumer's health report no longer lists.

    An actor drops a partition when a flush finds the offset row moved under it (fenced, or a commit the
    database lost after a crash with ``synchronous_commit=off``). Such partitions must be claimed again
    with a new epoch, or they stall for good. ``reports`` maps each consumer that answered this round's
    health check to its report's ``"topic[partition]"`` keys; a partition whose owner is not in it (no
    answer this round) is not judged. One pass over ``owners``: runs every round.
    """
    reported = {name: set(held) for name, held in reports.items()}
    return sorted(
        tp
        for tp, owner in owners.items()
        if (held := reported.get(owner)) is not None and f"{tp[0]}[{tp[1]}]" not in held
    )


def lost_commits(
    owners: Mapping[TopicPartition, str],
    reports: Mapping[str, Mapping[str, Mapping[str, int]]],
    stored: Mapping[TopicPartition, tuple[int, int]],
) -> list[TopicPartition]:
    """Partitions whose owner reports a commit that the offset row no longer shows.

    PostgreSQL with ``synchronous_commit=off`` may lose its last commits in a crash; rows and offsets are
    lost together, so nothing is half-written, but a partition that receives no further record never
    flushes again and would keep its lag for good. ``reports`` are each owner's health report
    (``"topic[partition]" -> {"epoch", "committed"}``), taken *before* ``stored`` (``next_offset, epoch``)
    was read, so a stored offset below a reported one under the same epoch can only mean a lost commit.
    """
    lost = []
    for tp, owner in sorted(owners.items()):
        report = reports.get(owner, {}).get(f"{tp[0]}[{tp[1]}]")
        row = stored.get(tp)
        if report is not None and row is not None and row[1] == report["epoch"] and row[0] < report["committed"]:
            lost.append(tp)
    return lost
