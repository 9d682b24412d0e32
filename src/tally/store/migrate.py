"""Versioned SQL migrations shipped in the package, applied in order.

Safe to run from several workers at once: the whole run holds a transaction
advisory lock, so one applies and the others then find nothing to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from tally.store.pool import Connection

# Any fixed 64-bit number, the same for every Tally process.
_LOCK_KEY = 0x7A11_7A11_0000_0001
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("tally.store.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions must be 1..N without gaps, found {versions}")
    return found


async def current_version(connection: Connection) -> int:
    exists = await connection.fetchval("SELECT to_regclass('tally.schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(
        await connection.fetchval("SELECT coalesce(max(version), 0) FROM tally.schema_migrations")
    )


async def migrate(connection: Connection) -> list[Migration]:
    """Apply what is missing; returns the migrations applied by this call."""
    applied = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await connection.execute(
            "CREATE SCHEMA IF NOT EXISTS tally;"
            "CREATE TABLE IF NOT EXISTS tally.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = await current_version(connection)
        for migration in migrations():
            if migration.version <= done:
                continue
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO tally.schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration)
    return applied
