"""The partial marker and the values it marks (issue-14 review finding 3):
a backfill that finishes after the values were read but before the marker was
read left a partial answer unmarked. The marker is read first now (at worst
an answer read just after the backfill finished is marked once too often).

The backfill is finished, through its own connection, at the one moment the
race needs: right after the values' read returns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from tally.api import routes_usage
from tally.store import backfill
from tally.store import usage as usage_store
from tests.integration.test_api_support import Api
from tests.integration.test_usage_kinds import DAY, api, at, raw_readings, store_rollups
from tests.integration.test_usage_partial import get, start_backfill

pytestmark = pytest.mark.asyncio(loop_scope="function")
__all__ = ["api"]  # the fixture, shared with test_usage_kinds


def finishing_after(api: Api, read: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def read_then_finish(*args: Any, **kwargs: Any) -> Any:
        found = await read(*args, **kwargs)
        async with api.pool.acquire() as connection:
            assert await backfill.finish(connection, "peak", "test")
        return found

    return read_then_finish


async def test_usage_read_while_the_backfill_runs_is_marked(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store_rollups(api, raw_readings())
    await start_backfill(api, "peak")
    monkeypatch.setattr(usage_store, "run_query", finishing_after(api, usage_store.run_query))
    hours = {"customerId": "acme", "from": at(0), "to": at(48), "windowSize": "hour"}
    raced = await get(api, "/usage-metrics/peak/usage", **hours)
    assert [n for n, i in enumerate(raced["items"]) if "partial" in i] == list(range(31))
    assert raced["items"][0]["partial"]["reason"] == "backfill_running"


async def test_a_summary_read_while_the_backfill_runs_is_marked(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store_rollups(api, raw_readings())
    await start_backfill(api, "peak")
    monkeypatch.setattr(routes_usage, "run_summary", finishing_after(api, routes_usage.run_summary))
    raced = await get(
        api,
        "/usage-metrics/peak/summary",
        customerId="acme",
        periodType="rolling",
        periodValue="day",
        asOf=(DAY + timedelta(days=1)).date().isoformat(),
    )
    assert raced["partial"]["reason"] == "backfill_running"
