"""The partial-range marker on usage and summary answers and `tally usage`
(issue 16, "no silent partial values"): a window that overlaps the range of a
cancelled or unfinished backfill says so; one outside it does not."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from tally.store import backfill
from tests.integration.test_api_support import READ, Api
from tests.integration.test_cli import tally
from tests.integration.test_usage_kinds import DAY, api, at, raw_readings, store_rollups

pytestmark = pytest.mark.asyncio(loop_scope="function")
__all__ = ["api"]  # the fixture, shared with test_usage_kinds

# The backfill read records from hour 12 on; its row was created at hour 30, so
# with the default TALLY_MAX_FUTURE_SKEW (5 min) hours 31 on are counted live only.
FROM, CREATED = DAY + timedelta(hours=12), DAY + timedelta(hours=30)


async def start_backfill(api: Api, uid: str) -> None:
    async with api.pool.acquire() as connection:
        assert await backfill.create_backfill(
            connection,
            uid,
            FROM.isoformat(),
            FROM,
            [backfill.BackfillPartition("events", 0, 0, 100, 30)],
            "test",
        )
    await api.sql("UPDATE tally.backfills SET created_at = $2 WHERE metric_uid = $1", uid, CREATED)


async def get(api: Api, path: str, **params: Any) -> dict[str, Any]:
    response = await api.client.get(path, params=params, headers=READ)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_usage_windows_in_a_cancelled_backfills_range_are_marked(api: Api) -> None:
    await store_rollups(api, raw_readings())
    hours = {"customerId": "acme", "from": at(0), "to": at(48), "windowSize": "hour"}
    complete = await get(api, "/usage-metrics/peak/usage", **hours)
    assert all("partial" not in i for i in complete["items"])
    await start_backfill(api, "peak")
    running = await get(api, "/usage-metrics/peak/usage", **hours)
    marked = [n for n, i in enumerate(running["items"]) if "partial" in i]
    assert marked == list(range(31))  # hour 30 holds created_at + 5 min
    marker = running["items"][0]["partial"]
    assert (marker["reason"], marker["recordsDone"], marker["recordsTotal"]) == (
        "backfill_running",
        30,
        100,
    )
    async with api.pool.acquire() as connection:
        assert await backfill.cancel(connection, "peak") == "cancelled"
    cancelled = await get(api, "/usage-metrics/peak/usage", **hours)
    assert [n for n, i in enumerate(cancelled["items"]) if "partial" in i] == marked
    assert cancelled["items"][0]["partial"]["reason"] == "backfill_cancelled"
    # The values themselves are unchanged by the marker.
    assert [i["value"] for i in cancelled["items"]] == [i["value"] for i in complete["items"]]
    # Long before from - TALLY_MAX_LATENESS (35 days): no event of the backfill lands there.
    early = await get(
        api,
        "/usage-metrics/peak/usage",
        customerId="acme",
        **{"from": at(-80 * 24), "to": at(-79 * 24)},
    )
    assert "partial" not in early["items"][0]
    # Another metric's answers carry no marker.
    other = await get(api, "/usage-metrics/low/usage", **hours)
    assert all("partial" not in i for i in other["items"])


async def test_a_summary_over_the_range_is_marked_and_one_after_it_is_not(api: Api) -> None:
    await store_rollups(api, raw_readings())
    await start_backfill(api, "peak")
    async with api.pool.acquire() as connection:
        await backfill.cancel(connection, "peak")
    params = {"customerId": "acme", "periodType": "rolling", "periodValue": "day"}
    inside = await get(
        api,
        "/usage-metrics/peak/summary",
        **params,
        asOf=(DAY + timedelta(days=1)).date().isoformat(),
    )
    assert inside["partial"]["reason"] == "backfill_cancelled"
    after = await get(
        api,
        "/usage-metrics/peak/summary",
        **params,
        asOf=(DAY + timedelta(days=3)).date().isoformat(),
    )
    assert "partial" not in after
    untouched = await get(
        api,
        "/usage-metrics/low/summary",
        **params,
        asOf=(DAY + timedelta(days=1)).date().isoformat(),
    )
    assert "partial" not in untouched


async def test_tally_usage_shows_a_partial_column(api: Api, fresh_database: str) -> None:
    await store_rollups(api, raw_readings())
    env = {"TALLY_DATABASE_URL": fresh_database}
    args = ["usage", "peak", "--customer", "acme", "--from", at(0), "--to", at(48)]
    before = tally(*args, "--window-size", "day", "--format", "json", env=env)
    assert before.returncode == 0, before.stderr
    assert all("partial" not in row for row in json.loads(before.stdout))
    await start_backfill(api, "peak")
    async with api.pool.acquire() as connection:
        await backfill.cancel(connection, "peak")
    as_json = tally(*args, "--window-size", "day", "--format", "json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    days = json.loads(as_json.stdout)
    assert [row["partial"] is not None for row in days] == [True, True]
    assert days[0]["partial"].startswith("PARTIAL: backfill from ")
    assert "cancelled at 30.0% (30 of 100 records)" in days[0]["partial"]
    table = tally(*args, "--window-size", "day", env=env)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[-1] == "partial"
    assert "PARTIAL: backfill from" in table.stdout
    csv_ = tally(*args, "--window-size", "hour", "--format", "csv", env=env)
    lines = csv_.stdout.splitlines()
    assert lines[0].endswith(",partial")
    assert "PARTIAL" in lines[1]
    assert "PARTIAL" not in lines[-1]
