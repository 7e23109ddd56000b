"""Deterministic crash points inside the commit path, for fault tests only.

``LOOM_TEST_CRASH_AT=<point>:<probability>[,<point>:<probability>...]`` makes :func:`crash_point` end the
process with ``os._exit(137)`` (as ``kill -9`` would) at that point with that probability. Unset (always,
outside tests) it costs one dictionary lookup. Points: ``after_poll``, ``after_offset_cas``,
``after_data_copy``, ``after_commit``.
"""

from __future__ import annotations

import os
import random

_ENV = "LOOM_TEST_CRASH_AT"


def _parse(spec: str) -> dict[str, float]:
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, probability = item.partition(":")
        points[name] = float(probability or 1.0)
    return points


_POINTS = _parse(os.environ.get(_ENV, ""))


def crash_point(name: str) -> None:
    """Die here, without cleanup, if the test asked for it."""
    probability = _POINTS.get(name)
    if probability is not None and random.random() < probability:
        os._exit(137)
