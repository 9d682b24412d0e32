"""Versioned SQL migrations shipped in the package, applied in order.

Safe to run from several workers at once: the whole run holds a transaction
advisory lock, so one applies and the others then find nothing to do. A
schema already at the latest version is left alone without any DDL or lock,
so a role without DDL rights may "migrate" a current schema. `check_schema`
is the version check of `--no-migrate`: it never changes anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from tally.store.pool import Connection

# Any fixed 64-bit number, the same for every Tally process.
_LOCK_KEY = 0x7A11_7A11_0000_0001
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_HOW = "run `tally migrate` as a role with DDL rights (a member of tally_migrator)"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


class SchemaBehind(Exception):
    """The schema is older than this Tally and this role may not (or must not) upgrade it."""


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


def latest_version() -> int:
    """The schema version this Tally needs."""
    return len(migrations())


async def current_version(connection: Connection) -> int:
    exists = await connection.fetchval("SELECT to_regclass('tally.schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(
        await connection.fetchval("SELECT coalesce(max(version), 0) FROM tally.schema_migrations")
    )


def _behind(have: int, need: int, why: str = "") -> SchemaBehind:
    return SchemaBehind(f"the schema is at version {have}, this tally needs {need}{why}: {_HOW}")


async def check_schema(connection: Connection) -> int:
    """The schema's version; SchemaBehind if it is older than this Tally needs.

    Changes nothing (for `--no-migrate`): a newer schema is accepted, as
    migrations only add what older versions can ignore."""
    need = latest_version()
    try:
        have = await current_version(connection)
    except asyncpg.InsufficientPrivilegeError as exc:
        raise SchemaBehind(
            f"cannot read the schema version ({exc}): this user is in none of the tally roles, "
            f"or the schema predates them; {_HOW}, then see docs/operations.md"
        ) from None
    if have < need:
        raise _behind(have, need)
    return have


async def migrate(connection: Connection, up_to: int | None = None) -> list[Migration]:
    """Apply what is missing (up to version `up_to`, default all); returns the
    migrations applied by this call."""
    wanted = [m for m in migrations() if up_to is None or m.version <= up_to]
    if wanted and await _is_at_least(connection, wanted[-1].version):
        return []  # nothing to do: no lock, no DDL (a non-DDL role gets here too)
    try:
        return await _apply(connection, wanted)
    except asyncpg.InsufficientPrivilegeError as exc:
        have = await current_version(connection)
        raise _behind(
            have, wanted[-1].version, f", and this user may not upgrade it ({exc})"
        ) from None


async def _is_at_least(connection: Connection, version: int) -> bool:
    try:
        return await current_version(connection) >= version
    except asyncpg.InsufficientPrivilegeError:
        return False  # let the real run say what is refused


async def _apply(connection: Connection, wanted: list[Migration]) -> list[Migration]:
    applied = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        # Only when missing: CREATE SCHEMA IF NOT EXISTS needs CREATE on the
        # database even when the schema exists, which a migrator need not have.
        if not await connection.fetchval("SELECT to_regnamespace('tally') IS NOT NULL"):
            await connection.execute("CREATE SCHEMA tally")
        if not await connection.fetchval(
            "SELECT to_regclass('tally.schema_migrations') IS NOT NULL"
        ):
            await connection.execute(
                "CREATE TABLE tally.schema_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
        done = await current_version(connection)
        for migration in wanted:
            if migration.version <= done:
                continue
            await connection.execute(migration.sql)
            # A migration may SET LOCAL ROLE tally_migrator; the next starts afresh.
            await connection.execute("RESET ROLE")
            await connection.execute(
                "INSERT INTO tally.schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration)
    return applied
