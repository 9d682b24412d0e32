"""The consume ceiling: aiokafka `getmany` + `orjson.loads` of every value, nothing else.

`python -m tally.bench.peer_ceiling --bootstrap B --topic T --events N --group G`

What any Python consumer of this topic pays just to read it: no state, no
writes, no offset commits. Timed from the first partition assignment until
the N-th record is decoded.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

from tally.bench.peer_common import IDLE_SECONDS, Clock, arguments, report

MAX_RECORDS = 5000
# Generous, and per partition the same as Tally's consumer (4 MiB, 4x aiokafka's
# default), so the two peak RSS figures differ by work, not by fetch buffers.
FETCH = {
    "fetch_max_bytes": 64 * 1024 * 1024,
    "max_partition_fetch_bytes": 4 * 1024 * 1024,
    "fetch_max_wait_ms": 200,
}


class StartOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if assigned:
            self.clock.start()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None


def subscribed_consumer(
    bootstrap: str, topic: str, group: str, clock: Clock, *, auto_commit: bool = False
) -> AIOKafkaConsumer:
    """A group member reading `topic` from the beginning; shared with the SQL route."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=auto_commit,
        max_poll_records=MAX_RECORDS,
        **FETCH,
    )
    consumer.subscribe([topic], listener=StartOnAssign(clock))
    return consumer


async def consume(bootstrap: str, topic: str, events: int, group: str) -> None:
    clock = Clock()
    consumer = subscribed_consumer(bootstrap, topic, group, clock)
    await consumer.start()
    try:
        loads = orjson.loads
        count = 0
        last_record = time.monotonic()
        while count < events:
            batches = await consumer.getmany(timeout_ms=1000, max_records=MAX_RECORDS)
            if not batches:
                if time.monotonic() - last_record > IDLE_SECONDS:
                    raise RuntimeError(f"only {count} of {events} records arrived")
                continue
            last_record = time.monotonic()
            for records in batches.values():
                chunk = records[: events - count]
                for record in chunk:
                    loads(record.value)
                count += len(chunk)
        seconds = clock.elapsed()
    finally:
        await consumer.stop()
    report(events=count, seconds=seconds, rows=0, clock=clock)


def main() -> None:
    args = arguments("the consume ceiling", database=False)
    asyncio.run(consume(args.bootstrap, args.topic, args.events, args.group))


if __name__ == "__main__":
    main()
