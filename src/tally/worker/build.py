"""The composition root of `tally run`: every collaborator of a worker is
built here, once, and passed into `Worker`; nothing inside the worker
builds another.

What is built, and who shares it:

- the pool (PostgreSQL), the consumer and the dead-letter producer (Kafka),
  the telemetry on the registry the telemetry server serves;
- `Partitions`, the states' one owner, shared by the worker (rebalances),
  the metric index (metrics added) and the flush (takes and settles work);
- the member cache, the dead letters and the flush owner (`Checkpoint`),
  whose transaction is a `FlushStore` on the pool and whose Kafka commits
  go through `KafkaOffsets` (the consumer), not through the worker;
- the intake, the definitions watcher and the live index, retry, health
  and the retention task.

Starting things (the producer, joining the group, the side tasks) is the
worker's `run`, with retries; building them does no I/O but the pool.
"""

from __future__ import annotations

import os
import socket

from prometheus_client import CollectorRegistry

from tally.config import Settings
from tally.core.engine import new_core
from tally.core.events import DecodeLimits
from tally.kafka.clients import ConsumerFactory, ProducerFactory, make_consumer, make_producer
from tally.kafka.dead_letters import DeadLetters
from tally.store.member_cache import MemberCache
from tally.store.pool import close_pool, create_pool
from tally.telemetry.instruments import Telemetry
from tally.worker.checkpoint import Checkpoint, FlushStore, KafkaOffsets
from tally.worker.definitions import DefinitionWatcher, LiveMetrics
from tally.worker.health import Health
from tally.worker.intake import Intake
from tally.worker.partition import Partitions
from tally.worker.retention import RetentionTask
from tally.worker.retry import Clock, Retry
from tally.worker.runner import Worker
from tally.zones import zone_data_version

# Flushes, loads, the definitions watcher, readiness, a retention pass.
POOL_SIZE = 5


async def build_worker(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    clock: Clock | None = None,
    consumer_factory: ConsumerFactory = make_consumer,
    producer_factory: ProducerFactory = make_producer,
) -> Worker:
    """A worker ready to `run`, with its own pool (the caller closes
    `worker.pool` after the run). `registry`: where its telemetry goes, shared
    with `POST /events` when the API is hosted."""
    registry = CollectorRegistry() if registry is None else registry
    clock = Clock() if clock is None else clock
    pool = await create_pool(
        settings.database_url,
        min_size=2,
        max_size=POOL_SIZE,
        statement_timeout=settings.database_timeout,
        lock_timeout=settings.lock_timeout,
    )
    try:
        owner = settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        telemetry = Telemetry(registry)
        telemetry.zone_data.labels(zone_data_version()).set(1)
        consumer = consumer_factory(settings)
        producer = producer_factory(settings)
        dead_letters = DeadLetters(producer, settings.dead_letter_topic)
        states = Partitions()
        members = MemberCache(
            max_members=settings.member_cache, horizon=settings.max_lateness, clock=clock.wall
        )
        metrics = LiveMetrics(new_core(), states, telemetry)
        checkpoint = Checkpoint(
            states=states,
            core=metrics.core,
            store=FlushStore(pool, owner, members),
            dead_letters=dead_letters,
            kafka=KafkaOffsets(consumer),
            telemetry=telemetry,
            clock=clock,
            members=members,
            timeout=settings.flush_timeout,
        )
        intake = Intake(
            core=metrics.core,
            telemetry=telemetry,
            limits=DecodeLimits(
                max_bytes=settings.max_event_bytes,
                max_lateness_seconds=settings.max_lateness,
                max_future_seconds=settings.max_future_skew,
            ),
            clock=clock,
            deltas=lambda: checkpoint.deltas,
            dead_letters=dead_letters,
        )
        return Worker(
            settings=settings,
            pool=pool,
            registry=registry,
            telemetry=telemetry,
            consumer=consumer,
            producer=producer,
            states=states,
            metrics=metrics,
            members=members,
            checkpoint=checkpoint,
            intake=intake,
            watcher=DefinitionWatcher(
                pool, metrics.changed, clock=clock.wall, on_refused=metrics.refused
            ),
            retry=Retry(telemetry, settings.retry_max_backoff, settings.permanent_attempts),
            health=Health(clock, settings.stall_timeout, checkpoint.started_at),
            retention=RetentionTask(pool, settings, registry),
            clock=clock,
            owner=owner,
        )
    except BaseException:
        await close_pool(pool)
        raise
