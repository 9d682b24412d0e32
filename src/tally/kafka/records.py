"""Where an event lives in Kafka, for `tally explain`: the partition its key
goes to, and one record fetched by (topic, partition, offset)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import murmur2


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record
    (aiokafka's and the Java client's: murmur2, positive, modulo the count)."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


async def partition_count(bootstrap: str, topic: str) -> int:
    """How many partitions `topic` has; LookupError when it has none."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
    finally:
        await consumer.stop()
    if not partitions:
        raise LookupError(f"topic {topic} has no partitions (does it exist?)")
    return len(partitions)
