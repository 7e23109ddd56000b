"""Deterministic crash and stop points inside the commit path, for fault tests only.

``LOOM_TEST_CRASH_AT=<point>:<probability>[,<point>:<probability>...]`` makes :func:`crash_point` end the
process with ``os._exit(137)`` (as ``kill -9`` would) at that point with that probability.
``LOOM_TEST_STOP_DIR=<folder>`` makes the process SIGSTOP itself at a point once a test has created the file
``<folder>/<pid>.<point>`` (the file is removed first, so one file stops the process once).
Unset (always, outside tests) they cost a dictionary lookup and a comparison. Points: ``after_poll``,
``after_offset_cas``, ``after_data_copy``, ``after_commit``.
"""

from __future__ import annotations

import os
import random
import signal

_ENV = "LOOM_TEST_CRASH_AT"
_STOP_DIR = os.environ.get("LOOM_TEST_STOP_DIR")


def _parse(spec: str) -> dict[str, float]:
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, probability = item.partition(":")
        points[name] = float(probability or 1.0)
    return points


_POINTS = _parse(os.environ.get(_ENV, ""))


def crash_point(name: str) -> None:
    """Die here, without cleanup, or stop here, if the test asked for it."""
    probability = _POINTS.get(name)
    if probability is not None and random.random() < probability:
        os._exit(137)
    if _STOP_DIR is not None:
        _stop_if_asked(os.path.join(_STOP_DIR, f"{os.getpid()}.{name}"))


def _stop_if_asked(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGSTOP)
