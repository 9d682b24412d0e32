"""Building aiokafka clients from Settings; tests inject their own factories."""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from tally.config import Settings

ConsumerFactory = Callable[[Settings], AIOKafkaConsumer]
ProducerFactory = Callable[[Settings], AIOKafkaProducer]


def make_consumer(settings: Settings) -> AIOKafkaConsumer:
    session_ms = int(settings.session_timeout * 1000)
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.group,
        client_id=f"tally-{settings.worker_id}",
        enable_auto_commit=False,  # offsets live in PostgreSQL; Kafka's are advisory
        auto_offset_reset="earliest",
        isolation_level="read_committed",  # never bill an aborted producer transaction
        max_poll_records=settings.max_batch,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(100, session_ms // 3),
        rebalance_timeout_ms=max(session_ms, 30_000),
        fetch_max_wait_ms=200,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        retry_backoff_ms=250,
    )


def new_producer(
    bootstrap: str,
    *,
    idempotent: bool,
    linger_ms: int,
    client_id: str | None = None,
    request_timeout_ms: int | None = None,
    max_request_size: int | None = None,
) -> AIOKafkaProducer:
    """Every Kafka producer Tally builds (dead letters, ingest, `tally produce`,
    the demo): acknowledged by all in-sync replicas; what is left None keeps
    aiokafka's default."""
    options: dict[str, object] = {
        "client_id": client_id,
        "request_timeout_ms": request_timeout_ms,
        "max_request_size": max_request_size,
    }
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=idempotent,
        linger_ms=linger_ms,
        **{name: value for name, value in options.items() if value is not None},
    )


def make_producer(settings: Settings) -> AIOKafkaProducer:
    """The dead-letter producer. Not idempotent: aiokafka's idempotent
    producer does not recover from one refused batch (every later send to the
    partition fails with OutOfOrderSequenceNumber), and dead letters are
    at-least-once anyway (docs/decisions.md)."""
    return new_producer(
        settings.kafka_bootstrap,
        client_id=f"tally-{settings.worker_id}-dlq",
        idempotent=False,
        linger_ms=5,
        request_timeout_ms=30_000,
    )


async def ensure_topics(bootstrap: str, topics: dict[str, int]) -> list[str]:
    """Create the topics that do not exist (name -> partitions); returns those created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    created = []
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        brokers = len((await admin.describe_cluster())["brokers"])
        replication = max(1, min(3, brokers))
        for name, partitions in topics.items():
            if name in existing:
                continue
            try:
                await admin.create_topics(
                    [NewTopic(name, num_partitions=partitions, replication_factor=replication)]
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    return created


async def missing_topics(bootstrap: str, topics: list[str]) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    return [t for t in topics if t not in existing]


__all__ = [
    "ConsumerFactory",
    "KafkaError",
    "ProducerFactory",
    "ensure_topics",
    "make_consumer",
    "make_producer",
    "missing_topics",
]
