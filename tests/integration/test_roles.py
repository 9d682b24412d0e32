"""Least privilege: what each group role the migrations create may and may not do,
tried by real LOGIN users against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tally.store.migrate import migrate, migrations
from tests.integration.roles_support import ROLES, users

pytestmark = pytest.mark.asyncio(loop_scope="function")
__all__ = ["users"]  # the fixture

SEL, INS, UPD, DEL = "SELECT", "INSERT", "UPDATE", "DELETE"
# Every relation of the schema and who may do what on it. A table or sequence a
# migration adds must be added here: its grants are decided, never defaulted.
GRANTS: dict[str, dict[str, set[str]]] = {
    "schema_migrations": {"tally_worker": {SEL}, "tally_api": {SEL}},
    "metrics": {"tally_worker": {SEL}, "tally_api": {SEL, INS, UPD}, "tally_reader": {SEL}},
    "definitions_revision": {"tally_worker": {SEL}, "tally_api": {SEL, UPD}},
    "metric_values": {
        "tally_worker": {SEL, INS, UPD},
        "tally_api": {SEL, INS, UPD},
        "tally_reader": {SEL},
    },
    "unique_members": {"tally_worker": {SEL, INS, DEL}},  # DELETE: retention passes
    "partition_offsets": {"tally_worker": {SEL, INS, UPD}},
    "dedup_segments": {"tally_worker": {SEL, INS, DEL}},
    "dedup_segments_segment_id_seq": {"tally_worker": {"USAGE"}},
    "api_idempotency": {"tally_api": {SEL, INS, UPD, DEL}},
    "value_adjustments": {"tally_api": {SEL, INS}},
    "value_adjustments_seq_seq": {"tally_api": {"USAGE"}},
    "parked_dead_letters": {"tally_worker": {INS}},
    "parked_dead_letters_id_seq": {"tally_worker": {"USAGE"}},
    "metric_revision": {},  # no longer drawn from
    "metric_starts": {"tally_worker": {SEL, INS}},
    # a backfill refuses these; so does POST /backfills, before it starts one (0010)
    "metrics_before_starts": {"tally_worker": {SEL}, "tally_api": {SEL}},
    # A backfill runs as tally_worker; the API reads status, cancels (UPDATE of
    # three columns only, a column grant: test_the_api_cancels_...), marks partial values.
    "backfills": {"tally_worker": {SEL, INS, UPD}, "tally_api": {SEL}, "tally_reader": {SEL}},
    "backfill_partitions": {
        "tally_worker": {SEL, INS, UPD},
        "tally_api": {SEL},
        "tally_reader": {SEL},
    },
    # Each external value's audit row (migration 0009), written by the API.
    "external_value_audit": {"tally_api": {SEL, INS}},
    "external_value_audit_seq_seq": {"tally_api": {"USAGE"}},
}
TABLES = [name for name in GRANTS if not name.endswith(("_seq", "metric_revision"))]
A_ROW = {
    "metrics": "(uid, definition) VALUES ('x', '{}')",
    "definitions_revision": "(revision) VALUES (1)",
    "metric_values": "VALUES ('m', 'c', '', 'day', '2026-01-01Z', '2026-01-02Z', 1, 1)",
    "unique_members": "VALUES ('m', 'c', 'day', '2026-01-01Z', '', 'u')",
    "partition_offsets": "(topic, partition) VALUES ('t', 0)",
    "dedup_segments": "(topic, partition, bucket, id_count, ids) VALUES ('t', 0, 1, 0, '')",
    "api_idempotency": "(operation, key, fingerprint, principal) VALUES ('o', 'k', '', 'p')",
    "value_adjustments": "(metric_uid, customer_id, time_unit, period_start, period_end,"
    " group_key, delta, value_before, value_after, reason, principal, idempotency_key)"
    " VALUES ('m', 'c', 'day', '2026-01-01Z', '2026-01-02Z', '', 1, 0, 1, 'r', 'p', 'k')",
    "schema_migrations": "VALUES (999, 'x')",
    "metric_starts": "(metric_uid, topic, partition, start_offset) VALUES ('m', 't', 0, 1)",
    "metrics_before_starts": "(metric_uid) VALUES ('m')",
    "backfills": "(metric_uid, state, from_spec) VALUES ('m', 'running', 'earliest')",
    "backfill_partitions": "(metric_uid, topic, partition, from_offset, end_offset, next_offset)"
    " VALUES ('m', 't', 0, 0, 1, 0)",
    "parked_dead_letters": '(topic, partition, "offset", reason, detail, send_error,'
    " header_names, header_values, record_timestamp) VALUES ('t', 0, 1, 'r', 'd', 'e', '{}',"
    " '{}', 0)",
    "external_value_audit": "(value_uid, metric_uid, context_type, entity_uid, time_unit,"
    " metric_date, period_start, value, metadata, principal) VALUES"
    " (gen_random_uuid(), 'm', 'PARTY', 'e', 'day', '2026-01-01', '2026-01-01Z', 1, '{}', 'p')",
}

UPDATED = {
    "metrics": "uid",
    "definitions_revision": "revision",
    "metric_values": "value",
    "unique_members": "member",
    "partition_offsets": "owner",
    "dedup_segments": "bucket",
    "api_idempotency": "key",
    "value_adjustments": "reason",
    "schema_migrations": "name",
    "parked_dead_letters": "reason",
    "metric_starts": "owner",
    "metrics_before_starts": "metric_uid",
    "backfills": "owner",
    "backfill_partitions": "owner",
    "external_value_audit": "principal",
}


async def allowed(dsn: str, *statements: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            transaction = connection.transaction()
            await transaction.start()
            try:
                await connection.execute(statement)
            finally:
                await transaction.rollback()  # leave the database as it was
    finally:
        await connection.close()


async def refused(dsn: str, *statements: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(statement)
    finally:
        await connection.close()


def writes(table: str) -> list[str]:
    column = UPDATED[table]
    return [
        f"INSERT INTO tally.{table} {A_ROW[table]}",
        f"UPDATE tally.{table} SET {column} = {column}",
        f"DELETE FROM tally.{table}",
        f"TRUNCATE tally.{table}",
    ]


async def test_each_role_holds_exactly_its_grants_and_the_migrator_owns_everything(
    users: dict[str, str], fresh_database: str
) -> None:
    admin = await asyncpg.connect(fresh_database)
    try:
        owners = await admin.fetch(
            "SELECT relname AS name, relowner::regrole::text AS owner FROM pg_class"
            " WHERE relnamespace = 'tally'::regnamespace AND relkind IN ('r', 'p', 'v', 'm', 'S', 'f')"
            " UNION ALL SELECT proname, proowner::regrole::text FROM pg_proc"
            " WHERE pronamespace = 'tally'::regnamespace"
            " UNION ALL SELECT 'schema tally', nspowner::regrole::text FROM pg_namespace"
            " WHERE nspname = 'tally'"
        )
        grants = await admin.fetch(
            "SELECT c.relname AS name, a.grantee::regrole::text AS grantee, a.privilege_type"
            " FROM pg_class AS c, aclexplode(c.relacl) AS a"
            " WHERE c.relnamespace = 'tally'::regnamespace AND a.grantee <> c.relowner"
        )
        relations = await admin.fetch(
            "SELECT relname FROM pg_class WHERE relnamespace = 'tally'::regnamespace"
            " AND relkind IN ('r', 'p', 'v', 'm', 'S', 'f')"
        )
        schema_grants = await admin.fetch(
            "SELECT a.grantee::regrole::text AS grantee, a.privilege_type FROM pg_namespace AS n,"
            " aclexplode(n.nspacl) AS a WHERE n.nspname = 'tally' AND a.grantee <> n.nspowner"
        )
    finally:
        await admin.close()
    assert {r["owner"] for r in owners} == {"tally_migrator"}, owners
    undecided = {r["relname"] for r in relations} - set(GRANTS)
    assert not undecided, f"decide the grants of {undecided} in its migration and in GRANTS"
    held: dict[str, dict[str, set[str]]] = {name: {} for name in GRANTS}
    for row in grants:
        held[row["name"]].setdefault(row["grantee"], set()).add(row["privilege_type"])
    assert held == GRANTS
    assert sorted((r["grantee"], r["privilege_type"]) for r in schema_grants) == [
        ("tally_api", "USAGE"),
        ("tally_reader", "USAGE"),
        ("tally_worker", "USAGE"),
    ]


async def test_the_reader_reads_values_and_definitions_and_changes_nothing(
    users: dict[str, str],
) -> None:
    reader = users["tally_reader"]
    await allowed(reader, "SELECT * FROM tally.metric_values", "SELECT * FROM tally.metrics")
    statements = [
        *(s for table in TABLES for s in writes(table)),
        "UPDATE tally.metric_values SET value = value + 1",
        "UPDATE tally.metrics SET deleted_at = now()",
        "SELECT * FROM tally.partition_offsets",
        "SELECT * FROM tally.api_idempotency",
        "SELECT * FROM tally.value_adjustments",
        "SELECT * FROM tally.unique_members",
        "SELECT * FROM tally.definitions_revision",
        "CREATE TABLE tally.mine (a int)",
        "DROP TABLE tally.metric_values",
    ]
    await refused(reader, *statements)


async def test_the_worker_writes_its_state_and_cannot_change_the_schema_or_the_api_tables(
    users: dict[str, str],
) -> None:
    worker = users["tally_worker"]
    await allowed(
        worker,
        f"INSERT INTO tally.metric_values {A_ROW['metric_values']}",
        "UPDATE tally.metric_values SET value = value + 1",
        f"INSERT INTO tally.unique_members {A_ROW['unique_members']}",
        f"INSERT INTO tally.partition_offsets {A_ROW['partition_offsets']} ON CONFLICT DO NOTHING",
        "UPDATE tally.partition_offsets SET next_offset = 1",
        f"INSERT INTO tally.dedup_segments {A_ROW['dedup_segments']}",
        "DELETE FROM tally.dedup_segments",
        "SELECT revision FROM tally.definitions_revision",
        "SELECT * FROM tally.metrics",
        "SELECT max(version) FROM tally.schema_migrations",
    )
    await refused(
        worker,
        "DROP TABLE tally.metric_values",
        "ALTER TABLE tally.metric_values ADD COLUMN extra int",
        "ALTER TABLE tally.partition_offsets DROP COLUMN owner",
        "CREATE TABLE tally.mine (a int)",
        "TRUNCATE tally.metric_values",
        "DELETE FROM tally.metric_values",
        "SELECT * FROM tally.api_idempotency",
        f"INSERT INTO tally.api_idempotency {A_ROW['api_idempotency']}",
        "SELECT * FROM tally.value_adjustments",
        f"INSERT INTO tally.value_adjustments {A_ROW['value_adjustments']}",
        "UPDATE tally.metrics SET deleted_at = now()",
        f"INSERT INTO tally.metrics {A_ROW['metrics']}",
        "UPDATE tally.definitions_revision SET revision = 0",
        f"INSERT INTO tally.schema_migrations {A_ROW['schema_migrations']}",
    )


async def test_the_api_cannot_touch_the_workers_state_or_the_schema(
    users: dict[str, str],
) -> None:
    api = users["tally_api"]
    await refused(
        api,
        "SELECT * FROM tally.partition_offsets",
        f"INSERT INTO tally.partition_offsets {A_ROW['partition_offsets']}",
        "UPDATE tally.partition_offsets SET next_offset = 0",
        "SELECT * FROM tally.dedup_segments",
        f"INSERT INTO tally.dedup_segments {A_ROW['dedup_segments']}",
        "DELETE FROM tally.dedup_segments",
        "SELECT * FROM tally.unique_members",
        "DELETE FROM tally.metrics",
        "DELETE FROM tally.metric_values",
        "DROP TABLE tally.metrics",
        "ALTER TABLE tally.metrics ADD COLUMN extra int",
    )


async def test_the_api_cancels_a_backfill_but_changes_nothing_else_of_it(
    users: dict[str, str],
) -> None:
    api = users["tally_api"]
    await allowed(
        api,
        "UPDATE tally.backfills SET state = 'cancelled', finished_at = now(), updated_at = now()",
    )
    await refused(
        api,
        "UPDATE tally.backfills SET owner = 'x'",
        "UPDATE tally.backfills SET from_spec = 'earliest'",
        "SELECT * FROM tally.metric_starts",
        "UPDATE tally.backfill_partitions SET next_offset = 0",
    )
    await refused(users["tally_reader"], "SELECT * FROM tally.metric_starts")


async def test_a_migrator_changes_the_schema_without_being_a_superuser(
    users: dict[str, str], fresh_database: str
) -> None:
    migrator = users["tally_migrator"]
    await allowed(
        migrator,
        "ALTER TABLE tally.metric_values ADD COLUMN probe int",
        "CREATE TABLE tally.probe (a int)",
        "DROP TABLE tally.unique_members",
    )
    # The last migration again, as the migrator: it may run every statement of it.
    last = migrations()[-1]
    admin = await asyncpg.connect(fresh_database)
    try:
        await admin.execute("DELETE FROM tally.schema_migrations WHERE version = $1", last.version)
    finally:
        await admin.close()
    connection = await asyncpg.connect(migrator)
    try:
        assert [m.version for m in await migrate(connection)] == [last.version]
        assert await connection.fetchval("SELECT current_user = session_user")
    finally:
        await connection.close()


async def test_roles_created_by_two_databases_at_once_are_no_error(database_url: str) -> None:
    """Roles are cluster-wide: a second database's migration that meets a role
    another one is creating right then must go on, not fail."""
    roles = next(m for m in migrations() if m.name == "roles")
    prefix = f"tally_t{uuid.uuid4().hex[:8]}"
    sql = re.sub(r"\btally_(migrator|worker|api|reader)\b", rf"{prefix}_\1", roles.sql)
    names = [f"{prefix}_{r.removeprefix('tally_')}" for r in ROLES]
    admin = await asyncpg.connect(database_url)
    databases = [f"tally_t_{uuid.uuid4().hex[:16]}" for _ in range(2)]
    connections: list[asyncpg.Connection] = []
    try:
        for name in databases:
            await admin.execute(f'CREATE DATABASE "{name}"')
            dsn = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
            connection = await asyncpg.connect(dsn)
            connections.append(connection)
            await migrate(connection, up_to=roles.version - 1)
        first, second = connections
        holding = first.transaction()
        await holding.start()
        await first.execute(sql)  # the roles exist, uncommitted
        racing = asyncio.create_task(_run_in_transaction(second, sql))
        for _ in range(3000):  # until the second waits on the first's new roles
            if racing.done() or await admin.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                second.get_server_pid(),
            ):
                break
            await asyncio.sleep(0.01)
        assert not racing.done()
        await holding.commit()
        await racing  # no duplicate_object / unique_violation
        owner = await second.fetchval(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'tally'"
        )
        assert owner == f"{prefix}_migrator"
    finally:
        for connection in connections:
            await connection.close()
        for name in databases:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for name in names:
            await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        await admin.close()


async def _run_in_transaction(connection: asyncpg.Connection, sql: str) -> Any:
    async with connection.transaction():
        return await connection.execute(sql)
