"""How many consumer actors to run: the seed's HPA bounds, applied to backlog instead of CPU.

Runs in the coordinator once per health-check round. Ray's autoscaler (KubeRay) then adds or removes
worker pods to fit the actors' resource requests, which replaces the seed's CPU-based HPA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScalingBounds:
    """``min_actors``..``max_actors`` from settings; never more actors than partitions."""

    min_actors: int
    max_actors: int


def clamp_actors(wanted: int, bounds: ScalingBounds, partitions: int) -> int:
    """``wanted`` within the bounds and at most one actor per partition (at least one)."""
    upper = max(1, min(bounds.max_actors, partitions))
    return max(1, min(max(wanted, bounds.min_actors), upper))


def desired_actors(
    current: int, lag: int, msgs_per_s_per_actor: float, catchup_s: float, bounds: ScalingBounds, partitions: int
) -> int:
    """Actors needed to clear ``lag`` within ``catchup_s`` at the observed per-actor rate.

    Scales up at once; scales down one actor at a time and only once the backlog would clear in a
    quarter of ``catchup_s`` with one actor fewer, so a draining backlog does not flap. With no rate
    observed yet, it keeps the count, unless there is no backlog at all: then one actor fewer.
    """
    if msgs_per_s_per_actor <= 0:
        return clamp_actors(current - 1 if lag == 0 else current, bounds, partitions)
    needed = math.ceil(lag / (msgs_per_s_per_actor * catchup_s))
    if needed > current:
        return clamp_actors(needed, bounds, partitions)
    fewer = current - 1
    if fewer >= 1 and lag <= fewer * msgs_per_s_per_actor * catchup_s / 4:
        return clamp_actors(fewer, bounds, partitions)
    return clamp_actors(current, bounds, partitions)
