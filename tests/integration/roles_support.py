"""A migrated database with one LOGIN user in each of Tally's group roles."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest_asyncio

from tally.store.migrate import migrate

ROLES = ("tally_migrator", "tally_worker", "tally_api", "tally_reader")


def as_user(dsn: str, user: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


@pytest_asyncio.fixture
async def users(fresh_database: str) -> AsyncIterator[dict[str, str]]:
    """A migrated database and one LOGIN user in each role: role -> the user's DSN."""
    admin = await asyncpg.connect(fresh_database)
    prefix = f"t_{uuid.uuid4().hex[:10]}"
    created: list[str] = []
    try:
        await migrate(admin)
        dsns = {}
        for role in ROLES:
            user = f"{prefix}_{role.removeprefix('tally_')}"
            await admin.execute(f"CREATE USER {user} PASSWORD 'pw' IN ROLE {role}")
            created.append(user)
            dsns[role] = as_user(fresh_database, user, "pw")
        yield dsns
    finally:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY($1)",
            created,
        )
        for user in created:
            await admin.execute(f"DROP USER {user}")
        await admin.close()
