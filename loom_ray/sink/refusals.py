"""The dead letter's words for a row PostgreSQL (or asyncpg's encoder) refused at write time.

Pure; called by :mod:`loom_ray.sink.postgres` for each row the bisection isolated. Built from the error's
structured fields (SQLSTATE, constraint, column, data type, PL/pgSQL context), so the message names what
refused the row: the constraint, the trigger's function, the domain, the column.
"""

from __future__ import annotations

import asyncpg

Refusal = tuple[str, str, str | None]  # error_class, error_message, sqlstate


def message_refusal(exc: BaseException) -> Refusal:
    """A ``loom_messages`` row: the message starts with where PostgreSQL says the row failed (``COPY
    loom_messages, line 1, column kafka_ts``), which names the field."""
    if isinstance(exc, asyncpg.PostgresError):
        where = f"{exc.context}: " if exc.context else ""
        return type(exc).__name__, f"{where}{exc}", exc.sqlstate
    return _unencodable(exc, "COPY loom_messages")


def route_refusal(exc: BaseException, table: str) -> Refusal:
    """A routed record's row, refused by ``table`` (quoted label): what refused it (a constraint, a column's
    NOT NULL, a domain, a trigger's function) and PostgreSQL's message with its detail."""
    if not isinstance(exc, asyncpg.PostgresError):
        return _unencodable(exc, f"table {table}")
    by = []
    if exc.constraint_name:
        by.append(f"constraint {exc.constraint_name!r}")
    if exc.column_name:
        by.append(f"column {exc.column_name!r}")
    if exc.data_type_name:
        by.append(f"type {exc.data_type_name!r}")
    if exc.server_source_function == "exec_stmt_raise" and exc.context:
        by.append(f"raised by {exc.context.splitlines()[0]}")
    elif exc.context and not by:
        by.append(exc.context.splitlines()[0])
    detail = f" ({exc.detail})" if exc.detail else ""
    refused = f"table {table} refused the row" + (f" ({'; '.join(by)})" if by else "")
    return type(exc).__name__, f"{refused}: {exc.message}{detail}", exc.sqlstate


def _unencodable(exc: BaseException, where: str) -> Refusal:
    return (
        "Unencodable",
        f"{where}: asyncpg cannot encode a value of the row ({type(exc).__name__}: {exc})",
        None,
    )
