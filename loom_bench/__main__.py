"""``python -m loom_bench [--quick|--smoke] [--workload W1|W2|W3|W4|all]``: run the benchmark, write the results.

Needs ``LOOM_KAFKA_BOOTSTRAP_SERVERS`` and ``LOOM_DB_DSN`` (``scripts/bench.sh`` sets them from the local
stack). Writes ``<output-dir>/latest.json``, a dated copy, and ``BENCHMARKS.md``; raw per-process logs go
to ``<output-dir>/raw/``. ``--workload W3`` (upsert by key, ``loom_bench/w3_run.py``) is run on its own: it
writes ``<output-dir>/<date>-<mode>-w3.json`` and ``<output-dir>/W3.md``, the section BENCHMARKS.md includes
(``--render`` the main results file to put it in; ``--render`` a W3 results file rewrites ``W3.md``). ``--workload
W4`` (W1's records as Avro and Protobuf through a Schema Registry, ``loom_bench/w4_run.py``; needs
``LOOM_SCHEMA_REGISTRY_URL``) likewise writes ``<date>-<mode>-w4.json`` and ``W4.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import logging
import os
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from loom_bench import database, kafka, machine, orchestrate, plots, report, runner, w3, w3_run, w4, w4_run
from loom_bench.config import Mode, loom_env, plan
from loom_bench.launch import ROOT, SYSTEMS, variants

log = logging.getLogger("loom_bench")
SCALE_NOTES = ROOT / "bench-results" / "SCALE.md"  # the coordinator-at-scale section (python -m loom_bench.scale)
W3_NOTES = ROOT / "bench-results" / "W3.md"  # the upsert section (python -m loom_bench --workload W3)
W4_NOTES = ROOT / "bench-results" / "W4.md"  # the registry formats section (python -m loom_bench --workload W4)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loom_bench", description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="200k/100k messages, 1 repetition, live for B4_tuned")
    size.add_argument("--smoke", action="store_true", help="a few thousand messages, no live mode (tests)")
    parser.add_argument("--workload", choices=["W1", "W2", "W3", "W4", "all"], default="all", help="all: W1, W2")
    parser.add_argument("--systems", default="all", help=f"comma-separated, from {','.join(SYSTEMS)} or groups")
    parser.add_argument("--messages", type=int, help="override the messages per workload")
    parser.add_argument("--reps", type=int, help="override the repetitions")
    parser.add_argument("--no-live", action="store_true", help="skip live (latency) mode")
    parser.add_argument("--no-malformed", action="store_true", help="skip the W1 run with 1 %% malformed input")
    parser.add_argument("--synchronous-commit", choices=["on", "off"], default="on", help="'off' is labelled")
    parser.add_argument("--database", default="loom_bench", help="bench database (created if missing)")
    parser.add_argument("--drop-database", action="store_true", help="drop the bench database at the end")
    parser.add_argument("--topic-prefix", default="loom-bench")
    parser.add_argument("--keep-topics", action="store_true", help="keep the preloaded topics for the next run")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--bench-python", default=str(ROOT / ".cache" / "bench-venv" / "bin" / "python"))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per measured run")
    parser.add_argument("--seed", type=int, default=1, help="seed of the per-repetition order")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only render --markdown from a results file")
    parser.add_argument(
        "--malformed-into",
        type=Path,
        metavar="JSON",
        help="only redo the malformed-input run, replace it in this results file, and render --markdown",
    )
    parser.add_argument(
        "--notes",
        type=Path,
        default=ROOT / "bench-results" / "NOTES.md",
        help="hand-written reading of the numbers, put into --markdown when the file exists",
    )
    return parser.parse_args(argv)


def _mode(args: argparse.Namespace) -> Mode:
    return "quick" if args.quick else "smoke" if args.smoke else "full"


def _write(results: dict[str, Any], args: argparse.Namespace, final: bool) -> Path:
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    label = results["mode"] + ("" if results["synchronous_commit"] == "on" else "-sync-off")
    text = json.dumps(results, indent=2, default=str) + "\n"
    output: Path = args.output_dir
    latest = output / "latest.json"
    latest.write_text(text)
    if not final:
        return latest
    dated = output / f"{dt.date.today().isoformat()}-{label}.json"
    dated.write_text(text)
    _markdown(results, dated, args)
    return dated


def _markdown(results: dict[str, Any], source: Path, args: argparse.Namespace) -> None:
    """Render the plots next to ``source`` and ``--markdown`` with them."""
    pngs = plots.render_all(results, source.parent)
    images = {name: os.path.relpath(path, args.markdown.resolve().parent) for name, path in pngs.items()}
    appendix = "\n".join(_hand_written(notes) for notes in (W3_NOTES, W4_NOTES, SCALE_NOTES))
    text = report.render(results, _shown(source), _notes(args), appendix, images)
    args.markdown.write_text(text)


def _notes(args: argparse.Namespace) -> str:
    return _hand_written(args.notes)


def _hand_written(path: Path) -> str:
    """A hand-written Markdown file put into BENCHMARKS.md, or nothing when it does not exist."""
    return path.read_text() if path.exists() else ""


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _services(args: argparse.Namespace) -> tuple[str, str, runner.Services]:
    """The stack named by the environment (bootstrap servers, DSN) and the harness's view of it, with the raw
    logs under a folder of this run's own."""
    bootstrap, dsn = os.environ["LOOM_KAFKA_BOOTSTRAP_SERVERS"], os.environ["LOOM_DB_DSN"]
    raw = args.output_dir / "raw" / dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    svc = orchestrate.services(
        bootstrap, dsn, args.database, args.bench_python, raw, args.timeout, args.synchronous_commit
    )
    return bootstrap, dsn, svc


# --workload W3 and W4, each run on its own: the key of its results and section, its run, its topics, and the
# variants it measures unless --systems names others (loom-ray tuned against Kafka Connect tuned; W4 adds
# loom-ray on Protobuf, a variant of its own).
_SECTIONS: dict[str, tuple[str, Any, Any, tuple[str, ...]]] = {
    "W3": ("w3", w3_run.run, lambda prefix, n: dataclasses.astuple(w3.topics(prefix, n)), ("B4_tuned", "B6_tuned")),
    "W4": (
        "w4",
        w4_run.run,
        lambda prefix, n: dataclasses.astuple(w4.topics(prefix, n)),
        ("B4_tuned", "B6_tuned", "B4_tuned_protobuf"),
    ),
}


def run_section(args: argparse.Namespace) -> Path:
    """W3 or W4 alone: the results file and the Markdown section (``bench-results/W3.md``, ``W4.md``)."""
    key, run_workload, topics_of, default = _SECTIONS[args.workload]
    mode = _mode(args)
    chosen = plan(mode, [args.workload], args.messages, args.reps)
    names = args.systems.split(",")
    requested = list(default) if names == ["all"] else names
    selected = [*variants(requested), *(name for name in requested if name not in SYSTEMS)]
    bootstrap, dsn, svc = _services(args)
    started = time.time()
    results: dict[str, Any] = {
        "mode": mode,
        "synchronous_commit": args.synchronous_commit,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m loom_bench " + shlex.join(sys.argv[1:]),
        "config": {"B4_tuned": loom_env(tuned=True)},
        "machine": machine.machine(),
    }
    try:
        results[key] = run_workload(svc, chosen, selected, args.topic_prefix, random.Random(args.seed))
    finally:
        if not args.keep_topics:
            for topic in topics_of(args.topic_prefix, chosen.workloads[0].messages):
                kafka.delete_topic(bootstrap, topic)
        if args.drop_database:
            asyncio.run(database.drop_database(dsn, args.database))
    results["duration_s"] = round(time.time() - started, 1)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    path: Path = args.output_dir / f"{dt.date.today().isoformat()}-{mode}-{key}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    _write_section(results, path)
    return path


def _write_section(results: dict[str, Any], path: Path) -> None:
    """``W3.md`` or ``W4.md`` next to the results file, from a W3 or W4 results file."""
    if "w3" in results:
        (path.parent / "W3.md").write_text(report.w3_section(results, _shown(path)))
    else:
        (path.parent / "W4.md").write_text(report.w4_section(results, _shown(path)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    mode = _mode(args)
    names = args.systems.split(",")
    selected = variants(names)
    workloads = ["W1", "W2"] if args.workload == "all" else [args.workload]
    chosen = plan(mode, workloads, args.messages, args.reps)
    if args.no_live:
        chosen = dataclasses.replace(chosen, live_systems=())
    if args.no_malformed:
        chosen = dataclasses.replace(chosen, malformed_messages=0)
    bootstrap, dsn, svc = _services(args)
    started = time.time()
    results: dict[str, Any] = {
        "mode": mode,
        "synchronous_commit": args.synchronous_commit,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "duration_s": 0.0,
        "plan": {
            "reps": chosen.reps,
            "naive_seconds": chosen.naive_seconds,
            "live": list(chosen.live_systems),
            "window": {"warmup_s": chosen.window.warmup_s, "seconds": chosen.window.seconds},
            "malformed_messages": chosen.malformed_messages,
        },
        "commands": {
            "run": "python -m loom_bench " + shlex.join(sys.argv[1:]),
            **orchestrate.commands(selected, args.bench_python, chosen.naive_seconds),
        },
        "config": {"B4": loom_env(tuned=False), "B4_tuned": loom_env(tuned=True), "B5": loom_env(tuned=True)},
        "machine": machine.machine(),
        "postgres": asyncio.run(database.server_info(svc.dsn)),
        "versions": machine.versions(args.bench_python, ROOT / ".cache" / "kafka" / "libs"),
        "workloads": {},
    }
    rng = random.Random(args.seed)
    try:
        for workload in chosen.workloads:
            results["workloads"][workload.name] = orchestrate.run_workload(
                svc, chosen, workload, selected, args.topic_prefix, rng
            )
            if workload.name == "W1" and chosen.malformed_messages:  # right after W1: a cut-short run keeps it
                results["malformed"] = orchestrate.run_malformed(svc, chosen, workload, selected, args.topic_prefix)
            results["duration_s"] = round(time.time() - started, 1)
            _write(results, args, final=False)
    finally:
        if not args.keep_topics:
            orchestrate.delete_topics(svc.bootstrap, chosen, args.topic_prefix)
        if args.drop_database:
            asyncio.run(database.drop_database(dsn, args.database))
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["duration_s"] = round(time.time() - started, 1)
    return results


def redo_malformed(args: argparse.Namespace) -> dict[str, Any]:
    """The malformed-input run alone (``--malformed-into``), recorded with its command and time."""
    chosen = plan(_mode(args), ["W1"], None, args.reps)
    bootstrap, dsn, svc = _services(args)
    found = orchestrate.run_malformed(
        svc, chosen, chosen.workloads[0], variants(args.systems.split(",")), args.topic_prefix
    )
    found["redone"] = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m loom_bench " + shlex.join(sys.argv[1:]),
        "load_1m": round(os.getloadavg()[0], 2),
    }
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("loom_ray.migrate").setLevel(logging.WARNING)  # migrations run before every loom run
    if args.render:
        rendered = json.loads(args.render.read_text())
        if "w3" in rendered or "w4" in rendered:  # a W3 or W4 results file: its section only
            _write_section(rendered, args.output_dir / args.render.name)
        else:
            _markdown(rendered, args.render, args)
        return 0
    if args.malformed_into:
        results = json.loads(args.malformed_into.read_text())
        results["malformed"] = redo_malformed(args)
        args.malformed_into.write_text(json.dumps(results, indent=2, default=str) + "\n")
        _markdown(results, args.malformed_into, args)
        return 0
    if not (os.environ.get("LOOM_KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("LOOM_DB_DSN")):
        sys.stderr.write("loom_bench: set LOOM_KAFKA_BOOTSTRAP_SERVERS and LOOM_DB_DSN (scripts/bench.sh does)\n")
        return 2
    if args.workload in _SECTIONS:
        path = run_section(args)
        log.info("results in %s and %s", _shown(path), _shown(args.output_dir / f"{args.workload}.md"))
        return 0
    results = run(args)
    path = _write(results, args, final=True)
    log.info("results in %s and %s", _shown(path), _shown(args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
