"""Faults inside the worker, with fakes for Kafka and the clock: a revocation
whose flush never ends, a stuck loop, a permanent error, an idle loop, a
flood of large dead letters. (Real broker and database: tests/integration/
test_worker_timeouts.py and test_offset_gaps.py.)"""

from __future__ import annotations

import asyncio
import gc
from typing import Any, cast

import asyncpg
import pytest
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from tally.config import Settings
from tally.errors import PermanentError
from tally.telemetry.http import TelemetryServer
from tally.worker.definitions import DefinitionWatcher
from tally.worker.health import Health
from tally.worker.partition import PartitionState
from tally.worker.retry import Clock, Retry
from tally.worker.runner import MAX_PENDING_DEAD_LETTER_BYTES, Worker
from tests.integration.support import http_get
from tests.unit.test_flush_pipeline import FakeConsumer, GatedStore, consume, fake_worker

pytestmark = pytest.mark.asyncio(loop_scope="function")


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> Clock:
        return Clock(wall=lambda: self.now + 1.7e9, monotonic=lambda: self.now)


class IdleConsumer(FakeConsumer):
    """A consumer with nothing to fetch: getmany 'waits' its timeout on the fake clock."""

    def __init__(self, time: FakeTime, stop: asyncio.Event, until: float) -> None:
        self.time = time
        self.stopping = stop  # not `stop`: that is the consumer's own method
        self.until = until
        self.calls = 0

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        self.calls += 1
        self.time.now += timeout_ms / 1000
        if self.time.now >= self.until:
            self.stopping.set()
        await asyncio.sleep(0)
        return {}


def worker(time: FakeTime, consumer: Any = None, **settings: Any) -> Worker:
    return fake_worker(Settings(**settings), consumer=consumer, clock=time.clock())


async def test_an_idle_worker_waits_in_fetch_instead_of_spinning() -> None:
    time = FakeTime()
    stop = asyncio.Event()
    consumer = IdleConsumer(time, stop, until=time.now + 60)
    w = worker(time, consumer, flush_interval=1.0)
    await w._loop(stop)
    # One fetch per half second at most (0.5 s cap) and one per flush interval:
    # the loop polled every 5 ms once an interval passed with nothing to flush.
    assert consumer.calls <= 60 * 2 + 60


async def test_a_revocation_whose_flush_never_ends_gives_up_after_the_session_timeout() -> None:
    checkpointer = GatedStore()  # its gate is never opened: a hung flush
    w = fake_worker(Settings(session_timeout=0.2, revoke_policy="drop"), checkpointer=checkpointer)
    state = PartitionState(TopicPartition("t", 0), window_seconds=0)
    state.loaded(10)
    w.states[state.tp] = state
    consume(w.checkpoint, state, 5)
    assert w.checkpoint.start("interval")
    await asyncio.wait_for(w.partitions_revoked({state.tp}), timeout=5)
    assert not w.checkpoint.busy
    assert w.states == {}
    assert state.stored_offset == 10  # nothing was stored: the next owner re-reads


async def test_liveness_fails_when_the_loop_stops_turning_or_a_flush_hangs() -> None:
    time = FakeTime()
    health = Health(time.clock(), stall_timeout=180)
    server = TelemetryServer(CollectorRegistry(), _ready, "127.0.0.1", 0, live=health.live)
    port = await server.start()
    try:
        assert await http_get(f"http://127.0.0.1:{port}/healthz") == "ok\n"
        time.now += 181
        assert "not turned for 181 s" in await http_get(f"http://127.0.0.1:{port}/healthz")
        health.turned()
        assert health.live() == (True, "ok")
        started = time.now
        health.flush_started = lambda: started
        time.now += 200
        health.turned()
        ok, why = health.live()
        assert not ok
        assert "flush has been in flight for 200 s" in why
    finally:
        await server.stop()


async def _ready() -> tuple[bool, str]:
    return True, "ok"


async def test_a_permanent_error_is_retried_a_bounded_number_of_times() -> None:
    retry = Retry(worker(FakeTime()).telemetry, max_backoff=1.0, permanent_attempts=3)
    undefined = asyncpg.UndefinedColumnError("column v.value does not exist")
    retry.failed(undefined, "flushing")
    retry.failed(undefined, "flushing")
    with pytest.raises(PermanentError) as raised:
        retry.failed(undefined, "flushing")
    assert "flushing failed 3 times" in str(raised.value)
    assert "UndefinedColumnError" in str(raised.value)
    for _ in range(50):  # transient ones are retried as long as they last
        retry.failed(asyncpg.AdminShutdownError("restarting"), "flushing")
    retry.succeeded()
    retry.failed(undefined, "flushing")  # the count is of failures in a row


async def test_large_dead_letters_are_flushed_by_their_bytes_not_only_their_number() -> None:
    time = FakeTime()
    w = worker(time)
    state = PartitionState(TopicPartition("t", 0), window_seconds=0)
    state.loaded(0)
    w.states[state.tp] = state
    state.dead_letter_bytes = MAX_PENDING_DEAD_LETTER_BYTES - 1
    assert w._flush_due(last_flush=time.now) is None
    state.dead_letter_bytes += 1
    assert w._flush_due(last_flush=time.now) == "pending_dead_letters"


class FakeWatcher(DefinitionWatcher):
    """Definitions that never change; its poll task dies with `dies`, or
    runs until the worker stops."""

    def __init__(self, dies: BaseException | None = None) -> None:
        super().__init__(cast(asyncpg.Pool, None), lambda index: None)
        self.dies = dies

    async def refresh(self) -> bool:
        self.last_refresh = self.clock()
        return False

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        if self.dies is not None:
            raise self.dies
        await stop.wait()


class StoppingConsumer(FakeConsumer):
    """Fetches nothing, and sets `stop` after `turns` fetches."""

    def __init__(self, stop: asyncio.Event, turns: int) -> None:
        self.stopping = stop
        self.turns = turns

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        self.turns -= 1
        if self.turns <= 0:
            self.stopping.set()
        return await super().getmany(timeout_ms, max_records)


def served(**settings: Any) -> Settings:
    return Settings(telemetry_host="127.0.0.1", telemetry_port=0, stop_linger=0, **settings)


async def run_restoring_gc(w: Worker, stop: asyncio.Event) -> None:
    """`Worker.run`, with this process's garbage collector put back after it."""
    threshold = gc.get_threshold()
    try:
        await asyncio.wait_for(w.run(stop), timeout=30)
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


async def test_a_side_task_that_dies_stops_the_worker_loudly() -> None:
    stop = asyncio.Event()
    w = fake_worker(
        served(),
        consumer=StoppingConsumer(stop, turns=1_000_000),
        watcher=FakeWatcher(dies=RuntimeError("poll broke")),
    )
    with pytest.raises(PermanentError) as raised:
        await run_restoring_gc(w, stop)
    assert "the definitions task stopped: RuntimeError: poll broke" in str(raised.value)
    assert w.registry.get_sample_value("tally_permanent_errors_total") == 1
    stopping = {"component": "tally", "kind": "definitions"}
    assert w.registry.get_sample_value("tally_stopping", stopping) == 1
    ok, why = await w.ready_check()
    assert not ok
    assert "definitions task stopped" in why


async def test_a_worker_with_retention_turned_off_keeps_running() -> None:
    """retention_interval 0 runs no pass: the worker goes on, and is not
    stopped as if its retention task had died."""
    stop = asyncio.Event()
    w = fake_worker(
        served(retention_interval=0),
        consumer=StoppingConsumer(stop, turns=20),
        watcher=FakeWatcher(),
    )
    await run_restoring_gc(w, stop)
    assert w.registry.get_sample_value("tally_permanent_errors_total") == 0
