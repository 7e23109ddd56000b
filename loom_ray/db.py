"""PostgreSQL connections: the per-actor asyncpg pool, outage classification, and the capacity check."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from loom_ray.errors import CapacityError
from loom_ray.settings import Settings

log = logging.getLogger(__name__)

# Failures that mean "the database is (for now) out of reach": retry with backoff, keep the buffers.
# Anything else from PostgreSQL is about the data or the schema and is handled where it happens.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable (ConnectionError is a subclass)
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08, including 08007 "transaction resolution unknown"
    asyncpg.InterfaceError,  # the connection closed under us (ConnectionDoesNotExistError)
    asyncpg.CannotConnectNowError,  # 57P03, the server is starting up
    asyncpg.AdminShutdownError,  # 57P01, fast shutdown
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.TooManyConnectionsError,  # 53300
    asyncpg.SerializationError,  # 40001
    asyncpg.DeadlockDetectedError,  # 40P01
    asyncpg.QueryCanceledError,  # 57014, statement_timeout
    asyncpg.LockNotAvailableError,  # 55P03, lock_timeout
    asyncpg.IdleInTransactionSessionTimeoutError,  # 25P03, a stalled flush was cut off
)


def session_settings(settings: Settings, application_name: str) -> dict[str, str]:
    """Server settings every ingest connection runs with (the seed's DB tuning)."""
    return {
        "synchronous_commit": settings.db_synchronous_commit,
        "jit": settings.db_jit,
        "statement_timeout": str(settings.db_statement_timeout_ms),
        "idle_in_transaction_session_timeout": str(settings.db_idle_in_transaction_timeout_ms),
        "application_name": application_name,
        "search_path": quoted_schema(settings),
    }


def quote_identifier(name: str) -> str:
    """A name validated at start (LOOM_DB_SCHEMA: no quote can be in it) as a quoted SQL identifier."""
    return f'"{name}"'


def quoted_schema(settings: Settings) -> str:
    """LOOM_DB_SCHEMA as a quoted identifier, for ``search_path``."""
    return quote_identifier(settings.db_schema)


async def connect(settings: Settings, application_name: str) -> asyncpg.Connection:
    """One connection with the tables' schema on its search_path (the driver's start and summary)."""
    return await asyncpg.connect(
        settings.dsn, server_settings={"application_name": application_name, "search_path": quoted_schema(settings)}
    )


async def create_pool(
    settings: Settings,
    application_name: str,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> asyncpg.Pool:
    """A pool of LOOM_DB_MIN_POOL_SIZE..LOOM_DB_MAX_POOL_SIZE connections with the session settings.

    ``application_name`` shows in ``pg_stat_activity`` which actor (and process) holds a connection;
    ``init`` runs on every new connection (the sink's codecs).
    """
    pool = await asyncpg.create_pool(
        settings.dsn,
        min_size=settings.db_min_pool_size,
        max_size=settings.db_max_pool_size,
        server_settings=session_settings(settings, application_name),
        command_timeout=max(settings.db_statement_timeout_ms / 1000, 60.0),
        init=init,
    )
    assert pool is not None
    return pool


async def check_capacity(conn: asyncpg.Connection, settings: Settings) -> None:
    """Refuse to start when LOOM_MAX_ACTORS x LOOM_DB_MAX_POOL_SIZE exceeds the free connections."""
    row = await conn.fetchrow(
        """SELECT current_setting('max_connections')::int AS max_connections,
                  current_setting('superuser_reserved_connections')::int AS reserved,
                  (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS used"""
    )
    assert row is not None
    free = row["max_connections"] - row["reserved"] - row["used"]
    # +1: the coordinator's own connection.
    wanted = settings.max_actors * settings.db_max_pool_size + 1
    if wanted > free:
        raise CapacityError(
            f"LOOM_MAX_ACTORS ({settings.max_actors}) x LOOM_DB_MAX_POOL_SIZE ({settings.db_max_pool_size}) + 1 "
            f"= {wanted} connections, but PostgreSQL has only {free} free (max_connections="
            f"{row['max_connections']}, reserved={row['reserved']}, in use={row['used']}); lower "
            "LOOM_DB_MAX_POOL_SIZE or LOOM_MAX_ACTORS, or raise max_connections"
        )
    log.info("database capacity ok: need=%d free=%d", wanted, free)
