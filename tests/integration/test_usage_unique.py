"""UNIQUE windows and summaries at their edges, over rows in the real
PostgreSQL: a single stored period is its row (however old, adjusted or not),
unions of members are refused past retention, TALLY_UNIQUE_WINDOW or an
adjustment, calendar quarters are served, and answers are bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from tests.integration.test_api_support import READ, Api, open_api
from tests.integration.test_usage_kinds import BASE, DAY, USERS, usage

pytestmark = pytest.mark.asyncio(loop_scope="function")

VISITS = {
    **BASE,
    "uid": "u1",
    "name": "Visits",
    "aggregationType": "UNIQUE",
    "aggregationProperty": "user",
    "timeUnits": ["day"],
}


@pytest_asyncio.fixture
async def api(fresh_database: str) -> AsyncIterator[Api]:
    async with open_api(fresh_database) as opened:
        for definition in (USERS, VISITS):
            created = await opened.create(definition)
            assert created.status_code == 201, created.text
        yield opened


def day_at(days: int) -> datetime:
    return DAY + timedelta(days=days)


def wire(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def store_day(api: Api, uid: str, days: int, key: str, members: list[str]) -> None:
    """One UNIQUE day row (value = its members' count) and its members."""
    start = day_at(days)
    await api.sql(
        "INSERT INTO tally.metric_values (metric_uid, customer_id, group_key, time_unit,"
        " period_start, period_end, value, event_count) VALUES ($1, 'acme', $2, 'day', $3, $4,"
        " $5, $6)",
        uid,
        key,
        start,
        start + timedelta(days=1),
        len(members),
        2 * len(members),
    )
    for member in members:
        await api.sql(
            "INSERT INTO tally.unique_members VALUES ($1, 'acme', 'day', $2, $3, $4)",
            uid,
            start,
            key,
            member,
        )


async def refusal(api: Api, uid: str, path: str = "usage", **params: Any) -> dict[str, Any]:
    response = await api.client.get(
        f"/usage-metrics/{uid}/{path}", params={"customerId": "acme", **params}, headers=READ
    )
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["type"] == "window_refused", problem
    found: dict[str, Any] = problem
    return found


async def test_a_unique_stored_period_answers_its_value_even_past_member_retention(
    api: Api,
) -> None:
    """One stored period of one group is its row: members retention deleted
    long ago (none here) do not matter, as /metric-values shows the same value."""
    old = day_at(-200)
    await api.sql(
        "INSERT INTO tally.metric_values (metric_uid, customer_id, group_key, time_unit,"
        " period_start, period_end, value, event_count) VALUES ('u1', 'acme', '', 'day', $1, $2,"
        " 5, 7)",
        old,
        old + timedelta(days=1),
    )
    body = await usage(
        api, "u1", customerId="acme", **{"from": wire(old), "to": wire(day_at(-199))}
    )
    (item,) = body["items"]
    assert (item["value"], item["eventCount"]) == ("5", 7)
    summary = await api.client.get(
        "/usage-metrics/u1/summary",
        params={"customerId": "acme", "periodDefinition": "as_of_date", "asOf": old.date()},
        headers=READ,
    )
    assert summary.status_code == 200, summary.text
    assert summary.json()["currentValue"] == "5"
    assert [p["value"] for p in summary.json()["timeseries"]] == ["5"]
    # Two old days are a union of members, which retention deleted: refused, not 0.
    problem = await refusal(api, "u1", **{"from": wire(old), "to": wire(day_at(-198))})
    assert problem["loc"] == ["query", "from"]
    assert "TALLY_MEMBER_RETENTION" in problem["msg"]
    # Groups merged over one old period count members too: refused the same way.
    await store_day(api, "users", -200, '["eu","free"]', [])
    problem = await refusal(api, "users", **{"from": wire(old), "to": wire(day_at(-199))})
    assert "TALLY_MEMBER_RETENTION" in problem["msg"]


async def test_an_adjusted_unique_day_is_served_alone_and_refused_in_a_union(api: Api) -> None:
    await store_day(api, "u1", -3, "", ["a", "b", "c"])
    await store_day(api, "u1", -2, "", ["c", "d"])
    adjusted = await api.client.post(
        "/metric-values/adjustments",
        json={
            "metricUid": "u1",
            "customerId": "acme",
            "timeUnit": "day",
            "periodStart": wire(day_at(-3)),
            "delta": "2",
            "reason": "late import",
        },
        headers={"Authorization": "Bearer tly_test_admin_0123456789", "Idempotency-Key": "adj-1"},
    )
    assert adjusted.status_code == 201, adjusted.text
    one = await usage(
        api, "u1", customerId="acme", **{"from": wire(day_at(-3)), "to": wire(day_at(-2))}
    )
    assert [i["value"] for i in one["items"]] == ["5"]  # 3 members + 2 by hand
    daily = await usage(
        api,
        "u1",
        customerId="acme",
        windowSize="day",
        **{"from": wire(day_at(-3)), "to": wire(day_at(-1))},
    )
    assert [i["value"] for i in daily["items"]] == ["5", "2"]
    problem = await refusal(api, "u1", **{"from": wire(day_at(-3)), "to": wire(day_at(-1))})
    assert problem["loc"] == ["query", "windowSize"]
    assert "adjusted by hand" in problem["msg"]
    summary = await api.client.get(
        "/usage-metrics/u1/summary",
        params={"customerId": "acme", "periodDefinition": "as_of_date", "asOf": day_at(-2).date()},
        headers=READ,
    )
    assert summary.status_code == 200, summary.text
    body = summary.json()
    assert (body["currentValue"], body["previousValue"]) == ("2", "5")


async def test_unique_spans_past_the_window_are_refused_and_quarters_are_served(
    api: Api,
) -> None:
    problem = await refusal(api, "u1", **{"from": wire(day_at(-120)), "to": wire(day_at(0))})
    assert "TALLY_UNIQUE_WINDOW" in problem["msg"]
    # The calendar quarter holding DAY (up to 92 days, all within retention when
    # it is the current one) is served; members on two days count once.
    await store_day(api, "u1", -2, "", ["a", "b"])
    await store_day(api, "u1", -1, "", ["b", "c"])
    quarter = await api.client.get(
        "/usage-metrics/u1/summary",
        params={
            "customerId": "acme",
            "periodType": "calendar",
            "periodValue": "quarter",
            "asOf": day_at(-1).date(),
        },
        headers=READ,
    )
    assert quarter.status_code == 200, quarter.text
    body = quarter.json()

    def quarter_of(moment: datetime) -> tuple[int, int]:
        return moment.year, (moment.month - 1) // 3

    same = quarter_of(day_at(-2)) == quarter_of(day_at(-1))
    expected = {"a", "b", "c"} if same else {"b", "c"}
    assert body["currentValue"] == str(len(expected))
    # A rolling 90-day's previous period reaches past the members' retention.
    rolling = await api.client.get(
        "/usage-metrics/u1/summary",
        params={"customerId": "acme", "periodType": "rolling", "periodValue": "90-day"},
        headers=READ,
    )
    assert rolling.status_code == 200, rolling.text
    assert rolling.json()["previousValue"] is None
    assert "TALLY_MEMBER_RETENTION" in rolling.json()["previousRefused"]
    # A summary names its own parameters: the span on periodValue, retention on asOf.
    year = await refusal(api, "u1", "summary", periodType="rolling", periodValue="year")
    assert year["loc"] == ["query", "periodValue"]
    old = await refusal(
        api, "u1", "summary", periodDefinition="trailing_30_days", asOf=day_at(-300).date()
    )
    assert old["loc"] == ["query", "asOf"]


async def test_answers_past_the_item_cap_are_refused_naming_the_field(api: Api) -> None:
    """customers x groups x windows is bounded (store.usage.MAX_ITEMS), before reading."""
    hours = {"from": wire(day_at(-40)), "to": wire(day_at(2)), "windowSize": "hour"}
    customers = [f"c{n}" for n in range(100)]  # x 1,008 hours
    response = await api.client.get(
        "/usage-metrics/users/usage", params={"customerId": customers, **hours}, headers=READ
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "windowSize"]
    for n in range(11):  # 11 groups x 10,000 days
        await store_day(api, "users", -3, f'["r{n}","free"]', [])
    long = {"from": wire(day_at(-9_995)), "to": wire(day_at(5))}
    grouped = await api.client.get(
        "/usage-metrics/users/usage",
        params={"customerId": "acme", "windowSize": "day", "groupBy": "region", **long},
        headers=READ,
    )
    assert grouped.status_code == 422, grouped.text
    assert grouped.json()["detail"][0]["loc"] == ["query", "groupBy"]
