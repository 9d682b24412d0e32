"""Numbers whose exponent PostgreSQL cannot hold (issue-14 review findings 1
and 2): `1e-2000000` passed the 40-digit, 20-place check (the check normalizes
first, and so far below the context's range the normal form underflows to a
zero) and then was a 500 from asyncpg ("exponent is too small"), or a 2 MB
targetValue stored in the definition. Each is one 422 naming its field."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.integration.test_api_external_review import MONTHLY
from tests.integration.test_api_support import ADMIN, READ, Api, error_locs, open_api

pytestmark = pytest.mark.asyncio(loop_scope="function")

JSON = {**ADMIN, "Content-Type": "application/json"}
# Below, above and far past the exponents Tally stores; zero too (`0E-2000000`).
NUMBERS = ("1e-2000000", "0E-2000000", "1e-999999999", "0e+2000000", "1e-1001")
SQUAD_PATH = "/organisations/o/workspaces/w/metrics"


@pytest_asyncio.fixture
async def api(fresh_database: str) -> AsyncIterator[Api]:
    async with open_api(fresh_database) as opened:
        daily = {**MONTHLY, "uid": "daily", "name": "Daily", "timeUnits": ["day"]}
        assert (await opened.create(daily)).status_code == 201
        yield opened


@pytest.mark.parametrize("prefix", ["/metrics/values", "/api/metrics/values"])
async def test_a_values_number_past_the_exponents_tally_stores_is_422(
    api: Api, prefix: str
) -> None:
    for text in NUMBERS:
        for number in (text, f'"{text}"'):
            raw = (
                '{"metric_uid": "daily", "time_unit": "day", "metric_date": "2026-03-09",'
                f' "value": {number}}}'
            )
            refused = await api.client.post(f"{prefix}/ORGANIZATION/o_1", content=raw, headers=JSON)
            assert refused.status_code == 422, (number, refused.text)
            assert error_locs(refused) == [["body", "value"]], number
    stored = await api.client.get("/metric-values", params={"metricUid": "daily"}, headers=READ)
    assert stored.status_code == 200, stored.text
    assert stored.json()["items"] == []


async def test_a_target_value_past_the_exponents_tally_stores_is_422(api: Api) -> None:
    for text in NUMBERS:
        squad = (
            '{"title": "Tiny", "ownerId": "u", "targetOperator": "greater_than",'
            f' "targetValue": {text}}}'
        )
        refused = await api.client.post(SQUAD_PATH, content=squad, headers=JSON)
        assert refused.status_code == 422, (text, refused.text)
        assert ["body", "targetValue"] in error_locs(refused), (text, refused.text)
        # Tally's own API reads a JSON number as a double; its exact form is a string.
        tally = (
            '{"uid": "tiny", "name": "Tiny", "aggregationType": "COUNT", "eventType": "e",'
            f' "targetOperator": "greater_than", "targetValue": "{text}"}}'
        )
        refused = await api.client.post("/usage-metrics", content=tally, headers=JSON)
        assert refused.status_code == 422, (text, refused.text)
        assert error_locs(refused) == [["body", "targetValue"]], (text, refused.text)
    assert (await api.client.get("/usage-metrics/tiny", headers=READ)).status_code == 404
    # The edge: the smallest number Tally stores, and trailing zeros, are still taken.
    edge = (
        '{"uid": "edge", "name": "Edge", "aggregationType": "COUNT", "eventType": "e",'
        ' "targetOperator": "greater_than", "targetValue": "1e-20"}'
    )
    assert (await api.client.post("/usage-metrics", content=edge, headers=JSON)).status_code == 201
    edge = edge.replace("edge", "zeros").replace("1e-20", "1.0000000000000000000000000")
    assert (await api.client.post("/usage-metrics", content=edge, headers=JSON)).status_code == 201
