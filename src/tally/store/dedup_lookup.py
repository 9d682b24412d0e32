"""Whether an event id is in the stored dedup window of its partition (`tally explain`).

Reads the same rows a worker loads at assignment (`load_partition_into`):
the segments of buckets the window still covers. Ids accepted since the
last flush are only in a worker's memory, not yet counted in the rollups
either, so "in a stored segment" is "duplicate of an event already counted".
"""

from __future__ import annotations

from tally.core.dedup import BUCKET_SECONDS, blob_contains
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
