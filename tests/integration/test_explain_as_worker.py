"""`tally explain` and POST /events/explain judge metrics as a worker does: a
definition no worker runs is answered as not_running with the worker's
reason; a partition the topic does not have is refused, naming the field."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tally.api.app import create_app
from tally.api.auth import token_entry
from tally.config import Settings
from tally.contracts.metric import parse_metric
from tally.store.definitions import apply_definitions
from tally.store.migrate import migrate
from tally.store.pool import create_pool
from tally.worker.definitions import DefinitionWatcher
from tests.conftest import MakeTopic
from tests.integration.support import ROOT
from tests.integration.test_api_support import CALLS
from tests.integration.test_definition_refusals import store_raw

pytestmark = pytest.mark.asyncio(loop_scope="function")

TOKEN = "tly_test_ingest_as_worker"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
# Stored past this host's validation (as another host, or a hand, would write them).
MARS: dict[str, Any] = {**CALLS, "uid": "on_mars", "name": "Mars", "timezone": "Mars/Olympus"}
BROKEN: dict[str, Any] = {"uid": "broken", "name": "Broken", "eventType": "api_call"}
ELSEWHERE: dict[str, Any] = {**MARS, "uid": "mars_other", "eventType": "other"}


def event() -> bytes:
    return orjson.dumps(
        {
            "id": "as-worker-1",
            "eventType": "api_call",
            "customerId": "acme",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "properties": {},
        }
    )


@asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, asyncpg.Pool]]:
    pool = await create_pool(settings.database_url, min_size=1, max_size=4)
    try:
        async with pool.acquire() as connection:
            await migrate(connection)
        transport = httpx.ASGITransport(app=create_app(settings, pool))
        async with httpx.AsyncClient(transport=transport, base_url="http://tally.test") as client:
            yield client, pool
    finally:
        await pool.close()


async def test_metrics_a_worker_refuses_are_answered_as_not_running(
    fresh_database: str,
) -> None:
    settings = Settings(database_url=fresh_database, api_tokens=token_entry("m", "ingest", TOKEN))
    async with api(settings) as (client, pool):
        async with pool.acquire() as connection:
            await apply_definitions(connection, [parse_metric(CALLS)])
            for document in (MARS, BROKEN, ELSEWHERE):
                await store_raw(connection, document)
        watcher = DefinitionWatcher(pool, lambda index: None)
        await watcher.refresh()  # what a worker makes of the same rows
        refused = {r.uid: (r.reason, r.detail) for r in watcher.refused}
        assert set(refused) == {"on_mars", "broken", "mars_other"}

        answered = await client.post("/events/explain", content=event(), headers=HEADERS)
        assert answered.status_code == 200, answered.text
        metrics = {m["uid"]: m for m in answered.json()["metrics"]}
        # Of its eventType only: mars_other is another type's.
        assert set(metrics) == {"api_calls", "on_mars", "broken"}
        assert metrics["api_calls"]["outcome"] == "applied"
        for uid in ("on_mars", "broken"):
            entry = metrics[uid]
            assert entry["outcome"] == "not_running"
            assert (entry["reason"], entry["detail"]) == refused[uid]
        assert metrics["on_mars"]["reason"] == "unknown_timezone"
        assert metrics["broken"]["reason"] == "invalid_definition"

        # The terminal form says so too, with why.
        shown = subprocess.run(
            [sys.executable, "-m", "tally", "explain"],
            input=event(),
            env={**os.environ, "TALLY_DATABASE_URL": fresh_database},
            capture_output=True,
            timeout=60,
            cwd=ROOT,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr.decode()
        text = shown.stdout.decode()
        assert "api_calls: applied" in text
        assert "on_mars: not_running: workers refuse it (unknown_timezone: " in text
        assert "Mars/Olympus" in text
        assert "broken: not_running: workers refuse it (invalid_definition: " in text
        assert "mars_other" not in text


async def test_a_partition_the_topic_does_not_have_is_refused_naming_it(
    fresh_database: str, kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    topic = await make_topic(3)
    settings = Settings(
        database_url=fresh_database,
        api_tokens=token_entry("m", "ingest", TOKEN),
        kafka_bootstrap=kafka_bootstrap,
        topic=(topic,),
    )
    async with api(settings) as (client, _):
        beyond = await client.post("/events/explain?partition=3", content=event(), headers=HEADERS)
        assert beyond.status_code == 422, beyond.text
        (error,) = beyond.json()["detail"]
        assert error["loc"] == ["query", "partition"]
        assert f"topic {topic} has 3 partitions" in error["msg"]
        last = await client.post("/events/explain?partition=2", content=event(), headers=HEADERS)
        assert last.status_code == 200, last.text
        assert last.json()["dedup"]["partition"] == 2

    refused = subprocess.run(
        [sys.executable, "-m", "tally", "explain", "--topic", topic, "--partition", "7"],
        input=event(),
        env={
            **os.environ,
            "TALLY_DATABASE_URL": fresh_database,
            "TALLY_KAFKA_BOOTSTRAP": kafka_bootstrap,
        },
        capture_output=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr.decode()
    assert f"--partition: topic {topic} has 3 partitions" in refused.stderr.decode()
