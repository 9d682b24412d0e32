"""The usage query and summaries read at most TALLY_USAGE_MAX_ROWS stored rows:
past it they are refused (422, exit 2 in the CLI) naming what to narrow, never
a 5xx or an unbounded read."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tally.api.app import create_app
from tally.config import Settings
from tests.integration.test_api_support import READ, TOKENS, Api
from tests.integration.test_cli import tally
from tests.integration.test_usage_kinds import DAY, api, at, raw_readings, store_rollups

pytestmark = pytest.mark.asyncio(loop_scope="function")
__all__ = ["api"]  # the fixture, shared with test_usage_kinds


@contextlib.asynccontextmanager
async def capped(api: Api, dsn: str, max_rows: int) -> AsyncIterator[httpx.AsyncClient]:
    """The app over the same pool, with TALLY_USAGE_MAX_ROWS = max_rows."""
    settings = Settings(database_url=dsn, api_tokens=TOKENS, usage_max_rows=max_rows)
    transport = httpx.ASGITransport(app=create_app(settings, api.pool))
    async with httpx.AsyncClient(transport=transport, base_url="http://tally.test") as client:
        yield client


async def get(client: httpx.AsyncClient, path: str, **params: Any) -> httpx.Response:
    return await client.get(path, params=params, headers=READ)


async def test_a_usage_query_past_the_row_limit_is_refused_naming_what_to_narrow(
    api: Api, fresh_database: str
) -> None:
    await store_rollups(api, raw_readings())
    async with capped(api, fresh_database, 10) as client:
        hours = await get(
            client,
            "/usage-metrics/peak/usage",
            customerId="acme",
            windowSize="hour",
            **{"from": at(0), "to": at(48)},
        )
        assert hours.status_code == 422, hours.text
        (problem,) = hours.json()["detail"]
        assert problem["loc"] == ["query", "from"]
        assert "TALLY_USAGE_MAX_ROWS" in problem["msg"]
        assert "more than 10 stored rows" in problem["msg"]
        # Two day rows cover the same window: within the limit.
        days = await get(
            client, "/usage-metrics/peak/usage", customerId="acme", **{"from": at(0), "to": at(48)}
        )
        assert days.status_code == 200, days.text
    async with capped(api, fresh_database, 1) as client:
        summary = await get(
            client,
            "/usage-metrics/peak/summary",
            customerId="acme",
            periodType="rolling",
            periodValue="7-day",
            asOf=(DAY.date().isoformat()),
        )
        assert summary.status_code == 200, summary.text  # one day row in those 7 days
        wider = await get(
            client,
            "/usage-metrics/peak/summary",
            customerId="acme",
            periodType="rolling",
            periodValue="7-day",
            asOf=(at(24)[:10]),
        )
        assert wider.status_code == 422, wider.text
        assert wider.json()["detail"][0]["loc"] == ["query", "periodValue"]
    # The default limit answers the hours.
    default = await api.client.get(
        "/usage-metrics/peak/usage",
        params={"customerId": "acme", "windowSize": "hour", "from": at(0), "to": at(48)},
        headers=READ,
    )
    assert default.status_code == 200, default.text


async def test_tally_usage_refuses_past_the_row_limit(api: Api, fresh_database: str) -> None:
    await store_rollups(api, raw_readings())
    env = {"TALLY_DATABASE_URL": fresh_database, "TALLY_USAGE_MAX_ROWS": "10"}
    args = ["usage", "peak", "--customer", "acme", "--from", at(0), "--to", at(48)]
    refused = tally(*args, "--window-size", "hour", env=env)
    assert refused.returncode == 2
    assert "--from:" in refused.stderr
    assert "TALLY_USAGE_MAX_ROWS" in refused.stderr
    assert "Traceback" not in refused.stderr
    answered = tally(*args, env=env)
    assert answered.returncode == 0, answered.stderr
