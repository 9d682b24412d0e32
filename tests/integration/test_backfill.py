"""Backfill (issue 16): where workers start a metric, and `tally backfill`
counting the records before that, exactly once, while the workers run."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tally.synthetic import Workload, encoded, metric_definitions
from tests import reference
from tests.conftest import MakeTopic
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    diff,
    end_offsets,
    produce,
    read_topic,
    rows_by_reference_key,
    wait_caught_up,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")

LIVE = metric_definitions(3)  # api_calls, api_calls_by_endpoint, api_bytes
NEW = metric_definitions(4)[3]  # active_api_users: UNIQUE by region
assert NEW["aggregationType"] == "UNIQUE"


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def starts_of(dsn: str, uid: str) -> dict[int, int]:
    rows = await fetch(
        dsn, "SELECT partition, start_offset FROM tally.metric_starts WHERE metric_uid = $1", uid
    )
    return {r["partition"]: r["start_offset"] for r in rows}


async def wait_started(dsn: str, uid: str, partitions: int) -> dict[int, int]:
    async def check() -> bool:
        return len(await starts_of(dsn, uid)) == partitions

    await wait_until(check, 60, f"the worker to store where it started {uid}")
    return await starts_of(dsn, uid)


async def backfill_done(dsn: str, uid: str) -> tuple[int, int]:
    """(records counted, records in the range) as stored."""
    rows = await fetch(
        dsn,
        "SELECT coalesce(sum(least(next_offset, end_offset) - from_offset), 0) AS done,"
        " coalesce(sum(end_offset - from_offset), 0) AS total"
        " FROM tally.backfill_partitions WHERE metric_uid = $1",
        uid,
    )
    return int(rows[0]["done"]), int(rows[0]["total"])


def keyed(document: dict[str, Any]) -> tuple[bytes, bytes]:
    import orjson

    return document["customerId"].encode(), orjson.dumps(document)


async def test_a_metric_created_while_a_worker_runs_records_where_it_started(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """The start offset of each (metric, partition) is written by the flush
    that first includes the metric: an idle partition's is its end, and the
    live values of the metric are exactly the reference over the records
    from the start offset on."""
    topic = await make_topic(2)
    await apply_metrics(fresh_database, LIVE, tmp_path)
    worker = WorkerProcess(
        "starts", worker_env(kafka_bootstrap, fresh_database, topic, "g-starts"), tmp_path
    ).start()
    messages = encoded(Workload(seed=3, end=datetime.now(UTC).timestamp() - 60), 4000)
    try:
        await worker.wait_log("partition ready")
        await produce(kafka_bootstrap, topic, messages[:2000])
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        ends = await end_offsets(kafka_bootstrap, topic)
        await apply_metrics(fresh_database, [*LIVE, NEW], tmp_path)
        starts = await wait_started(fresh_database, NEW["uid"], 2)
        # Both partitions were idle when the worker started the metric.
        assert starts == ends
        await produce(kafka_bootstrap, topic, messages[2000:])
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
    finally:
        assert worker.stop() == 0
    # The metrics the worker knew when it loaded the partitions start at the
    # offset it loaded (-1: never flushed, from the beginning).
    for definition in LIVE:
        assert await starts_of(fresh_database, definition["uid"]) == {0: -1, 1: -1}
    records = await read_topic(kafka_bootstrap, topic, len(messages))
    live = [r.value for r in records if r.offset >= starts[r.partition]]
    assert 0 < len(live) < len(records)
    expected = reference.reference_rows([NEW], live)
    actual = {
        k: v
        for k, v in (await rows_by_reference_key(fresh_database, [*LIVE, NEW])).items()
        if k[0] == NEW["uid"]
    }
    assert actual == expected, diff(actual, expected)
