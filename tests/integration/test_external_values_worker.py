"""The worker on the real broker leaves EXTERNAL metrics alone: it does not
load them, does not refuse them, and events never change their values."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import MakeTopic
from tests.integration.support import api_url, produce, wait_caught_up, worker_with_api
from tests.integration.test_api_end_to_end import PURCHASES, purchases, totals
from tests.integration.test_api_support import ADMIN, TOKENS

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_a_worker_never_runs_an_external_metric(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    topic = await make_topic(1)
    worker = worker_with_api(
        "external",
        tmp_path,
        kafka_bootstrap,
        fresh_database,
        topic,
        f"g-ext-{uuid.uuid4().hex[:8]}",
        tokens=TOKENS,
    )
    worker.start()
    try:
        await worker.wait_serving()
        async with httpx.AsyncClient(base_url=api_url(worker), timeout=10) as client:
            since = len(worker.current_log())
            exante = {"uid": "purchase_dso", "name": "Purchase DSO", "is_snapshot": True}
            created = await client.post("/api/metrics", json=exante, headers=ADMIN)
            assert created.status_code == 200, created.text
            created = await client.post("/usage-metrics", json=PURCHASES, headers=ADMIN)
            assert created.status_code == 201, created.text
            value = await client.post(
                "/metrics/values/ORGANIZATION/acme",
                json={
                    "metric_uid": "purchase_dso",
                    "time_unit": "day",
                    "metric_date": "2026-03-15",
                    "value": 12,
                },
                headers=ADMIN,
            )
            assert value.status_code == 201, value.text
            # Two definition changes, which the watcher may load in one poll or
            # two: wait for the load that runs purchases (the external one
            # never counts as live), not merely the first change.
            await worker.wait_log(r"definitions changed.* live=1\b", timeout=30, since=since)
            await produce(kafka_bootstrap, topic, purchases(0, 8))
            await wait_caught_up(kafka_bootstrap, fresh_database, topic)
            assert await totals(client, "purchases", "day") == {
                "acme": ("6", 6),
                "globex": ("2", 2),
            }
            assert await totals(client, "purchase_dso", "day") == {"acme": ("12", 0)}
        log = worker.current_log()[since:]
        assert "metric refused" not in log  # skipped, not refused
        assert "live=1" in log.split("definitions changed")[-1].splitlines()[0]
        assert worker.alive
    finally:
        try:
            assert worker.stop() == 0
        except subprocess.TimeoutExpired:
            worker.kill()  # never leave a hung worker in the consumer group
            raise
    assert "request failed" not in worker.log()
