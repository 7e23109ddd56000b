"""classify(): every flush failure is an outage, a blocker (needing a person or clearing by itself) or fatal."""

from __future__ import annotations

import asyncpg
import pytest

from loom_ray.errors import ColumnTypeChangedError, RouteTableChangedError
from loom_ray.formats.registry import SCHEMA_UNKNOWN
from loom_ray.main import blocked_note
from loom_ray.policy.sink_errors import BLOCKING, Blocker, Kind, classify, refuses_message, refuses_route_row


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


def test_progress_note_says_reads_wait_when_a_schema_holds_them() -> None:
    blocked = {"c1": Blocker(SCHEMA_UNKNOWN, "schema 7 not found", 100.0).as_dict()}
    assert blocked_note(blocked, now=130.0) == (
        ", reads of 1 actors blocked for 30s by SQLSTATE LR003 (schema_unknown: schema 7 not found); "
        f"fix: {SCHEMA_UNKNOWN.fix}"
    )


def _pg(sqlstate: str, routine: str = "ExecConstraints", **fields: str) -> asyncpg.PostgresError:
    """A server error as asyncpg builds it from PostgreSQL's fields (``R``: the C function that raised it)."""
    return asyncpg.PostgresError.new({"C": sqlstate, "M": "m", "R": routine, **fields})


@pytest.mark.parametrize(
    ("exc", "message_row", "route_row"),
    [
        (_pg("22001"), True, True),  # a value too long
        (_pg("23502"), True, True),  # NOT NULL
        (_pg("23514"), True, True),  # CHECK
        (_pg("23503"), True, True),  # foreign key
        (_pg("54000"), True, True),  # one row too large for an index
        (ValueError("cannot encode"), True, True),  # asyncpg's encoder
        # A unique key or an exclusion constraint: in loom_messages a duplicate write (a bug); in a user's table
        # the table refusing the row (on_duplicate = "dead_letter").
        (_pg("23505"), False, True),
        (_pg("23P01"), False, True),
        (_pg("P0001", "exec_stmt_raise"), False, True),  # a trigger's RAISE
        (_pg("U0001", "exec_stmt_raise"), False, True),  # a trigger's RAISE with a code of its own
        (_pg("42501", "exec_stmt_raise"), False, True),  # ... even one PostgreSQL uses for something else
        (_pg("42501", "aclcheck_error"), False, False),  # a privilege really missing: every row alike
        (_pg("LR001", "exec_stmt_raise"), False, False),  # the route's own guard: the table changed
        (_pg("40P01", "DeadLockReport"), False, False),  # a deadlock: retried whole
        (TypeError("expected str"), False, False),  # a column's type changed: every row alike
    ],
)
def test_which_errors_refuse_one_row(exc: BaseException, message_row: bool, route_row: bool) -> None:
    assert refuses_message(exc) is message_row
    assert refuses_route_row(exc) is route_row


@pytest.mark.parametrize(
    ("sqlstate", "condition"),
    [
        ("42P10", "invalid_column_reference"),
        ("55000", "object_not_in_prerequisite_state"),
        ("LR001", "route_table_changed"),
    ],
)
def test_a_routes_table_that_needs_a_person_blocks_its_flushes(sqlstate: str, condition: str) -> None:
    verdict = classify(_pg(sqlstate))
    assert verdict.kind is Kind.NEEDS_PERSON
    assert verdict.condition is not None and verdict.condition.name == condition


def test_loom_errors_that_carry_a_sqlstate_are_classified_by_it() -> None:
    assert classify(ColumnTypeChangedError("x")).kind is Kind.NEEDS_PERSON
    assert classify(RouteTableChangedError("x")).condition == BLOCKING["LR001"]
