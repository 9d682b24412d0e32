"""The dead-letter topic: the original bytes and headers, plus the reason.

Sends are started at once and awaited by the flush that moves the offset
past them (`drain`), so an event can never be both skipped and lost.
Starting a send never waits and never raises: the worker's consume step must
not yield to a rebalance callback half-way through a batch, and a send that
fails is retried by the flush that needs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, RecordMetadata

from tally.core.events import Rejection

HEADER_REASON = "tally.reason"
HEADER_DETAIL = "tally.detail"
HEADER_TOPIC = "tally.source.topic"
HEADER_PARTITION = "tally.source.partition"
HEADER_OFFSET = "tally.source.offset"
HEADER_TIMESTAMP = "tally.source.timestamp"
HEADER_TRUNCATED = "tally.truncated"

# Below the producer's and the broker's 1 MiB request limits, with room for
# the key and headers. A larger value (a compressed message the broker took)
# could never be sent whole; its first bytes are, with its original length.
MAX_VALUE_BYTES = 512 * 1024


def dead_letter_headers(record: ConsumerRecord, rejection: Rejection) -> list[tuple[str, bytes]]:
    ours = [
        (HEADER_REASON, rejection.reason.value.encode()),
        (HEADER_DETAIL, rejection.detail.encode("utf-8", "replace")),
        (HEADER_TOPIC, record.topic.encode()),
        (HEADER_PARTITION, str(record.partition).encode()),
        (HEADER_OFFSET, str(record.offset).encode()),
        (HEADER_TIMESTAMP, str(record.timestamp).encode()),
    ]
    if record.value is not None and len(record.value) > MAX_VALUE_BYTES:
        ours.append((HEADER_TRUNCATED, str(len(record.value)).encode()))
    original = [
        (k, v if v is not None else b"")
        for k, v in (record.headers or ())
        if not k.startswith("tally.")
    ]
    return original + ours


class DeadLetters:
    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    def send(self, record: ConsumerRecord, rejection: Rejection) -> asyncio.Future[RecordMetadata]:
        """Start sending; the returned future resolves when the broker has it,
        or holds the error."""
        task = asyncio.ensure_future(self._send(record, rejection))
        # A batch dropped after a fence never awaits its sends: retrieve the error here.
        task.add_done_callback(_retrieve)
        return task

    async def _send(self, record: ConsumerRecord, rejection: Rejection) -> RecordMetadata:
        value = record.value if record.value is not None else b""
        delivery = await self.producer.send(
            self.topic,
            value=value[:MAX_VALUE_BYTES],
            key=record.key,
            headers=dead_letter_headers(record, rejection),
        )
        return await delivery

    @staticmethod
    async def drain(futures: Iterable[asyncio.Future[RecordMetadata]]) -> None:
        """Wait until every send is acknowledged; raises if any failed."""
        pending = list(futures)
        if pending:
            await asyncio.gather(*pending)


def _retrieve(task: asyncio.Future[RecordMetadata]) -> None:
    if not task.cancelled():
        task.exception()
