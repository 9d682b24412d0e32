"""Metric definitions applied or deleted while a worker runs take effect without a restart."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import orjson
import pytest

from tests.conftest import MakeTopic
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    produce,
    wait_caught_up,
    worker_env,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")

CALLS = {
    "uid": "calls",
    "name": "Calls",
    "eventType": "call",
    "aggregationType": "COUNT",
    "timeUnits": ["day"],
}
MINUTES = {
    "uid": "minutes",
    "name": "Minutes",
    "eventType": "call",
    "aggregationType": "SUM",
    "aggregationProperty": "minutes",
    "timeUnits": ["day"],
}


def calls(start: int, count: int) -> list[tuple[bytes, bytes]]:
    now = datetime.now(UTC).isoformat()
    return [
        (
            b"acme",
            orjson.dumps(
                {
                    "id": f"call-{n}",
                    "eventType": "call",
                    "customerId": "acme",
                    "timestamp": now,
                    "properties": {"minutes": 2},
                }
            ),
        )
        for n in range(start, start + count)
    ]


async def totals(dsn: str) -> dict[str, tuple[Decimal, int]]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT metric_uid, sum(value) AS v, sum(event_count) AS n FROM tally.metric_values GROUP BY 1"
        )
    finally:
        await connection.close()
    return {r["metric_uid"]: (r["v"], r["n"]) for r in rows}


async def test_applied_metric_counts_from_then_on_and_deleted_one_stops(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    topic = await make_topic(2)
    await apply_metrics(fresh_database, [CALLS], tmp_path)
    worker = WorkerProcess(
        "reload", worker_env(kafka_bootstrap, fresh_database, topic, "g-reload"), tmp_path
    ).start()
    try:
        await worker.wait_log("partition ready")
        await produce(kafka_bootstrap, topic, calls(0, 100))
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        assert await totals(fresh_database) == {"calls": (100, 100)}

        await apply_metrics(fresh_database, [CALLS, MINUTES], tmp_path)
        await worker.wait_log("definitions changed", timeout=30)
        await produce(kafka_bootstrap, topic, calls(100, 50))
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        assert await totals(fresh_database) == {"calls": (150, 150), "minutes": (100, 50)}

        since = len(worker.current_log())  # before the change: the worker may log it at once
        deleted = subprocess.run(
            [sys.executable, "-m", "tally", "metrics", "delete", "calls"],
            env={**os.environ, "TALLY_DATABASE_URL": fresh_database},
            capture_output=True,
            text=True,
            check=False,
        )
        assert deleted.returncode == 0, deleted.stderr
        await worker.wait_log("definitions changed", timeout=30, since=since)
        await produce(kafka_bootstrap, topic, calls(150, 25))
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        assert await totals(fresh_database) == {"calls": (150, 150), "minutes": (150, 75)}
        assert worker.starts == 1
        assert worker.alive
    finally:
        assert worker.stop() == 0
