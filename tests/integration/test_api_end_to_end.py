"""End to end with the real broker: a worker started with --with-api, a metric
created over HTTP while it runs, events produced, and the values read back
over HTTP, then corrected by an adjustment."""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import MakeTopic
from tests.integration.support import api_url, produce, wait_caught_up, worker_with_api
from tests.integration.test_api_support import ADMIN, READ, TOKENS

pytestmark = pytest.mark.asyncio(loop_scope="function")

SPEND: dict[str, Any] = {
    "uid": "spend",
    "name": "Spend",
    "eventType": "purchase",
    "aggregationType": "SUM",
    "aggregationProperty": "amount",
    "timeUnits": ["day", "month"],
}
PURCHASES: dict[str, Any] = {
    "uid": "purchases",
    "name": "Purchases",
    "eventType": "purchase",
    "aggregationType": "COUNT",
    "timeUnits": ["day"],
}


def purchases(start: int, count: int) -> list[tuple[bytes, bytes]]:
    now = datetime.now(UTC).isoformat()
    messages = []
    for n in range(start, start + count):
        customer = "acme" if n % 4 else "globex"
        event = {
            "id": f"p-{n}",
            "eventType": "purchase",
            "customerId": customer,
            "timestamp": now,
            "properties": {"amount": "0.1"},
        }
        messages.append((customer.encode(), orjson.dumps(event)))
    return messages


async def totals(client: httpx.AsyncClient, uid: str, unit: str) -> dict[str, tuple[str, int]]:
    response = await client.get(
        "/metric-values", params={"metricUid": uid, "timeUnit": unit}, headers=READ
    )
    assert response.status_code == 200, response.text
    return {v["customerId"]: (v["value"], v["eventCount"]) for v in response.json()["items"]}


async def test_a_metric_created_over_http_is_aggregated_without_a_restart(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    topic = await make_topic(2)
    worker = worker_with_api(
        "api-e2e",
        tmp_path,
        kafka_bootstrap,
        fresh_database,
        topic,
        f"g-api-{uuid.uuid4().hex[:8]}",
        tokens=TOKENS,
    )
    worker.start()
    try:
        await worker.wait_serving()
        async with httpx.AsyncClient(base_url=api_url(worker), timeout=10) as client:
            assert (await client.get("/readyz")).status_code == 200
            # Events before the metric exists count for nothing.
            await produce(kafka_bootstrap, topic, purchases(0, 8))
            await wait_caught_up(kafka_bootstrap, fresh_database, topic)

            since = len(worker.current_log())
            for definition in (SPEND, PURCHASES):
                created = await client.post("/usage-metrics", json=definition, headers=ADMIN)
                assert created.status_code == 201, created.text
            await worker.wait_log("definitions changed", timeout=30, since=since)
            await produce(kafka_bootstrap, topic, purchases(8, 40))
            await wait_caught_up(kafka_bootstrap, fresh_database, topic)

            # 40 events: n % 4 == 0 is globex (10 events), the rest acme (30).
            assert await totals(client, "spend", "day") == {"acme": ("3", 30), "globex": ("1", 10)}
            assert await totals(client, "spend", "month") == {
                "acme": ("3", 30),
                "globex": ("1", 10),
            }
            assert await totals(client, "purchases", "day") == {
                "acme": ("30", 30),
                "globex": ("10", 10),
            }

            # A correction lands in the same row the worker keeps adding to.
            (row,) = (
                await client.get(
                    "/metric-values",
                    params={"metricUid": "purchases", "customerId": "globex"},
                    headers=READ,
                )
            ).json()["items"]
            adjusted = await client.post(
                "/metric-values/adjustments",
                json={
                    "metricUid": "purchases",
                    "customerId": "globex",
                    "timeUnit": "day",
                    "periodStart": row["periodStart"],
                    "delta": "-2",
                    "reason": "two test purchases",
                },
                headers={**ADMIN, "Idempotency-Key": "e2e-1"},
            )
            assert adjusted.status_code == 201, adjusted.text
            await produce(kafka_bootstrap, topic, purchases(48, 4))
            await wait_caught_up(kafka_bootstrap, fresh_database, topic)
            assert (await totals(client, "purchases", "day"))["globex"] == ("9", 11)
        assert worker.starts == 1
        assert worker.alive
    finally:
        try:
            assert worker.stop() == 0
        except subprocess.TimeoutExpired:
            worker.kill()  # never leave a hung worker in the consumer group
            raise
    assert "request failed" not in worker.log()
