"""loom-ray's error classes: one per failure, so callers branch on types, never on message text."""

from __future__ import annotations


class LoomError(Exception):
    """Root of every loom-ray error."""


class ConfigError(LoomError):
    """Bad configuration, found at start; the message says which variable and what it accepts."""


class CapacityError(ConfigError):
    """The database cannot hold the connections the configured actors may open."""


class FencedError(LoomError):
    """A flush or release lost its claim: another owner bumped the partition's epoch.

    The flush was rolled back; the partition and its buffer must be dropped by this actor.
    """

    def __init__(self, partitions: list[tuple[str, int]]) -> None:
        super().__init__(f"fenced on {', '.join(f'{t}[{p}]' for t, p in partitions)}")
        self.partitions = partitions


class TransientError(LoomError):
    """A database or broker outage: retry with backoff, keep the buffers."""
