"""`POST /events/explain` over a real database: the same answer as `tally explain`."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tally.api.app import create_app
from tally.api.auth import token_entry
from tally.config import Settings
from tally.core.events import DecodeLimits
from tally.core.explain import dedup_answer, explain
from tally.store.dedup_lookup import dedup_state
from tally.store.definitions import list_metrics
from tally.store.pool import create_pool
from tests.conftest import MakeTopic
from tests.integration.roles_support import users
from tests.integration.test_api_support import ADMIN, CALLS, READ, TOKENS, open_api

pytestmark = pytest.mark.asyncio(loop_scope="function")
__all__ = ["users"]  # the fixture

INGEST_TOKEN = "tly_test_ingest_explain"
INGEST = {"Authorization": f"Bearer {INGEST_TOKEN}"}


def event(**properties: Any) -> dict[str, Any]:
    return {
        "id": "explained-1",
        "eventType": "api_call",
        "customerId": "acme",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "properties": properties,
    }


async def test_an_event_is_explained_as_json_with_its_rollups_and_dedup_state(
    fresh_database: str,
) -> None:
    tokens = TOKENS + "," + token_entry("meter", "ingest", INGEST_TOKEN)
    async with open_api(fresh_database, tokens=tokens) as api:
        assert (await api.create(CALLS)).status_code == 201
        body = orjson.dumps(event(region="eu-1"))
        answered = await api.client.post(
            "/events/explain?partition=2",
            content=body,
            headers={**INGEST, "Content-Type": "application/json"},
        )
        assert answered.status_code == 200, answered.text
        answer = answered.json()
        (metric,) = answer["metrics"]
        assert (metric["uid"], metric["outcome"]) == ("api_calls", "applied")
        assert sorted(r["timeUnit"] for r in metric["rollups"]) == ["day", "month"]
        assert {r["add"] for r in metric["rollups"]} == {"1"}
        assert answer["dedup"] == dedup_answer("usage-events", 2, False)
        async with api.pool.acquire() as connection:
            metrics = await list_metrics(connection, include_deleted=False)
        # The same as the core's answer `tally explain` prints (the clock aside).
        same = explain(body, metrics, time.time(), DecodeLimits(), answer["dedup"])
        assert same == answer
        # A CloudEvent is explained as the event POST /events would send (found in review).
        tally = event(region="eu-1")
        cloudevent = {
            "specversion": "1.0",
            "id": tally["id"],
            "source": "test",
            "type": tally["eventType"],
            "subject": tally["customerId"],
            "time": tally["timestamp"],
            "data": tally["properties"],
        }
        mapped = await api.client.post(
            "/events/explain?partition=2",
            content=orjson.dumps(cloudevent),
            headers={**INGEST, "Content-Type": "application/cloudevents+json"},
        )
        assert mapped.status_code == 200, mapped.text
        assert mapped.json()["decoded"] is True
        assert [m["outcome"] for m in mapped.json()["metrics"]] == ["applied"]
        refused = await api.client.post(
            "/events/explain", content=b"{}", headers={**ADMIN, "Content-Type": "application/json"}
        )
        assert refused.status_code == 200, refused.text
        assert (refused.json()["decoded"], refused.json()["reason"]) == (False, "missing_field")
        as_reader = await api.client.post(
            "/events/explain", content=body, headers={**READ, "Content-Type": "application/json"}
        )
        assert as_reader.status_code == 403


async def test_the_api_role_cannot_read_the_dedup_window_and_says_so(
    users: dict[str, str],
) -> None:
    # tally_api holds no grant on the workers' state; the answer says it was not checked.
    connection = await asyncpg.connect(users["tally_api"])
    try:
        raw = orjson.dumps(event())
        answer = await dedup_state(
            connection, Settings(), raw, time.time(), DecodeLimits(), "usage-events", 0
        )
        assert answer == {
            "checked": False,
            "why": "this database role cannot read tally.dedup_segments",
        }
        assert await connection.fetchval("SELECT 1") == 1  # still usable
    finally:
        await connection.close()


@pytest.mark.parametrize(
    ("role", "window", "partition_checked"),
    [("tally_worker", 600.0, True), ("tally_api", 600.0, False), ("tally_worker", 0.0, False)],
)
async def test_the_partition_is_asked_of_kafka_only_when_the_window_will_be_read(
    users: dict[str, str],
    kafka_bootstrap: str,
    make_topic: MakeTopic,
    role: str,
    window: float,
    partition_checked: bool,
) -> None:
    """Partition 7 of a 2-partition topic: refused (422) when the window would
    be read, not asked about when it will not be (no grant, or dedup off)."""
    topic = await make_topic(2)
    tokens = TOKENS + "," + token_entry("meter", "ingest", INGEST_TOKEN)
    settings = Settings(
        database_url=users[role],
        api_tokens=tokens,
        topic=(topic,),
        kafka_bootstrap=kafka_bootstrap,
        dedup_window=window,
    )
    pool = await create_pool(users[role], min_size=1, max_size=2)
    try:
        app = create_app(settings, pool)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tally.test") as client:
            answered = await client.post(
                "/events/explain?partition=7",
                content=orjson.dumps(event()),
                headers={**INGEST, "Content-Type": "application/json"},
            )
    finally:
        await pool.close()
    if partition_checked:
        assert answered.status_code == 422, answered.text
        (item,) = answered.json()["detail"]
        assert (item["loc"], item["type"]) == (["query", "partition"], "out_of_range")
    else:
        assert answered.status_code == 200, answered.text
        assert answered.json()["dedup"]["checked"] is False
