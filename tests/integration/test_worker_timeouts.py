"""A worker facing a database that hangs or refuses for good, for real: a lock
someone holds on tally.metric_values, a connection black-holed mid-flush, and
a deterministic error retrying cannot mend."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tally.synthetic import Workload, encoded, metric_definitions
from tests import reference
from tests.conftest import MakeTopic
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    diff,
    http_get,
    metric_sum,
    produce,
    produce_paced,
    values_by_reference_key,
    wait_caught_up,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")

# Short bounds, so the test sees them fire.
TIMEOUTS = {
    "database_timeout": "3s",
    "lock_timeout": "1s",
    "flush_timeout": "5s",
    "load_timeout": "5s",
    "stall_timeout": "20s",
    "retry_max_backoff": "1s",
}


class BlackHoleProxy:
    """A TCP proxy to PostgreSQL that can stop passing bytes, both ways, on
    every connection it holds: a half-open connection, as in a failover or
    a network partition. Connections made after `restore` pass bytes again;
    the black-holed ones stay dead, as a real half-open connection would."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.holed: set[int] = set()  # ids of connections that pass nothing any more
        self.blackhole = False
        self.server: asyncio.Server | None = None
        self.connections: set[int] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def hole(self) -> None:
        self.blackhole = True
        self.holed |= self.connections

    def restore(self) -> None:
        self.blackhole = False

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ident = id(writer)
        self.connections.add(ident)
        if self.blackhole:
            self.holed.add(ident)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if ident in self.holed:
                        continue  # swallowed: the peer waits forever
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))


async def test_a_lock_held_on_the_values_table_is_waited_out_in_bounded_retries(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    definitions = metric_definitions(4)
    topic = await make_topic(2)
    await apply_metrics(fresh_database, definitions, tmp_path)
    messages = encoded(Workload(seed=21, end=time.time() - 60), 3000)
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-lock", **TIMEOUTS)
    worker = WorkerProcess("lock", env, tmp_path).start()
    holder = await asyncpg.connect(fresh_database)
    try:
        await worker.wait_log("partitions assigned")
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("LOCK TABLE tally.metric_values IN ACCESS EXCLUSIVE MODE")
        await produce(kafka_bootstrap, topic, messages)
        # Held for longer than every bound: the flush gives up, says so, retries.
        await worker.wait_log("LockNotAvailableError", timeout=60)
        await asyncio.sleep(8)
        assert (await http_get(worker.metrics_url() + "/healthz")) == "ok\n"  # type: ignore[operator]
        samples = await worker.scrape()
        assert metric_sum(samples, "tally_errors_total", kind="LockNotAvailableError") >= 2
        await transaction.rollback()
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        assert worker.alive
    finally:
        await holder.close()
        assert worker.stop() == 0, worker.log()[-3000:]
    expected = reference.reference_values(definitions, [v for _, v in messages])
    actual = await values_by_reference_key(fresh_database, definitions)
    assert actual == expected, diff(actual, expected)


async def test_a_black_holed_connection_mid_flush_is_abandoned_and_the_worker_recovers(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    definitions = metric_definitions(4)
    topic = await make_topic(2)
    await apply_metrics(fresh_database, definitions, tmp_path)
    target = urlsplit(fresh_database)
    proxy = BlackHoleProxy(target.hostname or "127.0.0.1", target.port or 5432)
    port = await proxy.start()
    messages = encoded(Workload(seed=22, end=time.time() - 60), 6000)
    env = worker_env(kafka_bootstrap, via(fresh_database, port), topic, "g-hole", **TIMEOUTS)
    worker = WorkerProcess("blackhole", env, tmp_path).start()
    try:
        await worker.wait_log("partitions assigned")
        sending = asyncio.create_task(produce_paced(kafka_bootstrap, topic, messages, 6.0))
        await asyncio.sleep(2)
        proxy.hole()  # every connection of the pool goes silent, mid-flush or not
        await worker.wait_log("error while flushing", timeout=60)
        await asyncio.sleep(3)
        proxy.restore()  # a new connection works; the silent ones never come back
        await sending
        await wait_caught_up(kafka_bootstrap, fresh_database, topic, timeout=120)
        assert worker.alive
    finally:
        code = worker.stop()
        await proxy.stop()
    assert code == 0, worker.log()[-3000:]
    expected = reference.reference_values(definitions, [v for _, v in messages])
    actual = await values_by_reference_key(fresh_database, definitions)
    assert actual == expected, diff(actual, expected)


async def test_an_error_retrying_cannot_mend_stops_the_worker_with_its_reason(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    definitions = metric_definitions(2)
    topic = await make_topic(1)
    await apply_metrics(fresh_database, definitions, tmp_path)
    connection = await asyncpg.connect(fresh_database)
    try:  # a bad migration: every flush now violates a constraint
        await connection.execute(
            "ALTER TABLE tally.metric_values ADD CONSTRAINT broken CHECK (event_count < 0)"
        )
    finally:
        await connection.close()
    await produce(kafka_bootstrap, topic, encoded(Workload(seed=23, end=time.time() - 60), 100))
    env = worker_env(
        kafka_bootstrap, fresh_database, topic, "g-permanent", stop_linger="15s", **TIMEOUTS
    )
    worker = WorkerProcess("permanent", env, tmp_path).start()
    try:
        await worker.wait_log("stopping: an error retrying cannot mend", timeout=90)
        ready = await http_get(worker.metrics_url() + "/readyz")  # type: ignore[operator]
        assert "CheckViolationError" in ready
        samples = await worker.scrape()
        assert metric_sum(samples, "tally_permanent_errors_total") == 1
        await wait_until(
            lambda: asyncio.sleep(0, result=not worker.alive), 60, "the worker to exit"
        )
    finally:
        code = worker.stop()
    assert code == 3
    log = worker.log()
    assert log.count("error while flushing") == 2  # attempts 1 and 2; the third stops it
    assert "flushing failed 3 times with an error retrying cannot mend" in log
