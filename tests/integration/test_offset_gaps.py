"""Stored offsets that point at nothing: records deleted before any worker read
them, and a topic deleted and created again under the stored position. Each
is counted, logged and resumed from, never skipped in silence."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from aiokafka.structs import TopicPartition

from tally.synthetic import Workload, encoded, metric_definitions
from tests import reference
from tests.conftest import MakeTopic
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    diff,
    metric_sum,
    produce,
    stored_offsets,
    values_by_reference_key,
    wait_caught_up,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def delete_before(bootstrap: str, tp: TopicPartition, offset: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(offset)}, timeout_ms=10_000)
    finally:
        await admin.close()


async def recreate(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        for _ in range(100):  # deletion is asynchronous on the broker
            try:
                await admin.create_topics([NewTopic(topic, 1, 1)])
                break
            except Exception:
                await asyncio.sleep(0.2)
        for _ in range(100):
            described = await admin.describe_topics([topic])
            parts = described[0]["partitions"] if described else []
            if described and described[0]["error_code"] == 0 and parts and parts[0]["leader"] >= 0:
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def test_records_deleted_before_they_were_read_are_counted_as_a_gap(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    definitions = metric_definitions(3)
    topic = await make_topic(1)
    await apply_metrics(fresh_database, definitions, tmp_path)
    now = time.time() - 60
    first, lost, last = (encoded(Workload(seed=s, end=now), 300) for s in (31, 32, 33))
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-gap")
    await produce(kafka_bootstrap, topic, first)
    worker = WorkerProcess("gap", env, tmp_path).start()
    try:
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
    finally:
        assert worker.stop() == 0
    # While no worker runs, 300 records arrive and retention takes them.
    await produce(kafka_bootstrap, topic, lost + last)
    await delete_before(kafka_bootstrap, TopicPartition(topic, 0), 600)
    worker.start()
    try:
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        samples = await worker.scrape()
    finally:
        assert worker.stop() == 0
    assert metric_sum(samples, "tally_offset_gaps_total", kind="retention") == 300
    assert "offset gap on" in worker.current_log()
    expected = reference.reference_values(definitions, [v for _, v in first + last])
    actual = await values_by_reference_key(fresh_database, definitions)
    assert actual == expected, diff(actual, expected)


async def test_a_topic_created_again_is_consumed_from_its_start_not_skipped(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    definitions = metric_definitions(3)
    topic = await make_topic(1)
    await apply_metrics(fresh_database, definitions, tmp_path)
    now = time.time() - 60
    before, after = (
        encoded(Workload(seed=41, end=now), 500),
        encoded(Workload(seed=42, end=now), 200),
    )
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-recreate")
    await produce(kafka_bootstrap, topic, before)
    worker = WorkerProcess("recreate", env, tmp_path).start()
    try:
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
    finally:
        assert worker.stop() == 0
    await recreate(kafka_bootstrap, topic)
    await produce(kafka_bootstrap, topic, after)  # offsets 0..199, below the stored 500
    worker.start()
    try:
        # The stored offset (500) is past the new log's end (200): the 200 new
        # events would all be skipped by a worker that trusted it.
        await worker.wait_log("offset gap on", timeout=60)

        async def stored_at_the_new_end() -> bool:
            return await stored_offsets(fresh_database, topic) == {0: len(after)}

        await wait_until(stored_at_the_new_end, 60, "the new log's end to be stored")
        samples = await worker.scrape()
    finally:
        assert worker.stop() == 0
    assert metric_sum(samples, "tally_offset_gaps_total", kind="reset") == 300
    expected = reference.reference_values(definitions, [v for _, v in before + after])
    actual = await values_by_reference_key(fresh_database, definitions)
    assert actual == expected, diff(actual, expected)
