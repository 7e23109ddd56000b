"""Why a flush failed and what the consumer does about it: retry an outage, retry and report a blocker, or stop.

Pure. The pipeline calls :func:`classify` on every exception a flush (or its in-doubt check) raises:

- ``OUTAGE``: PostgreSQL is out of reach (:data:`loom_ray.db.TRANSIENT_ERRORS`). Retry with backoff.
- ``NEEDS_PERSON``: PostgreSQL answers but refuses the writes until someone changes something (a privilege
  revoked, a table dropped or altered, a password changed). Retry with backoff and report the fix.
- ``MAY_CLEAR``: PostgreSQL refuses the writes for a condition that can pass by itself (disk full, out of
  memory, too many connections, read-only during a failover). Retry with backoff and report it.
- ``FATAL``: anything else, a bug or a broken invariant (a unique violation after a successful offset
  compare-and-set means a duplicate write). The flush stops loudly and the consumer's loop ends with it.

Errors about one row's content never get here: the sink isolates the row and dead-letters it
(:func:`refuses_message`, :func:`refuses_route_row`). Everything is told apart by SQLSTATE and the error's
structured fields, never by message text.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg

from loom_ray.db import TRANSIENT_ERRORS

# asyncpg's binary encoder refusing one value (a str that is not UTF-8, an int wider than its column, a
# numeric exponent beyond PostgreSQL's): it aborts the COPY, and the savepoint rolls that back as it does a
# server error. Not TypeError: a value of the wrong Python type for its column means the column's type is not
# the one the row was built for, the same for every row.
ENCODE_ERRORS = (ValueError, OverflowError, struct.error)
# SQLSTATE classes about one row's content: 22 a value PostgreSQL cannot take, 23 a constraint (NOT NULL,
# CHECK, foreign key, unique, exclusion), 27 a triggered data change, 09 a triggered action, 2F/38/39 a
# function the row ran into, P0 PL/pgSQL (RAISE).
_ROW_CLASSES = frozenset({"22", "23", "27", "09", "2F", "38", "39", "P0"})
_ROW_STATES = frozenset({"54000"})  # program_limit_exceeded: one row too large (an index entry)
# In loom's own tables, constraints that a row can break without a bug in loom-ray. A unique violation in
# loom_messages after a successful offset compare-and-set is a duplicate write: a broken invariant, not data.
_MESSAGE_STATES = frozenset({"23502", "23503", "23514", "54000"})
# Raised by the PL/pgSQL RAISE statement (PostgreSQL's server_source_function): a trigger or function of the
# user's table refused the row, whatever SQLSTATE it chose.
_RAISE = "exec_stmt_raise"
ROUTE_TABLE_CHANGED = "LR001"  # raised by loom_route_guard(): the route's table is not the shape read


class Kind(StrEnum):
    """What a flush failure means; see the module docstring."""

    OUTAGE = "outage"
    NEEDS_PERSON = "needs_person"
    MAY_CLEAR = "may_clear"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class Condition:
    """A condition that holds a consumer back: its SQLSTATE (PostgreSQL's, or loom-ray's ``LR...``), its
    name, what it means, the fix, and what waits while it holds (``flushes``, or ``reads`` of partitions
    waiting for a schema)."""

    sqlstate: str
    name: str
    kind: Kind
    fix: str
    waiting: str = "flushes"


_RESTORE = "restore it as sql/ defines it (the sink writes loom_messages, loom_dead_letters, loom_audit, loom_offsets)"

BLOCKING: dict[str, Condition] = {
    c.sqlstate: c
    for c in (
        Condition(
            "42501",
            "insufficient_privilege",
            Kind.NEEDS_PERSON,
            "GRANT the role in LOOM_DB_DSN what it lacks on the table PostgreSQL names: for loom-ray's own, "
            "SELECT, INSERT ON loom_messages, loom_dead_letters, loom_audit and SELECT, INSERT, UPDATE ON "
            "loom_offsets (plus CONNECT on the database, USAGE on the schema), as sql/roles/least_privilege.sql "
            "does; for a route's table, SELECT, INSERT (and UPDATE, DELETE for an upsert route), USAGE on its "
            "schema",
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
            "42P10",
            "invalid_column_reference",
            Kind.NEEDS_PERSON,
            "an upsert route's table lost the unique key on the route's key (INSERT ... ON CONFLICT needs one): "
            "CREATE UNIQUE INDEX ON the table (the route's key columns)",
        ),
        Condition(
            "55000",
            "object_not_in_prerequisite_state",
            Kind.NEEDS_PERSON,
            "the unique key an upsert route writes by became DEFERRABLE, which INSERT ... ON CONFLICT cannot "
            "use: ALTER TABLE ... ALTER CONSTRAINT ... NOT DEFERRABLE",
        ),
        Condition(
            ROUTE_TABLE_CHANGED,
            "route_table_changed",
            Kind.NEEDS_PERSON,
            "a route's table was altered while loom-ray ran and no longer takes what was buffered for it (the "
            "message says which column and how): alter it back, or stop the job and start it again to route "
            "into the table as it is now (nothing buffered is lost: it was not committed)",
        ),
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
            "waiting": self.condition.waiting,
            "since": self.since,
        }


def refuses_message(exc: BaseException) -> bool:
    """Whether ``exc``, raised writing loom's own tables, is about one row's content: isolate the row and
    dead-letter it (a value PostgreSQL cannot take, a NOT NULL, CHECK or foreign key, a row too large, a
    value asyncpg cannot encode). Anything else fails every row alike, or means a bug."""
    if isinstance(exc, ENCODE_ERRORS):
        return True
    state = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and (state[:2] == "22" or state in _MESSAGE_STATES)


def refuses_route_row(exc: BaseException) -> bool:
    """Whether ``exc``, raised writing a route's table, is the table refusing one row: any value or
    constraint error (a unique key and an exclusion constraint included), and anything a trigger or
    function of the table raises (PL/pgSQL RAISE, whatever its SQLSTATE). Not the route's own guard: a table
    altered under the route is a condition of the table, not of a row."""
    if isinstance(exc, ENCODE_ERRORS):
        return True
    if not isinstance(exc, asyncpg.PostgresError):
        return False
    state = exc.sqlstate or ""
    if state == ROUTE_TABLE_CHANGED:
        return False
    return state[:2] in _ROW_CLASSES or state in _ROW_STATES or exc.server_source_function == _RAISE
