"""Backfill refusals (issue 16 review): a metric counted live before
migration 0008, and records retention deletes after the first check."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka.structs import TopicPartition

from tally.contracts.metric import parse_metric
from tally.store.definitions import apply_definitions
from tally.store.migrate import migrate, migrations
from tally.store.pool import connect
from tally.synthetic import Workload, encoded
from tests import reference
from tests.conftest import MakeTopic
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    diff,
    produce,
    read_topic,
    rows_by_reference_key,
    wait_caught_up,
    wait_until,
    worker_env,
)
from tests.integration.test_backfill import LIVE, NEW, fetch, wait_started
from tests.integration.test_offset_gaps import delete_before

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_backfill_refuses_a_metric_that_existed_before_migration_0008(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """The upgrade's state (review item 1): api_calls was counted live before
    0008, so the start a worker records when it loads the partition is not
    where counting began. The backfill refuses it and the values stay those
    of the reference, not doubled; a metric created after 0008 is accepted."""
    before = next(m.version for m in migrations() if m.name == "backfill") - 1
    old = LIVE[0]
    connection = await connect(fresh_database)
    try:
        await migrate(connection, up_to=before)
        await apply_definitions(connection, [parse_metric(old)])
        await migrate(connection)
    finally:
        await connection.close()
    topic = await make_topic(2)
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-before")
    messages = encoded(Workload(seed=5, end=datetime.now(UTC).timestamp() - 60), 600)
    await produce(kafka_bootstrap, topic, messages)
    worker = WorkerProcess("before", env, tmp_path).start()
    try:
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        await wait_started(fresh_database, old["uid"], 2)
        refusal = WorkerProcess(
            "refused",
            env,
            tmp_path,
            args=[old["uid"], "--from-offsets", "earliest", "--wait", "1"],
            command=["backfill"],
        ).start()
        assert refusal.process is not None
        assert await asyncio.to_thread(refusal.process.wait, 60) == 2
        assert f"metric '{old['uid']}' existed before migration 0008" in refusal.current_log()
    finally:
        assert worker.stop() == 0
    assert await fetch(fresh_database, "SELECT * FROM tally.backfills") == []
    records = await read_topic(kafka_bootstrap, topic, len(messages))
    expected = reference.reference_rows([old], [r.value for r in records])
    actual = await rows_by_reference_key(fresh_database, [old])
    assert actual == expected, diff(actual, expected)
    rows = await fetch(fresh_database, "SELECT metric_uid FROM tally.metrics_before_starts")
    assert [r["metric_uid"] for r in rows] == [old["uid"]]


async def test_backfill_refuses_when_retention_deletes_while_it_waits_for_the_workers(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """Review item 3: the first retention check passes, the backfill waits
    for the workers' start rows, retention deletes records 0..49, a worker
    starts. The backfill refuses (it used to end "done" with 150 records)."""
    topic = await make_topic(1)
    await apply_metrics(fresh_database, LIVE, tmp_path)
    messages = encoded(Workload(seed=5, end=datetime.now(UTC).timestamp() - 60), 200)
    await produce(kafka_bootstrap, topic, messages)
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-late-retention")
    worker = WorkerProcess("worker", env, tmp_path).start()
    try:
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
    finally:
        assert worker.stop() == 0
    # The metric is new; the workers will start it at offset 200.
    await apply_metrics(fresh_database, [*LIVE, NEW], tmp_path)
    backfill = WorkerProcess(
        "backfill",
        env,
        tmp_path,
        args=[NEW["uid"], "--from-offsets", "earliest", "--wait", "120"],
        command=["backfill"],
    ).start()
    await backfill.wait_log("waiting for the live workers")
    await delete_before(kafka_bootstrap, TopicPartition(topic, 0), 50)
    worker = WorkerProcess("worker", env, tmp_path).start()
    try:
        assert backfill.process is not None
        status = await asyncio.to_thread(backfill.process.wait, 120)
        output = backfill.current_log()
        assert status == 2, output
        assert "backfill refused: the retained log no longer reaches" in output
        assert f"{topic}[0]: retention deleted its records before offset 50" in output
    finally:
        assert worker.stop() == 0
    assert await fetch(fresh_database, "SELECT * FROM tally.backfills") == []


async def test_backfill_refuses_when_the_workers_count_the_metric_on_more_topics(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """Review item 8: workers read two topics, the backfill's settings one;
    it refuses rather than end done with the other topic never counted."""
    first, second = await make_topic(1), await make_topic(1)
    await apply_metrics(fresh_database, [*LIVE, NEW], tmp_path)
    env = worker_env(kafka_bootstrap, fresh_database, first, "g-two-topics")
    worker = WorkerProcess("worker", {**env, "TALLY_TOPIC": f"{first},{second}"}, tmp_path).start()

    async def both_started() -> bool:
        query = "SELECT DISTINCT topic FROM tally.metric_starts WHERE metric_uid = $1"
        return len(await fetch(fresh_database, query, NEW["uid"])) == 2

    try:
        await wait_until(both_started, 60, "the worker to start the metric on both topics")
    finally:
        assert worker.stop() == 0
    refusal = WorkerProcess(
        "refused",
        env,
        tmp_path,
        args=[NEW["uid"], "--from-offsets", "earliest", "--wait", "1"],
        command=["backfill"],
    ).start()
    assert refusal.process is not None
    assert await asyncio.to_thread(refusal.process.wait, 60) == 2
    said = f"the live workers count metric '{NEW['uid']}' on {second}[0] too"
    assert said in refusal.current_log()
    assert await fetch(fresh_database, "SELECT * FROM tally.backfills") == []


async def test_a_unique_backfill_refuses_a_from_older_than_the_member_retention(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """Review item 10: members of periods older than TALLY_MEMBER_RETENTION
    are deleted by retention, so a backfill writing them could count twice."""
    topic = await make_topic(1)
    await apply_metrics(fresh_database, [NEW], tmp_path)
    await produce(kafka_bootstrap, topic, encoded(Workload(seed=5), 20))
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-members")
    refusal = WorkerProcess(
        "refused",
        env,
        tmp_path,
        args=[NEW["uid"], "--from", "2020-01-01T00:00:00Z", "--wait", "1"],
        command=["backfill"],
    ).start()
    assert refusal.process is not None
    assert await asyncio.to_thread(refusal.process.wait, 60) == 2
    output = refusal.current_log()
    assert f"metric '{NEW['uid']}' is UNIQUE and this backfill would count records from" in output
    assert "2020-01-01T00:00:00Z" in output
    assert await fetch(fresh_database, "SELECT * FROM tally.backfills") == []


async def test_backfill_refuses_a_from_before_the_epoch_naming_it(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """Review finding 1: Kafka keeps no record time before 1970; such a
    --from is refused at once (exit 2), naming --from, nothing stored."""
    topic = await make_topic(1)
    await apply_metrics(fresh_database, [NEW], tmp_path)
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-epoch")
    refusal = WorkerProcess(
        "refused",
        env,
        tmp_path,
        args=[NEW["uid"], "--from", "1969-12-31T00:00:00Z", "--wait", "1"],
        command=["backfill"],
    ).start()
    assert refusal.process is not None
    assert await asyncio.to_thread(refusal.process.wait, 60) == 2, refusal.current_log()
    output = refusal.current_log()
    assert "--from '1969-12-31T00:00:00Z' is before 1970-01-01T00:00:00Z" in output
    assert await fetch(fresh_database, "SELECT * FROM tally.backfills") == []
