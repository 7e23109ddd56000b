"""One consumer's loop: consume the claimed partitions, decode, batch, flush exactly once.

:class:`IngestWorker` is plain asyncio (no Ray), so the consumer actor is a thin shell over it and the
benchmark can run the same code in one process. Its life: ``start()`` -> ``assign()`` claims ->
``run()`` until ``stop()``; ``release()`` hands a partition back with everything flushed.

Ordering: at most one flush runs at a time (``_flush_lock``), and a partition's batches are taken in
offset order, so each flush starts where the previous one ended, which the offset compare-and-set checks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from loom_ray import db, offsets
from loom_ray.batch import FlushLimits, PartitionBatch, Row, take_together
from loom_ray.crashpoints import crash_point
from loom_ray.decode import Rejection, capped, decode_value, sha256
from loom_ray.fields import UNSTORABLE, UnreadableHeaders, diagnose, read_headers, unencodable_headers
from loom_ray.formats.base import Codec, SchemaNotReady
from loom_ray.formats.codecs import Codecs
from loom_ray.formats.read import registry_row, routed_record
from loom_ray.formats.waits import SchemaWaits
from loom_ray.kafka.consumer import Fetched, PartitionConsumer
from loom_ray.offsets import Claim
from loom_ray.ops.reread import Rereads
from loom_ray.policy.backoff import backoff_delay
from loom_ray.policy.positions import Action, out_of_range
from loom_ray.policy.sink_errors import Blocker, Kind, Verdict, classify
from loom_ray.routes.convert import RoutedRecord, RoutePlan
from loom_ray.routes.model import Route
from loom_ray.settings import Settings
from loom_ray.sink.codecs import install_codecs, kafka_ts_micros
from loom_ray.sink.postgres import FlushResult, PostgresSink
from loom_ray.sink.routed import RouteTables

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]


class FlushObserver(Protocol):
    """Receives counts after each committed flush, each outage and each change of blocker (the actor's Ray
    metrics)."""

    def on_flush(self, result: FlushResult, seconds: float) -> None: ...
    def on_outage(self) -> None: ...
    def on_blocked(self, sqlstate: str | None) -> None: ...


@dataclass(slots=True)
class PartitionStats:
    """Cumulative counts of one partition on this worker."""

    messages: int = 0
    rows: int = 0
    dead_letters: int = 0
    batches: int = 0


@dataclass(slots=True)
class _Partition:
    claim: Claim
    committed: int  # next_offset as committed in PostgreSQL
    open: PartitionBatch  # the batch messages are added to now
    assigned: int  # IngestWorker._assignments when this claim was taken: older consume() results are stale
    route: Route | None = None  # the topic's route (LOOM_ROUTES_FILE), or None for loom_messages
    codec: Codec | None = None  # the topic's registry format (LOOM_FORMATS, a route's format), or None for json
    waiting: asyncio.Task[None] | None = None  # fetching the schema of the record at open.end: not read on
    stats: PartitionStats = field(default_factory=PartitionStats)


_FAULTS_KEPT = 100  # faults stats() reports; each carries a sequence number, so none is counted twice


@dataclass(frozen=True, slots=True)
class Fault:
    """A partition this consumer dropped because its own flush failed for a reason nobody classified (a bug
    or a broken invariant, :data:`loom_ray.policy.sink_errors.Kind.FATAL`)."""

    seq: int  # per consumer, from 1: the coordinator counts each fault once
    topic: str
    partition: int
    epoch: int
    exc: BaseException
    at: float  # epoch seconds

    @property
    def error(self) -> str:
        """The error's class and first line, e.g. ``UniqueViolationError: duplicate key value ...``."""
        first = (str(self.exc).splitlines() or [""])[0]
        return f"{type(self.exc).__name__}: {first}"[:500]

    def as_dict(self) -> dict[str, Any]:
        """Plain values for ``stats()`` (the coordinator's fault history and parking)."""
        return {
            "seq": self.seq,
            "topic": self.topic,
            "partition": self.partition,
            "epoch": self.epoch,
            "error_class": type(self.exc).__name__,
            "sqlstate": getattr(self.exc, "sqlstate", None),
            "error": self.error,
            "at": self.at,
        }


HeaderValue = str | bytes | None


def encode_headers(headers: list[tuple[str, HeaderValue]] | dict[str, HeaderValue] | None) -> str | None:
    """Kafka headers as a JSON array of [key, value]; non-UTF-8 values as {"base64": ...}."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, dict) else headers
    return orjson.dumps([[_header_text(key), _header_text(value)] for key, value in pairs]).decode("utf-8")


def _header_text(value: HeaderValue) -> str | dict[str, str] | None:
    """A header key or value as JSON text; bytes that are not UTF-8, or hold NUL (jsonb refuses
    ``\\u0000``), as ``{"base64": ...}``."""
    if value is None:
        return None
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    try:
        text: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        return {"base64": base64.b64encode(raw).decode("ascii")}
    return text


_GC_YOUNG_THRESHOLD = 20_000


def _tune_gc() -> None:
    """Make the cyclic GC cheap for the hot loop (process-wide; the worker owns its process).

    Each ``consume()`` returns thousands of GC-tracked ``Message`` objects at once, and each becomes a row
    tuple that lives until its batch is flushed. With the default young threshold (700) they are
    scanned by many young collections, survive into the old generation, and trigger full collections
    that re-scan every module, class and function: py-spy put the GC at 8-14 % of the pipeline's CPU.
    ``gc.freeze()`` moves what exists now (imports, settings, the pool) out of the collector's reach,
    and a young threshold of 20 000 lets most Messages die before a collection sees them. Measured on
    B5_1p W1: about -12 % CPU per million messages for the threshold alone. Cyclic garbage is still
    collected, just after 20 000 instead of 700 new container objects.
    """
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if 0 < young < _GC_YOUNG_THRESHOLD:  # 0 means the GC was disabled on purpose: leave it so
        gc.set_threshold(_GC_YOUNG_THRESHOLD, middle, old)


class IngestWorker:
    """Consumes claimed partitions and commits them exactly once; see the module docstring."""

    def __init__(self, settings: Settings, name: str, observer: FlushObserver | None = None) -> None:
        self.name = name
        self._settings = settings
        self._observer = observer
        self._limits = FlushLimits(settings.kafka_batch_size, settings.batch_max_bytes, settings.kafka_batch_timeout)
        self._parts: dict[TopicPartition, _Partition] = {}
        self._assignments = 0  # counts assign() calls; a consume() started before one may hold stale messages
        self._unassigning: dict[TopicPartition, asyncio.Task[None]] = {}
        self._kafka: PartitionConsumer | None = None
        self._sink: PostgresSink | None = None
        self._tables = RouteTables(settings.routes, settings.db_schema) if settings.routes.routes else None
        self._pool: Any = None
        self._flush_lock = asyncio.Lock()
        self._flush_task: asyncio.Task[None] | None = None
        self._inflight_bytes = 0
        self._paused = False
        self._stopping = asyncio.Event()
        self._mirror: dict[TopicPartition, int] = {}
        self._last_mirror = time.monotonic()
        self.fenced: list[tuple[str, int, int]] = []  # (topic, partition, epoch) of every fenced batch
        self.outages = 0
        self.blocker: Blocker | None = None  # why flushes are refused now (see loom_ray.policy.sink_errors)
        self._codecs = Codecs(settings)
        self._schema_waits = SchemaWaits(name, self._publish_blocked)
        self._blocked_sqlstate: str | None = None  # what the observer was last told blocks this consumer
        self.faults: list[Fault] = []  # the newest partitions dropped because their flush failed (a bug)
        self._fault_seq = 0
        self._rows_committed = 0  # by this worker since it started, on every partition it held
        self._dead_letters_committed = 0

    async def start(self) -> None:
        """Open the asyncpg pool and the Kafka consumer; raises if PostgreSQL cannot be reached."""
        self._pool = await db.create_pool(
            self._settings, f"loom-ray {self.name} pid={os.getpid()}", init=install_codecs
        )
        self._sink = PostgresSink(
            self._pool,
            self.name,
            self._settings.dead_letter_max_bytes,
            self._settings.audit,
            self._tables,
            Rereads(),
        )
        self._kafka = PartitionConsumer(self._settings, self.name)
        _tune_gc()

    async def assign(self, claim: Claim) -> None:
        """Take a claimed partition and read it from ``claim.next_offset``."""
        assert self._kafka is not None
        tp = (claim.topic, claim.partition)
        if tp in self._parts:
            await self._drop(tp, reason="reassigned with a newer claim")
        pending = self._unassigning.pop(tp, None)
        if pending is not None:
            await pending  # the unassign after a fence must not land after this assign
        route = self._settings.routes.route_for(claim.topic)
        batch = PartitionBatch(
            claim.topic,
            claim.partition,
            claim.epoch,
            claim.next_offset,
            incarnation=claim.incarnation,
            plan=self._plan(route),
            reread_until=claim.reread_until,
        )
        self._assignments += 1
        codec = self._codecs.for_topic(claim.topic)
        self._parts[tp] = _Partition(claim, claim.next_offset, batch, self._assignments, route, codec)
        self._mirror[tp] = claim.next_offset  # the truth as claimed, even if nothing more arrives
        await self._kafka.assign(claim.topic, claim.partition, claim.next_offset)
        log.info(
            "%s assigned %s[%d] epoch=%d incarnation=%d from offset %d",
            self.name,
            *tp,
            claim.epoch,
            claim.incarnation,
            claim.next_offset,
        )

    async def release(self, topic: str, partition: int) -> int | None:
        """Flush what is buffered for the partition, mirror its offset, then drop it; the committed offset, or None
        if a flush of it was fenced or faulted (its offset is then the one the next claim finds)."""
        part = self._parts.pop((topic, partition), None)
        if part is None:
            return None
        assert self._kafka is not None
        await self._kafka.unassign(topic, partition)
        async with self._flush_lock:  # waits for an in-flight flush that may hold this partition's batch
            claim = (topic, partition, part.claim.epoch)
            # That flush was fenced or faulted on it: the offset before the open batch was never committed.
            lost = claim in self.fenced or any((f.topic, f.partition, f.epoch) == claim for f in self.faults)
            result = await self._write_with_retry([part.open]) if part.open.advances and not lost else FlushResult()
        self._mirror.pop((topic, partition), None)  # its next owner mirrors it from now on
        if lost or result.fenced or result.faulted:
            return None
        committed = part.open.end
        await self._kafka.mirror({(topic, partition): committed})
        log.info("%s released %s[%d] at offset %d", self.name, topic, partition, committed)
        return committed

    async def run(self) -> None:
        """Consume and flush until :meth:`stop`. A flush that fails for a bug faults its partitions, not the loop
        (:meth:`_isolate_fault`); an error that escapes anyway (in the in-doubt check after an outage, or outside
        the flush) ends the loop with it, and the coordinator replaces the consumer with its restart backoff."""
        assert self._kafka is not None
        poll_s = min(0.1, self._settings.kafka_batch_timeout / 2)
        while not self._stopping.is_set():
            self._apply_backpressure()
            assignments = self._assignments
            if self._parts and not self._paused:
                fetched = await self._kafka.consume(poll_s, list(self._parts))
            else:
                fetched = Fetched()
                await asyncio.sleep(poll_s)
            now = time.monotonic()
            if fetched.messages:
                crash_point("after_poll")
                self._add_all(fetched.messages, now, assignments)
            self._advance_to_positions(fetched.positions, now, assignments)
            for tp in fetched.out_of_range:
                await self._out_of_range(tp, assignments)
            self._check_flush_task()
            if self._flush_task is None:
                due = self._take_due(now, force=False)  # while paused, every batch is due
                if due:
                    self._flush_task = asyncio.create_task(self._flush(due))
            await self._mirror_offsets(now)

    def _plan(self, route: Route | None) -> RoutePlan | None:
        """The plan a new batch of ``route``'s records is converted by (the table as known now)."""
        if route is None:
            return None
        assert self._tables is not None
        return self._tables.plan_for(route)

    def _check_flush_task(self) -> None:
        task = self._flush_task
        if task is not None and task.done():
            self._flush_task = None
            task.result()  # an error that escaped the flush ends the loop (see run())

    def _add_all(self, messages: list[Message], now: float, assignments: int) -> None:
        """Decode ``messages`` into their partitions' open batches (the hot loop: one pass, locals only).

        ``assignments`` is :attr:`_assignments` when the consume() that returned them started: a partition
        claimed since then (re-seeked, possibly backwards) ignores them, or a stale message beyond its claimed
        offset would open the batch and the re-read offsets before it would be skipped as already buffered.
        Consecutive messages usually share a partition, so the partition is looked up again only when it
        changes. Nothing a record holds escapes as an error: a field that cannot be stored makes the record a
        dead letter that names it (:meth:`_add_unstorable`, off the common path).
        """
        parts = self._parts
        max_message_bytes = self._settings.max_message_bytes
        last_tp: TopicPartition | None = None
        part: _Partition | None = None
        for message, raw_headers in zip(messages, read_headers(messages), strict=True):
            # Annotations, not cast(): a cast is a function call, per message. A consumed message has all three.
            topic: str = message.topic()  # type: ignore[assignment]
            partition: int = message.partition()  # type: ignore[assignment]
            if last_tp is None or partition != last_tp[1] or topic != last_tp[0]:
                last_tp = (topic, partition)
                part = parts.get(last_tp)
                if part is not None and (part.assigned > assignments or part.waiting is not None):
                    part = None
                incarnation = 0 if part is None else part.open.incarnation
                special = part is not None and (part.open.plan is not None or part.codec is not None)
            offset: int = message.offset()  # type: ignore[assignment]
            if part is None or offset < part.open.end:
                continue  # released partition, or a message already buffered or committed
            part.stats.messages += 1
            if special:
                if not self._add_special(part, message, offset, raw_headers, now):
                    part = None  # it waits for a schema: its next records are read again after it
                continue
            try:
                value = message.value()
                headers = encode_headers(raw_headers) if raw_headers else None
                decoded = decode_value(value, max_message_bytes)
                if isinstance(decoded, str):
                    ts_type, ts_ms = message.timestamp()
                    kafka_ts = None if ts_type == TIMESTAMP_NOT_AVAILABLE else kafka_ts_micros(ts_ms)
                    row = (topic, partition, offset, message.key(), decoded, headers, kafka_ts, incarnation, None)
                    part.open.add_row(offset, row, len(value), now)  # type: ignore[arg-type]  # decoded: not None
                else:
                    self._add_dead_letter(part, message, offset, headers, decoded, now)
            except Exception as exc:  # some field cannot be stored: the slow path finds which
                self._add_unstorable(part, message, offset, raw_headers, exc, now)

    def _add_special(self, part: _Partition, message: Message, offset: int, raw_headers: Any, now: float) -> bool:
        """A record off the default path (a routed topic, a registry format; :mod:`loom_ray.formats.read`):
        added to the batch as a row, a dead letter or an offset committed without a row, or False when its
        schema must be fetched first; the partition then waits at it (:meth:`_wait_for_schema`)."""
        batch = part.open
        found: Row | RoutedRecord | Rejection | None
        try:
            headers = encode_headers(raw_headers) if raw_headers else None
            if batch.plan is not None:
                found = routed_record(
                    batch.plan, part.codec, message, raw_headers, headers, self._settings.max_message_bytes
                )
            else:
                assert part.codec is not None
                found = registry_row(part.codec, message, headers, batch.incarnation, self._settings.max_message_bytes)
        except SchemaNotReady as pending:
            part.stats.messages -= 1  # read again once the schema is there
            self._wait_for_schema(part, pending, offset)
            return False
        except Exception as exc:  # some field cannot be stored: the slow path finds which
            self._add_unstorable(part, message, offset, raw_headers, exc, now)
            return True
        if found is None:
            batch.skip_to(offset + 1, now)
        elif isinstance(found, Rejection):
            self._add_dead_letter(part, message, offset, headers, found, now)
        else:
            value = message.value()
            batch.add_row(offset, found, 0 if value is None else len(value), now)
        return True

    def _wait_for_schema(self, part: _Partition, pending: SchemaNotReady, offset: int) -> None:
        """Stop reading ``part`` at ``offset`` until the registry gave the schema its record needs, then read it
        again from there (nothing dead-lettered, nothing skipped). A wait that fails for another reason (a bug)
        drops the partition as a fault, for the coordinator to claim again."""
        part.waiting = asyncio.get_running_loop().create_task(self._await_schema(part, pending, offset))

        def ended(task: asyncio.Task[None]) -> None:
            failed = None if task.cancelled() else task.exception()
            if isinstance(failed, Exception) and self._parts.get((part.open.topic, part.open.partition)) is part:
                self._fault(part.open, failed)

        part.waiting.add_done_callback(ended)

    async def _await_schema(self, part: _Partition, pending: SchemaNotReady, offset: int) -> None:
        assert self._kafka is not None
        tp = (part.open.topic, part.open.partition)
        await self._kafka.pause([tp])

        def held() -> bool:  # False once released, fenced or dropped
            return self._parts.get(tp) is part

        await self._schema_waits.fetch(tp, pending.codec, pending.key, pending.schema_id, offset, held)
        if not held():
            return
        self._assignments += 1  # a consume() started before the seek below may hold records past offset
        part.assigned = self._assignments
        part.waiting = None
        await self._kafka.seek(*tp, part.open.end)

    def _add_unstorable(
        self, part: _Partition, message: Message, offset: int, raw_headers: Any, exc: Exception, now: float
    ) -> None:
        """Dead-letter a record the hot loop raised on, naming the field at fault (:mod:`loom_ray.fields`)."""
        if isinstance(raw_headers, UnreadableHeaders):
            self._add_dead_letter(part, message, offset, None, raw_headers.rejection(), now)
            return
        try:
            headers = encode_headers(raw_headers) if raw_headers else None
        except Exception as err:
            self._add_dead_letter(part, message, offset, None, unencodable_headers(err), now)
            return
        rejection = diagnose(message, exc)
        if rejection.error_class == UNSTORABLE:
            batch = part.open
            log.warning(
                "%s: %s[%d] offset %d: %s", self.name, batch.topic, batch.partition, offset, rejection.error_message
            )
        self._add_dead_letter(part, message, offset, headers, rejection, now)

    def _add_dead_letter(
        self, part: _Partition, message: Message, offset: int, headers: str | None, rejection: Rejection, now: float
    ) -> None:
        value = message.value()
        size = len(value) if value is not None else 0
        dead_letter = (
            part.open.topic,
            part.open.partition,
            offset,
            message.key(),
            capped(value, self._settings.dead_letter_max_bytes),
            None if value is None else size,
            sha256(value),
            headers,
            rejection.error_class,
            rejection.error_message,
            rejection.stage,
            None,
            part.open.incarnation,
        )
        part.open.add_dead_letter(offset, dead_letter, size, now)

    def _advance_to_positions(self, positions: dict[TopicPartition, int], now: float, assignments: int) -> None:
        """Cover offsets that hold no record (transaction markers, aborted or compacted records) up to the
        consumer's position, so a partition whose last offsets hold none still reaches its high watermark."""
        for tp, position in positions.items():
            part = self._parts.get(tp)
            if part is not None and part.assigned <= assignments and part.waiting is None:
                part.open.skip_to(position, now)

    async def _out_of_range(self, tp: TopicPartition, assignments: int) -> None:
        """The broker has no record at the offset we read next: decide from its watermarks, never implicitly
        (:func:`loom_ray.policy.positions.out_of_range`).

        Below the log start (retention or DeleteRecords removed records before we read them): the skipped
        range is a gap, committed with the batch, and reading goes on from the log start. Above the high
        watermark (the topic was recreated, or its log truncated): the partition is dropped; the coordinator
        claims it again and the claim decides. Inside the log (truncated below the offset and written again
        before we looked): what is buffered is dropped (it may not be the log's any more), the new incarnation
        is recorded under this claim (:func:`loom_ray.offsets.reposition`, which fences this consumer too),
        and the partition is dropped for the coordinator to claim again there.
        """
        assert self._kafka is not None
        part = self._parts.get(tp)
        if part is None or part.assigned > assignments:
            return
        low, high = await self._kafka.watermarks(*tp)
        if self._parts.get(tp) is not part:
            return
        expected = part.open.end
        decision = out_of_range(expected, part.committed, part.open.incarnation, low, high)
        if decision.action is Action.HAND_BACK:
            log.warning(
                "%s: %s[%d] has no offset %d (high watermark %d): the topic was recreated or its log truncated; "
                "handing it back to be claimed again",
                self.name,
                *tp,
                expected,
                high,
            )
            await self._drop(tp, reason="offset above the high watermark")
            return
        if decision.action is Action.NEW_INCARNATION:
            await self._restart_incarnation(tp, part, expected, low, high)
            return
        position = decision.position
        assert position is not None
        if position.gap is not None:
            log.warning("%s: %s[%d] gap: %s", self.name, *tp, position.gap.detail)
            part.open.add_gap(position.next_offset, position.gap.reason, position.gap.detail, time.monotonic())
        self._assignments += 1
        part.assigned = self._assignments
        await self._kafka.seek(*tp, part.open.end)

    async def _restart_incarnation(
        self, tp: TopicPartition, part: _Partition, expected: int, low: int, high: int
    ) -> None:
        """Record a new incarnation of a log written again under us at its committed offset, and drop the
        partition. Under the flush lock, so that no flush of it is in flight and the committed offset is
        final; its open batch is dropped with it."""
        async with self._flush_lock:
            if self._parts.get(tp) is not part:
                return
            position = out_of_range(expected, part.committed, part.open.incarnation, low, high).position
            assert position is not None
            self._parts.pop(tp)
            async with self._pool.acquire() as conn:
                recorded = await offsets.reposition(conn, part.claim, position)
        await self._unassign_quietly(tp)
        log.warning(
            "%s: %s[%d] %s",
            self.name,
            *tp,
            position.gap.detail if recorded and position.gap is not None else "fenced while handing it back",
        )

    def _take_due(self, now: float, force: bool) -> list[PartitionBatch]:
        """Detach the batches to flush (all that advance if ``force``, else :func:`take_together`'s) and open fresh
        ones after them."""
        batches = [part.open for part in self._parts.values()]
        due = [b for b in batches if b.advances] if force else take_together(batches, self._limits, now, self._paused)
        for batch in due:
            part = self._parts[(batch.topic, batch.partition)]
            part.open = batch.after(self._plan(part.route))
        self._inflight_bytes = sum(b.held_bytes for b in due)
        return due

    async def _flush(self, batches: list[PartitionBatch]) -> None:
        async with self._flush_lock:
            await self._write_with_retry(batches)
        self._inflight_bytes = 0

    async def _write_with_retry(self, batches: list[PartitionBatch]) -> FlushResult:
        """Write until committed, fenced or faulted; never drops anything silently.

        Outages and blockers (:func:`classify`) are retried with capped, jittered backoff, each retry on
        fresh connections: a statement cached before an ALTER TABLE or a re-created table, or a connection to
        a primary demoted to standby, must not fail the retry for ever. A fatal failure (a bug or a broken
        invariant) is narrowed down to the partitions whose own flush fails (:meth:`_isolate_fault`): those
        are dropped and reported as faults, the others commit, and the consumer goes on.
        """
        assert self._sink is not None
        pending = batches
        total = FlushResult()
        attempt = 0
        while pending:
            started = time.monotonic()
            try:
                result = await self._sink.write(pending)
                pending = []
            except Exception as exc:
                verdict = classify(exc)
                if verdict.kind is Kind.FATAL:
                    result = await self._isolate_fault(pending, exc)
                    pending = []
                    self._merge(total, result)
                    continue
                delay = backoff_delay(attempt)
                self._note_failure(verdict, exc, len(pending), attempt, delay)
                await self._pool.expire_connections()
                await asyncio.sleep(delay)
                attempt += 1
                pending, result = await self._resolve(pending)
            else:
                self._note_unblocked()
            self._account(result, time.monotonic() - started)
            self._merge(total, result)
        return total

    @staticmethod
    def _merge(total: FlushResult, result: FlushResult) -> None:
        total.committed += result.committed
        total.fenced += result.fenced
        total.faulted += result.faulted
        total.rows += result.rows
        total.dead_letters += result.dead_letters

    async def _isolate_fault(self, batches: list[PartitionBatch], exc: Exception) -> FlushResult:
        """A flush failed for no reason :func:`classify` knows: find the partitions it belongs to.

        One batch: that partition faults (:meth:`_fault`). Several: each is written again in a flush of its
        own, so the partitions that are not at fault commit and the one that is faults alone; its neighbours
        never stop with it. The coordinator decides what a partition's faults mean (claim it again with
        backoff, or park it after repeated faults with the same error).
        """
        if len(batches) == 1:
            self._fault(batches[0], exc)
            return FlushResult(faulted=list(batches))
        log.warning(
            "%s: a flush of %d partitions failed (%s: %s); writing each partition alone to find the one at fault",
            self.name,
            len(batches),
            type(exc).__name__,
            exc,
        )
        total = FlushResult()
        for batch in batches:
            self._merge(total, await self._write_with_retry([batch]))
        return total

    def _fault(self, batch: PartitionBatch, exc: Exception) -> None:
        """Drop a partition whose own flush fails for a reason nobody classified, and report it (``stats()``).

        Its buffer is dropped, not lost: nothing of it committed, so the next claim reads it again."""
        tp = (batch.topic, batch.partition)
        self._fault_seq += 1
        fault = Fault(self._fault_seq, batch.topic, batch.partition, batch.epoch, exc, time.time())
        self.faults.append(fault)
        del self.faults[:-_FAULTS_KEPT]
        log.error(
            "%s: %s[%d] faulted: its flush fails on its own (%s); dropping it for the coordinator to claim again",
            self.name,
            *tp,
            fault.error,
            exc_info=exc,
        )
        part = self._parts.get(tp)
        if part is not None and part.open.epoch == batch.epoch:
            self._parts.pop(tp)
            self._unassigning[tp] = asyncio.get_running_loop().create_task(self._unassign_quietly(tp))

    async def _resolve(self, pending: list[PartitionBatch]) -> tuple[list[PartitionBatch], FlushResult]:
        """After an outage, learn from the offset rows which batches committed; the rest to retry."""
        assert self._sink is not None
        try:
            done, fenced = await self._sink.resolve(pending)
        except (*db.TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            if classify(exc).kind is Kind.FATAL:
                raise
            return pending, FlushResult()
        settled = {id(b) for b in done + fenced}
        result = FlushResult(committed=done, fenced=fenced)
        result.rows = sum(len(b.rows) for b in done)
        result.dead_letters = sum(len(b.dead_letters) for b in done)
        if done:
            log.info("%s: %d in-doubt batches had committed (offset row is the witness)", self.name, len(done))
        return [b for b in pending if id(b) not in settled], result

    def _note_failure(self, verdict: Verdict, exc: BaseException, batches: int, attempt: int, delay: float) -> None:
        """Count an outage (logged every retry), or record a blocker (logged when it starts or changes)."""
        condition = verdict.condition
        if condition is None:
            self.outages += 1
            if self._observer is not None:
                self._observer.on_outage()
            log.warning(
                "%s flush of %d batches failed (%s: %s); retry %d in %.2fs",
                self.name,
                batches,
                type(exc).__name__,
                exc,
                attempt + 1,
                delay,
            )
            return
        if self.blocker is not None and self.blocker.condition == condition:
            log.debug(
                "%s flush still blocked by SQLSTATE %s; retry %d in %.2fs",
                self.name,
                condition.sqlstate,
                attempt + 1,
                delay,
            )
            return
        self.blocker = Blocker(condition, str(exc)[:1000], time.time())
        self._publish_blocked()
        log.warning(
            "%s flushes blocked: PostgreSQL refuses them with SQLSTATE %s (%s: %s). Fix: %s. Retrying with "
            "backoff; the %d batches stay buffered",
            self.name,
            condition.sqlstate,
            condition.name,
            exc,
            condition.fix,
            batches,
        )

    def _note_unblocked(self) -> None:
        """After a write that went through: clear the blocker, if there was one."""
        blocker, self.blocker = self.blocker, None
        if blocker is None:
            return
        self._publish_blocked()
        log.info(
            "%s flushes go through again after %.0fs blocked by SQLSTATE %s (%s)",
            self.name,
            time.time() - blocker.since,
            blocker.condition.sqlstate,
            blocker.condition.name,
        )

    def _blocked(self) -> Blocker | None:
        """What blocks this consumer now: PostgreSQL refusing its flushes, else a schema its partitions wait
        for (:class:`~loom_ray.formats.waits.SchemaWaits`)."""
        return self.blocker or self._schema_waits.blocker()

    def _publish_blocked(self) -> None:
        """Tell the observer (the gauge ``ray_loom_sink_blocked``) when what blocks this consumer changed."""
        blocked = self._blocked()
        sqlstate = None if blocked is None else blocked.condition.sqlstate
        if sqlstate != self._blocked_sqlstate:
            self._blocked_sqlstate = sqlstate
            if self._observer is not None:
                self._observer.on_blocked(sqlstate)

    def _account(self, result: FlushResult, seconds: float) -> None:
        self._rows_committed += result.rows
        self._dead_letters_committed += result.dead_letters
        for batch in result.committed:
            tp = (batch.topic, batch.partition)
            part = self._parts.get(tp)
            if part is not None and part.open.epoch == batch.epoch:
                part.committed = batch.end
                part.stats.batches += 1
                part.stats.rows += len(batch.rows)
                part.stats.dead_letters += len(batch.dead_letters)
                self._mirror[tp] = batch.end  # a partition let go meanwhile is mirrored by whoever holds it
        for batch in result.fenced:
            tp = (batch.topic, batch.partition)
            self.fenced.append((batch.topic, batch.partition, batch.epoch))
            part = self._parts.get(tp)
            if part is not None and part.open.epoch == batch.epoch:
                self._parts.pop(tp)
                self._unassigning[tp] = asyncio.get_running_loop().create_task(self._unassign_quietly(tp))
            log.warning("%s fenced on %s[%d] epoch=%d: dropped its buffer", self.name, *tp, batch.epoch)
        if self._observer is not None and (result.committed or result.fenced):
            self._observer.on_flush(result, seconds)

    async def _unassign_quietly(self, tp: TopicPartition) -> None:
        """Stop fetching a partition this consumer lost, and stop mirroring its offset: a value still pending
        here may be older than what its next owner, which mirrors from its claim, has sent meanwhile."""
        assert self._kafka is not None
        self._mirror.pop(tp, None)
        with contextlib.suppress(Exception):
            await self._kafka.unassign(*tp)

    async def _drop(self, tp: TopicPartition, reason: str) -> None:
        self._parts.pop(tp, None)
        await self._unassign_quietly(tp)
        log.info("%s dropped %s[%d]: %s", self.name, *tp, reason)

    def buffered_bytes(self) -> int:
        """Bytes held in open and in-flight batches (:attr:`PartitionBatch.held_bytes`)."""
        return self._inflight_bytes + sum(p.open.held_bytes for p in self._parts.values())

    def _apply_backpressure(self) -> None:
        """Stop consuming while the buffers hold LOOM_BUFFER_MAX_BYTES, until they are below half of it.

        Not consuming is the pause: librdkafka stops fetching a partition once its prefetch queue is full
        (``queued.max.messages.kbytes``, counted in an actor's memory anyway), and keeps what it fetched, so
        the records are there the moment consuming goes on. librdkafka's own pause() would drop that queue
        and the first batch after it would wait for the fetches to refill it: PostgreSQL sat idle for
        0.3-0.7 s after each pause in a W1 drain.
        """
        held = self.buffered_bytes()
        if not self._paused and held >= self._settings.buffer_max_bytes:
            self._paused = True
            log.warning("%s buffers hold %d bytes (LOOM_BUFFER_MAX_BYTES): pausing fetch", self.name, held)
        elif self._paused and held < self._settings.buffer_max_bytes // 2:
            self._paused = False
            log.info("%s buffers drained to %d bytes: resuming fetch", self.name, held)

    async def _mirror_offsets(self, now: float, force: bool = False) -> None:
        interval = self._settings.kafka_auto_commit_interval_ms / 1000
        if self._mirror and (force or now - self._last_mirror >= interval):
            assert self._kafka is not None
            offsets, self._mirror = self._mirror, {}
            self._last_mirror = now
            await self._kafka.mirror(offsets)

    def stats(self) -> dict[str, Any]:
        """Per-partition progress and counts, for the coordinator, the dashboard and tests. ``totals``: the rows
        and dead letters this worker committed since it started, also on partitions it no longer holds (the
        coordinator's record count, :class:`loom_ray.progress.RecordTally`)."""
        return {
            "name": self.name,
            "partitions": {
                f"{t}[{p}]": {
                    "epoch": part.claim.epoch,
                    "committed": part.committed,
                    "buffered": part.open.count,
                    "messages": part.stats.messages,
                    "rows": part.stats.rows,
                    "dead_letters": part.stats.dead_letters,
                    "batches": part.stats.batches,
                    "waiting_for_schema": self._schema_waits.describe((t, p)),
                }
                for (t, p), part in sorted(self._parts.items())
            },
            "committed": {f"{t}[{p}]": part.committed for (t, p), part in self._parts.items()},
            "buffered_bytes": self.buffered_bytes(),
            "paused": self._paused,
            "fenced": len(self.fenced),
            "outages": self.outages,
            "blocked": None if (blocked := self._blocked()) is None else blocked.as_dict(),
            "faults": [fault.as_dict() for fault in self.faults],
            "totals": {"rows": self._rows_committed, "dead_letters": self._dead_letters_committed},
        }

    async def stop(self, drain: bool = True) -> None:
        """Stop consuming; with ``drain``, flush every buffer first. Then close Kafka and the pool."""
        self._stopping.set()
        for part in self._parts.values():
            if part.waiting is not None:
                part.waiting.cancel()
        if self._flush_task is not None:
            with contextlib.suppress(Exception):
                await self._flush_task
            self._flush_task = None
        if drain and self._sink is not None:
            async with self._flush_lock:
                due = self._take_due(time.monotonic(), force=True)
                if due:
                    await self._write_with_retry(due)
            await self._mirror_offsets(time.monotonic(), force=True)
        await self.close()

    async def close(self) -> None:
        """Close the Kafka consumer and the pool without flushing; idempotent."""
        if self._kafka is not None:
            await self._kafka.close()
            self._kafka = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
