"""Retry delays for outages: exponential with full jitter, capped (AWS architecture blog's "full jitter")."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base_s: float = 0.2, cap_s: float = 10.0, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap_s, base_s * (2 ** min(attempt, 30)))
    return (rng or random).uniform(0, ceiling)
