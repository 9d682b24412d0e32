"""Where an event lives in Kafka, for `tally explain`: the partition its key
goes to, and one record fetched by (topic, partition, offset)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record
    (aiokafka's and the Java client's: murmur2, positive, modulo the count)."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


async def partition_count(bootstrap: str, topic: str) -> int:
    """How many partitions `topic` has; LookupError when it has none."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await consumer.start()  # inside: a start that fails (no broker) is closed too
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
    finally:
        await consumer.stop()
    if not partitions:
        raise LookupError(f"topic {topic} has no partitions (does it exist?)")
    return len(partitions)


async def fetch_record(bootstrap: str, topic: str, partition: int, offset: int) -> bytes | None:
    """The value of one record (None for a null value), read as a worker reads:
    committed records only. LookupError when there is none at that offset."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        request_timeout_ms=10_000,
    )
    try:
        await consumer.start()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        batches = await consumer.getmany(tp, timeout_ms=5000, max_records=1)
    finally:
        await consumer.stop()
    for record in batches.get(tp, []):
        if record.offset == offset:
            value: bytes | None = record.value
            return value
    raise LookupError(f"no record at {topic} partition {partition} offset {offset}")
