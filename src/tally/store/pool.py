"""Connections to PostgreSQL: codecs set once per connection (`init=`), and
connection failures turned into one sentence a person can act on."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import orjson

from tally.config import redact_url

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Connection = Any

# What a database call can raise when the server, the network or the query
# fails (TimeoutError is an OSError; listed for the reader).
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


# SQLSTATE classes (and codes) that a retry can outlive: the connection,
# rollbacks (serialization failure, deadlock), resources, operator intervention
# (shutdown, cancel), system errors, a lock timeout, a replica after failover.
_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
_TRANSIENT_CODES = ("55P03", "25006")
_PERMANENT_CODES = ("57P04",)  # database_dropped


def is_transient(exc: BaseException) -> bool:
    """Whether a database error may go away by itself (retry it), or will not
    (a missing table, a refused privilege, a bad query: stop and say so)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state in _PERMANENT_CODES:
            return False
        return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_CODES
    return isinstance(exc, DATABASE_ERRORS)


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached or refused us; the message says what to check."""


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb",
        encoder=lambda value: orjson.dumps(value).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


def explain(exc: BaseException, dsn: str) -> str:
    """A one-line explanation of why connecting to `dsn` failed."""
    where = redact_url(dsn)
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return f"PostgreSQL at {where} refused the password: check the user and password in TALLY_DATABASE_URL"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"PostgreSQL at {where} has no such database: create it, or fix the name in TALLY_DATABASE_URL"
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return (
            f"PostgreSQL at {where} refused the connection ({exc}): check the user and pg_hba.conf"
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host of {where}: check TALLY_DATABASE_URL"
    if isinstance(exc, ConnectionRefusedError | OSError | asyncio.TimeoutError | TimeoutError):
        return f"cannot reach PostgreSQL at {where} ({type(exc).__name__}: {exc}): is it running, and is the address right?"
    return f"PostgreSQL at {where}: {type(exc).__name__}: {exc}"


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 4, **kwargs: Any
) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=_init_connection, timeout=10, **kwargs
        )
    except DATABASE_ERRORS as exc:
        raise DatabaseUnavailable(explain(exc, dsn)) from exc
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    try:
        connection = await asyncpg.connect(dsn, timeout=10)
    except DATABASE_ERRORS as exc:
        raise DatabaseUnavailable(explain(exc, dsn)) from exc
    await _init_connection(connection)
    return connection
