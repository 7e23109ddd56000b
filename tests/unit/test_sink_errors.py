"""classify(): every flush failure is an outage, a blocker (needing a person or clearing by itself) or fatal."""

from __future__ import annotations

import asyncpg
import pytest

from loom_ray.main import blocked_note
from loom_ray.policy.sink_errors import BLOCKING, Blocker, Kind, classify


@pytest.mark.parametrize(
    ("exc", "kind", "sqlstate", "condition"),
    [
        (
            asyncpg.InsufficientPrivilegeError("permission denied for table loom_messages"),
            Kind.NEEDS_PERSON,
            "42501",
            "insufficient_privilege",
        ),
        (
            asyncpg.UndefinedTableError('relation "loom_messages" does not exist'),
            Kind.NEEDS_PERSON,
            "42P01",
            "undefined_table",
        ),
        (
            asyncpg.UndefinedColumnError('column "headers" does not exist'),
            Kind.NEEDS_PERSON,
            "42703",
            "undefined_column",
        ),
        (asyncpg.DatatypeMismatchError("column is of type integer"), Kind.NEEDS_PERSON, "42804", "datatype_mismatch"),
        (
            asyncpg.InvalidSchemaNameError('schema "x" does not exist'),
            Kind.NEEDS_PERSON,
            "3F000",
            "invalid_schema_name",
        ),
        (
            asyncpg.InvalidPasswordError("password authentication failed"),
            Kind.NEEDS_PERSON,
            "28P01",
            "invalid_password",
        ),
        (
            asyncpg.InvalidAuthorizationSpecificationError("no pg_hba.conf entry"),
            Kind.NEEDS_PERSON,
            "28000",
            "invalid_authorization_specification",
        ),
        (asyncpg.DiskFullError("could not extend file"), Kind.MAY_CLEAR, "53100", "disk_full"),
        (asyncpg.OutOfMemoryError("out of memory"), Kind.MAY_CLEAR, "53200", "out_of_memory"),
        # 53300 is also in db.TRANSIENT_ERRORS (the coordinator treats it as an outage): for a flush it is reported.
        (asyncpg.TooManyConnectionsError("too many clients"), Kind.MAY_CLEAR, "53300", "too_many_connections"),
        (
            asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
            Kind.MAY_CLEAR,
            "25006",
            "read_only_sql_transaction",
        ),
    ],
)
def test_blocking_sqlstates_carry_their_condition_and_a_fix(
    exc: BaseException, kind: Kind, sqlstate: str, condition: str
) -> None:
    verdict = classify(exc)
    assert verdict.kind is kind
    assert verdict.condition is not None
    assert (verdict.condition.sqlstate, verdict.condition.name) == (sqlstate, condition)
    assert verdict.condition.fix


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.SerializationError("could not serialize access"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.ProtocolViolationError("insufficient data left in message"),  # a stale statement after ALTER TABLE
    ],
)
def test_out_of_reach_is_an_outage(exc: BaseException) -> None:
    assert classify(exc).kind is Kind.OUTAGE
    assert classify(exc).condition is None


@pytest.mark.parametrize(
    "exc",
    [
        # After a successful offset compare-and-set a unique violation means a duplicate write: a broken invariant.
        asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
        asyncpg.PostgresSyntaxError("syntax error at or near"),  # our SQL is wrong: a bug
        asyncpg.DataError("invalid input for query argument"),  # a row error outside the isolating COPY: a bug
        asyncpg.InternalServerError("XX000"),
        ValueError("a bug of ours"),
    ],
)
def test_bugs_and_broken_invariants_are_fatal(exc: BaseException) -> None:
    assert classify(exc).kind is Kind.FATAL


def test_the_table_is_keyed_by_its_own_sqlstates() -> None:
    assert all(sqlstate == condition.sqlstate for sqlstate, condition in BLOCKING.items())
    assert {c.kind for c in BLOCKING.values()} == {Kind.NEEDS_PERSON, Kind.MAY_CLEAR}


def _blocker(sqlstate: str, since: float, message: str = "m") -> dict[str, object]:
    return Blocker(BLOCKING[sqlstate], message, since).as_dict()


def test_progress_note_groups_actors_by_sqlstate_with_the_oldest_since_and_the_fix() -> None:
    blocked = {
        "c1": _blocker("53100", 100.0, "could not extend file\nDETAIL: more"),
        "c2": _blocker("53100", 90.0, "could not extend file"),
        "c3": _blocker("42501", 110.0, "permission denied for table loom_messages"),
    }
    note = blocked_note(blocked, now=130.0)
    assert note == (
        ", flushes of 1 actors blocked for 20s by SQLSTATE 42501 (insufficient_privilege: permission denied for "
        f"table loom_messages); fix: {BLOCKING['42501'].fix}"
        ", flushes of 2 actors blocked for 40s by SQLSTATE 53100 (disk_full: could not extend file); "
        f"fix: {BLOCKING['53100'].fix}"
    )
    assert blocked_note({}, now=130.0) == ""
