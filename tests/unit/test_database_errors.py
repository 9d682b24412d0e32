"""Which database errors a worker retries, and which stop it."""

from __future__ import annotations

import asyncpg

from tally.errors import is_transient


def test_which_database_errors_are_transient() -> None:
    transient = [
        asyncpg.AdminShutdownError("x"),
        asyncpg.SerializationError("x"),
        asyncpg.DeadlockDetectedError("x"),
        asyncpg.ConnectionDoesNotExistError("x"),
        asyncpg.QueryCanceledError("x"),
        ConnectionResetError(),
        TimeoutError(),
    ]
    permanent = [
        asyncpg.UndefinedTableError("x"),
        asyncpg.InsufficientPrivilegeError("x"),
        asyncpg.PostgresSyntaxError("x"),
        RuntimeError("x"),
    ]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in permanent] == [False] * len(permanent)
