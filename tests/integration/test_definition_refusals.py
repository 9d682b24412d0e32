"""A stored definition this host cannot run (a zone its tz data lacks, say) is
one refused metric: the worker loads the others, and the API still shows it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from tally.contracts.metric import parse_metric
from tally.core.engine import new_core
from tally.core.metrics import MetricIndex
from tally.store.definitions import apply_definitions, delete_metric
from tally.store.migrate import migrate
from tally.store.pool import create_pool
from tally.telemetry.instruments import Telemetry
from tally.worker.definitions import DefinitionWatcher, LiveMetrics
from tests.integration.test_api_support import ADMIN, READ, open_api

pytestmark = pytest.mark.asyncio(loop_scope="function")

GOOD: dict[str, Any] = {
    "uid": "good",
    "name": "Good",
    "eventType": "call",
    "aggregationType": "COUNT",
}
# As a host with newer tz data would have stored it: valid there, unknown here.
MARS: dict[str, Any] = {**GOOD, "uid": "on_mars", "name": "Mars", "timezone": "Mars/Olympus_Mons"}


async def store_raw(connection: asyncpg.Connection, document: dict[str, Any]) -> None:
    """Write a row as another host would, past this host's validation."""
    await connection.execute(
        "INSERT INTO tally.metrics (uid, definition) VALUES ($1, $2::text::jsonb)",
        document["uid"],
        orjson.dumps(document).decode(),
    )


@pytest_asyncio.fixture
async def pool(fresh_database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(fresh_database, min_size=1, max_size=4)
    try:
        async with pool.acquire() as connection:
            await migrate(connection)
            await apply_definitions(connection, [parse_metric(GOOD)])
        yield pool
    finally:
        await pool.close()


async def test_a_definition_with_an_unknown_zone_is_refused_and_the_rest_load(
    pool: asyncpg.Pool,
) -> None:
    indexes: list[MetricIndex] = []
    refused_then: list[set[str]] = []  # what on_change can read: already this load's refusals

    def on_change(index: MetricIndex) -> None:
        indexes.append(index)
        refused_then.append({r.uid for r in watcher.refused})

    watcher = DefinitionWatcher(pool, on_change)
    async with pool.acquire() as connection:
        await store_raw(connection, MARS)
        # Not a definition at all (say, written by hand): refused too, not a crash.
        await store_raw(connection, {"uid": "broken", "name": "Broken", "eventType": "x"})
    assert await watcher.refresh()
    assert set(indexes[-1].by_uid) == {"good"}
    refused = {r.uid: r.reason for r in watcher.refused}
    assert refused == {"on_mars": "unknown_timezone", "broken": "invalid_definition"}
    assert "Mars/Olympus_Mons" in next(r.detail for r in watcher.refused if r.uid == "on_mars")
    assert refused_then == [{"on_mars", "broken"}]

    # A later change reloads; the refusal stays reported, the new metric runs.
    async with pool.acquire() as connection:
        await apply_definitions(connection, [parse_metric({**GOOD, "uid": "also_good"})])
    assert await watcher.refresh()
    assert set(indexes[-1].by_uid) == {"good", "also_good"}
    assert {r.uid for r in watcher.refused} == {"on_mars", "broken"}


async def test_the_refused_gauge_shows_a_refusal_and_clears_on_the_next_change(
    pool: asyncpg.Pool,
) -> None:
    registry = CollectorRegistry()
    metrics = LiveMetrics(new_core(), {}, Telemetry(registry))
    watcher = DefinitionWatcher(pool, metrics.changed, on_refused=metrics.refused)
    labels = {"metric": "on_mars", "reason": "unknown_timezone"}
    async with pool.acquire() as connection:
        await store_raw(connection, MARS)
    assert await watcher.refresh()
    assert registry.get_sample_value("tally_metrics_refused", labels) == 1
    assert registry.get_sample_value("tally_metrics_live") == 1  # good runs

    async with pool.acquire() as connection:
        assert await delete_metric(connection, "on_mars")
    assert await watcher.refresh()
    assert registry.get_sample_value("tally_metrics_refused", labels) is None
    assert registry.get_sample_value("tally_metrics_live") == 1


async def test_a_deleted_definition_that_cannot_run_is_not_reported(pool: asyncpg.Pool) -> None:
    watcher = DefinitionWatcher(pool, lambda index: None)
    async with pool.acquire() as connection:
        await store_raw(connection, MARS)
        await connection.execute(
            "UPDATE tally.metrics SET deleted_at = now() WHERE uid = 'on_mars'"
        )
    await watcher.refresh()
    assert watcher.refused == ()


async def test_the_api_lists_and_shows_a_definition_with_a_zone_it_lacks(
    fresh_database: str,
) -> None:
    async with open_api(fresh_database) as api:
        async with api.pool.acquire() as connection:
            await store_raw(connection, MARS)
        listing = await api.client.get("/usage-metrics", headers=READ)
        assert listing.status_code == 200, listing.text
        (shown,) = listing.json()["items"]
        assert (shown["uid"], shown["timezone"]) == ("on_mars", "Mars/Olympus_Mons")
        one = await api.client.get("/usage-metrics/on_mars", headers=READ)
        assert one.status_code == 200, one.text
        assert one.json()["timezone"] == "Mars/Olympus_Mons"
        # Its mutable fields can still be changed here, and it can be deleted.
        renamed = await api.client.patch(
            "/usage-metrics/on_mars", json={"name": "Olympus"}, headers=ADMIN
        )
        assert renamed.status_code == 200, renamed.text
        assert renamed.json()["timezone"] == "Mars/Olympus_Mons"
        deleted = await api.client.delete("/usage-metrics/on_mars", headers=ADMIN)
        assert deleted.status_code == 200, deleted.text


async def test_tally_values_shows_a_metric_whose_zone_this_host_lacks_in_utc(
    pool: asyncpg.Pool, fresh_database: str
) -> None:
    async with pool.acquire() as connection:
        await store_raw(connection, MARS)
        await connection.execute(
            "INSERT INTO tally.metric_values (metric_uid, customer_id, time_unit, period_start,"
            " period_end, value, event_count) VALUES ('on_mars', 'acme', 'day',"
            " '2026-01-01T05:00Z', '2026-01-02T05:00Z', 3, 3)"
        )
    shown = subprocess.run(
        [sys.executable, "-m", "tally", "values", "--format", "json"],
        env={**os.environ, "TALLY_DATABASE_URL": fresh_database},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    (row,) = orjson.loads(shown.stdout)
    assert (row["metric"], row["period_start"]) == ("on_mars", "2026-01-01T05:00:00+00:00")
