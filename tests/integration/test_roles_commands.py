"""Tally's own commands under the least-privilege roles: a worker and the API
run as users without DDL rights, and `--no-migrate` checks the schema version."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from tally.store.migrate import migrations
from tests.conftest import MakeTopic
from tests.integration.roles_support import users
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    produce,
    wait_caught_up,
    worker_env,
)
from tests.integration.test_api_support import ADMIN, READ, open_api

pytestmark = pytest.mark.asyncio(loop_scope="function")
__all__ = ["users"]  # the fixture

CALLS: dict[str, Any] = {
    "uid": "calls",
    "name": "Calls",
    "eventType": "call",
    "aggregationType": "COUNT",
    "timeUnits": ["day"],
}
CALLERS: dict[str, Any] = {
    "uid": "callers",
    "name": "Callers",
    "eventType": "call",
    "aggregationType": "UNIQUE",
    "aggregationProperty": "user",
    "timeUnits": ["day"],
}


def latest_version() -> int:
    return len(migrations())


HOW = "run `tally migrate` as a role with DDL rights (a member of tally_migrator)"


def tally(*args: str, dsn: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tally", *args],
        env={**os.environ, "TALLY_DATABASE_URL": dsn, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


async def set_back_one_version(dsn: str) -> None:
    """The schema as a newer Tally would find it: one migration behind."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "DELETE FROM tally.schema_migrations WHERE version = $1", latest_version()
        )
    finally:
        await connection.close()


async def test_a_worker_user_consumes_and_flushes_with_no_migrate(
    users: dict[str, str],
    fresh_database: str,
    kafka_bootstrap: str,
    make_topic: MakeTopic,
    tmp_path: Path,
) -> None:
    await apply_metrics(users["tally_api"], [CALLS, CALLERS], tmp_path)
    topic = await make_topic(2)
    now = datetime.now(UTC).isoformat()
    events = [
        (b"acme", orjson.dumps({"id": f"e{n % 40}", "eventType": "call", "customerId": "acme",
                                 "timestamp": now, "properties": {"user": f"u{n % 7}"}}))
        for n in range(50)
    ]  # fmt: skip
    await produce(kafka_bootstrap, topic, events)
    env = worker_env(kafka_bootstrap, users["tally_worker"], topic, "g-roles", migrate="false")
    worker = WorkerProcess("least-privilege", env, tmp_path).start()
    try:
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    assert "InsufficientPrivilege" not in worker.log(), worker.log()[-3000:]
    assert "permission denied" not in worker.log(), worker.log()[-3000:]
    connection = await asyncpg.connect(users["tally_reader"])
    try:
        rows = await connection.fetch(
            "SELECT metric_uid, value, event_count FROM tally.metric_values ORDER BY 1"
        )
    finally:
        await connection.close()
    # 40 distinct ids (10 duplicates dropped), 7 distinct users.
    assert [tuple(r) for r in rows] == [("callers", 7, 40), ("calls", 40, 40)]


async def test_an_api_user_serves_definitions_values_and_adjustments(
    users: dict[str, str],
) -> None:
    async with open_api(users["tally_api"]) as api:  # "migrating" a current schema: no DDL
        created = await api.create(CALLS, **{"Idempotency-Key": "c-1"})
        assert created.status_code == 201, created.text
        patched = await api.client.patch(
            "/usage-metrics/calls", json={"unit": "calls"}, headers=ADMIN
        )
        assert patched.status_code == 200, patched.text
        day = datetime(2026, 3, 1, tzinfo=UTC)
        adjusted = await api.client.post(
            "/metric-values/adjustments",
            json={"metricUid": "calls", "customerId": "acme", "timeUnit": "day",
                  "periodStart": day.isoformat(), "delta": "5", "reason": "backfill"},
            headers={**ADMIN, "Idempotency-Key": "a-1"},
        )  # fmt: skip
        assert adjusted.status_code == 201, adjusted.text
        listed = await api.client.get("/metric-values", headers=READ)
        assert [v["value"] for v in listed.json()["items"]] == ["5"]
        deleted = await api.client.delete("/usage-metrics/calls", headers=ADMIN)
        assert deleted.status_code == 200, deleted.text
    connection = await asyncpg.connect(users["tally_reader"])
    try:
        value = await connection.fetchval(
            "SELECT value FROM tally.metric_values WHERE period_start = $1", day
        )
        end = await connection.fetchval("SELECT period_end FROM tally.metric_values")
    finally:
        await connection.close()
    assert (value, end) == (Decimal(5), day + timedelta(days=1))


async def test_no_migrate_fails_at_start_with_one_line_when_the_schema_is_behind(
    users: dict[str, str], fresh_database: str, kafka_bootstrap: str
) -> None:
    await set_back_one_version(fresh_database)
    have, need = latest_version() - 1, latest_version()
    line = f"tally: the schema is at version {have}, this tally needs {need}: {HOW}\n"
    kafka = {"TALLY_KAFKA_BOOTSTRAP": kafka_bootstrap}
    run = tally("run", "--no-migrate", dsn=users["tally_worker"], **kafka)
    assert (run.returncode, run.stderr) == (2, line)
    by_env = tally("run", dsn=users["tally_worker"], TALLY_MIGRATE="false", **kafka)
    assert (by_env.returncode, by_env.stderr) == (2, line)
    serve = tally("api", "serve", "--no-migrate", dsn=users["tally_api"])
    assert (serve.returncode, serve.stderr) == (2, line)

    # Without --no-migrate, a user without DDL rights is told the same, and why.
    migrating = tally("run", dsn=users["tally_worker"], **kafka)
    assert migrating.returncode == 2
    assert migrating.stderr.startswith(
        f"tally: the schema is at version {have}, this tally needs {need}, "
        "and this user may not upgrade it ("
    ), migrating.stderr
    assert migrating.stderr.endswith(f"): {HOW}\n")
    assert len(migrating.stderr.splitlines()) == 1

    # A migrator brings it up to date; then the check passes.
    migrated = tally("migrate", dsn=users["tally_migrator"])
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith(f"applied {need:04d}_")


async def test_no_migrate_on_a_database_without_the_schema_says_what_to_do(
    fresh_database: str, kafka_bootstrap: str
) -> None:
    run = tally("run", "--no-migrate", dsn=fresh_database, TALLY_KAFKA_BOOTSTRAP=kafka_bootstrap)
    need = latest_version()
    assert (run.returncode, run.stderr) == (
        2,
        f"tally: the schema is at version 0, this tally needs {need}: {HOW}\n",
    )


async def test_a_reader_user_explains_an_event_against_the_live_metrics(
    users: dict[str, str], tmp_path: Path
) -> None:
    # tally_reader may read tally.metrics and tally.metric_values, nothing else.
    await apply_metrics(users["tally_api"], [CALLS], tmp_path)
    event = {"id": "e-1", "eventType": "call", "customerId": "acme",
             "timestamp": datetime.now(UTC).isoformat(), "properties": {}}  # fmt: skip
    path = tmp_path / "event.json"
    path.write_bytes(orjson.dumps(event))
    shown = tally(
        "explain", "--format", "json", "--partition", "0", str(path), dsn=users["tally_reader"]
    )
    assert shown.returncode == 0, shown.stderr
    answer = orjson.loads(shown.stdout)
    assert [(m["uid"], m["outcome"]) for m in answer["metrics"]] == [("calls", "applied")]
