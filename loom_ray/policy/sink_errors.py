"""Why a flush failed and what the consumer does about it: retry an outage, retry and report a blocker, or stop.

Pure. The pipeline calls :func:`classify` on every exception a flush (or its in-doubt check) raises:

- ``OUTAGE``: PostgreSQL is out of reach (:data:`loom_ray.db.TRANSIENT_ERRORS`). Retry with backoff.
- ``NEEDS_PERSON``: PostgreSQL answers but refuses the writes until someone changes something (a privilege
  revoked, a table dropped or altered, a password changed). Retry with backoff and report the fix.
- ``MAY_CLEAR``: PostgreSQL refuses the writes for a condition that can pass by itself (disk full, out of
  memory, too many connections, read-only during a failover). Retry with backoff and report it.
- ``FATAL``: anything else, a bug or a broken invariant (a unique violation after a successful offset
  compare-and-set means a duplicate write). The flush stops loudly and the consumer's loop ends with it.

Errors about one row's content never get here: the sink turns them into dead letters. Blocked kinds are
told apart by SQLSTATE, never by message text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from loom_ray.db import TRANSIENT_ERRORS


class Kind(StrEnum):
    """What a flush failure means; see the module docstring."""

    OUTAGE = "outage"
    NEEDS_PERSON = "needs_person"
    MAY_CLEAR = "may_clear"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class Condition:
    """A PostgreSQL condition that blocks flushes: its SQLSTATE, PostgreSQL's name for it, and the fix."""

    sqlstate: str
    name: str
    kind: Kind
    fix: str


_RESTORE = "restore it as sql/ defines it (the sink writes loom_messages, loom_dead_letters, loom_audit, loom_offsets)"

BLOCKING: dict[str, Condition] = {
    c.sqlstate: c
    for c in (
        Condition(
            "42501",
            "insufficient_privilege",
            Kind.NEEDS_PERSON,
            "GRANT SELECT, INSERT ON loom_messages, loom_dead_letters, loom_audit and SELECT, INSERT, UPDATE ON "
            "loom_offsets (plus CONNECT on the database, USAGE on the schema) TO the role in LOOM_DB_DSN, as "
            "sql/roles/least_privilege.sql does",
        ),
        Condition(
            "42P01",
            "undefined_table",
            Kind.NEEDS_PERSON,
            f"a table is missing (dropped, or LOOM_DB_SCHEMA names another schema): {_RESTORE}",
        ),
        Condition("42703", "undefined_column", Kind.NEEDS_PERSON, f"a column was dropped or renamed: {_RESTORE}"),
        Condition("42804", "datatype_mismatch", Kind.NEEDS_PERSON, f"a column changed type: {_RESTORE}"),
        Condition(
            "3F000",
            "invalid_schema_name",
            Kind.NEEDS_PERSON,
            "the schema is missing: re-create it with loom-ray's tables, or point LOOM_DB_SCHEMA at it",
        ),
        Condition(
            "28P01",
            "invalid_password",
            Kind.NEEDS_PERSON,
            "the role's password no longer matches LOOM_DB_DSN: set it back (ALTER ROLE ... PASSWORD), or restart "
            "the job with the new one",
        ),
        Condition(
            "28000",
            "invalid_authorization_specification",
            Kind.NEEDS_PERSON,
            "PostgreSQL refuses this login (pg_hba.conf, a dropped or NOLOGIN role): allow it again, or restart "
            "the job with LOOM_DB_DSN fixed",
        ),
        Condition(
            "53100", "disk_full", Kind.MAY_CLEAR, "free disk space on the PostgreSQL server (data directory, WAL)"
        ),
        Condition(
            "53200",
            "out_of_memory",
            Kind.MAY_CLEAR,
            "give PostgreSQL more memory, or lower its work_mem or connection count",
        ),
        Condition(
            "53300",
            "too_many_connections",
            Kind.MAY_CLEAR,
            "raise max_connections, or lower LOOM_MAX_ACTORS x LOOM_DB_MAX_POOL_SIZE or other clients' connections",
        ),
        Condition(
            "25006",
            "read_only_sql_transaction",
            Kind.MAY_CLEAR,
            "PostgreSQL is read-only (a standby after a failover, or default_transaction_read_only): point "
            "LOOM_DB_DSN at the primary (list every host with target_session_attrs=read-write); each retry "
            "reconnects",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The kind of a failure and, for the two blocked kinds, the condition."""

    kind: Kind
    condition: Condition | None = None


def classify(exc: BaseException) -> Verdict:
    """What a flush failure means. A blocking SQLSTATE wins over the outage list (53300 is in both)."""
    condition = BLOCKING.get(getattr(exc, "sqlstate", None) or "")
    if condition is not None:
        return Verdict(condition.kind, condition)
    if isinstance(exc, TRANSIENT_ERRORS):
        return Verdict(Kind.OUTAGE)
    return Verdict(Kind.FATAL)


@dataclass(frozen=True, slots=True)
class Blocker:
    """What blocks a consumer's flushes now: the condition, PostgreSQL's message, and since when (epoch s)."""

    condition: Condition
    message: str
    since: float

    def as_dict(self) -> dict[str, Any]:
        """Plain values for ``stats()``, the coordinator's status and ``loom_sink_errors``."""
        return {
            "sqlstate": self.condition.sqlstate,
            "condition": self.condition.name,
            "kind": str(self.condition.kind),
            "message": self.message,
            "fix": self.condition.fix,
            "since": self.since,
        }
