"""Balanced, sticky assignment of topic partitions onto consumer actors.

Runs in the coordinator every round; unchanged partitions and actors give the same answer, so nothing moves.
Balanced twice over: every actor holds ``n // k`` or ``n // k + 1`` partitions in all, and of each topic ``t``
``n_t // k`` or ``n_t // k + 1``, so every actor reads a share of a busy topic (three topics of 8 partitions
over two actors: 4 of each topic per actor, not one topic and a half). Sticky: a partition stays with its
owner unless the owner is gone or holds more than its share, so adding or removing one actor moves few
partitions (the minimum, for one topic).
"""

from __future__ import annotations

import heapq
from collections import Counter
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
    live = set(names)
    by_topic: dict[str, list[TopicPartition]] = {}
    held: dict[str, dict[str, list[TopicPartition]]] = {}  # topic -> live owner -> its partitions, in order
    for tp in parts:
        by_topic.setdefault(tp[0], []).append(tp)
        owner = current.get(tp)
        if owner in live:
            held.setdefault(tp[0], {}).setdefault(owner, []).append(tp)
    sizes = {topic: len(tps) for topic, tps in by_topic.items()}
    extra = _extras(sizes, held, names)
    result: dict[TopicPartition, str] = {}
    for topic, tps in by_topic.items():
        base = len(tps) // len(names)
        plus = extra.get(topic, [])
        quota = dict.fromkeys(names if base else plus, base)
        for name in plus:
            quota[name] += 1
        for name, own in held.get(topic, {}).items():
            for tp in own[: quota.get(name, 0)]:
                result[tp] = name
            if name in quota:
                quota[name] -= min(len(own), quota[name])
        free = iter(tp for tp in tps if tp not in result)
        for name, room in quota.items():
            for _ in range(room):
                result[next(free)] = name
    return result


def _extras(
    sizes: Mapping[str, int], held: Mapping[str, Mapping[str, list[TopicPartition]]], names: list[str]
) -> dict[str, list[str]]:
    """Which actors hold one partition more than ``n_t // k`` of each topic (``n_t % k`` of them per topic),
    so that the totals are balanced too: each actor takes ``E // k`` or ``E // k + 1`` such extras (``E``: all
    extras), and only ``E % k`` of them the larger number.

    Topic by topic, those with the most extras first: first the actors whose extras left would not fit in the
    topics left otherwise (one per topic each); then the actors that hold more than ``n_t // k`` of the topic
    (they want the extra: sticky), while their share lasts; then the actors with the most share left beyond
    the extras they will want later (a heap, so a round costs O(n log k), not O(topics x k)). Should that
    leave a topic short of candidates, the extras are dealt round-robin instead: balanced always, sticky only
    in the base shares.
    """
    k = len(names)
    need = {topic: n % k for topic, n in sorted(sizes.items(), key=lambda item: (-(item[1] % k), item[0])) if n % k}
    wants = {
        topic: [name for name, own in sorted(held.get(topic, {}).items()) if len(own) > sizes[topic] // k]
        for topic in need
    }
    future = Counter(name for wanting in wants.values() for name in wanting)
    floor, over = divmod(sum(need.values()), k)
    ranked = sorted(names, key=lambda name: (-future[name], name))
    demand = {name: floor + (1 if rank < over else 0) for rank, name in enumerate(ranked)}
    heap = [(future[name] - demand[name], -demand[name], name) for name in names if demand[name]]
    heapq.heapify(heap)
    chosen: dict[str, list[str]] = {}
    for index, (topic, count) in enumerate(need.items()):
        left = len(need) - index
        picks = [name for name in names if demand[name] >= left] if left <= floor + 1 else []
        wanting = wants[topic]
        picks += sorted(
            (name for name in wanting if demand[name] and name not in picks),
            key=lambda name: (future[name] - demand[name], -demand[name], name),
        )[: count - len(picks)]
        taken, wanted, skipped = set(picks), set(wanting), []
        while len(picks) < count and heap:
            slack, share, name = heapq.heappop(heap)
            if not demand[name] or (slack, share) != (future[name] - demand[name], -demand[name]):
                continue  # spent, or a stale entry of an actor whose share changed since
            if name in taken or name in wanted:
                skipped.append(name)
                continue
            picks.append(name)
            taken.add(name)
        if len(picks) != count:
            return _deal(need, names)
        for name in picks:
            demand[name] -= 1
        for name in wanting:
            future[name] -= 1
        for name in sorted({*picks, *wanting, *skipped}):
            if demand[name]:
                heapq.heappush(heap, (future[name] - demand[name], -demand[name], name))
        chosen[topic] = sorted(picks)
    return chosen


def _deal(need: Mapping[str, int], names: list[str]) -> dict[str, list[str]]:
    """The extras dealt round-robin over the actors, topic after topic: balanced whatever the owners."""
    dealt: dict[str, list[str]] = {}
    at = 0
    for topic, count in need.items():
        dealt[topic] = sorted(names[(at + i) % len(names)] for i in range(count))
        at += count
    return dealt


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
