"""`build_worker`, the composition root of `tally run`: every part it builds
is the one the others use (one owner of the states, one core, one set of
dead letters, one pool), so nothing inside the worker builds another."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from tally.config import Settings
from tally.store.pool import close_pool
from tally.worker.build import build_worker
from tally.worker.retry import Clock

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_the_parts_of_a_built_worker_are_shared_not_built_twice(
    kafka_bootstrap: str, fresh_database: str
) -> None:
    registry = CollectorRegistry()
    clock = Clock()
    settings = Settings(kafka_bootstrap=kafka_bootstrap, database_url=fresh_database)
    worker = await build_worker(settings, registry=registry, clock=clock)
    try:
        assert worker.registry is registry
        assert worker.clock is clock
        assert await worker.pool.fetchval("SELECT 1") == 1
        flush = worker.checkpoint
        assert flush.states is worker.states
        assert worker.metrics.states is worker.states
        assert flush.core is worker.metrics.core is worker.intake.core
        assert worker.intake.dead_letters is flush.dead_letters
        assert flush.dead_letters.producer is worker.producer
        assert flush.store.pool is worker.pool
        assert flush.members is flush.store.members is worker.members
        assert flush.kafka is not None
        assert flush.kafka.consumer is worker.consumer
        assert worker.health.flush_started == flush.started_at
        assert worker.watcher.on_change == worker.metrics.changed
        assert worker.watcher.on_refused == worker.metrics.refused
        assert worker.retention.pool is worker.pool
        names = {s.name for m in registry.collect() for s in m.samples}
        assert "tally_zone_data_info" in names
    finally:
        await worker.consumer.stop()
        await worker.producer.stop()
        await close_pool(worker.pool)
