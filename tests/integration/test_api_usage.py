"""The usage query and summaries end to end: events over six months produced
to the real broker, aggregated by a real worker (`tally run --with-api`), and
read back over HTTP; every number is checked against a computation from the
raw events here (local dates by zoneinfo, sums by Decimal, distinct sets)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest

from tests.conftest import MakeTopic
from tests.integration.support import (
    api_url,
    apply_metrics,
    produce,
    wait_caught_up,
    worker_with_api,
)
from tests.integration.test_api_support import READ, TOKENS
from tests.reference import plain_decimal

pytestmark = pytest.mark.asyncio(loop_scope="function")

ZONE = "America/New_York"
SPEND: dict[str, Any] = {
    "uid": "spend",
    "name": "Spend",
    "eventType": "purchase",
    "aggregationType": "SUM",
    "aggregationProperty": "amount",
    "metricType": "GROUPED",
    "groupingProperty": "plan",
    "timeUnits": ["hour", "day", "month"],
    "timezone": ZONE,
    "targetOperator": "greater_than",
    "targetValue": "100",
}
VISITORS: dict[str, Any] = {
    "uid": "visitors",
    "name": "Visitors",
    "eventType": "purchase",
    "aggregationType": "UNIQUE",
    "aggregationProperty": "user",
    "timeUnits": ["day"],
    "timezone": ZONE,
}
CUSTOMERS = ("acme", "globex")
DAYS_BACK = 185


def make_events(now: datetime, count: int, seed: int = 14) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = []
    for n in range(count):
        moment = now - timedelta(seconds=rng.randrange(1, DAYS_BACK * 86400))
        events.append(
            {
                "id": f"u-{n}",
                "eventType": "purchase",
                "customerId": rng.choice(CUSTOMERS),
                "timestamp": moment.isoformat(),
                "properties": {
                    "amount": f"{rng.randrange(1, 100000)}.{rng.randrange(0, 1000):03d}",
                    "user": f"user-{rng.randrange(60)}",
                    "plan": rng.choice(["free", "pro"]),
                },
            }
        )
    return events


def local_day(event: dict[str, Any]) -> date:
    return datetime.fromisoformat(event["timestamp"]).astimezone(ZoneInfo(ZONE)).date()


def days(first: date, after: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((after - first).days)]


def expected_sum(events: Iterable[dict[str, Any]], customer: str, span: list[date]) -> str:
    wanted = set(span)
    total = sum(
        (
            Decimal(e["properties"]["amount"])
            for e in events
            if e["customerId"] == customer and local_day(e) in wanted
        ),
        Decimal(0),
    )
    return plain_decimal(total)


def expected_unique(events: Iterable[dict[str, Any]], customer: str, span: list[date]) -> str:
    wanted = set(span)
    users = {
        e["properties"]["user"]
        for e in events
        if e["customerId"] == customer and local_day(e) in wanted
    }
    return str(len(users))


def rolling(as_of: date, n: int) -> tuple[list[date], list[date]]:
    after = as_of + timedelta(days=1)
    return days(after - timedelta(days=n), after), days(
        after - timedelta(days=2 * n), after - timedelta(days=n)
    )


def month_to_date(as_of: date) -> tuple[list[date], list[date]]:
    first = as_of.replace(day=1)
    before = (first - timedelta(days=1)).replace(day=1)
    length = (as_of - first).days + 1
    return days(first, as_of + timedelta(days=1)), days(
        before, min(before + timedelta(days=length), first)
    )


def calendar_month(as_of: date) -> tuple[list[date], list[date]]:
    first = as_of.replace(day=1)
    after = (first + timedelta(days=32)).replace(day=1)
    before = (first - timedelta(days=1)).replace(day=1)
    return days(first, after), days(before, first)


def calendar_week(as_of: date) -> tuple[list[date], list[date]]:
    monday = as_of - timedelta(days=as_of.weekday())
    return days(monday, monday + timedelta(days=7)), days(monday - timedelta(days=7), monday)


async def get(client: httpx.AsyncClient, path: str, **params: Any) -> httpx.Response:
    return await client.get(path, params=params, headers=READ)


async def check_summaries(
    client: httpx.AsyncClient, events: list[dict[str, Any]], as_of: date
) -> None:
    asks: list[tuple[dict[str, str], tuple[list[date], list[date]]]] = [
        ({"periodType": "rolling", "periodValue": "7-day"}, rolling(as_of, 7)),
        ({"periodType": "rolling", "periodValue": "30-day"}, rolling(as_of, 30)),
        ({"periodType": "rolling", "periodValue": "90-day"}, rolling(as_of, 90)),
        ({"periodDefinition": "month_to_date"}, month_to_date(as_of)),
        ({"periodDefinition": "trailing_30_days"}, rolling(as_of, 30)),
        ({"periodType": "calendar", "periodValue": "month"}, calendar_month(as_of)),
        ({"periodDefinition": "calendar_month"}, calendar_month(as_of)),
        ({"periodType": "calendar", "periodValue": "week"}, calendar_week(as_of)),
    ]
    for customer in CUSTOMERS:
        for params, (current, previous) in asks:
            for uid, expected in (("spend", expected_sum), ("visitors", expected_unique)):
                response = await get(
                    client,
                    f"/usage-metrics/{uid}/summary",
                    customerId=customer,
                    asOf=as_of.isoformat(),
                    **params,
                )
                assert response.status_code == 200, response.text
                body = response.json()
                what = f"{uid} {customer} {params}"
                assert body["currentValue"] == expected(events, customer, current), what
                assert body["previousValue"] == expected(events, customer, previous), what
                assert [point["date"] for point in body["timeseries"]] == [
                    d.isoformat() for d in current
                ], what
                assert [point["value"] for point in body["timeseries"]] == [
                    expected(events, customer, [d]) for d in current
                ], what
                if uid == "spend":
                    met = Decimal(body["currentValue"]) > 100
                    assert body["target"]["met"] is met, what
                else:
                    assert body["target"] is None


async def test_summaries_and_windows_equal_the_raw_events(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    topic = await make_topic(2)
    await apply_metrics(fresh_database, [SPEND, VISITORS], tmp_path)
    worker = worker_with_api(
        "usage",
        tmp_path,
        kafka_bootstrap,
        fresh_database,
        topic,
        f"g-usage-{uuid.uuid4().hex[:8]}",
        tokens=TOKENS,
        max_lateness="200d",  # members kept max_lateness + 92d: 292d
    )
    now = datetime.now(UTC)
    events = make_events(now, 1500)
    worker.start()
    try:
        await worker.wait_serving()
        await produce(
            kafka_bootstrap,
            topic,
            [(e["customerId"].encode(), orjson.dumps(e)) for e in events],
        )
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        async with httpx.AsyncClient(base_url=api_url(worker), timeout=30) as client:
            # Yesterday: a whole day, whatever the clock does while the test runs.
            as_of = now.astimezone(ZoneInfo(ZONE)).date() - timedelta(days=1)
            await check_summaries(client, events, as_of)

            # A 30-day UNIQUE is the distinct count over the raw events, not a sum of days.
            window = rolling(as_of, 30)[0]
            start = datetime.combine(window[0], datetime.min.time(), ZoneInfo(ZONE))
            end = datetime.combine(as_of + timedelta(days=1), datetime.min.time(), ZoneInfo(ZONE))
            response = await get(
                client,
                "/usage-metrics/visitors/usage",
                customerId=list(CUSTOMERS),
                **{"from": start.isoformat(), "to": end.isoformat()},
            )
            assert response.status_code == 200, response.text
            found = {i["customerId"]: i["value"] for i in response.json()["items"]}
            assert found == {c: expected_unique(events, c, window) for c in CUSTOMERS}
            daily_sum = sum(int(expected_unique(events, "acme", [d])) for d in window)
            assert int(found["acme"]) < daily_sum  # the union, not the sum of days

            # Days of UTC cut from New York hours, per plan.
            utc_start = datetime.combine(as_of - timedelta(days=6), datetime.min.time(), UTC)
            utc_end = utc_start + timedelta(days=7)
            response = await get(
                client,
                "/usage-metrics/spend/usage",
                customerId="acme",
                windowSize="day",
                windowTimeZone="UTC",
                groupBy="plan",
                **{"from": utc_start.isoformat(), "to": utc_end.isoformat()},
            )
            assert response.status_code == 200, response.text
            got = {
                (i["group"]["plan"], i["windowStart"]): i["value"] for i in response.json()["items"]
            }
            want: dict[tuple[str, str], Decimal] = {}
            for plan in ("free", "pro"):
                for n in range(7):
                    day_start = utc_start + timedelta(days=n)
                    key = (plan, day_start.isoformat().replace("+00:00", "Z"))
                    want[key] = sum(
                        (
                            Decimal(e["properties"]["amount"])
                            for e in events
                            if e["customerId"] == "acme"
                            and e["properties"]["plan"] == plan
                            and day_start
                            <= datetime.fromisoformat(e["timestamp"])
                            < day_start + timedelta(days=1)
                        ),
                        Decimal(0),
                    )
            assert got == {key: plain_decimal(value) for key, value in want.items()}

            # A day in Asia/Kathmandu is no union of New York hours: refused, naming them.
            kathmandu = ZoneInfo("Asia/Kathmandu")
            k_start = datetime.combine(as_of, datetime.min.time(), kathmandu)
            refused = await get(
                client,
                "/usage-metrics/spend/usage",
                customerId="acme",
                windowSize="day",
                windowTimeZone="Asia/Kathmandu",
                **{
                    "from": k_start.isoformat(),
                    "to": (k_start + timedelta(days=1)).isoformat(),
                },
            )
            assert refused.status_code == 422, refused.text
            (problem,) = refused.json()["detail"]
            assert problem["loc"] == ["query", "windowTimeZone"]
            assert "'day'" in problem["msg"]
            assert "Asia/Kathmandu" in problem["msg"]
    finally:
        worker.stop()
