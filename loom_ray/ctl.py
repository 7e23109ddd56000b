"""Operator commands against a running deployment: ``python -m loom_ray.ctl status|resize N``.

Connects to the Ray cluster (``--address`` or ``RAY_ADDRESS``) and talks to the named coordinator.
``resize`` moves partitions with a live hand-off: each old owner flushes and releases, then the new
owner claims (an owner that does not answer is fenced by the new epoch anyway).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from loom_ray.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loom_ray.ctl", description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="print the coordinator's status as JSON")
    resize = commands.add_parser("resize", help="set the number of consumer actors")
    resize.add_argument("actors", type=int)
    args = parser.parse_args(argv)

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
    else:
        print(json.dumps(ray.get(coordinator.status.remote()), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
