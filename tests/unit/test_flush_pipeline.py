"""The flush path when the loop and a rebalance callback wait on one flush,
and when the worker stops on an unexpected error.

aiokafka runs rebalance callbacks in its coordinator task, so the worker's
loop and a revocation can both be waiting for the flush in flight. Its
outcome must be applied once: a failed batch given back twice would be
written twice, a committed one counted twice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import pytest
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from tally.config import Settings
from tally.core.engine import Deltas, aggregate, new_core
from tally.core.events import DecodeLimits
from tally.kafka.dead_letters import DeadLetters
from tally.store.flush import FlushResult
from tally.store.member_cache import MemberCache
from tally.telemetry.http import TelemetryServer
from tally.telemetry.instruments import Telemetry
from tally.worker.checkpoint import Checkpoint, FlushStore
from tally.worker.definitions import DefinitionWatcher, LiveMetrics
from tally.worker.health import Health
from tally.worker.intake import Intake
from tally.worker.partition import Partitions, PartitionState
from tally.worker.retention import RetentionTask
from tally.worker.retry import Clock, Retry
from tally.worker.runner import MAX_PENDING_DEAD_LETTERS, Worker

pytestmark = pytest.mark.asyncio(loop_scope="function")


class GatedStore:
    """The flush transaction, faked: each write waits for its gate, then
    fails with `error` or succeeds (and is kept in `written`)."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Event] = []
        self.written: list[Written] = []
        self.error: Exception | None = None

    async def write(self, parts: Any, deltas: Deltas, parked: Any) -> FlushResult:
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.error is not None:
            raise self.error
        self.written.append(Written(list(parts), deltas))
        return FlushResult(0, 0, {})  # no dedup in these partitions, no epochs compared


@dataclass
class Written:
    parts: list[Any]
    deltas: Deltas


CORE = new_core()  # no metrics: every event counts as consumed (and unmatched)
NOW = time.time()
STAMP = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 60))


def checkpoint(states: Partitions, store: GatedStore, clock: Clock | None = None) -> Checkpoint:
    """A checkpoint whose transaction is `store`; no dead letters are sent
    (the producer is a fake) and no Kafka offsets committed."""
    clock = Clock() if clock is None else clock
    registry = CollectorRegistry()
    return Checkpoint(
        states=states,
        core=CORE,
        store=cast(FlushStore, store),
        dead_letters=DeadLetters(cast(Any, FakeProducer()), "dead-letters"),
        kafka=None,
        telemetry=Telemetry(registry),
        clock=clock,
    )


def pipeline_with_pending(events: int) -> tuple[Checkpoint, GatedStore, PartitionState]:
    checkpointer = GatedStore()
    state = PartitionState(TopicPartition("t", 0), window_seconds=0)
    state.loaded(10)
    pipeline = checkpoint(Partitions({state.tp: state}), checkpointer, Clock(wall=lambda: 0.0))
    consume(pipeline, state, events)
    return pipeline, checkpointer, state


class FakeConsumer:
    """A consumer that holds no partition and fetches nothing."""

    def assignment(self) -> set[Any]:
        return set()

    def highwater(self, tp: Any) -> None:
        return None

    def pause(self, *partitions: Any) -> None:
        pass

    def resume(self, *partitions: Any) -> None:
        pass

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        await asyncio.sleep(0)
        return {}

    def subscribe(self, topics: list[str], listener: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class FakeProducer:
    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def fake_worker(
    settings: Settings | None = None,
    *,
    checkpointer: GatedStore | None = None,
    consumer: Any = None,
    clock: Clock | None = None,
    watcher: DefinitionWatcher | None = None,
) -> Worker:
    """A worker built from fakes through its constructor: no database
    (the pool is None), no broker, a flush that waits for its gate."""
    settings = Settings() if settings is None else settings
    clock = Clock() if clock is None else clock
    registry = CollectorRegistry()
    telemetry = Telemetry(registry)
    pool = cast(asyncpg.Pool, None)
    states = Partitions()
    metrics = LiveMetrics(CORE, states, telemetry)
    flush = checkpoint(states, checkpointer or GatedStore(), clock)
    return Worker(
        settings=settings,
        pool=pool,
        registry=registry,
        telemetry=telemetry,
        consumer=consumer or FakeConsumer(),
        producer=cast(Any, FakeProducer()),
        states=states,
        metrics=metrics,
        members=MemberCache(max_members=10, horizon=60.0, clock=clock.wall),
        checkpoint=flush,
        intake=Intake(
            core=CORE,
            telemetry=telemetry,
            limits=DecodeLimits(),
            clock=clock,
            deltas=lambda: flush.deltas,
        ),
        watcher=watcher
        or DefinitionWatcher(pool, metrics.changed, clock.wall, on_refused=metrics.refused),
        retry=Retry(telemetry, settings.retry_max_backoff, settings.permanent_attempts),
        health=Health(clock, settings.stall_timeout, flush.started_at),
        retention=RetentionTask(pool, settings, registry),
        clock=clock,
        owner="test",
    )


def consume(pipeline: Checkpoint, state: PartitionState, events: int) -> None:
    """`events` real events into the pipeline's pending deltas, as consuming does."""
    values = [
        f'{{"id":"e{state.next_offset + n}","eventType":"x","customerId":"c","timestamp":"{STAMP}"}}'.encode()
        for n in range(events)
    ]
    aggregate(CORE, values, NOW, DecodeLimits(), deltas=pipeline.deltas)
    state.next_offset += events
    state.records += events


async def until(condition: Any) -> None:
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


async def test_a_failed_flush_awaited_twice_is_given_back_once() -> None:
    pipeline, checkpointer, state = pipeline_with_pending(5)
    checkpointer.error = ConnectionError("database went away")
    assert pipeline.start("interval")
    loop_side = asyncio.create_task(pipeline.settle())
    revoke_side = asyncio.create_task(pipeline.settle())
    await until(lambda: checkpointer.gates)
    checkpointer.gates[0].set()
    outcomes = await asyncio.gather(loop_side, revoke_side, return_exceptions=True)
    assert sum(isinstance(o, ConnectionError) for o in outcomes) == 1
    assert pipeline.deltas.events == 5
    assert state.records == 5
    assert not pipeline.busy


async def test_a_revocation_flush_waits_for_a_flush_the_loop_started_meanwhile() -> None:
    pipeline, checkpointer, state = pipeline_with_pending(5)
    assert pipeline.start("interval")

    async def loop_side() -> None:
        # The loop wakes first, settles, consumes more and starts the next
        # flush in the same step, before the revocation's task wakes.
        await pipeline.settle()
        consume(pipeline, state, 3)
        assert pipeline.start("pending_events")

    looping = asyncio.create_task(loop_side())
    await until(lambda: checkpointer.gates)
    revoke = asyncio.create_task(pipeline.flush("revoke"))
    await asyncio.sleep(0)
    checkpointer.gates[0].set()
    await looping
    await until(lambda: len(checkpointer.gates) == 2)
    assert not revoke.done()
    checkpointer.gates[1].set()
    await asyncio.wait_for(revoke, timeout=5)
    assert [batch.deltas.events for batch in checkpointer.written] == [5, 3]
    assert state.stored_offset == 18
    assert not pipeline.busy
    assert pipeline.deltas.events == 0


async def test_a_worker_stopped_by_an_unexpected_error_flushes_nothing_half_consumed() -> None:
    checkpointer = GatedStore()
    worker = fake_worker(checkpointer=checkpointer)
    state = PartitionState(TopicPartition("t", 0), window_seconds=0)
    state.loaded(10)
    worker.states[state.tp] = state
    consume(worker.checkpoint, state, 4)  # as if the error struck half-way through a batch
    server = TelemetryServer(worker.registry, worker.ready_check, "127.0.0.1", 0)
    await worker._shutdown(server, final_flush=False)
    assert checkpointer.gates == []  # no flush was even started
    assert state.stored_offset == 10
    # And the revocation that leaving the group runs finds nothing to flush either.
    await worker.partitions_revoked({state.tp})
    assert checkpointer.gates == []


async def test_a_flood_of_dead_letters_is_flushed_in_slices() -> None:
    worker = fake_worker()
    state = PartitionState(TopicPartition("t", 0), window_seconds=0)
    state.loaded(0)
    worker.states[state.tp] = state
    letter = cast(Any, None)
    state.dead_letters = [letter] * (MAX_PENDING_DEAD_LETTERS - 1)
    assert worker._flush_due(last_flush=worker.clock.monotonic()) is None
    state.dead_letters.append(letter)
    assert worker._flush_due(last_flush=worker.clock.monotonic()) == "pending_dead_letters"
