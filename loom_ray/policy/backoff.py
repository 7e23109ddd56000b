"""Retry delays: exponential, capped; for outages with full jitter (AWS architecture blog's "full jitter")."""

from __future__ import annotations

import random


def backoff_ceiling(attempt: int, base_s: float = 0.2, cap_s: float = 10.0) -> float:
    """The exponential delay before retry number ``attempt`` (0-based), without jitter: min(cap, base * 2**attempt)."""
    return min(cap_s, base_s * float(2 ** min(attempt, 30)))


def backoff_delay(attempt: int, base_s: float = 0.2, cap_s: float = 10.0, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): uniform in [0, :func:`backoff_ceiling`]."""
    return (rng or random).uniform(0, backoff_ceiling(attempt, base_s, cap_s))
