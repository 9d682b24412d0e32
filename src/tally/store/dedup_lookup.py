"""Whether an event id is in the stored dedup window of its partition (`tally explain`).

Reads the same rows a worker loads at assignment (`load_partition_into`):
the segments of buckets the window still covers. Ids accepted since the
last flush are only in a worker's memory, not yet counted in the rollups
either, so "in a stored segment" is "duplicate of an event already counted".
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError

from tally.config import Settings
from tally.core.dedup import BUCKET_SECONDS, blob_contains
from tally.core.events import DecodeLimits, Rejection, decode_event
from tally.core.explain import dedup_answer, dedup_digest
from tally.kafka.records import partition_count, partition_of
from tally.store.pool import Connection


async def stored_in_window(
    connection: Connection, topic: str, partition: int, key: bytes, now: float, window: float
) -> bool:
    min_bucket = int((now - window) // BUCKET_SECONDS)
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        async for row in connection.cursor(
            "SELECT ids FROM tally.dedup_segments"
            " WHERE topic = $1 AND partition = $2 AND bucket >= $3 ORDER BY segment_id",
            topic,
            partition,
            min_bucket,
            prefetch=4,
        ):
            if blob_contains(row["ids"], key):
                return True
    return False


async def window_unread(
    connection: Connection, settings: Settings, raw: bytes, now: float, limits: DecodeLimits
) -> str | None:
    """Why the stored window will not be read for this event, or None when it
    will. Before any Kafka round trip (a partition count, or checking a
    partition given): tally_api holds no grant on the workers' state
    (migration 0004), and would wait on Kafka for nothing."""
    if dedup_digest(raw, now, limits) is None or isinstance(
        decode_event(raw, now, limits), Rejection
    ):
        return "the event is refused"
    if settings.dedup_window <= 0:
        return "dedup is off (dedup window 0)"
    if not await connection.fetchval(
        "SELECT has_table_privilege('tally.dedup_segments', 'SELECT')"
    ):
        return "this database role cannot read tally.dedup_segments"
    return None


async def dedup_state(
    connection: Connection,
    settings: Settings,
    raw: bytes,
    now: float,
    limits: DecodeLimits,
    topic: str,
    partition: int | None,
) -> dict[str, Any]:
    """Whether the event's id is in the stored window of its partition: the
    partition given, or the one Kafka's partitioner gives its customerId."""
    why = await window_unread(connection, settings, raw, now, limits)
    if why is not None:
        return {"checked": False, "why": why}
    key = dedup_digest(raw, now, limits)
    decoded = decode_event(raw, now, limits)
    assert key is not None
    assert not isinstance(decoded, Rejection)
    if partition is None:
        try:
            count = await asyncio.wait_for(
                partition_count(settings.kafka_bootstrap, topic), timeout=15
            )
        except (KafkaError, OSError, LookupError, TimeoutError) as exc:
            why = f"partition unknown ({type(exc).__name__}: {exc}); give --partition"
            return {"checked": False, "why": why}
        partition = partition_of(decoded.customer_id.encode(), count)
    try:
        duplicate = await stored_in_window(
            connection, topic, partition, key, now, settings.dedup_window
        )
    except asyncpg.InsufficientPrivilegeError:
        # tally_api holds no grant on the workers' state (migration 0004).
        return {"checked": False, "why": "this database role cannot read tally.dedup_segments"}
    return dedup_answer(topic, partition, duplicate)
