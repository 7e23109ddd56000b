"""Entry point: ``python -m loom_ray.main`` (also as ``ray job submit -- python -m loom_ray.main``).

Start-up, in order, each failing with a message that says what to change: settings from ``LOOM_*``;
PostgreSQL reachable, migrations applied, connection capacity; the topics exist; Ray joined (``RAY_ADDRESS``
or ``--address``) or started locally; the coordinator created or rejoined by name. Then it prints progress
(a line for the deployment and one per consumer actor, which the Ray dashboard's Jobs page shows as the job's log)
until SIGTERM/SIGINT (or, with ``--exit-when-drained``, until every partition's committed offset reaches its
high watermark), drains within ``LOOM_SHUTDOWN_TIMEOUT_S`` and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

import asyncpg
from confluent_kafka import KafkaException

from loom_ray import db, deployment
from loom_ray.driver_log import LogCap
from loom_ray.errors import ConfigError, CoordinatorGoneError, RayUnreachableError, ServiceUnavailableError
from loom_ray.kafka.admin import KafkaMetadata, explain, unreachable
from loom_ray.migrate import migrate
from loom_ray.policy.backoff import backoff_delay
from loom_ray.progress import MIN_RATE_WINDOW_S, ConsumerLines, IngestWindow
from loom_ray.routes.fit import upsert_order_warnings
from loom_ray.routes.tables import prepare_tables, route_counts, summary_lines
from loom_ray.settings import SECRET_FIELDS, Settings, env_name
from loom_ray.sink.routed import RouteCounts

log = logging.getLogger("loom_ray.main")

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
EXIT_COORDINATOR_GONE = 4

# The custom resource kuberay/raycluster.yaml gives the head node only. A fraction of it pins the
# coordinator to the head without limiting how many coordinators (one per LOOM_RAY_NAMESPACE) fit there.
COORDINATOR_RESOURCE = "loom_coordinator"
COORDINATOR_REQUEST = 0.001


def variables_help() -> str:
    """The ``LOOM_*`` variables with defaults and meanings, for ``--help``."""
    lines = ["environment variables (all optional):"]
    for name, field in Settings.model_fields.items():
        default = "(secret)" if name in SECRET_FIELDS else field.default
        if isinstance(default, tuple):
            default = ",".join(default)
        lines.append(f"  {env_name(name):<34} {field.description} [default: {default}]")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loom_ray.main",
        description="Ingest Kafka topics into PostgreSQL exactly once, on a Ray cluster.",
        epilog=variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--exit-when-drained",
        action="store_true",
        help="stop once every partition's committed offset reaches its high watermark, and print a summary",
    )
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start a local Ray)")
    parser.add_argument(
        "--actors", type=int, help="pin the number of consumer actors (turns autoscaling off; see LOOM_SCALE_CATCHUP_S)"
    )
    parser.add_argument("--progress-interval", type=float, default=5.0, help="seconds between progress lines")
    parser.add_argument("--log-level", default="INFO", help="logging level of the driver (default INFO)")
    return parser.parse_args(argv)


@dataclass(frozen=True, slots=True)
class Counts:
    """Totals in PostgreSQL for the configured topics."""

    committed: int
    rows: int
    dead_letters: int
    gap_offsets: int = 0  # offsets of recorded gaps (loom_gaps) with a known end
    routes: dict[str, RouteCounts] | None = None  # per route (LOOM_ROUTES_FILE); rows includes what they applied


async def prepare(settings: Settings) -> tuple[Settings, Counts]:
    """Migrate, prepare the routes' tables, check capacity, register the deployment (refused while another
    live one ingests one of its topics here); return the settings with the routes' tables as the catalog has
    them (what the consumers convert records for) and the counts before this run."""
    conn = await db.connect(settings, f"loom-driver pid={os.getpid()}")
    try:
        await migrate(conn, schema=settings.db_schema)
        tables = await prepare_tables(conn, settings.routes, settings.db_schema)
        await db.check_capacity(conn, settings)
        settings = settings.with_route_tables(tables)
        await deployment.register(conn, deployment.identity_of(settings), settings.kafka_session_timeout_ms / 1000)
        return settings, await counts(conn, settings)
    finally:
        await conn.close()


async def counts(conn: asyncpg.Connection, settings: Settings) -> Counts:
    topics = list(settings.kafka_topics)
    row = await conn.fetchrow(
        """SELECT (SELECT coalesce(sum(next_offset), 0) FROM loom_offsets WHERE topic = ANY($1)) AS committed,
                  (SELECT count(*) FROM loom_messages WHERE topic = ANY($1)) AS rows,
                  (SELECT count(*) FROM loom_dead_letters WHERE topic = ANY($1) AND resolved_at IS NULL)
                      AS dead_letters,
                  (SELECT coalesce(sum(to_offset - from_offset), 0) FROM loom_gaps WHERE topic = ANY($1))
                      AS gap_offsets""",
        topics,
    )
    assert row is not None
    routes = await route_counts(conn, topics) if settings.routes.routes else None
    routed = sum(c.records for c in routes.values()) if routes else 0
    return Counts(
        int(row["committed"]), int(row["rows"]) + routed, int(row["dead_letters"]), int(row["gap_offsets"]), routes
    )


async def final_counts(settings: Settings) -> Counts:
    conn = await db.connect(settings, f"loom-driver pid={os.getpid()}")
    try:
        return await counts(conn, settings)
    finally:
        await conn.close()


def check_topics(settings: Settings) -> dict[str, int]:
    """Each topic's partition count. Raises ConfigError naming a missing topic or refused credentials, and
    ServiceUnavailableError when no broker answered."""
    metadata = KafkaMetadata(settings)
    try:
        found = metadata.partitions()
    except KafkaException as exc:
        message = explain(exc, metadata.errors, settings.kafka_bootstrap_servers)
        raise (ServiceUnavailableError if unreachable(exc, metadata.errors) else ConfigError)(message) from None
    finally:
        metadata.close()
    return {topic: sum(1 for t, _ in found if t == topic) for topic in settings.kafka_topics}


T = TypeVar("T")
_WAITED_FOR: tuple[type[BaseException], ...] = (*db.TRANSIENT_ERRORS, ServiceUnavailableError)


def waiting(what: str, attempt: Callable[[], T], settings: Settings, stop: Stop) -> T:
    """``attempt()`` until it returns, retrying with capped backoff while ``what`` does not answer (an outage
    of PostgreSQL, no broker), for up to LOOM_STARTUP_TIMEOUT_S; then the last failure is raised (exit 3).
    Anything else it raises (bad configuration) is raised at once; a stop asked meanwhile raises
    :class:`StoppedAtStart`."""
    deadline = time.monotonic() + settings.startup_timeout_s
    tries = 0
    while True:
        if stop.requested:
            raise StoppedAtStart(what)
        try:
            return attempt()
        except _WAITED_FOR as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceUnavailableError(f"{what} did not answer within LOOM_STARTUP_TIMEOUT_S: {exc}") from exc
            delay = min(backoff_delay(tries, base_s=1.0, cap_s=30.0), left)
            tries += 1
            log.warning("%s does not answer (%s: %s); retrying in %.0fs", what, type(exc).__name__, exc, delay)
            sleep_until = time.monotonic() + delay
            while not stop.requested and time.monotonic() < sleep_until:
                time.sleep(0.2)


def warn_upsert_order(settings: Settings, partitions: dict[str, int]) -> None:
    """Log a warning for each upsert route whose records of one key may arrive out of order and that names
    no version (:func:`loom_ray.routes.fit.upsert_order_warnings`)."""
    for route in settings.routes.routes:
        for warning in upsert_order_warnings(route, partitions, settings.kafka_topics):
            log.warning("%s", warning)


def connect_ray(settings: Settings, address: str | None) -> None:
    """Join a running Ray (``--address`` or ``RAY_ADDRESS``) or start a local one sized for the actors.

    Raises :class:`RayUnreachableError` when the given cluster does not answer.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, namespace=settings.ray_namespace)
        except ConnectionError as exc:
            raise RayUnreachableError(f"Ray at {address} unreachable: {exc}; check --address or RAY_ADDRESS") from exc
        return
    # Logical CPUs: enough for every consumer, even on a small machine (they mostly wait on I/O).
    cpus = max(os.cpu_count() or 1, int(settings.max_actors * settings.actor_num_cpus) + 1)
    memory = settings.max_actors * settings.actor_memory_bytes + 2 * 1024**3
    ray.init(
        address="local",
        namespace=settings.ray_namespace,
        num_cpus=cpus,
        _memory=memory,
        object_store_memory=200 * 1024**2,
        include_dashboard=os.environ.get("LOOM_RAY_DASHBOARD", "1") == "1",
    )


def coordinator_placement(cluster_resources: dict[str, float]) -> dict[str, Any]:
    """Ray options that place the coordinator actor, given ``ray.cluster_resources()`` at start.

    On a cluster whose head offers :data:`COORDINATOR_RESOURCE` (KubeRay, ``kuberay/raycluster.yaml``) the
    coordinator asks for a share of it, so it always runs on the head and no consumer pod's eviction takes it
    along. Elsewhere (a local Ray, ``ray start --head`` without it) it asks for nothing extra: requesting a
    resource no node has would leave it pending for ever.
    """
    if cluster_resources.get(COORDINATOR_RESOURCE, 0) > 0:
        return {"resources": {COORDINATOR_RESOURCE: COORDINATOR_REQUEST}}
    return {}


class Stop:
    """Set by SIGTERM/SIGINT, from the driver's first moment on; the driver then drains and exits."""

    def __init__(self) -> None:
        self.requested = False
        self.install()

    def install(self) -> None:
        """Handle SIGTERM and SIGINT here (again after ``ray.init``, which sets its own SIGTERM handler)."""
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        self.requested = True


class StoppedAtStart(Exception):
    """SIGTERM arrived while the driver waited for PostgreSQL or Kafka at start: nothing was started."""


def run(settings: Settings, args: argparse.Namespace, stop: Stop) -> int:
    """Start or rejoin the coordinator, watch it until stopped or drained, drain, print the summary. A SIGTERM
    during the start still drains this deployment's coordinator if one runs (stopping the deployment stops
    ingestion, whenever the stop comes)."""
    import ray

    settings, before = waiting("PostgreSQL", lambda: asyncio.run(prepare(settings)), settings, stop)
    partitions = waiting("Kafka", lambda: check_topics(settings), settings, stop)
    log.info("driver pid=%d of deployment %s; settings: %s", os.getpid(), settings.deployment_name, settings.summary())
    log.info("%d partitions in %s", sum(partitions.values()), ",".join(settings.kafka_topics))
    warn_upsert_order(settings, partitions)
    connect_ray(settings, args.address)
    stop.install()
    gcs = ray.get_runtime_context().gcs_address
    log.info("Ray at %s: python -m loom_ray.ctl --address %s status|resize N|unpark", gcs, gcs)
    token = uuid.uuid4().hex
    coordinator = join_or_create(settings, token, stop)
    if coordinator is None:
        return 0  # stopped before there was a coordinator to drain
    if args.actors:
        ray.get(coordinator.resize.remote(args.actors))
    started = time.monotonic()
    cap = LogCap.of(sys.stdout.fileno(), settings.driver_log_max_bytes)
    window = watch(coordinator, args, before, stop, started, token, cap)
    drain(coordinator, settings, token)
    after = asyncio.run(final_counts(settings))
    print(summary(before, after, time.monotonic() - started, window), flush=True)
    for line in summary_lines(settings.routes, before.routes or {}, after.routes or {}):
        print(line, flush=True)
    return 0


def join_or_create(settings: Settings, token: str, stop: Stop) -> Any:
    """The coordinator of this deployment, attached to with ``token``: created, or joined when one of the same
    identity runs (:func:`loom_ray.deployment.compare`). One of this deployment with other settings is drained
    and replaced, saying so; one being stopped by a previous driver is waited for, then created again.
    Raises :class:`ConfigError` for one of this name on another database or schema. None if stopped (SIGTERM)
    while waiting."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    from actors.coordinator import CoordinatorActor, coordinator_name

    ours = deployment.identity_of(settings)
    name = coordinator_name(ours.deployment)
    placement = coordinator_placement(ray.cluster_resources())  # type: ignore[no-untyped-call]
    waiting_noted = False
    while True:
        if stop.requested:
            return _to_drain(name, settings, token)
        coordinator = CoordinatorActor.options(  # type: ignore[attr-defined]
            name=name, namespace=settings.ray_namespace, lifetime="detached", get_if_exists=True, **placement
        ).remote(settings)
        try:
            found = ray.get(coordinator.identity.remote(), timeout=60)
            theirs = deployment.Identity.from_dict(found)
            verdict = deployment.compare(ours, theirs)
            if verdict is deployment.Verdict.REFUSE:
                raise ConfigError(
                    f"a coordinator named {name} runs on this Ray cluster for {theirs.describe()}, and this driver "
                    f"is for {ours.describe()}: set LOOM_DEPLOYMENT to another name"
                )
            if not found["stopping"] and verdict is deployment.Verdict.REPLACE:
                log.warning(
                    "deployment %s runs with other settings (%s, settings %s; now %s, settings %s): draining its "
                    "coordinator and starting one with these",
                    ours.deployment,
                    theirs.describe(),
                    theirs.fingerprint,
                    ours.describe(),
                    ours.fingerprint,
                )
                ray.get(coordinator.shutdown.remote(None), timeout=settings.shutdown_timeout_s + 5)
                ray.kill(coordinator, no_restart=True)
                continue
            if not found["stopping"] and ray.get(coordinator.attach.remote(token), timeout=60):
                log.info("coordinator %s attached", name)
                return coordinator
            if not waiting_noted:
                log.warning("coordinator %s is being stopped by a previous driver; waiting for it to end", name)
                waiting_noted = True
        except (GetTimeoutError, RayActorError) as exc:
            log.warning("coordinator %s does not answer (%s); trying again", name, type(exc).__name__)
        time.sleep(1.0)


def _to_drain(name: str, settings: Settings, token: str) -> Any:
    """On a stop before the driver attached: the deployment's coordinator, if one runs and is not being stopped,
    attached to so that the caller drains it; else None."""
    import ray

    try:
        coordinator = ray.get_actor(name, namespace=settings.ray_namespace)
        return coordinator if ray.get(coordinator.attach.remote(token), timeout=60) else None
    except Exception:  # none runs, or it is going away: nothing to drain
        return None


def watch(
    coordinator: Any,
    args: argparse.Namespace,
    before: Counts,
    stop: Stop,
    started: float,
    token: str,
    cap: LogCap | None = None,
) -> IngestWindow:
    """Print progress until a signal (or the drain, with --exit-when-drained); the samples of records committed.

    Every ``--progress-interval`` seconds: one progress line for the deployment, then one line per consumer
    actor (:class:`~loom_ray.progress.ConsumerLines`). Under ``ray job submit`` they are the job's log, which
    the Ray dashboard's Jobs page shows; ``cap`` keeps that file bounded (:mod:`loom_ray.driver_log`).
    """
    import ray
    from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayTaskError

    window = IngestWindow()
    consumers = ConsumerLines()
    printed: tuple[float, int] | None = None  # (when, records processed) at the last progress line
    while not stop.requested:
        try:
            status = ray.get(coordinator.status.remote(token), timeout=60)
        except ActorDiedError as exc:
            raise CoordinatorGoneError(
                "the coordinator was stopped by someone else (python -m loom_ray.ctl stop, or a driver that "
                f"replaced it): this driver ends ({exc.__class__.__name__})"
            ) from None
        except (GetTimeoutError, RayActorError, RayTaskError) as exc:
            log.warning("coordinator not answering (%s); waiting", type(exc).__name__)
            time.sleep(1)
            continue
        now = time.monotonic()
        window.observe(now - status["records_age_s"], status["records"])
        if printed is None or now - printed[0] >= args.progress_interval:
            since, records_then = printed if printed is not None else (started, 0)
            rate = (window.processed - records_then) / max(now - since, 1e-9)
            offsets = status["committed"] - before.committed
            line = progress_line(status, window.processed, (rate, now - since), offsets, now - started)
            notes = blocked_note(status.get("blocked", {}), time.time()) + fault_note(status) + paused_note(status)
            print(line + notes, flush=True)
            for consumer_line in consumers.lines(status, now):
                print(consumer_line, flush=True)
            printed = (now, window.processed)
            if cap is not None:
                cap.check()
        if args.exit_when_drained and status["drained"]:
            log.info("all partitions drained")
            break
        time.sleep(1.0)
    return window


def progress_line(status: dict[str, Any], records: int, rate: tuple[float, float], offsets: int, elapsed: float) -> str:
    """One progress line: records processed (rows + dead letters, as the consumers report them) since the
    driver started, their ``rate`` (msg/s, over seconds) since the previous line, how far the committed
    offsets moved, and the lag."""
    pending = status.get("pending", {})
    waiting = (
        f", {len(pending)} actors pending (waiting {max(pending.values()):.0f}s for a node to place them on)"
        if pending
        else ""
    )
    return (
        f"progress: {records} messages in {elapsed:.0f}s ({rate[0]:.0f} msg/s over the last {rate[1]:.0f}s), "
        f"offsets advanced {offsets}, "
        f"lag {status['lag']}, {len(status['actors'])} actors{waiting}, {status['assigned']}/{status['partitions']} "
        "partitions assigned" + ("" if status["database"] else ", PostgreSQL unreachable: retrying")
    )


def blocked_note(blocked: dict[str, dict[str, Any]], now: float) -> str:
    """The progress line's words on what holds consumers back (``consumer -> Blocker.as_dict()``; ``now`` in
    epoch seconds): flushes PostgreSQL refuses and reads waiting for a schema, per SQLSTATE, how many actors,
    for how long, the first line of the message and the fix."""
    by_sqlstate: dict[str, list[dict[str, Any]]] = {}
    for blocker in blocked.values():
        by_sqlstate.setdefault(blocker["sqlstate"], []).append(blocker)
    notes = []
    for sqlstate, group in sorted(by_sqlstate.items()):
        first = min(group, key=lambda b: float(b["since"]))
        message = (first["message"].splitlines() or [""])[0]
        notes.append(
            f", {first['waiting']} of {len(group)} actors blocked for {now - first['since']:.0f}s "
            f"by SQLSTATE {sqlstate} ({first['condition']}: {message}); fix: {first['fix']}"
        )
    return "".join(notes)


# Parked partitions named on the progress line (each with its error); beyond them only the count.
PARKED_LISTED = 3


def fault_note(status: dict[str, Any]) -> str:
    """The progress line's words on crash-loop containment (:mod:`loom_ray.policy.parking`), from the
    coordinator's ``status()``: the parked partitions, each with its error, and the command that reads them
    again once the cause is fixed (they are why the job is not drained); the faulted partitions waiting to be
    claimed again; how long a consumer restart still backs off."""
    notes = []
    parked: dict[str, dict[str, Any]] = status.get("parked", {})
    if parked:
        keys = sorted(parked)
        listed = "; ".join(f"{key}: {parked[key]['error']}" for key in keys[:PARKED_LISTED])
        more = f"; … (+{len(keys) - PARKED_LISTED})" if len(keys) > PARKED_LISTED else ""
        which = " ".join(keys) if len(keys) <= PARKED_LISTED else "--all"
        notes.append(
            f", {len(keys)} partitions parked ({listed}{more}); "
            f"fix the cause, then python -m loom_ray.ctl unpark {which}"
        )
    waiting: dict[str, dict[str, Any]] = status.get("waiting", {})
    if waiting:
        listed = ", ".join(f"{key} in {row['claim_in_s']:.0f}s" for key, row in sorted(waiting.items()))
        notes.append(f", {len(waiting)} faulted partitions wait to be claimed again ({listed})")
    if status.get("restart_in_s", 0) > 0:
        notes.append(f", consumers died in a row: the next one starts in {status['restart_in_s']:.0f}s")
    return "".join(notes)


def paused_note(status: dict[str, Any]) -> str:
    """The progress line's words on topics paused with ``python -m loom_ray.ctl pause`` (their partitions are not
    read: the job is not drained while they are), and the command that reads them again."""
    paused: dict[str, dict[str, Any]] = status.get("paused", {})
    if not paused:
        return ""
    partitions = sum(row["partitions"] for row in paused.values())
    listed = ", ".join(f"{topic} by {row['by']}" for topic, row in sorted(paused.items()))
    which = " ".join(f"--topic {topic}" for topic in sorted(paused))
    return f", {partitions} partitions paused ({listed}); python -m loom_ray.ctl resume {which}"


def drain(coordinator: Any, settings: Settings, token: str) -> None:
    """Ask the coordinator to drain every consumer, then remove it (it is detached); only if this driver still
    owns it (``token``): one that a newer driver took over is left running."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    try:
        if not ray.get(coordinator.shutdown.remote(token), timeout=settings.shutdown_timeout_s + 5):
            log.warning("another driver took this deployment's coordinator over: leaving it running")
            return
    except (GetTimeoutError, RayActorError, RayTaskError) as exc:
        log.warning("coordinator did not drain in time (%s)", type(exc).__name__)
    ray.kill(coordinator, no_restart=True)


def summary(before: Counts, after: Counts, seconds: float, window: IngestWindow) -> str:
    """The closing line; README's *Running it* says what each figure measures.

    ``messages`` are the rows plus dead letters this run added (PostgreSQL, before and after); ``offsets``
    is how far the committed offsets moved, records or not; ``gap_offsets`` how many of them were recorded as
    skipped (loom_gaps) during the run. ``ingest_msgs_per_s`` is the consumers' rate
    between the first and the last progress sample that saw records committed, printed only when that
    window (``ingest_window_s``) reaches :data:`~loom_ray.progress.MIN_RATE_WINDOW_S`.
    """
    rows = after.rows - before.rows
    dead_letters = after.dead_letters - before.dead_letters
    messages = rows + dead_letters
    rate = window.rate()
    ingest = (
        f"ingest_msgs_per_s={rate:.0f} ingest_window_s={window.seconds:.1f}"
        if rate is not None
        else f"ingest_msgs_per_s=n/a ingest_window_s={window.seconds:.1f} "
        f"(records were committed over less than {MIN_RATE_WINDOW_S:.0f}s: too short to measure a rate)"
    )
    return (
        f"summary: messages={messages} rows={rows} dead_letters={dead_letters} "
        f"offsets={after.committed - before.committed} gap_offsets={after.gap_offsets - before.gap_offsets} "
        f"seconds={seconds:.1f} "
        f"msgs_per_s={messages / max(seconds, 1e-9):.0f} {ingest}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = Stop()
    try:
        settings = Settings.from_env()
        return run(settings, args, stop)
    except StoppedAtStart as exc:
        log.info("stopped while waiting for %s at start: nothing was started", exc)
        return 0
    except ConfigError as exc:
        print(f"loom-ray: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (RayUnreachableError, ServiceUnavailableError) as exc:
        print(f"loom-ray: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except CoordinatorGoneError as exc:
        print(f"loom-ray: {exc}", file=sys.stderr)
        return EXIT_COORDINATOR_GONE
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"loom-ray: PostgreSQL unavailable: {type(exc).__name__}: {exc}; check LOOM_DB_DSN", file=sys.stderr)
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    raise SystemExit(main())
