"""External values after the issue-14 review: the duplicate key is Exante's
(entity, metric, time_unit, metric_date), so a month or year value is dated
the first day of its period; and numbers keep their exact decimal text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.integration.test_api_external_values import VALUE
from tests.integration.test_api_support import ADMIN, READ, Api, error_locs, open_api

pytestmark = pytest.mark.asyncio(loop_scope="function")

MONTHLY: dict[str, Any] = {
    "uid": "monthly_ar",
    "name": "Monthly AR",
    "source": "EXTERNAL",
    "aggregationType": "SUM",
    "timeUnits": ["month"],
}
YEARLY: dict[str, Any] = {**MONTHLY, "uid": "yearly_ar", "name": "Yearly AR", "timeUnits": ["year"]}
PATH = "/metrics/values/ORGANIZATION/o_1"


@pytest_asyncio.fixture
async def api(fresh_database: str) -> AsyncIterator[Api]:
    async with open_api(fresh_database) as opened:
        for definition in (MONTHLY, YEARLY):
            assert (await opened.create(definition)).status_code == 201
        yield opened


def value(uid: str, unit: str, day: str, number: Any = 5) -> dict[str, Any]:
    return {**VALUE, "metric_uid": uid, "time_unit": unit, "metric_date": day, "value": number}


async def test_a_month_or_year_value_is_dated_the_first_day_of_its_period(api: Api) -> None:
    for uid, unit, day, first in (
        ("monthly_ar", "month", "2026-03-15", "2026-03-01"),
        ("yearly_ar", "year", "2026-03-01", "2026-01-01"),
    ):
        refused = await api.client.post(PATH, json=value(uid, unit, day), headers=ADMIN)
        assert refused.status_code == 422, refused.text
        assert error_locs(refused) == [["body", "metric_date"]]
        assert first in refused.json()["detail"][0]["msg"]
        created = await api.client.post(PATH, json=value(uid, unit, first), headers=ADMIN)
        assert created.status_code == 201, created.text
        # The 409 key is (entity, metric, time_unit, metric_date): the same date again.
        again = await api.client.post(PATH, json=value(uid, unit, first, 6), headers=ADMIN)
        assert again.status_code == 409
        assert error_locs(again) == [["body", "metric_date"]]
    # Listed with every other bad field at once.
    both = await api.client.post(
        PATH, json={**value("monthly_ar", "month", "2026-03-15"), "value": [1]}, headers=ADMIN
    )
    assert both.status_code == 422
    assert sorted(map(str, error_locs(both))) == sorted(
        map(str, [["body", "metric_date"], ["body", "value"]])
    )


async def test_a_values_json_number_keeps_its_exact_decimal_text(api: Api) -> None:
    day = {**MONTHLY, "uid": "daily", "name": "Daily", "timeUnits": ["day"]}
    assert (await api.create(day)).status_code == 201
    sent = {
        "2026-03-01": "0.1000000000000000001",  # a double reads 0.1
        "2026-03-02": "9007199254740993",  # 2**53 + 1
        "2026-03-03": "18446744073709551617",  # 2**64 + 1: past 64 bits
    }
    for date_, text in sent.items():
        raw = (
            f'{{"metric_uid": "daily", "time_unit": "day", "metric_date": "{date_}",'
            f' "value": {text}}}'
        )
        created = await api.client.post(
            PATH, content=raw, headers={**ADMIN, "Content-Type": "application/json"}
        )
        assert created.status_code == 201, created.text
        assert f'"value":{text},' in created.text  # the JSON number, every digit
    stored = await api.client.get("/metric-values", params={"metricUid": "daily"}, headers=READ)
    assert stored.status_code == 200, stored.text
    assert sorted(i["value"] for i in stored.json()["items"]) == sorted(sent.values())
    # More digits than Tally stores exactly, or beyond any range: refused, never rounded.
    for text in ("0.1000000000000000000000001", "1e400"):
        raw = (
            '{"metric_uid": "daily", "time_unit": "day", "metric_date": "2026-03-09", "value": %s}'
        )
        refused = await api.client.post(
            PATH, content=raw % text, headers={**ADMIN, "Content-Type": "application/json"}
        )
        assert refused.status_code == 422, (text, refused.text)
        assert error_locs(refused) == [["body", "value"]]


async def test_squads_target_value_keeps_its_exact_decimal_text(api: Api) -> None:
    raw = '{"title": "Precise", "ownerId": "u", "targetOperator": "greater_than", "targetValue": 0.1000000000000000001}'
    created = await api.client.post(
        "/organisations/o/workspaces/w/metrics",
        content=raw,
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert created.status_code == 200, created.text
    assert '"targetValue":0.1000000000000000001,' in created.text
    stored = (await api.client.get("/usage-metrics/precise", headers=READ)).json()
    assert stored["targetValue"] == "0.1000000000000000001"
