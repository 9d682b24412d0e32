"""`/metric-values` and its adjustments against the real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from tests.integration.test_api_support import ADMIN, CALLS, READ, Api, error_locs, open_api

pytestmark = pytest.mark.asyncio(loop_scope="function")

REVENUE: dict[str, Any] = {
    "uid": "revenue",
    "name": "Revenue",
    "eventType": "sale",
    "aggregationType": "SUM",
    "aggregationProperty": "amount",
    "metricType": "GROUPED",
    "groupingProperty": "plan",
    "timeUnits": ["day", "month"],
    "timezone": "America/Los_Angeles",
}
VISITORS: dict[str, Any] = {
    "uid": "visitors",
    "name": "Visitors",
    "eventType": "visit",
    "aggregationType": "UNIQUE",
    "aggregationProperty": "user",
    "timeUnits": ["day"],
}
DAY = datetime(2026, 3, 1, tzinfo=UTC)


@pytest_asyncio.fixture
async def api(fresh_database: str) -> AsyncIterator[Api]:
    async with open_api(fresh_database) as opened:
        for definition in (CALLS, REVENUE, VISITORS):
            assert (await opened.create(definition)).status_code == 201
        yield opened


async def put_value(
    api: Api,
    uid: str,
    customer: str,
    start: datetime,
    value: str,
    unit: str = "day",
    group: str = "",
    events: int = 1,
) -> None:
    await api.sql(
        "INSERT INTO tally.metric_values (metric_uid, customer_id, group_key, time_unit,"
        " period_start, period_end, value, event_count) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        uid,
        customer,
        group,
        unit,
        start,
        start + timedelta(days=1),
        Decimal(value),
        events,
    )


async def values(api: Api, **params: Any) -> list[dict[str, Any]]:
    response = await api.client.get("/metric-values", params=params, headers=READ)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_values_are_exact_decimal_strings_in_the_contract_shape(api: Api) -> None:
    exact = "12345678901234567890.123456789012345678"
    await put_value(api, "revenue", "acme", DAY, exact, group="pro")
    await put_value(api, "api_calls", "acme", DAY, "3")
    (revenue,) = await values(api, metricUid="revenue")
    assert revenue == {
        "metricUid": "revenue",
        "customerId": "acme",
        "groupKey": "pro",
        "group": {"plan": "pro"},
        "timeUnit": "day",
        "periodStart": "2026-03-01T00:00:00Z",
        "periodEnd": "2026-03-02T00:00:00Z",
        "value": exact,
        "eventCount": 1,
        "updatedAt": revenue["updatedAt"],
    }


async def test_values_filter_by_every_parameter(api: Api) -> None:
    for day in range(3):
        start = DAY + timedelta(days=day)
        await put_value(api, "api_calls", "acme", start, str(day + 1))
        await put_value(api, "api_calls", "globex", start, "10")
        await put_value(api, "revenue", "acme", start, "1.5", group="pro")
        await put_value(api, "revenue", "acme", start, "2.5", group="")
    await put_value(api, "api_calls", "acme", DAY, "6", unit="month")

    assert len(await values(api)) == 13
    assert len(await values(api, customerId="globex")) == 3
    assert len(await values(api, metricUid="api_calls", timeUnit="month")) == 1
    assert len(await values(api, groupKey="pro")) == 3
    assert len(await values(api, metricUid="revenue", groupKey="")) == 3
    window = await values(
        api,
        metricUid="api_calls",
        customerId="acme",
        timeUnit="day",
        **{"from": "2026-03-02T00:00:00Z", "to": "2026-03-03T00:00:00+00:00"},
    )
    assert [v["value"] for v in window] == ["2"]
    for params in (
        {"from": "yesterday"},
        {"to": "2026-03-01"},
        {"timeUnit": "fortnight"},
        {"customerId": ""},
        {"customerId": "a\x00b"},
    ):
        response = await api.client.get("/metric-values", params=params, headers=READ)
        assert response.status_code == 422, params
        assert len(error_locs(response)) == 1
    # Bounds beyond what Python holds are still bounds: nothing is out there.
    everything = {"from": "0001-01-01T00:00:00+01:00", "to": "9999-12-31T23:59:59-01:00"}
    assert len(await values(api, **everything)) == 13


async def test_the_cursor_pages_through_every_row_once_while_rows_arrive(api: Api) -> None:
    for n in range(25):
        await put_value(api, "api_calls", f"c{n:02d}", DAY, str(n))
    seen: list[tuple[str, str]] = []
    after = None
    while True:
        params: dict[str, Any] = {"metricUid": "api_calls", "limit": 7}
        if after:
            params["after"] = after
        response = await api.client.get("/metric-values", params=params, headers=READ)
        page = response.json()
        seen += [(v["customerId"], v["periodStart"]) for v in page["items"]]
        after = page["pagination"]["after"]
        if after is None:
            break
        # Rows written between pages, before and after the cursor's position.
        await put_value(api, "api_calls", f"a{len(seen)}", DAY, "1")
        await put_value(api, "api_calls", f"c{len(seen):02d}", DAY + timedelta(days=1), "1")
    assert len(seen) == len(set(seen)), "a row was shown twice"
    first_day = "2026-03-01T00:00:00Z"
    original = [(f"c{n:02d}", first_day) for n in range(25)]
    assert [row for row in seen if row in original] == original
    # Rows added behind the cursor are not shown; rows ahead of it are.
    assert not any(customer.startswith("a") for customer, _ in seen)
    assert any(start != first_day for _, start in seen)

    wrong_kind = (await api.client.get("/usage-metrics", params={"limit": 1}, headers=READ)).json()
    cursor = wrong_kind["pagination"]["after"]
    refused = await api.client.get("/metric-values", params={"after": cursor}, headers=READ)
    assert refused.status_code == 422
    assert error_locs(refused) == [["query", "after"]]


def adjustment(**overrides: Any) -> dict[str, Any]:
    return {
        "metricUid": "api_calls",
        "customerId": "acme",
        "timeUnit": "day",
        "periodStart": "2026-03-01T00:00:00Z",
        "delta": "-2",
        "reason": "refund of duplicate calls, ticket 123",
        **overrides,
    }


async def adjust(api: Api, body: dict[str, Any], key: str, token: dict[str, str] = ADMIN) -> Any:
    return await api.client.post(
        "/metric-values/adjustments", json=body, headers={**token, "Idempotency-Key": key}
    )


async def test_an_adjustment_changes_the_value_and_is_audited(api: Api) -> None:
    await put_value(api, "api_calls", "acme", DAY, "10", events=10)
    response = await adjust(api, adjustment(), "adj-1")
    assert response.status_code == 201, response.text
    made = response.json()
    assert made["delta"] == "-2"
    assert made["valueBefore"] == "10"
    assert made["valueAfter"] == "8"
    assert made["createdBy"] == "ops"
    assert made["idempotencyKey"] == "adj-1"
    assert made["periodEnd"] == "2026-03-02T00:00:00Z"
    (value,) = await values(api, metricUid="api_calls")
    assert value["value"] == "8"
    assert value["eventCount"] == 10  # no event contributed

    trail = await api.client.get(
        "/metric-values/adjustments", params={"metricUid": "api_calls"}, headers=READ
    )
    assert trail.status_code == 200
    assert trail.json() == {"items": [made], "pagination": {"after": None}}


async def test_an_adjustment_creates_a_missing_rollup(api: Api) -> None:
    # 2026-03-08 is the day Los Angeles moves to summer time: 23 hours.
    body = adjustment(
        metricUid="revenue",
        periodStart="2026-03-08T00:00:00-08:00",
        groupKey="pro",
        delta="0.10",
    )
    response = await adjust(api, body, "adj-new")
    assert response.status_code == 201, response.text
    assert response.json()["valueBefore"] == "0"
    (value,) = await values(api, metricUid="revenue")
    assert value["value"] == "0.1"
    assert value["eventCount"] == 0
    assert value["periodStart"] == "2026-03-08T08:00:00Z"
    assert value["periodEnd"] == "2026-03-09T07:00:00Z"
    negative_sum = await adjust(api, {**body, "delta": "-5"}, "adj-sum-negative")
    assert negative_sum.status_code == 201  # a SUM may go below zero


async def test_a_count_or_unique_never_goes_negative(api: Api) -> None:
    await put_value(api, "api_calls", "acme", DAY, "3")
    too_much = await adjust(api, adjustment(delta="-4"), "adj-neg")
    assert too_much.status_code == 422
    assert error_locs(too_much) == [["body", "delta"]]
    assert "negative" in too_much.json()["detail"][0]["msg"]
    (value,) = await values(api, metricUid="api_calls")
    assert value["value"] == "3"
    assert await api.sql("SELECT 1 FROM tally.value_adjustments") == []

    missing = await adjust(api, adjustment(metricUid="visitors", delta="-1"), "adj-neg-2")
    assert missing.status_code == 422
    assert await values(api, metricUid="visitors") == []
    assert (await adjust(api, adjustment(delta="-3"), "adj-zero")).status_code == 201


async def test_adjustments_refuse_what_does_not_fit_the_metric(api: Api) -> None:
    cases: list[tuple[dict[str, Any], list[Any]]] = [
        (adjustment(metricUid="nope"), ["body", "metricUid"]),
        (adjustment(timeUnit="hour"), ["body", "timeUnit"]),
        (adjustment(periodStart="2026-03-01T01:00:00Z"), ["body", "periodStart"]),
        (adjustment(periodStart="2026-03-01T00:00:00.5Z"), ["body", "periodStart"]),
        (adjustment(periodStart="2026-03-01"), ["body", "periodStart"]),
        (
            adjustment(metricUid="revenue", periodStart="2026-03-01T00:00:00Z"),
            ["body", "periodStart"],
        ),
        (adjustment(groupKey="pro"), ["body", "groupKey"]),
        # Longer than any group key the worker writes (512 bytes of UTF-8).
        (adjustment(metricUid="revenue", groupKey="x" * 513), ["body", "groupKey"]),
        (adjustment(metricUid="revenue", groupKey="é" * 300), ["body", "groupKey"]),
        (adjustment(delta="1.5"), ["body", "delta"]),
        (adjustment(delta="0"), ["body", "delta"]),
        (adjustment(delta=2), ["body", "delta"]),
        (adjustment(delta="1e3"), ["body", "delta"]),
        (adjustment(reason=""), ["body", "reason"]),
        ({k: v for k, v in adjustment().items() if k != "reason"}, ["body", "reason"]),
        (adjustment(extra=1), ["body", "extra"]),
    ]
    for body, loc in cases:
        response = await adjust(api, body, f"k-{loc[-1]}")
        assert response.status_code == 422, (body, response.text)
        assert error_locs(response) == [loc], (body, response.text)
    la = await adjust(api, adjustment(metricUid="revenue", periodStart="2026-03-01T09:00:00Z"), "k")
    assert "starts at 2026-03-01T00:00:00-08:00" in la.json()["detail"][0]["msg"]
    assert await api.sql("SELECT 1 FROM tally.metric_values") == []
    assert await api.sql("SELECT 1 FROM tally.api_idempotency") == []


async def test_adjustments_need_an_idempotency_key_and_honour_it(api: Api) -> None:
    await put_value(api, "api_calls", "acme", DAY, "10")
    no_key = await api.client.post("/metric-values/adjustments", json=adjustment(), headers=ADMIN)
    assert no_key.status_code == 422
    assert error_locs(no_key) == [["header", "Idempotency-Key"]]

    first, *retries = await asyncio.gather(*(adjust(api, adjustment(), "once") for _ in range(5)))
    assert first.status_code == 201
    assert all(r.status_code == 201 and r.content == first.content for r in retries)
    (value,) = await values(api, metricUid="api_calls")
    assert value["value"] == "8"
    other = await adjust(api, adjustment(delta="-1"), "once")
    assert other.status_code == 422
    assert error_locs(other) == [["header", "Idempotency-Key"]]
    assert len(await api.sql("SELECT 1 FROM tally.value_adjustments")) == 1


async def test_concurrent_adjustments_and_flush_deltas_all_count(api: Api) -> None:
    await put_value(api, "api_calls", "acme", DAY, "100")

    async def flush_like(n: int) -> None:
        await api.sql(
            "UPDATE tally.metric_values SET value = value + 1 WHERE metric_uid = 'api_calls'"
        )

    results = await asyncio.gather(
        *(adjust(api, adjustment(delta="-1"), f"c-{n}") for n in range(10)),
        *(flush_like(n) for n in range(10)),
    )
    assert all(r is None or r.status_code == 201 for r in results)
    (value,) = await values(api, metricUid="api_calls")
    assert value["value"] == "100"
    trail = await api.sql("SELECT value_before, value_after FROM tally.value_adjustments")
    assert all(r["value_after"] == r["value_before"] - 1 for r in trail)


async def test_the_audit_trail_pages_and_filters(api: Api) -> None:
    for n in range(5):
        customer = "acme" if n % 2 == 0 else "globex"
        body = adjustment(customerId=customer, delta=str(n + 1))
        assert (await adjust(api, body, f"t-{n}")).status_code == 201
    seen: list[str] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        page = (
            await api.client.get("/metric-values/adjustments", params=params, headers=READ)
        ).json()
        seen += [a["delta"] for a in page["items"]]
        after = page["pagination"]["after"]
        if after is None:
            break
    assert seen == ["1", "2", "3", "4", "5"]
    acme = await api.client.get(
        "/metric-values/adjustments",
        params={"customerId": "acme", "periodStart": "2026-03-01T00:00:00Z", "timeUnit": "day"},
        headers=READ,
    )
    assert [a["delta"] for a in acme.json()["items"]] == ["1", "3", "5"]
    other_period = await api.client.get(
        "/metric-values/adjustments", params={"periodStart": "2026-03-02T00:00:00Z"}, headers=READ
    )
    assert other_period.json()["items"] == []
