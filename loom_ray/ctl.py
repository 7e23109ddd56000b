"""Operator commands against a running deployment: ``python -m loom_ray.ctl status|resize N|unpark``.

Connects to the Ray cluster (``--address`` or ``RAY_ADDRESS``) and talks to the named coordinator.
``resize`` moves partitions with a live hand-off: each old owner flushes and releases, then the new
owner claims (an owner that does not answer is fenced by the new epoch anyway). ``unpark`` lets partitions
the coordinator parked (their flush failed again and again with one error) be read again, once the cause is
fixed; it prints what it unparked and exits 1 if a partition named was not parked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any, cast

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
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="print the coordinator's status as JSON")
    resize = commands.add_parser("resize", help="set the number of consumer actors")
    resize.add_argument("actors", type=int)
    unpark = commands.add_parser("unpark", help="read parked partitions again, once the cause of their faults is fixed")
    unpark.add_argument("partitions", nargs="*", type=parse_partition, metavar="TOPIC[PARTITION]")
    unpark.add_argument("--all", action="store_true", help="every parked partition")
    unpark.add_argument("--by", help="who unparks, for loom_parked.unparked_by (default: the database role)")
    args = parser.parse_args(argv)
    if args.command == "unpark" and bool(args.partitions) == args.all:
        parser.error("unpark: name partitions (e.g. 'orders[3]') or give --all, not both")

    import ray

    from actors.coordinator import COORDINATOR_NAME

    namespace = Settings.model_fields["ray_namespace"].default
    namespace = os.environ.get("LOOM_RAY_NAMESPACE", namespace)
    ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or "auto", namespace=namespace)
    try:
        coordinator = ray.get_actor(COORDINATOR_NAME, namespace=namespace)
    except ValueError:
        found = ray.util.list_named_actors(all_namespaces=True)
        print(
            f"no coordinator {COORDINATOR_NAME!r} in namespace {namespace!r}: is loom_ray.main running? "
            f"named actors: {found}",
            file=sys.stderr,
        )
        return 1
    if args.command == "resize":
        print(f"target: {ray.get(coordinator.resize.remote(args.actors))} consumer actors")
    elif args.command == "unpark":
        asked = None if args.all else args.partitions
        answer = cast(dict[str, dict[str, Any]], ray.get(coordinator.unpark.remote(asked, args.by)))
        lines, code = unparked_lines(answer, asked)
        print("\n".join(lines))
        return code
    else:
        print(json.dumps(ray.get(coordinator.status.remote()), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
