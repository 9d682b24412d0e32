"""POST /metrics/values/{context_type}/{entity_uid} against the real
PostgreSQL: 201 with the value, its row in tally.metric_values and its audit
row; 409 on a duplicate; 422 naming every bad field (docs/api.md, "External
values")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from tally.contracts.metric import parse_metric
from tally.core.metrics import MetricIndex
from tests.integration.test_api_support import ADMIN, READ, Api, error_locs, open_api

pytestmark = pytest.mark.asyncio(loop_scope="function")

DSO: dict[str, Any] = {
    "uid": "dso",
    "name": "Days Sales Outstanding",
    "source": "EXTERNAL",
    "aggregationType": "LATEST",
    "isSnapshot": True,
    "contextType": "PARTY",
    "valueKind": "days",
    "periodDefinition": "as_of_date",
    "timeUnits": ["day", "month"],
    "timezone": "America/Los_Angeles",
}
AR: dict[str, Any] = {
    "uid": "total_ar",
    "name": "Total AR",
    "source": "EXTERNAL",
    "aggregationType": "SUM",
    "valueKind": "currency",
    "storageUnit": "cents",
    "timeUnits": ["day"],
}
VALUE: dict[str, Any] = {
    "metric_uid": "dso",
    "time_unit": "day",
    "metric_date": "2026-03-15",
    "value": 41.25,
    "timezone": "Europe/London",
    "_metadata": {"ar": "1200.00", "sales": [1, 2]},
}


@pytest_asyncio.fixture
async def api(fresh_database: str) -> AsyncIterator[Api]:
    async with open_api(fresh_database) as opened:
        for definition in (DSO, AR):
            created = await opened.create(definition)
            assert created.status_code == 201, created.text
        yield opened


async def test_a_value_is_created_stored_audited_and_served(api: Api) -> None:
    response = await api.client.post("/metrics/values/PARTY/p_1", json=VALUE, headers=ADMIN)
    assert response.status_code == 201, response.text
    data = response.json()
    assert (data["metric_uid"], data["entity_uid"], data["value"]) == ("dso", "p_1", 41.25)
    assert (data["context_type"], data["value_type"]) == ("PARTY", "days")
    assert data["_metadata"] == VALUE["_metadata"]
    # The metric's day in its own zone (the value's zone is kept as sent).
    assert data["period_start"] == "2026-03-15T07:00:00Z"
    rows = await api.sql(
        "SELECT value, event_count, time_unit, period_start, value_timezone, metadata"
        " FROM tally.metric_values WHERE metric_uid = 'dso' AND customer_id = 'p_1'"
    )
    assert len(rows) == 1
    row = rows[0]
    assert (row["value"], row["event_count"], row["time_unit"]) == (Decimal("41.25"), 0, "day")
    assert row["period_start"] == datetime(2026, 3, 15, 7, tzinfo=UTC)
    assert (row["value_timezone"], row["metadata"]) == ("Europe/London", VALUE["_metadata"])
    audit = await api.sql(
        "SELECT value_uid::text, principal, value FROM tally.external_value_audit"
    )
    assert [(a["value_uid"], a["principal"], a["value"]) for a in audit] == [
        (data["uid"], "ops", Decimal("41.25"))
    ]
    served = await api.client.get(
        "/metric-values", params={"metricUid": "dso", "customerId": "p_1"}, headers=READ
    )
    assert served.status_code == 200
    assert [item["value"] for item in served.json()["items"]] == ["41.25"]


async def test_a_duplicate_of_entity_metric_unit_and_date_is_409(api: Api) -> None:
    first = await api.client.post("/metrics/values/PARTY/p_1", json=VALUE, headers=ADMIN)
    assert first.status_code == 201
    again = await api.client.post(
        "/metrics/values/PARTY/p_1", json={**VALUE, "value": 7}, headers=ADMIN
    )
    assert again.status_code == 409
    assert error_locs(again) == [["body", "metric_date"]]
    other = await api.client.post("/metrics/values/PARTY/p_2", json=VALUE, headers=ADMIN)
    assert other.status_code == 201  # another entity
    audit = await api.sql("SELECT count(*) AS n FROM tally.external_value_audit")
    assert audit[0]["n"] == 2


async def test_a_context_type_that_is_not_the_metrics_is_422(api: Api) -> None:
    response = await api.client.post("/metrics/values/ORGANIZATION/p_1", json=VALUE, headers=ADMIN)
    assert response.status_code == 422
    assert error_locs(response) == [["path", "context_type"]]
    unknown = await api.client.post("/metrics/values/TEAM/p_1", json=VALUE, headers=ADMIN)
    assert unknown.status_code == 422
    assert error_locs(unknown) == [["path", "context_type"]]


async def test_every_bad_field_is_named_at_once(api: Api) -> None:
    bad = {
        "metric_uid": "dso",
        "time_unit": "week",
        "metric_date": 20260315,
        "value": "lots",
        "timezone": "Mars/Olympus",
        "extra": 1,
    }
    response = await api.client.post("/metrics/values/PARTY/p_1", json=bad, headers=ADMIN)
    assert response.status_code == 422
    assert sorted(map(str, error_locs(response))) == sorted(
        map(
            str,
            [
                ["body", "time_unit"],
                ["body", "metric_date"],
                ["body", "timezone"],
                ["body", "extra"],
            ],
        )
    )
    # Against the definition: unit it does not hold, context, cents, a string value.
    against = await api.client.post(
        "/metrics/values/PARTY/o_1",
        json={**VALUE, "metric_uid": "total_ar", "time_unit": "month", "value": 10.5},
        headers=ADMIN,
    )
    assert against.status_code == 422
    assert sorted(map(str, error_locs(against))) == sorted(
        map(str, [["path", "context_type"], ["body", "time_unit"], ["body", "value"]])
    )
    events = await api.create(
        {"uid": "calls", "name": "Calls", "eventType": "call", "aggregationType": "COUNT"}
    )
    assert events.status_code == 201
    not_external = await api.client.post(
        "/metrics/values/ORGANIZATION/o_1", json={**VALUE, "metric_uid": "calls"}, headers=ADMIN
    )
    assert not_external.status_code == 422
    assert error_locs(not_external) == [["body", "metric_uid"]]
    missing = await api.client.post(
        "/metrics/values/PARTY/o_1", json={**VALUE, "metric_uid": "nope"}, headers=ADMIN
    )
    assert missing.status_code == 422
    assert error_locs(missing) == [["body", "metric_uid"]]
    rows = await api.sql("SELECT count(*) AS n FROM tally.metric_values")
    assert rows[0]["n"] == 0


async def test_cents_take_whole_numbers_and_read_tokens_may_not_write(api: Api) -> None:
    body = {**VALUE, "metric_uid": "total_ar", "value": 350000000}
    response = await api.client.post("/metrics/values/ORGANIZATION/o_1", json=body, headers=READ)
    assert response.status_code == 403
    response = await api.client.post("/metrics/values/ORGANIZATION/o_1", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    assert response.json()["storage_unit"] == "cents"


async def test_workers_never_index_an_external_metric(api: Api) -> None:
    index = MetricIndex([parse_metric(DSO), parse_metric(AR)])
    assert len(index) == 0
    refused = await api.create(
        {**DSO, "uid": "dso_2", "eventType": "x", "isSnapshot": False, "aggregationType": "COUNT"}
    )
    assert refused.status_code == 422
    assert sorted(error_locs(refused)) == [["body", "aggregationType"], ["body", "eventType"]]


async def test_the_usage_query_reads_external_values_like_rollups(api: Api) -> None:
    # A snapshot (LATEST) answers its latest period's value, never a sum.
    for day, value in (("2026-03-14", 40), ("2026-03-15", 41.25), ("2026-03-13", 39)):
        body = {**VALUE, "metric_date": day, "value": value}
        created = await api.client.post("/metrics/values/PARTY/p_1", json=body, headers=ADMIN)
        assert created.status_code == 201, created.text
    window = {
        "customerId": "p_1",
        "from": "2026-03-13T00:00:00-07:00",
        "to": "2026-03-16T00:00:00-07:00",
    }
    latest = await api.client.get("/usage-metrics/dso/usage", params=window, headers=READ)
    assert latest.status_code == 200, latest.text
    assert [item["value"] for item in latest.json()["items"]] == ["41.25"]
    # A SUM metric's values add up.
    for day, cents in (("2026-03-14", 150), ("2026-03-15", 250)):
        body = {**VALUE, "metric_uid": "total_ar", "metric_date": day, "value": cents}
        created = await api.client.post(
            "/metrics/values/ORGANIZATION/o_1", json=body, headers=ADMIN
        )
        assert created.status_code == 201, created.text
    summed = await api.client.get(
        "/usage-metrics/total_ar/usage",
        params={"customerId": "o_1", "from": "2026-03-14T00:00:00Z", "to": "2026-03-16T00:00:00Z"},
        headers=READ,
    )
    assert summed.status_code == 200, summed.text
    assert [item["value"] for item in summed.json()["items"]] == ["400"]
