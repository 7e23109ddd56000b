"""Operator commands: ``python -m loom_ray.ctl status|deployments|resize N|unpark|stop|release-node|stop-jobs``
against running deployments, and ``dead-letters|replay|rewind|skip|pause|resume`` on the data, whether the job
runs or not (:mod:`loom_ray.ops.cli`: they need the deployment's ``LOOM_*`` settings, not Ray).

Connects to the Ray cluster (``--address`` or ``RAY_ADDRESS``) and talks to a deployment's coordinator
(``--deployment``, else LOOM_DEPLOYMENT, else the only one running). ``resize`` sets the consumer count and
returns (``--wait``: once that many run and hold the partitions); partitions move with a live hand-off: each
old owner flushes and releases, then the new owner claims (an owner that does not answer is fenced by the new
epoch anyway). ``unpark`` lets partitions the coordinator parked (their flush failed again
and again with one error) be read again, once the cause is fixed; it prints what it unparked and exits 1 if a
partition named was not parked. ``stop`` drains a deployment's coordinator and removes it (its driver then
ends; a supervisor would start it again: stop that instead). ``release-node`` hands the partitions of the
consumers on this Ray node to the others and stops them, for every deployment (a worker pod's ``preStop``);
``stop-jobs`` stops every running loom-ray job through the Jobs API and waits for their drains (the head
pod's ``preStop``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any, cast

from loom_ray.ops import cli
from loom_ray.settings import Settings

_PARTITION = re.compile(r"(?P<topic>.+)\[(?P<partition>\d+)\]")


def parse_partition(text: str) -> tuple[str, int]:
    """``"orders[3]"`` -> ``("orders", 3)``; raises ArgumentTypeError for anything else."""
    found = _PARTITION.fullmatch(text)
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not <topic>[<partition>], e.g. orders[3] (quote it in a shell)")
    return found["topic"], int(found["partition"])


def unparked_lines(unparked: dict[str, dict[str, Any]], asked: list[tuple[str, int]] | None) -> tuple[list[str], int]:
    """What ``unpark`` prints (the coordinator's answer, for the partitions ``asked``, None for all) and its exit
    code: 0, or 1 when a partition asked for was not parked."""
    lines = []
    for key, row in sorted(unparked.items()):
        since = datetime.fromtimestamp(row["since"], UTC).isoformat(timespec="seconds")
        lines.append(
            f"unparked {key} (parked since {since} after {row['faults']} faults: {row['error']}) "
            f"by {row['unparked_by']}"
        )
    missing = [f"{t}[{p}]" for t, p in asked or [] if f"{t}[{p}]" not in unparked]
    lines += [f"{key} is not parked" for key in missing]
    if asked is None and not unparked:
        lines.append("no partition is parked")
    return lines, 1 if missing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loom_ray.ctl", description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else the local node's)")
    parser.add_argument("--deployment", help="the deployment (default: LOOM_DEPLOYMENT, else the only one)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="print the coordinator's status as JSON")
    commands.add_parser("deployments", help="list the deployments whose coordinator runs, one per line")
    resize = commands.add_parser("resize", help="set the number of consumer actors")
    resize.add_argument("actors", type=int)
    resize.add_argument(
        "--wait", action="store_true", help="return once that many consumers run and hold the partitions"
    )
    resize.add_argument("--timeout", type=float, default=300.0, help="seconds to wait at most (default 300)")
    unpark = commands.add_parser("unpark", help="read parked partitions again, once the cause of their faults is fixed")
    unpark.add_argument("partitions", nargs="*", type=parse_partition, metavar="TOPIC[PARTITION]")
    unpark.add_argument("--all", action="store_true", help="every parked partition")
    unpark.add_argument("--by", help="who unparks, for loom_parked.unparked_by (default: the database role)")
    commands.add_parser("stop", help="drain the deployment's coordinator and remove it")
    release = commands.add_parser(
        "release-node", help="hand the partitions of this node's consumers to the others and stop them (preStop)"
    )
    jobs = commands.add_parser("stop-jobs", help="stop every running loom-ray job and wait for its drain (preStop)")
    jobs.add_argument("--jobs-address", default="http://127.0.0.1:8265", help="the Jobs API (default: this head's)")
    for sub in (release, jobs):
        sub.add_argument("--wait", action="store_true", help="return once done (the default for release-node)")
        sub.add_argument("--timeout", type=float, default=60.0, help="seconds to wait at most (default 60)")
    cli.add_commands(commands, parse_partition)
    args = parser.parse_args(argv)
    if args.command in cli.COMMANDS:
        return cli.run(args)
    if args.command == "unpark" and bool(args.partitions) == args.all:
        parser.error("unpark: name partitions (e.g. 'orders[3]') or give --all, not both")
    if args.command == "stop-jobs":
        return stop_jobs(args.jobs_address, args.wait, args.timeout)

    import ray

    namespace = os.environ.get("LOOM_RAY_NAMESPACE", Settings.model_fields["ray_namespace"].default)
    ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or "auto", namespace=namespace)
    if args.command == "release-node":
        return release_node(namespace, args.deployment, args.timeout)
    if args.command == "deployments":
        print("\n".join(coordinators(namespace)))
        return 0
    coordinator = find_coordinator(namespace, args.deployment or os.environ.get("LOOM_DEPLOYMENT"))
    if coordinator is None:
        return 1
    if args.command == "resize":
        print(f"target: {ray.get(coordinator.resize.remote(args.actors))} consumer actors", flush=True)
        return wait_settled(coordinator, args.timeout) if args.wait else 0
    if args.command == "unpark":
        asked = None if args.all else args.partitions
        answer = cast(dict[str, dict[str, Any]], ray.get(coordinator.unpark.remote(asked, args.by)))
        lines, code = unparked_lines(answer, asked)
        print("\n".join(lines))
        return code
    if args.command == "stop":
        ray.get(coordinator.shutdown.remote(None))
        ray.kill(coordinator, no_restart=True)
        print("stopped: every consumer drained, the coordinator removed")
    else:
        print(json.dumps(ray.get(coordinator.status.remote()), indent=2, default=str))
    return 0


def settling_line(status: dict[str, Any]) -> str:
    """One line on how far a deployment is from its target, from the coordinator's ``status()``."""
    return (
        f"{len(status['actors'])} of {status['target']} consumers running, {len(status['pending'])} waiting to be "
        f"placed, {status['assigned']} of {status['partitions']} partitions owned"
    )


def wait_settled(coordinator: Any, timeout_s: float) -> int:
    """Poll the coordinator until its rounds leave the consumers and partitions as planned (``settled``),
    printing each change of :func:`settling_line`; 0 then, 1 after ``timeout_s`` (the last line says what is
    missing: typically consumers waiting for a node)."""
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        status = ray.get(coordinator.status.remote())
        line = settling_line(status)
        if line != last:
            print(line, flush=True)
            last = line
        if status["settled"]:
            return 0
        if time.monotonic() >= deadline:
            print(f"not settled after {timeout_s:.0f}s: {line}", file=sys.stderr)
            return 1
        time.sleep(1.0)


def coordinators(namespace: str) -> list[str]:
    """The deployments whose coordinator runs in ``namespace``."""
    import ray

    from actors.coordinator import COORDINATOR_PREFIX

    return sorted(
        found["name"].removeprefix(COORDINATOR_PREFIX)
        for found in ray.util.list_named_actors(all_namespaces=True)
        if found["namespace"] == namespace and found["name"].startswith(COORDINATOR_PREFIX)
    )


def find_coordinator(namespace: str, deployment: str | None) -> Any:
    """The coordinator of ``deployment`` (None: the only one running), or None after saying why on stderr."""
    import ray

    from actors.coordinator import coordinator_name

    running = coordinators(namespace)
    if deployment is None:
        if len(running) != 1:
            which = f"deployments running: {', '.join(running)}" if running else "none is running"
            print(f"name the deployment with --deployment ({which} in namespace {namespace!r})", file=sys.stderr)
            return None
        deployment = running[0]
    try:
        return ray.get_actor(coordinator_name(deployment), namespace=namespace)
    except ValueError:
        print(
            f"no coordinator of deployment {deployment!r} in namespace {namespace!r}: is loom_ray.main running? "
            f"deployments running: {', '.join(running) or 'none'}",
            file=sys.stderr,
        )
        return None


def release_node(namespace: str, deployment: str | None, timeout_s: float) -> int:
    """Every deployment's (or ``deployment``'s) consumers on this node hand their partitions over and stop."""
    import ray

    from actors.coordinator import coordinator_name

    node = ray.get_runtime_context().get_node_id()
    for name in [deployment] if deployment else coordinators(namespace):
        coordinator = ray.get_actor(coordinator_name(name), namespace=namespace)
        stopped: list[str] = ray.get(coordinator.release_node.remote(node), timeout=timeout_s)
        print(f"deployment {name}: {len(stopped)} consumers on node {node} handed over and stopped: {stopped}")
    return 0


QUIET_S = 5.0  # stop-jobs --wait returns once no loom-ray job has run for this long


def stop_jobs(address: str, wait: bool, timeout_s: float) -> int:
    """Stop every running ``loom_ray.main`` job (SIGTERM: each drains). With ``wait``, keep stopping the ones
    that appear (a supervisor submits a new job as soon as its job ends: on a head going away it must not
    start there) until none has run for :data:`QUIET_S`; 1 if that is not so within ``timeout_s``."""
    import time

    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + timeout_s
    stopped: set[str] = set()
    quiet_since = time.monotonic()
    while True:
        live = [
            str(job.submission_id)
            for job in client.list_jobs()
            if job.submission_id and not job.status.is_terminal() and "loom_ray.main" in (job.entrypoint or "")
        ]
        for job_id in live:
            if job_id not in stopped:
                client.stop_job(job_id)
                stopped.add(job_id)
                print(f"stopping job {job_id}", flush=True)
        now = time.monotonic()
        if live:
            quiet_since = now
        if not wait or now - quiet_since >= QUIET_S:
            return 0
        if now > deadline:
            print(f"jobs still running after {timeout_s:.0f}s: {', '.join(live)}", file=sys.stderr)
            return 1
        time.sleep(0.5)


if __name__ == "__main__":
    raise SystemExit(main())
