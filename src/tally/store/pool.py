"""Connections to PostgreSQL: codecs set once per connection (`init=`), and
connection failures turned into one sentence a person can act on."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import orjson

from tally.config import Settings, redact_url

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Connection = Any

# What a database call can raise when the server, the network or the query
# fails (TimeoutError is an OSError; listed for the reader).
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached or refused us; the message says what to check."""


# TCP keepalive on our side of every connection: a PostgreSQL host that
# vanished (failover, a black-holed network) is noticed in about 60 s even by
# a connection that waits for nothing. The server probes its side likewise
# (server_settings below), so locks of a dead client are released.
KEEPALIVE_IDLE = 30
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 3
_SERVER_KEEPALIVES = {
    "tcp_keepalives_idle": str(KEEPALIVE_IDLE),
    "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL),
    "tcp_keepalives_count": str(KEEPALIVE_COUNT),
}


def _keepalive(connection: asyncpg.Connection) -> None:
    transport = getattr(connection, "_transport", None)  # asyncpg has no public handle
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket has no keepalive
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


async def _init_connection(connection: asyncpg.Connection) -> None:
    _keepalive(connection)
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
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    statement_timeout: float = 30.0,
    lock_timeout: float = 10.0,
    **kwargs: Any,
) -> asyncpg.Pool:
    """A pool whose every statement has a timeout, on the server
    (statement_timeout, lock_timeout, idle_in_transaction_session_timeout) and
    on the client (command_timeout, a little longer, for a server that went
    silent), and whose connections have TCP keepalives."""
    server_settings = {
        **_SERVER_KEEPALIVES,
        "statement_timeout": f"{int(statement_timeout * 1000)}ms",
        "lock_timeout": f"{int(lock_timeout * 1000)}ms",
        "idle_in_transaction_session_timeout": f"{int(statement_timeout * 2000)}ms",
        **kwargs.pop("server_settings", {}),
    }
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            timeout=10,
            command_timeout=statement_timeout + 5,
            server_settings=server_settings,
            **kwargs,
        )
    except DATABASE_ERRORS as exc:
        raise DatabaseUnavailable(explain(exc, dsn)) from exc
    assert pool is not None
    return pool


POOL_CLOSE_SECONDS = 10.0


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close gracefully if the server answers, else drop the connections: a
    black-holed one would make pool.close() wait, then raise TimeoutError."""
    try:
        await asyncio.wait_for(pool.close(), timeout=POOL_CLOSE_SECONDS)
    except (TimeoutError, *DATABASE_ERRORS):
        pool.terminate()


async def connect(dsn: str) -> asyncpg.Connection:
    try:
        # No statement timeout: migrations and reports may take long.
        connection = await asyncpg.connect(dsn, timeout=10, server_settings=_SERVER_KEEPALIVES)
    except DATABASE_ERRORS as exc:
        raise DatabaseUnavailable(explain(exc, dsn)) from exc
    await _init_connection(connection)
    return connection


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """One connection for a command (`connect`), closed however the block ends."""
    connection = await connect(settings.database_url)
    try:
        yield connection
    finally:
        await connection.close()
