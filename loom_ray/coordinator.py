"""The coordinator's logic: which consumer owns which partition, and keeping that true.

Runs inside the coordinator actor (``actors/coordinator.py``) as one loop, ``reconcile()`` every
``LOOM_HEALTH_CHECK_INTERVAL_S``, in three phases: discover what is (1-3), plan (4), apply (5-6).

1. discover the partitions and ids of the configured topics in one request (new partitions are picked up
   here; a topic whose metadata fails keeps the partitions it had, and the other topics go on; a topic
   whose id changed was recreated: its partitions are claimed again without a hand-over);
2. health-check every consumer: a dead one (RayActorError) or one silent for longer than
   ``LOOM_KAFKA_SESSION_TIMEOUT_MS`` is killed and its partitions become free. One whose flushes PostgreSQL
   refuses (a privilege revoked, disk full: ``stats()["blocked"]``) is alive and keeps retrying: it stays,
   and its blocker is recorded in ``loom_sink_errors`` (a ``sink_blocked`` alert). The faults each one
   reports (partitions it dropped because their own flush failed: a bug) are read once each, by ``seq``;
3. read progress: committed offsets (now), and high watermarks from the latest finished request (one per
   partition leader, sent in the background: a round never waits for it but the first, so at thousands of
   partitions it does not set the round's length); and what people asked with ``python -m loom_ray.ctl``
   (:mod:`loom_ray.ops`): the paused topics, and the rewinds and skips waiting to be applied;
4. plan: a partition whose owner reports a commit that the offset row no longer shows (PostgreSQL lost it in
   a crash) is claimed again; a faulted partition is claimed again only after its backoff, and parked after
   repeated faults with one error (:mod:`loom_ray.policy.parking`; recorded in ``loom_parked``, not claimed
   until ``unpark()``); the consumer count follows the backlog;
5. start or stop consumers to reach the target count (``resize()``, within the scaling bounds and never
   more than partitions); after consumers died in a row, the next start waits out a backoff;
6. apply the waiting rewinds and skips (their partitions' owners flush and release, one claim moves them:
   :func:`loom_ray.ops.moves.apply_move`); take back the parked and paused partitions a consumer still
   holds; compute a balanced, sticky assignment of the partitions that may be claimed (not parked, not
   paused, not waiting out a fault's backoff) and move what changed: ask the old owner to flush and release,
   then *claim* for the new owner (a new epoch in ``loom_offsets`` fences the old one whatever it does) and
   hand the new owner the claim.

Everything it knows is rebuilt from PostgreSQL and Ray on start, so a restarted coordinator simply
claims every partition again, but the parked and paused ones. ``status()`` answers from the last round's progress,
without a request of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import asyncpg
from confluent_kafka import KafkaException

from loom_ray import db, deployment, lag_history, offsets, parked
from loom_ray.kafka.admin import Discovery, KafkaMetadata
from loom_ray.offsets import Claim
from loom_ray.ops import audit, pause
from loom_ray.ops.audit import Operation
from loom_ray.ops.moves import NotAnswered, apply_move, targets_of
from loom_ray.ops.pause import Paused
from loom_ray.policy.assignment import TopicPartition, assign, dropped, lost_commits, moves
from loom_ray.policy.backoff import backoff_delay
from loom_ray.policy.lag_health import WINDOW_SAMPLES, PartitionStatus, Sample, evaluate, overall
from loom_ray.policy.parking import Deaths, Fault, ParkingLot, decide, record_death, restart_at
from loom_ray.policy.positions import BrokerPartition, known_id
from loom_ray.policy.scaling import ScalingBounds, clamp_actors, desired_actors
from loom_ray.progress import RecordTally, records_per_consumer
from loom_ray.settings import Settings
from loom_ray.sink import blockers

log = logging.getLogger(__name__)

# A claim that fails for these (the broker has no watermark yet, PostgreSQL out of reach) is retried next round.
_CLAIM_ERRORS: tuple[type[BaseException], ...] = (KafkaException, *db.TRANSIENT_ERRORS)
# An operator's rewind or skip that fails for these stays pending for the next round.
_MOVE_ERRORS: tuple[type[BaseException], ...] = (*_CLAIM_ERRORS, NotAnswered)
_CLAIM_CHUNK = 1000  # partitions per claim transaction: bounds how long one transaction holds row locks
_HANDOFF_CONCURRENCY = 16  # consumers released from or assigned to at once
_START_GLANCE_S = 0.05  # how long a round lets new consumers start before it goes on without them

# Pruning consumer_lag_history: retention is days, so a check every few minutes keeps it within a sliver of
# it. 10 000 rows per statement take milliseconds; ten statements per round work off a long backlog (a first
# prune after months: 10 000 partitions sampled every 10 s add 86 million rows a day) without holding the
# round for long, and the next sample round carries on where this one stopped.
_PRUNE_INTERVAL_S = 300.0
_PRUNE_BATCH_ROWS = 10_000
_PRUNE_MAX_BATCHES = 10


class ConsumerGone(Exception):
    """A consumer actor died or was killed; its partitions must be reclaimed."""


class ConsumerHandle(Protocol):
    """What the coordinator needs from a consumer actor (the Ray shell provides it)."""

    name: str

    async def start(self, timeout_s: float | None) -> None: ...
    async def assign(self, claims: list[Claim], timeout_s: float) -> None: ...
    async def release(self, topic: str, partition: int, timeout_s: float) -> int | None: ...
    async def stats(self, timeout_s: float) -> dict[str, Any]: ...
    async def stop(self, drain: bool, timeout_s: float) -> None: ...
    def kill(self) -> None: ...


ConsumerFactory = Callable[[str], ConsumerHandle]


@dataclass(slots=True)
class _Pending:
    """A consumer asked for and not started yet: waiting for Ray to place it (a node with a free CPU; on
    KubeRay a pod the autoscaler adds), then connecting. Its ``start`` runs in ``task``; the rounds go on."""

    handle: ConsumerHandle
    serial: int
    task: asyncio.Task[None]
    since: float  # monotonic


@dataclass(slots=True)
class _Member:
    handle: ConsumerHandle
    serial: int
    last_ok: float
    stats: dict[str, Any] = field(default_factory=dict)
    faults_seen: int = 0  # the highest fault seq taken from its stats: each fault is counted once

    def committed(self) -> bool:
        """Whether its last report shows records it committed since it started (the restart backoff's
        healthy interval)."""
        totals = self.stats.get("totals", {})
        return bool(totals.get("rows") or totals.get("dead_letters"))


class Coordinator:
    """Maps partitions onto consumers; see the module docstring for the loop."""

    def __init__(
        self,
        settings: Settings,
        factory: ConsumerFactory,
        on_lag: Callable[[list[tuple[str, int, int, str | None]]], None] | None = None,
        on_health: Callable[[str, int, PartitionStatus], None] | None = None,
        on_parked: Callable[[str, int, bool], None] | None = None,
        clock: Callable[[], float] = time.time,
        on_consumers: Callable[[int, int], None] | None = None,
        on_paused: Callable[[str, int, bool], None] | None = None,
    ) -> None:
        """``on_lag``, ``on_health``, ``on_parked``, ``on_consumers`` (running, pending) and ``on_paused`` publish
        metrics (the actor's gauges); ``clock`` (epoch seconds) times faults, parking and the consumer restart
        backoff (tests pass their own)."""
        self._settings = settings
        self.identity = deployment.identity_of(settings)
        self._factory = factory
        self._on_lag = on_lag
        self._on_health = on_health
        self._on_parked = on_parked
        self._on_consumers = on_consumers
        self._on_paused = on_paused
        self._clock = clock
        # Per partition, its newest lag samples (None until read at the first sample) and its lag health
        # (policy/lag_health.py) over them, as of the last sample.
        self._windows: dict[TopicPartition, deque[Sample]] | None = None
        self._health: dict[TopicPartition, PartitionStatus] = {}
        self._members: dict[str, _Member] = {}
        self._pending: dict[str, _Pending] = {}
        self._owners: dict[TopicPartition, str] = {}
        self._partitions: list[TopicPartition] = []
        self._topic_ids: dict[str, str] = {}  # known ids only (policy.positions.known_id)
        # Per partition, the epoch of the newest claim this coordinator made: progress read under an older
        # epoch (before the claim, in the same round) says nothing about where the claim starts, so the
        # partition is not called drained on it.
        self._claimed: dict[TopicPartition, int] = {}
        # Per topic, the partitions it had when first seen with no claim stored: the only ones that start at
        # the end with LOOM_KAFKA_AUTO_OFFSET_RESET=latest (partitions added later start at their first offset).
        self._first_sight: dict[str, set[int]] = {}
        self._topic_errors: dict[str, str] = {}
        self._target = settings.min_actors
        self._pinned = False  # set by resize(): autoscaling stops
        self._last_scale = time.monotonic()
        self._records = RecordTally()  # rows + dead letters committed by the consumers, from their stats
        self._last_records: tuple[float, int] | None = None  # (time, records) at the previous autoscale
        self._serial = 0
        # Consumer names carry this incarnation's tag: after a coordinator restart, the names of consumers
        # that have not finished dying are still taken.
        self._tag = uuid.uuid4().hex[:4]
        self._pool: asyncpg.Pool | None = None
        self._metadata: KafkaMetadata | None = None
        self._lock = asyncio.Lock()
        self._stopping = False
        self._last_lag_sample = 0.0
        self._next_prune = 0.0  # monotonic time of the next consumer_lag_history prune
        self._progress: dict[TopicPartition, dict[str, int]] = {}
        self._highs: asyncio.Task[dict[TopicPartition, int]] | None = None  # the watermark request in flight
        self._marks: dict[TopicPartition, int] | None = None  # the latest finished one's answer
        self._database = True  # whether the last round reached PostgreSQL
        self._reported: set[str] = set()  # consumers whose blocker loom_sink_errors holds
        self._report_failing = False
        self._lot = ParkingLot()  # faulted and parked partitions
        self._paused: dict[str, Paused] = {}  # topics paused (loom_paused), read every round
        self._operations: list[Operation] = []  # rewinds and skips waiting for this coordinator
        self._applied_by = f"coordinator {self.identity.deployment}"
        self._parked_loaded = False  # whether loom_parked was read (at the first round that reached it)
        self._deaths: Deaths | None = None  # consumer deaths in a row: the restart backoff
        self._restart_noted: float | None = None  # the restart time last logged
        self._settled = False  # the last round left the consumers and partitions as planned (status's settled)
        self.moves = 0
        self.reclaims = 0

    async def start(self) -> None:
        """Connect to PostgreSQL (retried with backoff while it is out of reach: a coordinator restarted by
        Ray during an outage waits for it) and create the Kafka metadata client."""
        attempt = 0
        while self._pool is None:
            try:
                self._pool = await asyncpg.create_pool(
                    self._settings.dsn,
                    min_size=1,
                    max_size=2,
                    server_settings={
                        "application_name": f"loom-coordinator pid={os.getpid()}",
                        "search_path": db.quoted_schema(self._settings),
                        "lock_timeout": str(offsets.CLAIM_LOCK_TIMEOUT_MS),
                    },
                )
            except db.TRANSIENT_ERRORS as exc:
                delay = backoff_delay(attempt)
                log.warning(
                    "coordinator cannot reach PostgreSQL (%s: %s); retry in %.1fs", type(exc).__name__, exc, delay
                )
                await asyncio.sleep(delay)
                attempt += 1
        self._metadata = KafkaMetadata(self._settings)

    async def run(self) -> None:
        """Reconcile until :meth:`shutdown`; a failed round is logged and retried next interval."""
        while not self._stopping:
            try:
                await self.reconcile()
            except db.TRANSIENT_ERRORS as exc:
                self._database = False
                log.warning("coordinator round failed (%s: %s); retrying", type(exc).__name__, exc)
            except Exception:
                log.exception("coordinator round failed; retrying")
            await asyncio.sleep(self._settings.health_check_interval_s)

    async def resize(self, actors: int) -> int:
        """Pin the consumer count (clamped to the bounds and the partition count; autoscaling stops)."""
        self._target = actors
        self._pinned = True
        await self.reconcile()
        return self._target_count()

    async def release_node(self, node: str) -> list[str]:
        """Stop the consumers running on Ray node ``node`` (its pod is going away: a worker's ``preStop``), each
        after its partitions moved to the other consumers with a live hand-off (flush, release, claim); the
        names stopped. Replacements are asked for at the next round, as for any missing consumer."""
        async with self._lock:
            leaving = sorted(name for name, m in self._members.items() if m.stats.get("node") == node)
            if not leaving:
                return []
            keep = [name for name in self._members if name not in leaving]
            log.warning("node %s is going away: handing over the partitions of %s", node, ", ".join(leaving))
            await self._move_to(assign(self._assignable(self._clock()), keep, self._owners))
            await self._stop_members(leaving)
            return leaving

    async def unpark(self, partitions: list[TopicPartition] | None, by: str | None = None) -> dict[str, dict[str, Any]]:
        """Let parked partitions be claimed again at the next round, clean (``None``: every parked one).

        Records ``unparked_at`` and ``unparked_by`` (``by``, else the coordinator's database role) in
        ``loom_parked`` first: when that fails (PostgreSQL out of reach), it raises and nothing is unparked.
        Returns ``"topic[p]" ->`` what each was parked for (``error``, ``faults``, ``since``) and
        ``unparked_by``, for those that were parked; the others are left out.
        """
        async with self._lock:
            wanted = self._lot.parked.keys() if partitions is None else set(partitions) & self._lot.parked.keys()
            chosen = sorted(wanted)
            if not chosen:
                return {}
            assert self._pool is not None
            async with self._pool.acquire() as conn:
                closed = await parked.unpark(conn, chosen, by)
            result = {}
            for tp in chosen:
                row = self._lot.unpark(tp)
                result[f"{tp[0]}[{tp[1]}]"] = {**row.as_dict(), "unparked_by": closed.get(tp, by)}
                log.warning("%s[%d] unparked by %s: it is claimed again", *tp, closed.get(tp, by))
                self._publish_parked(tp)
            return result

    def _bounds(self) -> ScalingBounds:
        return ScalingBounds(self._settings.min_actors, self._settings.max_actors)

    def _target_count(self) -> int:
        return clamp_actors(self._target, self._bounds(), max(1, len(self._partitions)))

    async def reconcile(self) -> None:
        """One round (serialised with resize, unpark and shutdown): discover, plan, apply."""
        async with self._lock:
            if self._stopping:
                return
            progress = await self._observe()
            now = self._clock()
            self._plan(progress, now)
            await self._apply(progress, now)

    async def _observe(self) -> dict[TopicPartition, dict[str, int]]:
        """Discover: the topics' partitions, the parked ones (at the first round), the paused topics and the
        operations waiting, the consumers' health, faults and deaths, and each partition's progress
        (:meth:`progress`)."""
        assert self._metadata is not None
        await self._discover(await asyncio.to_thread(self._metadata.discover))
        highs = await self._high_watermarks()
        await self._load_parked()
        await self._read_operations()
        self._take_started()
        await self._check_health()
        progress = await self.progress(highs)
        self._progress, self._database = progress, True
        return progress

    def _plan(self, progress: dict[TopicPartition, dict[str, int]], now: float) -> None:
        """Plan: claim again what PostgreSQL lost, park what keeps faulting, size the consumers to the backlog."""
        self._reclaim_lost_commits(progress)
        self._park_repeated_faults(now)
        self._autoscale(progress)

    async def _apply(self, progress: dict[TopicPartition, dict[str, int]], now: float) -> None:
        """Apply: record blockers and parked partitions, start or stop consumers, apply rewinds and skips, move
        partitions, sample lag."""
        await self._heartbeat()
        await self._report_blockers()
        await self._save_parked()
        await self._scale(now)
        await self._apply_operations()
        await self._rebalance(now)
        await self._sample_lag(progress)

    async def _discover(self, found: Discovery) -> None:
        """Take in this round's topics: new partitions, topics that failed, went missing or were recreated.

        A topic that fails otherwise (unauthorised, timed out) keeps its partitions and owners. A missing one
        (deleted) is handed back by its owners, flushing what they read of it, and is claimed again, as a new
        incarnation, once it exists again: no reader keeps its old position into a recreated log. A topic
        whose id changed between two rounds (recreated in between) is claimed again without a hand-over:
        what its owners buffered may be the new topic's, and the new claims fence them.
        """
        for topic, error in found.errors.items():
            if self._topic_errors.get(topic) != error:
                log.warning("topic %s: metadata failed (%s); its partitions stay as they were", topic, error)
        self._topic_errors = dict(found.errors)
        unseen = [topic for topic in found.partitions if topic not in self._first_sight]
        if unseen:
            assert self._pool is not None
            async with self._pool.acquire() as conn:
                claimed = await offsets.claimed_topics(conn, unseen)
            for topic in unseen:
                self._first_sight[topic] = set() if topic in claimed else set(found.partitions[topic])
        for topic in sorted(found.missing):
            await self._hand_back(topic)
        for topic, found_id in found.topic_ids.items():
            topic_id, known = known_id(found_id), self._topic_ids.get(topic)
            if topic_id is None:
                continue
            if known is not None and known != topic_id:
                log.warning("topic %s was recreated (id %s -> %s): claiming it again", topic, known, topic_id)
                self._disown([tp for tp in self._owners if tp[0] == topic])
            self._topic_ids[topic] = topic_id
        kept = [tp for tp in self._partitions if tp[0] in found.errors and tp[0] not in found.missing]
        self._partitions = sorted({*kept, *((t, p) for t, ps in found.partitions.items() for p in ps)})

    async def _hand_back(self, topic: str) -> None:
        """Ask the owners of a deleted topic's partitions to flush and release them."""
        held = [tp for tp in self._owners if tp[0] == topic]
        if held:
            log.warning("topic %s no longer exists: its owners hand back %d partitions", topic, len(held))
        await self._release_all([tp for tp in held if self._owners[tp] in self._members])
        self._disown(held)

    def _disown(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            del self._owners[tp]
            self.reclaims += 1

    def _reclaim_lost_commits(self, progress: dict[TopicPartition, dict[str, int]]) -> None:
        reports = {name: member.stats.get("partitions", {}) for name, member in self._members.items()}
        stored = {tp: (row["next_offset"], row["epoch"]) for tp, row in progress.items()}
        for tp in lost_commits(self._owners, reports, stored):
            log.warning(
                "%s[%d]: PostgreSQL lost a commit of %s (offset row at %d); claiming it again",
                *tp,
                self._owners[tp],
                progress[tp]["next_offset"],
            )
            self._disown([tp])

    async def _check_health(self) -> None:
        timeout = self._settings.health_check_interval_s
        session = self._settings.kafka_session_timeout_ms / 1000
        names = list(self._members)
        results = await asyncio.gather(*(self._members[n].handle.stats(timeout) for n in names), return_exceptions=True)
        now = time.monotonic()
        reports: dict[str, dict[str, Any]] = {}
        faulted: set[TopicPartition] = set()
        died: list[_Member] = []
        for name, result in zip(names, results, strict=True):
            member = self._members[name]
            if isinstance(result, dict):
                member.last_ok, member.stats = now, result
                self._records.observe(name, result, now)
                faulted |= self._take_faults(member, result)
                reports[name] = result.get("partitions", {})
            elif isinstance(result, asyncio.TimeoutError) and now - member.last_ok < session:
                log.warning("consumer %s missed a health check", name)
            else:
                log.error("consumer %s is gone (%s); reclaiming its partitions", name, type(result).__name__)
                self._forget(name)
                died.append(member)
        if died:
            self._deaths = record_death(self._deaths, self._clock(), any(m.committed() for m in died))
        for tp in dropped(self._owners, reports):
            if tp not in faulted:
                owner = self._owners[tp]
                log.warning("consumer %s dropped %s[%d] (its offset row moved); claiming it again", owner, *tp)
            self._disown([tp])

    def _take_faults(self, member: _Member, stats: dict[str, Any]) -> set[TopicPartition]:
        """Record the faults ``member`` reported since its previous report (each once: by ``seq``) in their
        partitions' histories; the partitions that faulted."""
        now = self._clock()
        faulted = set()
        for fault in stats.get("faults", []):
            if fault["seq"] <= member.faults_seen:
                continue
            member.faults_seen = fault["seq"]
            tp = (fault["topic"], fault["partition"])
            faulted.add(tp)
            history = self._lot.fault(tp, Fault(now, (fault["error_class"], fault["sqlstate"]), fault["error"]))
            if history is None:
                continue
            decision = decide(history, now)
            log.warning(
                "%s[%d] faulted on %s (fault %d since it was last clean): %s; %s",
                *tp,
                member.handle.name,
                history.count,
                fault["error"],
                "parking it" if decision.at is None else f"claiming it again in {decision.at - now:.0f}s",
            )
        return faulted

    async def _read_operations(self) -> None:
        """Every round: the paused topics (``loom_paused``) and the rewinds and skips waiting to be applied
        (``loom_operations``), both asked with ``python -m loom_ray.ctl`` (:mod:`loom_ray.ops`)."""
        assert self._pool is not None
        topics = list(self._settings.kafka_topics)
        async with self._pool.acquire() as conn:
            found = await pause.paused(conn, topics)
            self._operations = await audit.pending(conn, topics)
        changed = found.keys() ^ self._paused.keys()
        for topic in sorted(changed):
            log.warning("topic %s %s", topic, "paused: its partitions are handed back" if topic in found else "resumed")
        self._paused = found
        for tp in self._partitions:
            if tp[0] in changed:
                self._publish_paused(tp)

    async def _apply_operations(self) -> None:
        """Apply the rewinds and skips asked for this deployment's topics (:func:`loom_ray.ops.moves.apply_move`):
        the owners of their partitions flush and hand them back, then one transaction moves them (a new epoch,
        no owner); the rebalance that follows claims them for consumers from there. One that fails for an
        outage or a broker that did not answer stays pending for the next round; one the policy refuses is
        closed as failed, saying why."""
        assert self._pool is not None
        for operation in self._operations:
            wanted = targets_of(operation)
            held = [tp for tp in wanted if tp in self._owners]
            await self._release_all([tp for tp in held if self._owners[tp] in self._members])
            self._disown(held)
            try:
                async with self._pool.acquire() as conn:
                    applied = await apply_move(conn, operation.id, self._broker, self._applied_by)
            except _MOVE_ERRORS as exc:
                log.warning("%s %d not applied (%s: %s); retrying next round", operation.kind, operation.id,
                            type(exc).__name__, exc)  # fmt: skip
                continue
            if applied is None:
                continue
            if applied.error is not None:
                log.warning("%s %d asked by %s refused: %s", operation.kind, operation.id, operation.requested_by,
                            applied.error)  # fmt: skip
                continue
            self._claimed.update({(m.claim.topic, m.claim.partition): m.claim.epoch for m in applied.moved})
            log.warning("%s %d asked by %s applied: %s", operation.kind, operation.id, operation.requested_by,
                        applied.result())  # fmt: skip
        self._operations = []

    async def _load_parked(self) -> None:
        """At the first round: the partitions an earlier coordinator parked (``loom_parked``) stay parked."""
        if self._parked_loaded:
            return
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            found = await parked.load(conn, list(self._settings.kafka_topics))
        self._lot.parked.update(found)
        self._parked_loaded = True
        for tp, row in sorted(found.items()):
            log.warning("%s[%d] is parked (%s); python -m loom_ray.ctl unpark %s[%d] once fixed", *tp, row.error, *tp)
            self._publish_parked(tp)

    def _park_repeated_faults(self, now: float) -> None:
        """Park the partitions that faulted again and again with one error (:meth:`ParkingLot.plan`)."""
        for tp in self._lot.plan(now):
            row = self._lot.parked[tp]
            log.error(
                "%s[%d] parked after %d faults: %s. It is not read until unparked; its offset row keeps its place. "
                "Fix the cause, then: python -m loom_ray.ctl unpark %s[%d]",
                *tp,
                row.faults,
                row.error,
                *tp,
            )
            self._publish_parked(tp)

    async def _save_parked(self) -> None:
        """Write the partitions parked since the last write to ``loom_parked``, so that a restarted coordinator
        keeps them parked. On failure they stay parked here and the write is tried again next round."""
        if not self._lot.unsaved:
            return
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                await parked.park(conn, {tp: self._lot.parked[tp] for tp in self._lot.unsaved})
        except (*db.TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            log.warning("cannot record parked partitions in loom_parked (%s: %s); retrying", type(exc).__name__, exc)
            return
        self._lot.unsaved.clear()

    async def _release_held_back(self) -> None:
        """Take back the parked and paused partitions a consumer still holds (a fault it reported under an
        older claim than the one it holds now; a topic paused since): their owners flush and release them, and
        nobody claims them until they are unparked or resumed."""
        held = [tp for tp in self._owners if tp in self._lot.parked or tp[0] in self._paused]
        if held:
            await self._release_all([tp for tp in held if self._owners[tp] in self._members])
            self._disown(held)

    def _publish_parked(self, tp: TopicPartition) -> None:
        if self._on_parked is not None:
            self._on_parked(tp[0], tp[1], tp in self._lot.parked)

    def _publish_paused(self, tp: TopicPartition) -> None:
        if self._on_paused is not None:
            self._on_paused(tp[0], tp[1], tp[0] in self._paused)

    async def _heartbeat(self) -> None:
        """Keep this deployment's row in ``loom_deployments`` alive (a driver of another deployment with one of
        its topics is refused while it is). Best effort: a failure is logged and tried again next round."""
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                await deployment.heartbeat(conn, self.identity)
        except (*db.TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            log.warning("cannot record this deployment's heartbeat (%s: %s)", type(exc).__name__, exc)

    def _blocked(self) -> dict[str, dict[str, Any]]:
        """``consumer -> blocker`` for the consumers whose last stats reported one."""
        return {name: m.stats["blocked"] for name, m in self._members.items() if m.stats.get("blocked")}

    async def _report_blockers(self) -> None:
        """Record the consumers' blockers in ``loom_sink_errors`` and clear the ones gone (consumer unblocked,
        stopped or forgotten). Best effort: PostgreSQL may refuse this write for the reason it refuses flushes,
        and the status, the metric and the consumer's log still say it."""
        blocked = self._blocked()
        cleared = self._reported - blocked.keys()
        if not blocked and not cleared:
            return
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                await blockers.record(conn, blocked, cleared)
        except (*db.TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            if not self._report_failing:
                log.warning("cannot record blocked flushes in loom_sink_errors (%s: %s)", type(exc).__name__, exc)
            self._report_failing = True
            return
        self._report_failing = False
        self._reported = set(blocked)

    def _forget(self, name: str) -> None:
        member = self._members.pop(name, None)
        if member is not None:
            member.handle.kill()
        self._disown([tp for tp, owner in self._owners.items() if owner == name])

    async def _scale(self, now: float) -> None:
        """Ask for the consumers missing from the target count (they start in the background), or stop the
        surplus: first consumers still pending, then running ones, whose partitions move first."""
        target = self._target_count()
        wanted = target - len(self._members) - len(self._pending)
        if wanted > 0 and self._may_start(now):
            started = self._start_consumers(wanted)
            await asyncio.wait(started, timeout=_START_GLANCE_S)  # those placed at once join this round
            self._take_started()
        for name in sorted(self._pending, key=lambda n: self._pending[n].serial, reverse=True)[: max(-wanted, 0)]:
            self._drop_pending(name, "not needed any more")
        surplus = sorted(self._members, key=lambda n: self._members[n].serial)[target:]
        if surplus:
            keep = [n for n in self._members if n not in surplus]
            await self._move_to(assign(self._assignable(now), keep, self._owners))
            await self._stop_members(surplus)

    async def _stop_members(self, names: list[str]) -> None:
        """Stop consumers that hold no partition any more (moved away first): each drains, then is killed."""
        for name in names:
            member = self._members.pop(name)
            try:
                await member.handle.stop(drain=True, timeout_s=self._settings.shutdown_timeout_s)
            except Exception as exc:
                log.warning("consumer %s did not stop cleanly (%s); killing it", name, exc)
            member.handle.kill()
            self._disown([tp for tp, owner in self._owners.items() if owner == name])
            log.info("stopped consumer %s", name)

    def _start_consumers(self, count: int) -> list[asyncio.Task[None]]:
        """Ask Ray for ``count`` consumers; each starts in the background and joins the members at the first
        round after it started (:meth:`_take_started`). Never awaited here: a consumer Ray cannot place yet (no
        free CPU: on KubeRay a pod is being added, or a quota stops it) must not hold the rounds. Returns the
        start tasks."""
        tasks = []
        for _ in range(count):
            self._serial += 1
            handle = self._factory(f"loom-consumer-{self._serial}-{self._tag}")
            task = asyncio.get_running_loop().create_task(handle.start(timeout_s=None))
            self._pending[handle.name] = _Pending(handle, self._serial, task, time.monotonic())
            tasks.append(task)
            log.info(
                "asked for consumer %s (%d running, %d pending)", handle.name, len(self._members), len(self._pending)
            )
        return tasks

    def _take_started(self) -> None:
        """Make members of the pending consumers that have started; drop those whose start failed (a death:
        the restart backoff counts it). Runs at the start of every round."""
        failed = False
        for name, pending in list(self._pending.items()):
            if not pending.task.done():
                continue
            del self._pending[name]
            error = None if pending.task.cancelled() else pending.task.exception()
            if pending.task.cancelled() or error is not None:
                log.error("consumer %s failed to start: %s", name, error or "cancelled")
                pending.handle.kill()
                failed = True
                continue
            self._members[name] = _Member(pending.handle, pending.serial, time.monotonic())
            log.info(
                "started consumer %s after %.0fs (%d running, %d pending)",
                name,
                time.monotonic() - pending.since,
                len(self._members),
                len(self._pending),
            )
        if failed:
            self._deaths = record_death(self._deaths, self._clock(), committed=False)
        if self._on_consumers is not None:
            self._on_consumers(len(self._members), len(self._pending))

    def _drop_pending(self, name: str, why: str) -> None:
        pending = self._pending.pop(name)
        pending.task.cancel()
        pending.handle.kill()
        log.info("dropped pending consumer %s: %s", name, why)

    def _may_start(self, now: float) -> bool:
        """Whether consumers may be started now: not before the restart backoff after consumers died in a row
        has passed (:func:`loom_ray.policy.parking.restart_at`; logged once per death)."""
        at = restart_at(self._deaths)
        if now >= at:
            return True
        if self._restart_noted != at and self._deaths is not None:
            self._restart_noted = at
            log.warning(
                "%d consumer deaths in a row: the next consumer starts in %.0fs (restart backoff)",
                self._deaths.streak,
                at - now,
            )
        return False

    async def _rebalance(self, now: float) -> None:
        known = set(self._partitions)
        for tp in [tp for tp in self._owners if tp not in known]:
            del self._owners[tp]  # topic deleted or shrunk
        await self._release_held_back()
        plan = assign(self._assignable(now), list(self._members), self._owners)
        await self._move_to(plan)
        self._settled = not self._pending and len(self._members) == self._target_count() and self._owners == plan

    def _assignable(self, now: float) -> list[TopicPartition]:
        """The partitions to spread over the consumers: all but the parked ones, the paused topics' and those
        waiting out the backoff after a fault (:meth:`_waiting`)."""
        waiting = self._waiting(now)
        return [
            tp
            for tp in self._partitions
            if tp not in self._lot.parked and tp[0] not in self._paused and tp not in waiting
        ]

    def _waiting(self, now: float) -> dict[TopicPartition, float]:
        """The faulted partitions nobody holds whose backoff has not passed, each with the time it may be
        claimed again (one a consumer holds under a newer claim than its fault keeps flowing)."""
        return {tp: at for tp, at in self._lot.waiting(now).items() if tp not in self._owners}

    async def _move_to(self, target: dict[TopicPartition, str]) -> None:
        """Hand the moved partitions over: their old owners release them (best effort; concurrently across
        owners), one bulk claim per chunk (the new epochs fence the old owners whatever they do), then one
        assign per new owner (concurrently). A partition whose claim or assign fails is left unowned and
        moved again next round."""
        moved = moves(self._owners, target)
        if not moved:
            return
        await self._release_all([tp for tp in moved if self._owners.get(tp) in self._members])
        claims: list[Claim] = []
        for start in range(0, len(moved), _CLAIM_CHUNK):
            chunk = moved[start : start + _CLAIM_CHUNK]
            try:
                claims += await self._claim_all([(tp, target[tp]) for tp in chunk])
            except _CLAIM_ERRORS as exc:
                log.warning("claiming %d partitions failed (%s); retrying next round", len(chunk), exc)
        claimed = {(c.topic, c.partition) for c in claims}
        self._claimed.update({(c.topic, c.partition): c.epoch for c in claims})
        for tp in moved:
            if tp not in claimed:
                self._owners.pop(tp, None)
        await self._assign_all(claims, target)

    async def _release_all(self, partitions: list[TopicPartition]) -> None:
        """Ask each partition's current owner to flush and release it; owners work concurrently."""
        by_owner: dict[str, list[TopicPartition]] = {}
        for tp in partitions:
            by_owner.setdefault(self._owners[tp], []).append(tp)
        limit = asyncio.Semaphore(_HANDOFF_CONCURRENCY)
        timeout = self._settings.shutdown_timeout_s

        async def release(owner: str, held: list[TopicPartition]) -> None:
            async with limit:
                released = []
                for tp in held:
                    try:
                        if await self._members[owner].handle.release(*tp, timeout_s=timeout) is not None:
                            released.append(tp)
                    except Exception as exc:
                        log.warning("%s did not release %s[%d] (%s); the new epoch fences it", owner, *tp, exc)
                await self._disown_released(owner, released)

        await asyncio.gather(*(release(owner, held) for owner, held in by_owner.items()))

    async def _disown_released(self, owner: str, released: list[TopicPartition]) -> None:
        """Clear ``loom_offsets.owner`` of ``released``, partitions ``owner`` has just handed back cleanly (its
        release returned the committed offset): call it after successful releases, a batch per owner.

        Only under the epoch ``owner``'s last health report gave for the partition: a partition claimed
        again since keeps its new owner, and one not in that report (handed to ``owner`` after it) keeps
        the owner until its next claim. Best effort: the column informs the views (``no_owner``) and fences
        nothing, so a failure is logged and the round goes on.
        """
        member = self._members.get(owner)
        reported: dict[str, dict[str, int]] = {} if member is None else member.stats.get("partitions", {})
        epochs = {tp: reported[key]["epoch"] for tp in released if (key := f"{tp[0]}[{tp[1]}]") in reported}
        if not epochs:
            return
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                await offsets.disown(conn, epochs)
        except (*db.TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            log.warning(
                "cannot clear the owner of %d released partitions (%s: %s)", len(epochs), type(exc).__name__, exc
            )

    async def _claim_all(self, wanted: list[tuple[TopicPartition, str]]) -> list[Claim]:
        """Claim partitions for their new owners in one transaction (:func:`loom_ray.offsets.claim_many`)."""
        assert self._pool is not None
        latest = self._settings.kafka_auto_offset_reset == "latest"
        requests = [
            offsets.ClaimRequest(t, p, owner, latest and p in self._first_sight.get(t, ())) for (t, p), owner in wanted
        ]
        async with self._pool.acquire() as conn:
            return await offsets.claim_many(conn, requests, self._broker)

    async def _broker(self, tps: list[TopicPartition]) -> dict[TopicPartition, BrokerPartition]:
        """The partitions as the broker has them now, for a claim (a partition without watermarks left out)."""
        assert self._metadata is not None
        marks = await asyncio.to_thread(self._metadata.watermarks, tps)
        missing = len(tps) - len(marks)
        if missing:
            log.warning("no watermarks for %d of %d partitions to claim; retrying them next round", missing, len(tps))
        return {tp: BrokerPartition(low, high, self._topic_ids.get(tp[0])) for tp, (low, high) in marks.items()}

    async def _assign_all(self, claims: list[Claim], target: dict[TopicPartition, str]) -> None:
        """Hand each new owner its claims in one call; owners work concurrently."""
        by_owner: dict[str, list[Claim]] = {}
        for claim in claims:
            by_owner.setdefault(target[(claim.topic, claim.partition)], []).append(claim)
        limit = asyncio.Semaphore(_HANDOFF_CONCURRENCY)

        async def hand(owner: str, batch: list[Claim]) -> None:
            async with limit:
                try:
                    await self._members[owner].handle.assign(batch, timeout_s=self._settings.shutdown_timeout_s)
                except Exception as exc:
                    log.error("assigning %d partitions to %s failed (%s)", len(batch), owner, exc)
                    for claim in batch:
                        self._owners.pop((claim.topic, claim.partition), None)
                    return
            for claim in batch:
                self._owners[(claim.topic, claim.partition)] = owner
            self.moves += len(batch)

        await asyncio.gather(*(hand(owner, batch) for owner, batch in by_owner.items()))

    def _autoscale(self, progress: dict[TopicPartition, dict[str, int]]) -> None:
        """Follow the backlog (the seed's HPA followed CPU): up at once, down at most once per catch-up time."""
        catchup = self._settings.scale_catchup_s
        now = time.monotonic()
        previous, self._last_records = self._last_records, (now, self._records.total)
        current = len(self._members)
        if self._pinned or catchup == 0 or previous is None or current == 0:
            return
        rate = records_per_consumer(previous, self._last_records, current)
        lag = sum(row["lag"] for row in progress.values())
        want = desired_actors(current, lag, rate, catchup, self._bounds(), len(self._partitions))
        if want > current or (want < current and now - self._last_scale >= catchup):
            log.info("autoscale: %d -> %d consumers (lag %d, %.0f msg/s per consumer)", current, want, lag, rate)
            self._target = want
            self._last_scale = now

    async def _sample_lag(self, progress: dict[TopicPartition, dict[str, int]]) -> None:
        now = time.monotonic()
        if now - self._last_lag_sample < self._settings.lag_sample_interval_s:
            return
        self._last_lag_sample = now
        if self._on_lag is not None:
            self._on_lag([(t, p, row["lag"], self._owners.get((t, p))) for (t, p), row in progress.items()])
        for tp in progress:
            self._publish_parked(tp)
            self._publish_paused(tp)
        assert self._pool is not None
        await lag_history.record(
            self._pool,
            (
                (t, p, row["next_offset"], row["high_watermark"], self._owners.get((t, p)))
                for (t, p), row in progress.items()
            ),
        )
        await self._judge_lag(progress)
        await self.prune_lag_history()

    async def _judge_lag(self, progress: dict[TopicPartition, dict[str, int]]) -> None:
        """Each partition's lag health over its newest samples, right after a sample (for ``status()`` and the
        ``loom_lag_health`` gauge); ``sql/views/v_consumer_lag_health.sql`` gives the same from PostgreSQL alone.

        The windows live in memory: read from ``consumer_lag_history`` once, at the first sample (they then
        hold the samples of earlier coordinators too, their times moved onto this process's clock), and
        extended with each sample this coordinator writes, so a round reads nothing more from PostgreSQL."""
        now = time.time()
        if self._windows is None:
            assert self._pool is not None
            async with self._pool.acquire() as conn:
                found, db_now = await lag_history.windows(conn, list(progress))
            self._windows = {
                tp: deque((replace(s, sampled_at=s.sampled_at - db_now + now) for s in window), WINDOW_SAMPLES)
                for tp, window in found.items()
            }
        else:
            for tp, row in progress.items():
                window = self._windows.setdefault(tp, deque(maxlen=WINDOW_SAMPLES))
                window.append(Sample(now, row["next_offset"], row["lag"]))
        self._windows = {tp: w for tp, w in self._windows.items() if tp in progress}
        self._health = {
            tp: PartitionStatus.OK if tp[0] in self._paused else evaluate(self._windows.get(tp, ()), row["lag"], now)
            for tp, row in progress.items()
        }
        if self._on_health is not None:
            for (topic, partition), status in self._health.items():
                self._on_health(topic, partition, status)

    async def prune_lag_history(self) -> int:
        """Delete the ``consumer_lag_history`` samples older than ``LOOM_LAG_HISTORY_RETENTION_S``, at most
        once per ``_PRUNE_INTERVAL_S`` (again at the next sample while older samples remain); the rows
        deleted. Called after each lag sample. A failure (PostgreSQL out of reach, a role without DELETE on
        the table) is logged and tried again at the next interval: the samples stay, nothing else stops.
        """
        now = time.monotonic()
        if now < self._next_prune:
            return 0
        self._next_prune = now + _PRUNE_INTERVAL_S
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                deleted, finished = await lag_history.prune(
                    conn, self._settings.lag_history_retention_s, _PRUNE_BATCH_ROWS, _PRUNE_MAX_BATCHES
                )
        except (*db.TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            log.warning(
                "cannot prune consumer_lag_history (%s: %s); sql/roles/least_privilege.sql grants the DELETE it needs",
                type(exc).__name__,
                exc,
            )
            return 0
        if not finished:
            self._next_prune = now
        if deleted:
            log.info("pruned %d consumer_lag_history samples older than the retention", deleted)
        return deleted

    async def _high_watermarks(self) -> dict[TopicPartition, int]:
        """The high watermarks of the latest finished request; runs in every round, after discovery.

        When the request in flight has finished (or no answer exists yet: the first round waits for one),
        take its answer and send the next, for the partitions known then; otherwise keep the previous answer.
        So the watermarks lag the round by at most one request's time: the lag shown leaves out records
        produced since the request, and "drained" means every record the broker held when the request was
        answered was committed when the round read the offsets. A failed request (raising) fails this
        round; the next round sends a new one.
        """
        if self._highs is None:
            self._highs = self._request_highs()
        if self._marks is None or self._highs.done():
            pending, self._highs = self._highs, None
            self._marks = await pending
            self._highs = self._request_highs()
        return self._marks

    def _request_highs(self) -> asyncio.Task[dict[TopicPartition, int]]:
        assert self._metadata is not None
        return asyncio.create_task(asyncio.to_thread(self._metadata.high_watermarks, list(self._partitions)))

    async def progress(self, highs: dict[TopicPartition, int]) -> dict[TopicPartition, dict[str, int]]:
        """Per partition: committed ``next_offset`` and ``epoch`` (from PostgreSQL, read now) and the high
        watermark from ``highs`` (:meth:`_high_watermarks`); a partition that is no longer known, or whose
        watermark could not be read (or was not known when it was asked for), is left out."""
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            stored = await offsets.committed(conn, list(self._settings.kafka_topics))
        known = set(self._partitions)
        result = {}
        for tp, high in highs.items():
            if tp not in known:
                continue
            next_offset, epoch, _ = stored.get(tp, (0, 0, None))
            result[tp] = {
                "next_offset": next_offset,
                "epoch": epoch,
                "high_watermark": high,
                "lag": max(high - next_offset, 0),
            }
        return result

    async def status(self) -> dict[str, Any]:
        """A snapshot for the driver's progress and per-consumer lines, from the last round; ``database`` is
        False while PostgreSQL is out of reach. ``drained``: every partition owned and at lag 0, as read after
        this coordinator's newest claim of it (a claim that starts elsewhere, a new incarnation or a rewind, is
        not drained on offsets read before it). ``lags`` maps ``"topic[p]"`` to that partition's lag;
        ``committed`` sums the committed offsets; ``records`` counts the rows and dead letters the consumers
        committed (:class:`~loom_ray.progress.RecordTally`), as of the health check ``records_age_s`` ago.
        ``lag_health`` is the deployment's status and each partition's that is not OK, by Burrow's rules
        (:mod:`loom_ray.policy.lag_health`) as of the last lag sample. ``parked``: ``"topic[p]" -> {error,
        faults, since}`` for each parked partition (not read: ``drained`` stays false); ``pending``: the consumers
        asked for and not started yet (waiting to be placed), each with the seconds it has waited; ``waiting``: the
        faulted partitions waiting out their backoff, ``"topic[p]" -> {error, faults, claim_in_s}``;
        ``restart_in_s``: seconds until a missing consumer may start (after consumers died in a row), or 0;
        ``settled``: the last round found the consumers as the target asks (none pending) and left every
        partition that may be read where the plan puts it (``ctl resize --wait`` waits for it)."""
        reachable = self._database
        progress = self._progress
        observed = self._records.observed_at
        now = self._clock()
        missing = len(self._members) < self._target_count()
        return {
            "deployment": self.identity.deployment,
            "database": reachable,
            "actors": {name: m.stats for name, m in self._members.items()},
            "pending": {name: round(time.monotonic() - p.since, 1) for name, p in sorted(self._pending.items())},
            "blocked": self._blocked(),
            "owners": {f"{t}[{p}]": o for (t, p), o in sorted(self._owners.items())},
            "partitions": len(self._partitions),
            "assigned": len(self._owners),
            "lag": sum(row["lag"] for row in progress.values()),
            "lags": {f"{t}[{p}]": row["lag"] for (t, p), row in sorted(progress.items())},
            "committed": sum(row["next_offset"] for row in progress.values()),
            "records": self._records.total,
            "records_age_s": 0.0 if observed is None else time.monotonic() - observed,
            "drained": reachable
            and len(progress) == len(self._partitions) > 0
            and len(self._owners) == len(self._partitions)
            and all(row["lag"] == 0 and row["epoch"] >= self._claimed.get(tp, 0) for tp, row in progress.items()),
            "topic_errors": dict(self._topic_errors),
            "parked": {f"{t}[{p}]": row.as_dict() for (t, p), row in sorted(self._lot.parked.items())},
            "paused": {
                topic: {**row.as_dict(), "partitions": sum(1 for t, _ in self._partitions if t == topic)}
                for topic, row in sorted(self._paused.items())
            },
            "waiting": {
                f"{t}[{p}]": {
                    "error": self._lot.histories[(t, p)].newest.error,
                    "faults": self._lot.histories[(t, p)].count,
                    "claim_in_s": round(at - now, 1),
                }
                for (t, p), at in sorted(self._waiting(now).items())
            },
            "restart_in_s": round(max(restart_at(self._deaths) - now, 0.0), 1) if missing else 0.0,
            "lag_health": {
                "status": overall(self._health.values()).name,
                "partitions": {
                    f"{t}[{p}]": s.name for (t, p), s in sorted(self._health.items()) if s is not PartitionStatus.OK
                },
            },
            "moves": self.moves,
            "reclaims": self.reclaims,
            "target": self._target_count(),
            "settled": self._settled,
        }

    async def shutdown(self) -> None:
        """Stop every consumer, draining each (flush, commit) within ``LOOM_SHUTDOWN_TIMEOUT_S``."""
        async with self._lock:
            self._stopping = True
            timeout = self._settings.shutdown_timeout_s
            for name in list(self._pending):
                self._drop_pending(name, "stopping")
            members = list(self._members.values())
            results = await asyncio.gather(
                *(m.handle.stop(drain=True, timeout_s=timeout) for m in members), return_exceptions=True
            )
            for member, result in zip(members, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("consumer %s did not drain (%s)", member.handle.name, result)
                member.handle.kill()
            self._members.clear()
            self._owners.clear()
            if self._highs is not None:
                await asyncio.gather(self._highs, return_exceptions=True)
            if self._pool is not None:
                try:
                    async with self._pool.acquire() as conn:
                        await deployment.retire(conn, self.identity.deployment)
                except (*db.TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
                    log.warning("cannot mark this deployment stopped (%s: %s)", type(exc).__name__, exc)
                await self._pool.close()
            if self._metadata is not None:
                self._metadata.close()
