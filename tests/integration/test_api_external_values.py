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
    "timeUnits": ["day"],
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
                ["body", "value"],  # "lots" for a NUMBER metric: judged though the shape failed
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


async def post_values(api: Api, path: str, uid: str, values: dict[str, Any]) -> None:
    for day, value in values.items():
        body = {**VALUE, "metric_uid": uid, "metric_date": day, "value": value}
        created = await api.client.post(path, json=body, headers=ADMIN)
        assert created.status_code in (200, 201), created.text


async def usage(api: Api, uid: str, customer: str, start: str, end: str) -> list[Any]:
    params = {"customerId": customer, "from": start, "to": end}
    answer = await api.client.get(f"/usage-metrics/{uid}/usage", params=params, headers=READ)
    assert answer.status_code == 200, answer.text
    return [item["value"] for item in answer.json()["items"]]


async def test_an_external_metric_is_read_only_in_the_one_unit_its_values_are_posted_in(
    api: Api,
) -> None:
    # Several units would be separate series: the query's month cover would
    # answer a month nobody posted (docs/decisions.md, "External values: one time unit").
    mixed = await api.create({**AR, "uid": "mixed", "timeUnits": ["day", "month"]})
    assert mixed.status_code == 422
    assert error_locs(mixed) == [["body", "timeUnits"]]
    march = {f"2026-03-{day:02d}": 10 for day in range(1, 32)}
    await post_values(api, "/metrics/values/ORGANIZATION/o_1", "total_ar", march)
    expected = str(sum(Decimal(v) for v in march.values()))
    for start, end in (("2026-03-01", "2026-04-01"), ("2026-02-28", "2026-04-02")):
        assert await usage(api, "total_ar", "o_1", f"{start}T00:00:00Z", f"{end}T00:00:00Z") == [
            expected
        ], (start, end)
    summary = await api.client.get(
        "/usage-metrics/total_ar/summary",
        params={
            "customerId": "o_1",
            "periodType": "calendar",
            "periodValue": "month",
            "asOf": "2026-03-31",
        },
        headers=READ,
    )
    assert summary.status_code == 200, summary.text
    assert summary.json()["currentValue"] == expected
    month = {**VALUE, "metric_uid": "total_ar", "time_unit": "month", "value": 7}
    refused = await api.client.post("/metrics/values/ORGANIZATION/o_1", json=month, headers=ADMIN)
    assert refused.status_code == 422
    assert error_locs(refused) == [["body", "time_unit"]]
    # A snapshot's March is its latest posted day in March, in the metric's zone.
    await post_values(
        api, "/metrics/values/PARTY/p_1", "dso", {"2026-03-01": 5, "2026-03-15": 7, "2026-03-31": 9}
    )
    assert await usage(
        api, "dso", "p_1", "2026-03-01T00:00:00-08:00", "2026-04-01T00:00:00-07:00"
    ) == ["9"]
    assert await usage(
        api, "dso", "p_1", "2026-03-01T00:00:00-08:00", "2026-03-31T00:00:00-07:00"
    ) == ["7"]


async def test_exante_values_that_overlap_are_never_summed(api: Api) -> None:
    metric = {"uid": "mtd", "name": "MTD", "period_definition": "month_to_date"}
    created = await api.client.post("/api/metrics", json=metric, headers=ADMIN)
    assert created.status_code == 200, created.text
    stored = (await api.client.get("/usage-metrics/mtd", headers=READ)).json()
    assert (stored["aggregationType"], stored["timeUnits"]) == ("LATEST", ["day"])
    days = {"2026-03-01": 10, "2026-03-02": 20, "2026-03-03": 30}
    await post_values(api, "/api/metrics/values/ORGANIZATION/o_1", "mtd", days)
    summary = await api.client.get(
        "/usage-metrics/mtd/summary",
        params={"customerId": "o_1", "periodDefinition": "month_to_date", "asOf": "2026-03-03"},
        headers=READ,
    )
    assert summary.status_code == 200, summary.text
    assert summary.json()["currentValue"] == "30"  # the month to the 3rd, as posted
    summed = await api.create({**AR, "uid": "mtd_sum", "periodDefinition": "month_to_date"})
    assert summed.status_code == 422
    assert error_locs(summed) == [["body", "periodDefinition"]]


async def test_an_external_value_is_not_adjustable(api: Api) -> None:
    body = {
        "metricUid": "total_ar",
        "customerId": "o_1",
        "timeUnit": "day",
        "periodStart": "2026-03-15T00:00:00Z",
        "delta": "0.5",
        "reason": "a correction",
    }
    refused = await api.client.post(
        "/metric-values/adjustments", json=body, headers={**ADMIN, "Idempotency-Key": "a-1"}
    )
    assert refused.status_code == 422, refused.text
    assert error_locs(refused) == [["body", "metricUid"]]
    assert refused.json()["detail"][0]["type"] == "not_adjustable"
    assert await api.sql("SELECT 1 FROM tally.metric_values") == []
    # So nothing stands in the way of the value itself.
    value = {**VALUE, "metric_uid": "total_ar", "value": 150}
    created = await api.client.post("/metrics/values/ORGANIZATION/o_1", json=value, headers=ADMIN)
    assert created.status_code == 201, created.text


async def test_exantes_fields_are_refused_on_a_metric_of_events(api: Api) -> None:
    refused = await api.create(
        {
            "uid": "spend",
            "name": "Spend",
            "eventType": "purchase",
            "aggregationType": "SUM",
            "aggregationProperty": "amount",
            "storageUnit": "cents",
            "contextType": "USER",
            "periodDefinition": "trailing_30_days",
        }
    )
    assert refused.status_code == 422
    assert sorted(error_locs(refused)) == [
        ["body", "contextType"],
        ["body", "periodDefinition"],
        ["body", "storageUnit"],
    ]


@pytest.mark.parametrize(
    ("uid", "path", "day"),
    [
        ("dso", "/metrics/values/PARTY/p_1", "9999-12-31"),
        ("total_ar", "/api/metrics/values/ORGANIZATION/o_1", "9999-12-31"),
        ("total_ar", "/metrics/values/ORGANIZATION/o_1", "0999-01-01"),
        ("dso", "/metrics/values/PARTY/p_1", "0001-01-01"),
        ("total_ar", "/metrics/values/ORGANIZATION/o_1", "1970-01-01"),
    ],
)
async def test_a_metric_date_whose_period_tally_cannot_hold_is_422(
    api: Api, uid: str, path: str, day: str
) -> None:
    body = {**VALUE, "metric_uid": uid, "metric_date": day, "value": 1}
    refused = await api.client.post(path, json=body, headers=ADMIN)
    assert refused.status_code == 422, refused.text
    assert error_locs(refused) == [["body", "metric_date"]]
    served = await api.client.get("/metric-values", headers=READ)
    assert served.status_code == 200, served.text
    assert served.json()["items"] == []


async def test_the_edges_of_the_date_range_are_stored_and_served(api: Api) -> None:
    await post_values(api, "/metrics/values/PARTY/p_1", "dso", {"9998-12-31": 1, "1970-01-02": 2})
    await post_values(api, "/metrics/values/ORGANIZATION/o_1", "total_ar", {"1970-01-02": 3})
    served = await api.client.get("/metric-values", headers=READ)
    assert served.status_code == 200, served.text
    assert sorted(item["value"] for item in served.json()["items"]) == ["1", "2", "3"]
    # Only a LATEST row has what LATEST combines by (migration 0007).
    rows = await api.sql(
        "SELECT metric_uid, latest_at IS NULL AS bare, latest_id IS NULL AS bare_id"
        " FROM tally.metric_values ORDER BY metric_uid"
    )
    assert [(r["metric_uid"], r["bare"], r["bare_id"]) for r in rows] == [
        ("dso", False, False),
        ("dso", False, False),
        ("total_ar", True, True),
    ]


@pytest.mark.parametrize(
    "metadata",
    [
        b'{"n": 1e400, "m": -1e400}',
        b'{"deep": [1, {"x": 1e999}]}',
        b'{"a": ' * 600 + b"1" + b"}" * 600,
        b'{"a": ' * 33 + b"{}" + b"}" * 33,
    ],
    ids=["infinite", "infinite-nested", "600-deep", "34-deep"],
)
async def test_metadata_that_cannot_be_stored_as_sent_is_422(api: Api, metadata: bytes) -> None:
    body = b'{"metric_uid": "dso", "time_unit": "day", "metric_date": "2026-03-15", "value": 1,'
    body += b' "_metadata": ' + metadata + b"}"
    refused = await api.client.post(
        "/metrics/values/PARTY/p_1",
        content=body,
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert refused.status_code == 422, refused.text
    assert error_locs(refused) == [["body", "_metadata"]]
    assert await api.sql("SELECT 1 FROM tally.metric_values") == []
    # 32 deep is kept exactly as sent.
    kept: Any = {"n": 1e300}
    for _ in range(31):
        kept = {"a": kept}
    created = await api.client.post(
        "/metrics/values/PARTY/p_1", json={**VALUE, "_metadata": kept}, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    rows = await api.sql("SELECT metadata FROM tally.metric_values")
    assert rows[0]["metadata"] == kept


async def test_the_path_the_shape_and_the_definition_are_judged_together(api: Api) -> None:
    empty = await api.client.post("/metrics/values/TEAM/e", json={}, headers=ADMIN)
    assert empty.status_code == 422
    assert sorted(map(str, error_locs(empty))) == sorted(
        map(
            str,
            [
                ["path", "context_type"],
                ["body", "metric_uid"],
                ["body", "time_unit"],
                ["body", "metric_date"],
                ["body", "value"],
            ],
        )
    )
    # total_ar is an ORGANIZATION metric of day cents: the wrong context, a
    # unit no value has, and a fraction of cents, all at once.
    body = {**VALUE, "metric_uid": "total_ar", "time_unit": "week", "value": 10.5}
    mixed = await api.client.post("/metrics/values/PARTY/e", json=body, headers=ADMIN)
    assert mixed.status_code == 422
    assert sorted(map(str, error_locs(mixed))) == sorted(
        map(str, [["path", "context_type"], ["body", "time_unit"], ["body", "value"]])
    )
    shape_and_unit = {**body, "time_unit": "month", "metric_date": "someday", "value": 10}
    both = await api.client.post(
        "/api/metrics/values/ORGANIZATION/e", json=shape_and_unit, headers=ADMIN
    )
    assert both.status_code == 422
    assert sorted(map(str, error_locs(both))) == sorted(
        map(str, [["body", "metric_date"], ["body", "time_unit"]])
    )
    assert await api.sql("SELECT 1 FROM tally.metric_values") == []
