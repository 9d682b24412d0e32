"""Outages of the parts around the worker: PostgreSQL stopped, the broker restarted.

Each test starts its own private server with the project's scripts (so the
shared ones stay up for the other tests), breaks it mid-stream, and checks
that the worker kept running, lost nothing and counted nothing twice.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tally.synthetic import Workload, encoded, metric_definitions
from tests import reference
from tests.integration.support import (
    ROOT,
    WorkerProcess,
    apply_metrics,
    diff,
    metric_sum,
    produce,
    produce_paced,
    values_by_reference_key,
    wait_caught_up,
    worker_env,
)

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LocalService:
    """deploy/local/<name>.sh with its own state folder and ports."""

    def __init__(self, script: str, env: dict[str, str]) -> None:
        self.script = str(ROOT / "deploy" / "local" / script)
        self.env = {**os.environ, **env}

    def __call__(self, action: str) -> str:
        done = subprocess.run(
            ["bash", self.script, action], env=self.env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"{self.script} {action} failed:\n{done.stderr[-3000:]}"
        return done.stdout.strip().split("=", 1)[-1]


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Short: PostgreSQL's socket path must stay under 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="tally-o-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def private_postgres(state_dir: Path) -> Iterator[tuple[LocalService, str]]:
    service = LocalService(
        "postgres.sh", {"TALLY_LOCAL_DIR": str(state_dir), "TALLY_PG_PORT": str(free_port())}
    )
    dsn = service("start")
    yield service, dsn
    service("stop")


@pytest_asyncio.fixture
async def private_kafka(state_dir: Path) -> AsyncIterator[tuple[LocalService, str]]:
    env = {
        "TALLY_LOCAL_DIR": str(state_dir),
        "TALLY_KAFKA_PORT": str(free_port()),
        "TALLY_KAFKA_CONTROLLER_PORT": str(free_port()),
    }
    shared_jars = ROOT / ".local" / "kafka" / "libs"
    if shared_jars.is_dir():
        env["TALLY_KAFKA_LIBS_DIR"] = str(shared_jars)
    service = LocalService("kafka.sh", env)
    bootstrap = await asyncio.to_thread(service, "start")
    yield service, bootstrap
    await asyncio.to_thread(service, "stop")


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def test_postgres_stopped_for_12_seconds_mid_stream(
    kafka_bootstrap: str, private_postgres: tuple[LocalService, str], tmp_path: Path
) -> None:
    postgres, dsn = private_postgres
    definitions = metric_definitions(10)
    topic = f"tally-outage-pg-{os.getpid()}-{free_port()}"
    await create_topic(kafka_bootstrap, topic, 4)
    await apply_metrics(dsn, definitions, tmp_path)
    messages = encoded(
        Workload(seed=61, end=datetime.now(UTC).timestamp() - 60, span_seconds=86400), 40_000
    )
    env = worker_env(
        kafka_bootstrap,
        dsn,
        topic,
        "g-pg-outage",
        max_pending_events="15000",
        retry_max_backoff="2",
    )
    worker = WorkerProcess("pg-outage", env, tmp_path).start()
    try:
        await worker.wait_log("partition ready")
        producing = asyncio.create_task(produce_paced(kafka_bootstrap, topic, messages, seconds=20))
        await asyncio.sleep(4)
        await asyncio.to_thread(postgres, "stop")
        await asyncio.sleep(12)
        assert worker.alive, "the worker must not exit while the database is down"
        await asyncio.to_thread(postgres, "start")
        await producing
        await wait_caught_up(kafka_bootstrap, dsn, topic, timeout=180)
        assert worker.alive
        assert worker.starts == 1
        samples = await worker.scrape()
    finally:
        assert worker.stop() == 0
    assert metric_sum(samples, "tally_errors_total", component="database") >= 1
    assert "error while flushing; pending work kept" in worker.log()
    expected = reference.reference_values(definitions, [value for _, value in messages])
    actual = await values_by_reference_key(dsn, definitions)
    assert actual == expected, diff(actual, expected)


async def test_kafka_broker_restarted_mid_stream(
    private_kafka: tuple[LocalService, str], fresh_database: str, tmp_path: Path
) -> None:
    kafka, bootstrap = private_kafka
    definitions = metric_definitions(10)
    topic = "tally-outage-kafka"
    await create_topic(bootstrap, topic, 4)
    await apply_metrics(fresh_database, definitions, tmp_path)
    now = datetime.now(UTC).timestamp() - 60
    before = encoded(Workload(seed=71, end=now, span_seconds=86400), 30_000)
    after = encoded(Workload(seed=72, end=now, span_seconds=86400), 20_000)
    # A small fetch size keeps the worker busy with the first batch while the broker goes away.
    env = worker_env(
        bootstrap, fresh_database, topic, "g-kafka-outage", max_batch="200", session_timeout="6"
    )
    worker = WorkerProcess("kafka-outage", env, tmp_path).start()
    try:
        await worker.wait_log("partition ready")
        await produce_paced(bootstrap, topic, before, seconds=4)
        await asyncio.to_thread(kafka, "restart")
        assert worker.alive
        await produce(bootstrap, topic, after)
        await wait_caught_up(bootstrap, fresh_database, topic, timeout=180)
        assert worker.alive
        assert worker.starts == 1
    finally:
        assert worker.stop() == 0
    expected = reference.reference_values(definitions, [value for _, value in before + after])
    actual = await values_by_reference_key(fresh_database, definitions)
    assert actual == expected, diff(actual, expected)
