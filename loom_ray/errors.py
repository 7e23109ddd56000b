"""loom-ray's error classes: one per failure, so callers branch on types, never on message text."""

from __future__ import annotations


class LoomError(Exception):
    """Root of every loom-ray error."""


class ConfigError(LoomError):
    """Bad configuration, found at start; the message says which variable and what it accepts."""


class CapacityError(ConfigError):
    """The database cannot hold the connections the configured actors may open."""


class ServiceUnavailableError(LoomError):
    """PostgreSQL or Kafka did not answer at start within LOOM_STARTUP_TIMEOUT_S (the driver exits 3: a
    supervisor submits it again)."""


class CoordinatorGoneError(LoomError):
    """The coordinator this driver watched was stopped by someone else (``ctl stop``, or a driver that replaced
    it): the driver ends with exit code 4 instead of waiting for it for ever."""


class RayUnreachableError(LoomError):
    """The driver could not join the Ray cluster it was pointed at (``--address`` or ``RAY_ADDRESS``)."""


class FencedError(LoomError):
    """A flush or release lost its claim: another owner bumped the partition's epoch.

    The flush was rolled back; the partition and its buffer must be dropped by this actor.
    """

    def __init__(self, partitions: list[tuple[str, int]]) -> None:
        super().__init__(f"fenced on {', '.join(f'{t}[{p}]' for t, p in partitions)}")
        self.partitions = partitions


class ColumnTypeChangedError(LoomError):
    """The sink's COPY could not encode a value for a column: the table's column types are not the ones
    sql/ defines (someone altered them). Carries SQLSTATE 42804 (datatype_mismatch), so the pipeline treats
    it as PostgreSQL's own type mismatch: flushes retry, reporting the fix, until the table is restored."""

    sqlstate = "42804"


class TransientError(LoomError):
    """A database or broker outage: retry with backoff, keep the buffers."""


class RoutesFileError(ConfigError):
    """The routes file (LOOM_ROUTES_FILE) cannot be read or declares something invalid, found at start; the
    message names the file, the route and what to change."""


class RouteTableError(ConfigError):
    """A route's table exists but does not fit the route (a column missing, a type that differs, no unique
    key for an upsert), found at start; the message names the table, the column and the fix."""


class RouteTableChangedError(LoomError):
    """A route's table was altered while loom-ray ran in a way the route cannot take in (a column dropped or
    narrowed, a type changed, a NOT NULL column added): the message says what, and the route's flushes wait
    (retried with backoff, reported as ``sink_blocked``) until a person fixes the table or restarts the job.
    Carries SQLSTATE ``LR001``, which :mod:`loom_ray.policy.sink_errors` classes as needing a person."""

    sqlstate = "LR001"


class PositionRefusedError(LoomError):
    """An operator's rewind or skip of a partition cannot be done (forward of, or behind, where it stands;
    beyond the broker's log; a log that is not the one stored): the message says why and what to do instead.
    Nothing was moved."""


class OperationError(LoomError):
    """An operation asked with ``python -m loom_ray.ctl`` cannot run as asked (a topic the deployment does not
    ingest, a route that does not exist, a filter that selects nothing it may act on); nothing was changed."""
