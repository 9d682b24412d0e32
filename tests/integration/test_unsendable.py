"""What a worker does when Kafka will not give or take a record: a batch no
codec of this process can read stops it loudly (never a silent retry loop),
and a dead letter the DLQ topic refuses is parked in PostgreSQL while
flushes go on."""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg
import pytest

from tally.synthetic import Workload, encoded, metric_definitions
from tests import reference
from tests.conftest import MakeTopic
from tests.integration.producers import Record, produce_java
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    diff,
    http_get,
    metric_sum,
    read_topic,
    values_by_reference_key,
    wait_caught_up,
    worker_env,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_a_batch_no_codec_here_can_read_stops_the_worker_loudly(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    # A process without cramjam: aiokafka then cannot decompress zstd.
    shim = tmp_path / "no-cramjam"
    shim.mkdir()
    (shim / "cramjam.py").write_text("raise ImportError('hidden by the test')\n")
    topic = await make_topic(1)
    await apply_metrics(fresh_database, metric_definitions(2), tmp_path)
    messages = encoded(Workload(seed=3, end=time.time() - 60), 50)
    await produce_java(
        kafka_bootstrap, topic, [Record(key=k, value=v) for k, v in messages], compression="zstd"
    )
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-codec", stop_linger="30")
    env["PYTHONPATH"] = f"{shim}"
    worker = WorkerProcess("no-codec", env, tmp_path).start()
    try:
        await worker.wait_log("stopping: an error retrying cannot mend", timeout=60)
        url = worker.metrics_url()
        assert url is not None
        ready = await http_get(url + "/readyz")
        assert ready.startswith("stopping:")
        assert "zstd" in ready
        samples = await worker.scrape()
        assert metric_sum(samples, "tally_permanent_errors_total") == 1
        assert metric_sum(samples, "tally_stopping", kind="unsupported_codec") == 1
    finally:
        code = worker.stop()
    assert code == 3, worker.log()[-3000:]
    lines = [line for line in worker.log().splitlines() if "zstd" in line]
    assert any("Libraries for zstd compression codec not found" in line for line in lines)
    assert worker.log().count("cannot read a record batch") <= 3  # loud, not a loop


async def test_dead_letters_the_dlq_topic_refuses_are_parked_and_flushes_go_on(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    definitions = metric_definitions(4)
    topic = await make_topic(2)
    dlq = await make_topic(1, configs={"max.message.bytes": "4000"})
    await apply_metrics(fresh_database, definitions, tmp_path)
    good = encoded(Workload(seed=8, end=time.time() - 60), 1500)
    stream: list[Record] = []
    big, small = 0, 0
    for n, (key, value) in enumerate(good):
        stream.append(Record(key=key, value=value))
        if n % 100 == 0:  # too big for the DLQ topic, and not JSON
            stream.append(Record(key=b"big-%d" % n, value=b"\xff" * 6000))
            big += 1
        elif n % 100 == 50:
            stream.append(Record(key=b"small-%d" % n, value=b"{not json"))
            small += 1
    await produce_java(kafka_bootstrap, topic, stream, compression="lz4")
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-park", dlq_topic=dlq)
    worker = WorkerProcess("parking", env, tmp_path).start()
    try:
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        samples = await worker.scrape()
        assert worker.alive
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    connection = await asyncpg.connect(fresh_database)
    try:
        parked = await connection.fetch(
            "SELECT reason, send_error, record_key, record_value FROM tally.parked_dead_letters"
        )
    finally:
        await connection.close()
    assert len(parked) == big
    assert {row["reason"] for row in parked} == {"not_json"}
    assert all("MessageSizeTooLarge" in row["send_error"] for row in parked)
    assert all(row["record_value"] == b"\xff" * 6000 for row in parked)
    letters = await read_topic(kafka_bootstrap, dlq, expected=small)
    assert sorted(r.key for r in letters) == sorted(b"small-%d" % n for n in range(50, 1500, 100))
    assert metric_sum(samples, "tally_dead_letters_parked_total") == big
    expected = reference.reference_values(definitions, [v for _, v in good])
    actual = await values_by_reference_key(fresh_database, definitions)
    assert actual == expected, diff(actual, expected)
