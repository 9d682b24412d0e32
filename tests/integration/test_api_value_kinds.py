"""`/metric-values` for MAX, MIN, AVG and LATEST rollups, groups by name and
the `group.<property>` filter, against the real PostgreSQL (rows as the
flush writes them: docs/metering-model.md, migration 0007)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from tally.contracts.group import encode_group
from tests.integration.test_api_support import ADMIN, CALLS, READ, Api, error_locs, open_api

pytestmark = pytest.mark.asyncio(loop_scope="function")

DAY = datetime(2026, 3, 1, tzinfo=UTC)


def metric(uid: str, kind: str, **more: Any) -> dict[str, Any]:
    return {
        "uid": uid,
        "name": uid,
        "eventType": "reading",
        "aggregationType": kind,
        "aggregationProperty": "$.load",
        "timeUnits": ["day"],
        **more,
    }


PLAN = metric(
    "last_plan",
    "LATEST",
    aggregationProperty="plan",
    valueType="STRING",
    metricType="GROUPED",
    groupingProperties=["region", "$.tier", "$['zone']"],
)
SITE = metric("last_reading", "LATEST", metricType="GROUPED", groupingProperty="$.site")
PLACES = {
    **CALLS,
    "uid": "calls_by_place",
    "metricType": "GROUPED",
    "groupingProperties": ["region", "tier"],
}
KINDS = [metric("peak", "MAX"), metric("low", "MIN"), metric("mean", "AVG"), PLAN, SITE, PLACES]


@pytest_asyncio.fixture
async def api(fresh_database: str) -> AsyncIterator[Api]:
    async with open_api(fresh_database) as opened:
        for definition in (CALLS, *KINDS):
            assert (await opened.create(definition)).status_code == 201
        yield opened


async def put_row(api: Api, uid: str, group: str = "", **columns: Any) -> None:
    names = ["metric_uid", "customer_id", "group_key", "time_unit", "period_start", "period_end"]
    values: list[Any] = [uid, "acme", group, "day", DAY, DAY + timedelta(days=1)]
    columns.setdefault("event_count", 1)
    names += list(columns)
    values += list(columns.values())
    marks = ", ".join(f"${n + 1}" for n in range(len(values)))
    await api.sql(f"INSERT INTO tally.metric_values ({', '.join(names)}) VALUES ({marks})", *values)


async def values(api: Api, **params: Any) -> list[dict[str, Any]]:
    response = await api.client.get("/metric-values", params=params, headers=READ)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def kind_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: row[k]
        for k in ("value", "valueText", "sum", "latestAt", "latestId", "eventCount", "group")
        if k in row
    }


async def test_each_kind_shows_its_own_fields(api: Api) -> None:
    await put_row(api, "api_calls", value=Decimal("3"), event_count=3)
    await put_row(api, "peak", value=Decimal("2.50"), event_count=4)
    await put_row(api, "low", value=Decimal("-0.125"), event_count=4)
    await put_row(
        api, "mean", value=Decimal("0.666666666667"), value_sum=Decimal("2.00"), event_count=3
    )
    # 2026-03-01T12:00:00.000001Z in POSIX microseconds.
    at = 1_772_366_400_000_001
    await put_row(api, "last_reading", "north", value=Decimal("7"), latest_at=at, latest_id="e9")
    await put_row(
        api, "last_plan", '["eu","",null]', value_text="Pro", latest_at=at, latest_id="e2"
    )
    shown = {row["metricUid"]: kind_fields(row) for row in await values(api)}
    assert shown == {
        "api_calls": {"value": "3", "eventCount": 3, "group": {}},
        "peak": {"value": "2.5", "eventCount": 4, "group": {}},
        "low": {"value": "-0.125", "eventCount": 4, "group": {}},
        "mean": {"value": "0.666666666667", "sum": "2", "eventCount": 3, "group": {}},
        "last_reading": {
            "value": "7",
            "latestAt": "2026-03-01T12:00:00.000001Z",
            "latestId": "e9",
            "eventCount": 1,
            "group": {"$.site": "north"},
        },
        "last_plan": {
            "value": None,
            "valueText": "Pro",
            "latestAt": "2026-03-01T12:00:00.000001Z",
            "latestId": "e2",
            "eventCount": 1,
            # As the definition writes them; "" and a missing key (null) differ.
            "group": {"region": "eu", "$.tier": "", "$['zone']": None},
        },
    }
    # A whole second is still written to the microsecond.
    await api.sql("UPDATE tally.metric_values SET latest_at = 1772366400000000")
    (reading,) = await values(api, metricUid="last_reading")
    assert reading["latestAt"] == "2026-03-01T12:00:00.000000Z"


async def test_group_is_null_when_it_cannot_be_named(api: Api) -> None:
    await put_row(api, "gone", "x", value=Decimal("1"))  # no such definition
    await put_row(api, "last_plan", '["eu"]', value_text="a")  # one text for three keys
    assert {row["metricUid"]: row["group"] for row in await values(api)} == {
        "gone": None,
        "last_plan": None,
    }


async def test_filter_by_group_name(api: Api) -> None:
    for key in ('["eu","",null]', '["eu",null,"z1"]', '["us","",""]', '["eu","pro",""]'):
        await put_row(api, "last_plan", key, value_text=key)
    await put_row(api, "last_reading", "north", value=Decimal("1"))
    await put_row(api, "last_reading", "", value=Decimal("2"))

    def keys(rows: list[dict[str, Any]]) -> set[str]:
        return {row["groupKey"] for row in rows}

    plan = {"metricUid": "last_plan"}
    assert keys(await values(api, **plan, **{"group.region": "eu"})) == {
        '["eu","",null]',
        '["eu",null,"z1"]',
        '["eu","pro",""]',
    }
    # "" is not a missing key (null), in either position.
    assert keys(await values(api, **plan, **{"group.$.tier": ""})) == {
        '["eu","",null]',
        '["us","",""]',
    }
    assert keys(await values(api, **plan, **{"group.$['zone']": ""})) == {
        '["us","",""]',
        '["eu","pro",""]',
    }
    # Any spelling of the same path; AND across properties and with groupKey.
    both = {"group.tier": "", "group.$.region": "eu"}
    assert keys(await values(api, **plan, **both)) == {'["eu","",null]'}
    assert await values(api, **plan, **both, groupKey='["us","",""]') == []
    one = {"metricUid": "last_reading"}
    assert keys(await values(api, **one, **{"group.$.site": "north"})) == {"north"}
    assert keys(await values(api, **one, **{"group.site": ""})) == {""}
    # The old filter keeps working.
    assert keys(await values(api, **one, groupKey="north")) == {"north"}

    refusals: list[tuple[dict[str, Any], str]] = [
        ({**plan, "group.plan": "x"}, "group.plan"),
        ({"metricUid": "peak", "group.region": "eu"}, "group.region"),
        ({"group.region": "eu"}, "group.region"),
        ({"metricUid": "nope", "group.region": "eu"}, "group.region"),
        ({**plan, "group.region": "x" * 513}, "group.region"),
    ]
    for params, name in refusals:
        response = await api.client.get("/metric-values", params=params, headers=READ)
        assert response.status_code == 422, (params, response.text)
        assert error_locs(response) == [["query", name]], response.text
    unknown = await api.client.get(
        "/metric-values", params={**plan, "group.plan": "x"}, headers=READ
    )
    assert "'region', '$.tier'" in unknown.json()["detail"][0]["msg"]
    twice = await api.client.get(
        "/metric-values?metricUid=last_plan&group.region=eu&group.region=us", headers=READ
    )
    assert twice.status_code == 422
    assert error_locs(twice) == [["query", "group.region"]]


def adjustment(**overrides: Any) -> dict[str, Any]:
    return {
        "metricUid": "last_reading",
        "customerId": "acme",
        "timeUnit": "day",
        "periodStart": "2026-03-01T00:00:00Z",
        "groupKey": "north",
        "delta": "1",
        "reason": "correction",
        **overrides,
    }


async def adjust(api: Api, body: dict[str, Any], key: str) -> Any:
    return await api.client.post(
        "/metric-values/adjustments", json=body, headers={**ADMIN, "Idempotency-Key": key}
    )


async def test_adjustments_are_refused_for_kinds_a_delta_cannot_correct(api: Api) -> None:
    await put_row(api, "last_reading", "north", value=Decimal("7"), latest_at=1, latest_id="e")
    for uid in ("last_reading", "peak", "low", "mean", "last_plan"):
        body = adjustment(metricUid=uid, groupKey="north" if uid == "last_reading" else "")
        refused = await adjust(api, body, f"k-{uid}")
        assert refused.status_code == 422, refused.text
        assert error_locs(refused) == [["body", "metricUid"]]
        assert "a delta cannot be added" in refused.json()["detail"][0]["msg"]
    (row,) = await values(api, metricUid="last_reading")
    assert row["value"] == "7"
    assert await api.sql("SELECT 1 FROM tally.value_adjustments") == []


async def test_a_several_key_adjustment_names_its_group_canonically(api: Api) -> None:
    body = adjustment(metricUid="calls_by_place", delta="2")
    for n, key in enumerate(("eu", '["eu", null]', '["eu"]', '["eu",1]', '["\\u0065u",null]')):
        refused = await adjust(api, {**body, "groupKey": key}, f"bad-{n}")
        assert refused.status_code == 422, (key, refused.text)
        assert error_locs(refused) == [["body", "groupKey"]], key
    key = encode_group(["eu", None])
    assert key == '["eu",null]'
    made = await adjust(api, {**body, "groupKey": key}, "good")
    assert made.status_code == 201, made.text
    (row,) = await values(api, metricUid="calls_by_place", **{"group.region": "eu"})
    assert (row["value"], row["group"]) == ("2", {"region": "eu", "tier": None})
