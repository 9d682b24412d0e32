"""The usage query of every kind over stored hour and day rollups in the
real PostgreSQL, through the API and `tally usage`; each answer is checked
against the raw values the rollups were built from (tests/reference.py)."""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from tests import reference
from tests.integration.test_api_support import READ, Api, open_api
from tests.integration.test_cli import tally

pytestmark = pytest.mark.asyncio(loop_scope="function")

BASE: dict[str, Any] = {"eventType": "reading", "timeUnits": ["hour", "day"], "timezone": "UTC"}
PEAK = {**BASE, "uid": "peak", "name": "Peak", "aggregationType": "MAX", "aggregationProperty": "v"}
LOW = {**BASE, "uid": "low", "name": "Low", "aggregationType": "MIN", "aggregationProperty": "v"}
MEAN = {**BASE, "uid": "mean", "name": "Mean", "aggregationType": "AVG", "aggregationProperty": "v"}
LAST = {
    **BASE,
    "uid": "last",
    "name": "Last",
    "aggregationType": "LATEST",
    "aggregationProperty": "v",
}
USERS = {
    **BASE,
    "uid": "users",
    "name": "Users",
    "aggregationType": "UNIQUE",
    "aggregationProperty": "user",
    "metricType": "GROUPED",
    "groupingProperties": ["region", "plan"],
}
# Recent, so UNIQUE members are within TALLY_MEMBER_RETENTION.
DAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=5)


def at(hours: float) -> str:
    return (DAY + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


HOURS = 48


def raw_readings(seed: int = 7) -> list[tuple[int, str, Decimal, str, str, str]]:
    """(hour index, event id, value, user, region, plan)."""
    rng = random.Random(seed)
    return [
        (
            rng.randrange(HOURS),
            f"e{n:04d}",
            Decimal(rng.randrange(-(10**6), 10**6)) / 1000,
            f"u{rng.randrange(30)}",
            rng.choice(["eu", "us"]),
            rng.choice(["free", "pro"]),
        )
        for n in range(400)
    ]


@pytest_asyncio.fixture
async def api(fresh_database: str) -> AsyncIterator[Api]:
    async with open_api(fresh_database) as opened:
        for definition in (PEAK, LOW, MEAN, LAST, USERS):
            created = await opened.create(definition)
            assert created.status_code == 201, created.text
        yield opened


async def store_rollups(api: Api, readings: list[tuple[int, str, Decimal, str, str, str]]) -> None:
    """The hour and day rows of every metric, and UNIQUE members, as a worker writes them."""
    sql = (
        "INSERT INTO tally.metric_values (metric_uid, customer_id, group_key, time_unit,"
        " period_start, period_end, value, value_sum, latest_at, latest_id, event_count)"
        " VALUES ($1, 'acme', $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    )
    spans = [("hour", h, h + 1) for h in range(HOURS)] + [("day", 0, 24), ("day", 24, 48)]
    for unit, first, after in spans:
        start, end = DAY + timedelta(hours=first), DAY + timedelta(hours=after)
        here = [r for r in readings if first <= r[0] < after]
        if not here:
            continue
        values = [r[2] for r in here]
        total = sum(values, Decimal(0))
        last = max(here, key=lambda r: (r[0], r[1]))  # (timestamp, id)
        at = int((DAY + timedelta(hours=last[0])).timestamp() * 1_000_000)
        row = (unit, start, end)
        await api.sql(sql, "peak", "", *row, max(values), None, None, None, len(here))
        await api.sql(sql, "low", "", *row, min(values), None, None, None, len(here))
        mean = reference.average(total, len(here))
        await api.sql(sql, "mean", "", *row, mean, total, None, None, len(here))
        await api.sql(sql, "last", "", *row, last[2], None, at, last[1], len(here))
        for key in sorted({json.dumps([r[4], r[5]], separators=(",", ":")) for r in here}):
            region, plan = json.loads(key)
            members = {r[3] for r in here if (r[4], r[5]) == (region, plan)}
            count = sum(1 for r in here if (r[4], r[5]) == (region, plan))
            await api.sql(sql, "users", key, *row, len(members), None, None, None, count)
            for member in members:
                await api.sql(
                    "INSERT INTO tally.unique_members VALUES ('users', 'acme', $1, $2, $3, $4)",
                    unit,
                    start,
                    key,
                    member,
                )


async def usage(api: Api, uid: str, **params: Any) -> dict[str, Any]:
    response = await api.client.get(f"/usage-metrics/{uid}/usage", params=params, headers=READ)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_every_kind_over_a_window_equals_the_raw_values(api: Api) -> None:
    readings = raw_readings()
    await store_rollups(api, readings)
    window = {"customerId": "acme", "from": at(0), "to": at(48)}
    by_day = {**window, "windowSize": "day"}
    days = [(0, 24), (24, 48)]

    def of(span: tuple[int, int]) -> list[tuple[int, str, Decimal, str, str, str]]:
        return [r for r in readings if span[0] <= r[0] < span[1]]

    expect = {
        "peak": lambda rs: reference.plain_decimal(max(r[2] for r in rs)),
        "low": lambda rs: reference.plain_decimal(min(r[2] for r in rs)),
        "mean": lambda rs: reference.plain_decimal(
            reference.average(sum((r[2] for r in rs), Decimal(0)), len(rs))
        ),
        "last": lambda rs: reference.plain_decimal(max(rs, key=lambda r: (r[0], r[1]))[2]),
        "users": lambda rs: str(len({r[3] for r in rs})),
    }
    for uid, expected in expect.items():
        whole = await usage(api, uid, **window)
        (item,) = whole["items"]
        assert item["value"] == expected(readings), uid
        assert item["eventCount"] == len(readings), uid
        daily = await usage(api, uid, **by_day)
        assert [i["value"] for i in daily["items"]] == [expected(of(d)) for d in days], uid

    # UNIQUE by one of two grouping keys: the union of members over the other key.
    grouped = await usage(api, "users", groupBy="region", **window)
    found = {i["group"]["region"]: i["value"] for i in grouped["items"]}
    assert found == {
        region: str(len({r[3] for r in readings if r[4] == region})) for region in ("eu", "us")
    }
    filtered = await usage(api, "users", **{"group.plan": "pro"}, **window)
    (item,) = filtered["items"]
    assert item["value"] == str(len({r[3] for r in readings if r[5] == "pro"}))


async def test_refusals_name_the_field(api: Api) -> None:
    cases = [
        ({"from": at(0.5), "to": at(24)}, "from", "hour"),
        (
            {
                "from": at(-5.75),  # midnight in Asia/Kathmandu
                "to": at(18.25),
                "windowSize": "day",
                "windowTimeZone": "Asia/Kathmandu",
            },
            "windowTimeZone",
            "'day' in its timeUnits and timezone 'Asia/Kathmandu'",
        ),
        ({"from": at(24), "to": at(0)}, "to", "after"),
        (
            {"from": at(0), "to": at(24), "groupBy": "nope"},
            "groupBy",
            "nope",
        ),
        (
            {
                "from": at(0),
                "to": at(24),
                "windowTimeZone": "Mars/Olympus",
            },
            "windowTimeZone",
            "Mars/Olympus",
        ),
    ]
    for params, field, word in cases:
        response = await api.client.get(
            "/usage-metrics/users/usage", params={"customerId": "acme", **params}, headers=READ
        )
        assert response.status_code == 422, (params, response.text)
        (problem,) = response.json()["detail"]
        assert problem["loc"] == ["query", field], params
        assert word in problem["msg"], params
    both = await api.client.get(
        "/usage-metrics/users/usage",
        params={"customerId": "acme", "from": at(24.0001), "to": at(0)},
        headers=READ,
    )
    assert both.status_code == 422
    assert [p["loc"] for p in both.json()["detail"]] == [["query", "from"], ["query", "to"]]
    micro = await api.client.get(
        "/usage-metrics/users/usage",
        params={
            "customerId": "acme",
            "from": "5000-01-01T00:00:00.000001Z",
            "to": "5000-01-02T00:00:00Z",
        },
        headers=READ,
    )
    assert [p["loc"] for p in micro.json()["detail"]] == [["query", "from"]], micro.text
    missing = await api.client.get("/usage-metrics/nope/usage", params=cases[0][0], headers=READ)
    assert missing.status_code == 422  # customerId is required
    gone = await api.client.get(
        "/usage-metrics/nope/usage", params={"customerId": "a", **cases[0][0]}, headers=READ
    )
    assert gone.status_code == 404


async def test_summary_needs_day_rollups_and_reports_the_target(api: Api) -> None:
    hourly = {**BASE, "uid": "hourly", "name": "Hourly", "aggregationType": "COUNT"}
    hourly["timeUnits"] = ["hour"]
    assert (await api.create(hourly)).status_code == 201
    refused = await api.client.get(
        "/usage-metrics/hourly/summary",
        params={"customerId": "acme", "periodType": "rolling", "periodValue": "7-day"},
        headers=READ,
    )
    assert refused.status_code == 422
    assert "'day'" in refused.json()["detail"][0]["msg"]
    both = await api.client.get(
        "/usage-metrics/peak/summary", params={"customerId": "acme"}, headers=READ
    )
    assert both.status_code == 422
    assert [p["loc"] for p in both.json()["detail"]] == [
        ["query", "periodType"],
        ["query", "periodValue"],
    ]
    await api.sql(
        "INSERT INTO tally.metric_values (metric_uid, customer_id, group_key, time_unit,"
        " period_start, period_end, value, event_count) VALUES"
        " ('peak', 'acme', '', 'day', $1, $2, 42, 3), ('peak', 'acme', '', 'day', $2, $3, 40, 1)",
        DAY - timedelta(days=1),
        DAY,
        DAY + timedelta(days=1),
    )
    patched = await api.client.patch(
        "/usage-metrics/peak",
        json={"targetOperator": "less_than", "targetValue": "41", "targetDirection": "down"},
        headers={"Authorization": "Bearer tly_test_admin_0123456789"},
    )
    assert patched.status_code == 200, patched.text
    summary = await api.client.get(
        "/usage-metrics/peak/summary",
        params={
            "customerId": "acme",
            "periodType": "rolling",
            "periodValue": "day",
            "asOf": DAY.date().isoformat(),
        },
        headers=READ,
    )
    assert summary.status_code == 200, summary.text
    body = summary.json()
    assert (body["currentValue"], body["previousValue"]) == ("40", "42")
    assert body["target"] == {
        "operator": "less_than",
        "value": "41",
        "direction": "down",
        "met": True,
        "onTrack": True,
    }


async def test_the_cli_answers_as_a_table_json_and_csv(api: Api, fresh_database: str) -> None:
    readings = raw_readings()
    await store_rollups(api, readings)
    env = {"TALLY_DATABASE_URL": fresh_database}
    args = ["usage", "users", "--customer", "acme", "--from", at(0), "--to", at(48)]
    distinct = str(len({r[3] for r in readings}))
    as_json = tally(*args, "--window-size", "none", "--format", "json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    (row,) = json.loads(as_json.stdout)
    assert (row["customer"], row["value"], row["events"]) == ("acme", distinct, len(readings))
    as_csv = tally(*args, "--format", "csv", env=env)
    assert as_csv.returncode == 0, as_csv.stderr
    (line,) = csv.DictReader(io.StringIO(as_csv.stdout))
    assert line["value"] == distinct
    table = tally(*args, env=env)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "customer",
        "group",
        "window_start",
        "window_end",
        "value",
        "events",
    ]
    kathmandu_days = ["--from", at(-5.75), "--to", at(42.25), "--window-size", "day"]
    refused = tally(*args[:4], *kathmandu_days, "--window-time-zone", "Asia/Kathmandu", env=env)
    assert refused.returncode == 2
    assert "--window-time-zone" in refused.stderr
    assert "'day' in its timeUnits and timezone 'Asia/Kathmandu'" in refused.stderr
    assert "Traceback" not in refused.stderr
    for flags, named in (
        (["--group-by", "nope"], "--group-by:"),
        (["--group-by-name", "nope=x"], "--group-by-name"),
    ):
        wrong = tally(*args, *flags, env=env)
        assert (wrong.returncode, named in wrong.stderr) == (2, True), wrong.stderr
    micro = tally(
        *args[:4], "--from", "5000-01-01T00:00:00.000001Z", "--to", "5000-01-02T00:00:00Z", env=env
    )
    assert (micro.returncode, "--from: must be a whole second" in micro.stderr) == (2, True)
