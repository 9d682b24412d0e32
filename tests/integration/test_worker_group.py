"""Several workers in one group: rebalances and fencing of a zombie."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tally.synthetic import Workload, encoded, metric_definitions
from tests import reference
from tests.conftest import MakeTopic
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    diff,
    metric_sum,
    produce,
    produce_paced,
    values_by_reference_key,
    wait_caught_up,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_workers_added_and_removed_midstream(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    definitions = metric_definitions(10)
    topic = await make_topic(6)
    await apply_metrics(fresh_database, definitions, tmp_path)
    messages = encoded(
        Workload(seed=41, end=datetime.now(UTC).timestamp() - 60, span_seconds=86400), 60_000
    )
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-rebalance", session_timeout="3")
    workers = {name: WorkerProcess(name, env, tmp_path) for name in ("w1", "w2", "w3", "w4")}
    producing = asyncio.create_task(produce_paced(kafka_bootstrap, topic, messages, seconds=24))
    try:
        workers["w1"].start()
        await workers["w1"].wait_log("partition ready")
        await asyncio.sleep(3)
        workers["w2"].start()
        await asyncio.sleep(3)
        workers["w3"].start()
        await workers["w3"].wait_log("partitions assigned")
        await asyncio.sleep(3)
        assert workers["w1"].stop() == 0  # leaves cleanly: flush on revocation
        await asyncio.sleep(2)
        workers["w4"].start()
        await workers["w4"].wait_log("partitions assigned")
        await asyncio.sleep(2)
        workers["w2"].kill()  # leaves uncleanly: its pending work is re-read
        await producing
        await wait_caught_up(kafka_bootstrap, fresh_database, topic, timeout=180)
    finally:
        producing.cancel()
        for worker in workers.values():
            if worker.alive:
                assert worker.stop() == 0
    for worker in workers.values():
        assert "partitions assigned" in worker.log(), f"{worker.name} never got partitions"
    expected = reference.reference_values(definitions, [value for _, value in messages])
    actual = await values_by_reference_key(fresh_database, definitions)
    assert actual == expected, diff(actual, expected)


async def test_a_frozen_worker_is_fenced_when_it_wakes(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    definitions = metric_definitions(6)
    topic = await make_topic(2)
    await apply_metrics(fresh_database, definitions, tmp_path)
    now = datetime.now(UTC).timestamp() - 60
    first = encoded(Workload(seed=51, end=now), 5_000)
    second = encoded(Workload(seed=52, end=now), 5_000)
    # The zombie holds its work (a long flush interval) when it is frozen.
    zombie = WorkerProcess(
        "zombie",
        worker_env(
            kafka_bootstrap,
            fresh_database,
            topic,
            "g-fence",
            session_timeout="3",
            flush_interval="120",
        ),
        tmp_path,
    ).start()
    successor = WorkerProcess(
        "successor",
        worker_env(kafka_bootstrap, fresh_database, topic, "g-fence", session_timeout="3"),
        tmp_path,
    )
    try:
        await zombie.wait_log("partition ready")
        await produce(kafka_bootstrap, topic, first)

        async def zombie_has_read_everything() -> bool:
            return metric_sum(await zombie.scrape(), "tally_events_consumed_total") == len(first)

        await wait_until(zombie_has_read_everything, 60, "the zombie to consume the first batch")
        zombie.signal(signal.SIGSTOP)  # frozen past its session timeout
        successor.start()
        await successor.wait_log("partitions assigned", timeout=60)
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)  # the successor flushed it
        zombie.signal(signal.SIGCONT)
        await zombie.wait_log("partition fenced", timeout=60)
        fenced = metric_sum(await zombie.scrape(), "tally_partitions_fenced_total")
        assert fenced >= 1
        await produce(kafka_bootstrap, topic, second)
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
    finally:
        for worker in (zombie, successor):
            if worker.alive:
                worker.signal(signal.SIGCONT)
                assert worker.stop() == 0
    expected = reference.reference_values(definitions, [value for _, value in first + second])
    actual = await values_by_reference_key(fresh_database, definitions)
    assert actual == expected, diff(actual, expected)
