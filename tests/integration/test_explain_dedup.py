"""`tally explain` and the dedup window: a `tally run` worker counts an event
and stores its id through the real flush path; explaining the same event
says it is a duplicate of one already counted, another id says new."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import MakeTopic
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    produce,
    stored_offsets,
    wait_caught_up,
    worker_env,
)
from tests.integration.test_explain_cli import METRICS, tally

pytestmark = pytest.mark.asyncio(loop_scope="function")


def event(event_id: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "eventType": "api_call",
        "customerId": "acme",
        "timestamp": datetime.now(UTC).isoformat(),
        "properties": {"region": "eu-1"},
    }


async def explained(dsn: str, topic: str, bootstrap: str, body: dict[str, Any], *args: str) -> Any:
    shown = await asyncio.to_thread(
        tally,
        dsn,
        "explain",
        "--format",
        "json",
        "--topic",
        topic,
        "--kafka-bootstrap",
        bootstrap,
        *args,
        stdin=orjson.dumps(body),
    )
    assert shown.returncode == 0, shown.stderr.decode()
    return orjson.loads(shown.stdout)


async def test_an_id_the_worker_counted_is_a_duplicate_and_a_new_id_is_new(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    assert (await asyncio.to_thread(tally, fresh_database, "migrate")).returncode == 0
    await apply_metrics(fresh_database, METRICS[:1], tmp_path)
    topic = await make_topic(4)
    counted = event("counted-1")
    await produce(kafka_bootstrap, topic, [(b"acme", orjson.dumps(counted))])
    worker = WorkerProcess(
        "explain-dedup", worker_env(kafka_bootstrap, fresh_database, topic, "g-explain"), tmp_path
    ).start()
    try:
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    (partition,) = [
        p for p, offset in (await stored_offsets(fresh_database, topic)).items() if offset > 0
    ]

    again = await explained(fresh_database, topic, kafka_bootstrap, counted)
    assert again["dedup"] == {
        "checked": True,
        "topic": topic,
        "partition": partition,  # murmur2 of the key, as the producer placed it
        "duplicate": True,
    }
    assert again["metrics"][0]["outcome"] == "applied"
    fresh = await explained(fresh_database, topic, kafka_bootstrap, event("never-sent"))
    assert (fresh["dedup"]["partition"], fresh["dedup"]["duplicate"]) == (partition, False)
    other = (partition + 1) % 4
    elsewhere = await explained(
        fresh_database, topic, kafka_bootstrap, counted, "--partition", str(other)
    )
    assert (elsewhere["dedup"]["partition"], elsewhere["dedup"]["duplicate"]) == (other, False)
    text = await asyncio.to_thread(
        tally, fresh_database, "explain", "--topic", topic, stdin=orjson.dumps(counted)
    )
    assert "id already counted (this record, or an earlier one" in text.stdout.decode(), (
        text.stderr.decode()
    )
    off = await asyncio.to_thread(
        tally, fresh_database, "explain", "--dedup-window", "0", stdin=orjson.dumps(counted)
    )
    assert "dedup window: not checked (dedup is off" in off.stdout.decode(), off.stderr.decode()
