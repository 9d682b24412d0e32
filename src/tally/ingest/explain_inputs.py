"""What `tally explain` and POST /events/explain judge an event against, as a
worker would: the definitions a worker runs and those it refuses, and whether
the partition asked about is one of the topic's.

A worker loads the definitions (tally.store.definitions.load_definitions:
a row that does not validate is refused; explain reads the same rows with the
same refusals through read_definitions, which leaves out the revision, so
that tally_reader, granted tally.metrics alone, can explain) and runs those that pass
tally.worker.definitions.runnable (zone known here, compiles); explain takes
the same two steps, so a metric no worker runs is answered as not_running,
with the worker's reason, never as applied.
"""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaError

from tally.contracts.metric import UsageMetric
from tally.core.explain import NotRunning
from tally.kafka.records import partition_count
from tally.store.definitions import read_definitions
from tally.store.pool import Connection
from tally.worker.definitions import runnable

PARTITIONS_TIMEOUT = 15.0
"""Seconds to wait for Kafka's partition count (the dedup lookup waits as long)."""


async def worker_metrics(connection: Connection) -> tuple[list[UsageMetric], list[NotRunning]]:
    """The live metrics a worker runs, and the live ones it refuses, with why."""
    metrics, invalid_rows = await read_definitions(connection)
    runs, refused = runnable(metrics)
    event_types: dict[str, str | None] = {m.uid: m.event_type for m in metrics}
    invalid = [r.uid for r in invalid_rows]
    if invalid:
        # Rows that do not validate: their eventType as stored, if they name one.
        for row in await connection.fetch(
            "SELECT uid, definition->>'eventType' AS event_type FROM tally.metrics"
            " WHERE uid = ANY($1::text[]) AND deleted_at IS NULL",
            invalid,
        ):
            event_types[row["uid"]] = row["event_type"]
    not_running = [
        NotRunning(r.uid, event_types.get(r.uid), r.reason, r.detail)
        for r in [*invalid_rows, *refused]
    ]
    return runs, not_running


class PartitionOutOfRange(ValueError):
    def __init__(self, topic: str, partition: int, count: int) -> None:
        super().__init__(
            f"topic {topic} has {count} partition{'s' if count != 1 else ''}"
            f" (0 to {count - 1}); there is no partition {partition}"
        )


async def check_partition(bootstrap: str, topic: str, partition: int) -> None:
    """Raises PartitionOutOfRange when Kafka says `topic` has no `partition`.
    When Kafka cannot say (away, or no such topic), the partition is taken as
    given: the stored window of (topic, partition) is what is checked."""
    try:
        count = await asyncio.wait_for(partition_count(bootstrap, topic), PARTITIONS_TIMEOUT)
    except (KafkaError, OSError, LookupError, TimeoutError):
        return
    if partition >= count:
        raise PartitionOutOfRange(topic, partition, count)
