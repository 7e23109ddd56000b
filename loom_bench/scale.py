"""``python -m loom_bench.scale``: the real Coordinator at N partitions and M in-process handles.

For each N in ``--partitions``: create N partitions over topics of ``--per-topic`` partitions, migrate a
schema of its own (dropped and created again, so runs repeat), start a :class:`~loom_ray.coordinator.
Coordinator` with ``--handles`` :class:`~loom_bench.scale_probes.FakeConsumer` handles pinned by
``resize()``, and time ``reconcile()`` rounds: to the first full assignment, steady rounds (lag sampled in
every one), reclaiming a dead handle's partitions, and a resize 3 -> 10 -> 3 after which every partition
is held by exactly one handle. Counts Kafka admin requests and PostgreSQL statements per round, and the RSS
of this process (the coordinator's). ``--handle-kind ray`` puts the handles in ``num_cpus=0`` Ray actors of
a local Ray (:mod:`loom_bench.scale_ray`). Then, unless ``--throughput ''``, drains W1 with the real pipeline
at each of ``--throughput``'s partition counts (:mod:`loom_bench.scale_throughput`), and renders the PNGs
(:mod:`loom_bench.scale_plots`). Needs ``LOOM_KAFKA_BOOTSTRAP_SERVERS`` and ``LOOM_DB_DSN``; writes
``<output-dir>/scale-YYYY-MM-DD.json`` and prints a markdown table. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import json
import logging
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psutil
import ray
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.cimpl import NewTopic

from loom_bench import machine, scale_plots, scale_throughput
from loom_bench.launch import ROOT
from loom_bench.scale_probes import Counts, FakeConsumer, Fleet, instrument
from loom_bench.scale_ray import RayFakeConsumer
from loom_ray import db
from loom_ray.coordinator import Coordinator
from loom_ray.migrate import migrate
from loom_ray.settings import Settings

log = logging.getLogger("loom_bench.scale")

SCHEMA = "bench_scale"
# Issue 12's targets: (result key, limit, what it is).
TARGETS = {
    "first_assignment_s": (30.0, "first full assignment <= 30 s (at 10,000 partitions)"),
    "round_max_s": (1.0, "steady round <= 1 s"),
    "reclaim_s": (5.0, "reclaim of a dead handle's partitions <= 5 s"),
}
_CREATE_BATCH = 2000  # partitions per create_topics request
_START_POLL_S = 0.1  # between rounds while consumers start
_START_LIMIT_S = 120.0  # how long consumers may take to start
_ROUND_LIMIT = 200  # rounds allowed for one phase to converge before the run fails


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loom_bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--partitions", default="500,2000,10000", help="comma-separated partition counts N")
    parser.add_argument("--per-topic", type=int, default=100, help="partitions per topic")
    parser.add_argument("--handles", type=int, default=200, help="consumer handles M (resize target)")
    parser.add_argument(
        "--handle-kind", choices=["local", "ray"], default="local", help="in-process handles, or num_cpus=0 Ray actors"
    )
    parser.add_argument("--rounds", type=int, default=10, help="steady rounds timed after the first assignment")
    parser.add_argument("--lag-sample-interval", type=float, default=0.001, help="LOOM_LAG_SAMPLE_INTERVAL_S")
    parser.add_argument("--topic-prefix", default="loom-scale", help="a run id is appended")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete the topics at the end")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "bench-results")
    parser.add_argument(
        "--throughput",
        default="8,32,128,256",
        help="partition counts of the W1 drains with the real pipeline (comma-separated; '' skips them)",
    )
    parser.add_argument("--throughput-messages", type=int, default=1_000_000, help="W1 messages per drain")
    parser.add_argument("--plot", type=Path, metavar="JSON", help="only render the PNGs of a results file")
    return parser.parse_args(argv)


def topic_layout(partitions: int, per_topic: int) -> list[int]:
    """Partition counts of the topics holding ``partitions``: full topics of ``per_topic``, then the rest."""
    full, rest = divmod(partitions, per_topic)
    return [per_topic] * full + ([rest] if rest else [])


def create_topics(admin: AdminClient, names: dict[str, int], timeout_s: float = 300.0) -> float:
    """Create the topics (name -> partitions), _CREATE_BATCH partitions per request at most (a KRaft
    controller refuses a request of more than 10,000 records), waiting for each; seconds taken. Raises
    what the broker says."""
    started = time.monotonic()
    batch: list[NewTopic] = []
    for name, count in names.items():
        if batch and sum(t.num_partitions for t in batch) + count > _CREATE_BATCH:
            _create(admin, batch, timeout_s)
            batch = []
        batch.append(NewTopic(name, count, 1))
    _create(admin, batch, timeout_s)
    return time.monotonic() - started


def _create(admin: AdminClient, topics: list[NewTopic], timeout_s: float) -> None:
    for future in admin.create_topics(topics, request_timeout=timeout_s).values():
        future.result(timeout=timeout_s)


def wait_leaders(names: dict[str, int], timeout_s: float = 600.0) -> float:
    """Wait until every partition of the new topics answers a list_offsets (a just-created partition answers
    NOT_LEADER_FOR_PARTITION for a while), asking with a fresh client each time (the client that created
    the topics kept failing every partition); seconds taken. Raises TimeoutError after ``timeout_s``."""
    started = time.monotonic()
    pending = [TopicPartition(name, p) for name, count in names.items() for p in range(count)]
    while pending:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{len(pending)} partitions have no leader after {timeout_s:.0f} s")
        admin = AdminClient({"bootstrap.servers": os.environ["LOOM_KAFKA_BOOTSTRAP_SERVERS"]})
        futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in pending}, request_timeout=30)  # type: ignore[no-untyped-call]
        pending = [tp for tp, future in futures.items() if _failed(future)]
        if pending:
            time.sleep(0.5)
    return time.monotonic() - started


def _failed(future: Future[Any]) -> bool:
    try:
        future.result()
    except KafkaException:
        return True
    return False


def delete_topics(admin: AdminClient, names: list[str], timeout_s: float = 300.0) -> None:
    """Delete the topics; a failure is logged (the run's results stand)."""
    if not names:
        return
    for name, future in admin.delete_topics(names, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:
            log.warning("could not delete topic %s: %s", name, exc)


async def reset_schema(settings: Settings) -> None:
    """Drop the benchmark's schema and migrate it again from nothing."""
    conn = await db.connect(settings, f"loom-bench-scale pid={os.getpid()}")
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {db.quoted_schema(settings)} CASCADE")
        await migrate(conn, schema=settings.db_schema)
    finally:
        await conn.close()


def bench_settings(args: argparse.Namespace, topics: list[str], run: str) -> Settings:
    """Settings for one size: its topics, a group and schema of its own, pinned scaling, lag every round."""
    return Settings.from_env(
        kafka_topics=tuple(topics),
        kafka_group_id=f"{args.topic_prefix}-{run}",
        db_schema=SCHEMA,
        lag_sample_interval_s=args.lag_sample_interval,
        min_actors=1,
        max_actors=max(args.handles, 10),
        scale_catchup_s=0.0,
    )


class Timer:
    """Times reconcile rounds of one coordinator and the requests each made."""

    def __init__(self, coordinator: Coordinator, counts: Counts) -> None:
        self.coordinator = coordinator
        self.counts = counts

    async def round(self, call: Callable[[], Awaitable[Any]] | None = None) -> dict[str, float]:
        """One timed round (``reconcile()``, or ``call``): seconds and the requests made, per kind."""
        before = self.counts.snapshot()
        started = time.monotonic()
        await (call or self.coordinator.reconcile)()
        seconds = time.monotonic() - started
        after = self.counts.snapshot()
        return {"s": seconds, **{k: after[k] - before.get(k, 0) for k in after}}

    async def until(
        self, done: Callable[[dict[str, Any]], bool], first: Callable[[], Awaitable[Any]] | None = None
    ) -> tuple[float, int]:
        """Rounds (the first one ``first`` if given) until ``done(status)``; seconds and rounds. While consumers
        are starting (pending) the rounds are spaced by _START_POLL_S, as the coordinator's own loop spaces them,
        for up to _START_LIMIT_S. Raises RuntimeError when it does not converge within _ROUND_LIMIT other rounds."""
        started = time.monotonic()
        rounds = idle = 0
        while idle < _ROUND_LIMIT:
            rounds += 1
            await self.round(first if rounds == 1 else None)
            status = await self.coordinator.status()
            if done(status):
                return time.monotonic() - started, rounds
            if status["pending"] and time.monotonic() - started < _START_LIMIT_S:
                await asyncio.sleep(_START_POLL_S)
            else:
                idle += 1
        raise RuntimeError(f"no convergence in {_ROUND_LIMIT} rounds: {await self.coordinator.status()}")


def fully_owned(status: dict[str, Any]) -> bool:
    """Every partition the coordinator knows has an owner."""
    return bool(status["partitions"]) and status["assigned"] == status["partitions"]


def settled(status: dict[str, Any]) -> bool:
    """Every partition owned, and by as many consumers as the target (none still starting)."""
    return fully_owned(status) and bool(status["settled"])


def rss_mb() -> float:
    """This process's resident memory, MiB."""
    rss: int = psutil.Process().memory_info().rss
    return round(rss / 2**20, 1)


async def measure_size(args: argparse.Namespace, admin: AdminClient, partitions: int, run: str) -> dict[str, Any]:
    """Create N partitions, run every phase, delete the topics; the results of this size."""
    layout = topic_layout(partitions, args.per_topic)
    names = {f"{args.topic_prefix}-{run}-n{partitions}-{i:03d}": count for i, count in enumerate(layout)}
    result: dict[str, Any] = {"partitions": partitions, "topics": len(names), "handles": args.handles}
    result["topic_create_s"] = round(create_topics(admin, names), 2)
    try:
        result["topic_leaders_s"] = round(wait_leaders(names), 2)
        settings = bench_settings(args, list(names), run)
        await reset_schema(settings)
        result.update(await run_phases(args, settings))
    finally:
        if not args.keep_topics:
            delete_topics(admin, list(names))
    return result


async def run_phases(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """First assignment, steady rounds, reclaim, resize, against one started coordinator."""
    fleet, counts = Fleet(RayFakeConsumer if args.handle_kind == "ray" else FakeConsumer), Counts()
    coordinator = Coordinator(settings, fleet)
    await coordinator.start()
    await instrument(coordinator, counts)
    timer = Timer(coordinator, counts)
    result: dict[str, Any] = {"rss_mb_start": rss_mb()}
    try:
        before = counts.snapshot()
        seconds, rounds = await timer.until(settled, lambda: coordinator.resize(args.handles))
        result.update(first_assignment_s=round(seconds, 3), first_assignment_rounds=rounds)
        after = counts.snapshot()
        result["first_assignment_requests"] = {k: _rounded(k, v - before.get(k, 0)) for k, v in after.items()}
        result.update(steady(await _steady_rounds(timer, args.rounds)))
        result["rss_mb"] = rss_mb()
        result.update(await reclaim(timer, fleet))
        result["resize"] = await resize_check(timer, fleet)
    finally:
        await coordinator.shutdown()
    return result


async def _steady_rounds(timer: Timer, rounds: int) -> list[dict[str, float]]:
    return [await timer.round() for _ in range(rounds)]


def steady(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Median and max round time, and the requests per round (max over the rounds)."""
    times = [r["s"] for r in rounds]
    keys = sorted({k for r in rounds for k in r} - {"s"})
    return {
        "round_median_s": round(statistics.median(times), 3),
        "round_max_s": round(max(times), 3),
        "per_round": {k: _rounded(k, max(r.get(k, 0) for r in rounds)) for k in keys},
        "kafka_s_median": round(statistics.median(r["admin_s"] for r in rounds), 3),
        "sql_s_median": round(statistics.median(r["sql_s"] for r in rounds), 3),
        "rounds": [{k: _rounded(k, v) for k, v in r.items()} for r in rounds],
    }


def _rounded(key: str, value: float) -> float | int:
    """Seconds (keys ``s`` and ``*_s``) to the millisecond, counts as integers."""
    return round(value, 3) if key == "s" or key.endswith("_s") else int(value)


async def reclaim(timer: Timer, fleet: Fleet) -> dict[str, Any]:
    """Kill the handle holding the most partitions; time until all of them have a live owner again."""
    before = await timer.coordinator.status()
    owners: dict[str, int] = {}
    for owner in before["owners"].values():
        owners[owner] = owners.get(owner, 0) + 1
    victim = max(owners, key=lambda name: owners[name])
    fleet.handles[victim].die()

    def done(status: dict[str, Any]) -> bool:
        return fully_owned(status) and victim not in status["owners"].values()

    seconds, rounds = await timer.until(done)
    return {"reclaim_s": round(seconds, 3), "reclaim_rounds": rounds, "reclaimed_partitions": owners[victim]}


async def resize_check(timer: Timer, fleet: Fleet) -> dict[str, Any]:
    """Resize to 3, 10, 3 (each until settled: the consumers started and the partitions spread); then every
    partition must be owned exactly once: by one of 3 owners, held by exactly that one live handle. Raises
    AssertionError otherwise."""
    coordinator = timer.coordinator
    steps = []
    for count in (3, 10, 3):
        seconds, rounds = await timer.until(settled, functools.partial(coordinator.resize, count))
        steps.append({"to": count, "s": round(seconds, 3), "rounds": rounds})
    status = await coordinator.status()
    holders = await fleet.holders()
    owners = status["owners"]
    wrong = {key: holders.get(key, []) for key, owner in owners.items() if holders.get(key) != [owner]}
    extra = sorted(set(holders) - set(owners))
    assert len(owners) == status["partitions"], f"{status['partitions'] - len(owners)} partitions unowned"
    assert not wrong and not extra, f"held other than owned: {dict(list(wrong.items())[:5])}, extra {extra[:5]}"
    assert len(set(owners.values())) == 3, f"owners after resize to 3: {sorted(set(owners.values()))}"
    return {"steps": steps, "owned_once": True, "owners": len(set(owners.values()))}


def targets(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of issue 12 at the largest size measured, and whether requests per round stayed flat."""
    if not sizes:
        return []
    largest = sizes[-1]
    found = [
        {"target": text, "partitions": largest["partitions"], "value": largest[key], "met": largest[key] <= limit}
        for key, (limit, text) in TARGETS.items()
    ]
    requests = [s["per_round"]["admin_requests"] for s in sizes]
    statements = [s["per_round"]["statements"] for s in sizes]
    found.append(
        {
            "target": "Kafka requests per round independent of the partition count",
            "partitions": [s["partitions"] for s in sizes],
            "value": requests,
            "met": len(set(requests)) == 1,
        }
    )
    found.append(
        {
            "target": "(not a target) SQL statements per round against the partition count",
            "partitions": [s["partitions"] for s in sizes],
            "value": statements,
            "met": len(set(statements)) == 1,
        }
    )
    return found


def markdown(results: dict[str, Any]) -> str:
    """The results as the table and target list of BENCHMARKS.md's "Coordinator at scale" section."""
    lines = [
        "| N | topics | handles | first assignment s | round median s | round max s | of which Kafka / SQL s"
        " | Kafka requests/round"
        " | SQL statements/round | transactions/round | RSS MiB | reclaim s | resize 3→10→3"
        " | first assignment: Kafka requests / transactions |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for s in results["sizes"]:
        per, first = s["per_round"], s["first_assignment_requests"]
        lines.append(
            f"| {s['partitions']:,} | {s['topics']} | {s['handles']} | {s['first_assignment_s']:.2f}"
            f" | {s['round_median_s']:.3f} | {s['round_max_s']:.3f}"
            f" | {s['kafka_s_median']:.3f} / {s['sql_s_median']:.3f} | {per['admin_requests']}"
            f" | {per['statements']} | {per['transactions']} | {s['rss_mb']:.0f} | {s['reclaim_s']:.2f}"
            f" | {'owned once' if s['resize']['owned_once'] else 'FAILED'}"
            f" | {first['admin_requests']} / {first['transactions']} |"
        )
    lines.append("")
    for t in results["targets"]:
        lines.append(f"- {t['target']}: {t['value']} at {t['partitions']} — {'met' if t['met'] else '**not met**'}")
    if "throughput" in results:
        lines += ["", *throughput_markdown(results["throughput"])]
    return "\n".join(lines) + "\n"


def throughput_markdown(section: dict[str, Any]) -> list[str]:
    """The W1 drains against the partition count, as table lines and the summary line."""
    lines = [
        "| partitions | messages | msg/s | lost | duplicated | consumer actors' RSS at the run's peak, MiB"
        " | KiB per partition |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in section["runs"]:
        rate = "failed" if r.get("msgs_per_s") is None else f"{r['msgs_per_s']:,.0f}"
        lines.append(
            f"| {r['partitions']} | {r['messages']:,} | {rate} | {r.get('lost')} | {r.get('duplicated')}"
            f" | {r.get('consumer_rss_mb')} | {r.get('consumer_rss_kb_per_partition')} |"
        )
    share = section["largest_of_best"]
    lines.append("")
    lines.append(
        f"- throughput at the largest count: {share} of the best ({section['best_msgs_per_s']} msg/s) — "
        + ("met" if share is not None and share >= 0.9 else "**not met**")
        + f"; consumer RSS grew {section['rss_kb_per_added_partition']} KiB per added partition"
    )
    return lines


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every size in turn; the results so far are kept if a larger size fails (its error is recorded)."""
    run_id = uuid.uuid4().hex[:6]
    admin = AdminClient({"bootstrap.servers": os.environ["LOOM_KAFKA_BOOTSTRAP_SERVERS"]})
    results: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m loom_bench.scale " + " ".join(sys.argv[1:]),
        "machine": machine.machine(),
        "target_limits": {key: limit for key, (limit, _) in TARGETS.items()},
        "settings": {
            "per_topic": args.per_topic,
            "handles": args.handles,
            "handle_kind": args.handle_kind,
            "rounds": args.rounds,
            "lag_sample_interval_s": args.lag_sample_interval,
        },
        "sizes": [],
        "failed": None,
    }
    for partitions in [int(n) for n in args.partitions.split(",")]:
        log.info("scale: %d partitions, %d handles", partitions, args.handles)
        try:
            results["sizes"].append(await measure_size(args, admin, partitions, run_id))
        except Exception as exc:
            log.exception("scale: %d partitions failed", partitions)
            results["failed"] = {"partitions": partitions, "error": f"{type(exc).__name__}: {exc}"}
            break
        log.info("scale: %s", {k: v for k, v in results["sizes"][-1].items() if k != "rounds"})
    results["targets"] = targets(results["sizes"])
    results["run_id"] = run_id
    return results


def throughput(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The W1 drains of ``--throughput`` into ``results`` (after the coordinator phases, outside their event
    loop: the harness runs its own), unless a coordinator size failed; then the load average at the end."""
    counts = [int(n) for n in args.throughput.split(",") if n.strip()]
    if counts and results["failed"] is None:
        run_id = results["run_id"]
        results["throughput"] = scale_throughput.measure(
            os.environ["LOOM_KAFKA_BOOTSTRAP_SERVERS"],
            os.environ["LOOM_DB_DSN"],
            counts,
            args.throughput_messages,
            f"{args.topic_prefix}-{run_id}",
            args.output_dir / "raw" / f"scale-{run_id}",
        )
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]


def write(results: dict[str, Any], output: Path) -> Path:
    """Write ``scale-YYYY-MM-DD.json`` under ``output``; its path."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"scale-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.plot:
        for png in scale_plots.render(json.loads(args.plot.read_text()), args.plot.parent):
            log.info("plot in %s", png)
        return 0
    logging.getLogger("loom_ray.coordinator").setLevel(logging.WARNING)
    logging.getLogger("loom_ray.migrate").setLevel(logging.WARNING)
    if not (os.environ.get("LOOM_KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("LOOM_DB_DSN")):
        sys.stderr.write("loom_bench.scale: set LOOM_KAFKA_BOOTSTRAP_SERVERS and LOOM_DB_DSN\n")
        return 2
    if args.handle_kind == "ray":
        # A Ray of its own (never a cluster another run started on this machine), with a small object store.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    try:
        results = asyncio.run(run(args))
    finally:
        if args.handle_kind == "ray":
            ray.shutdown()
    write(results, args.output_dir)  # the coordinator's figures are kept if a drain breaks the run
    throughput(args, results)
    path = write(results, args.output_dir)
    sys.stdout.write(markdown(results))
    log.info("results in %s; plots in %s", path, ", ".join(map(str, scale_plots.render(results, args.output_dir))))
    return 0 if results["failed"] is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
