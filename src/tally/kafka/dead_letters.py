"""The dead-letter topic: the original bytes and headers, plus the reason.

Sends are started at once and awaited by the flush that moves the offset
past them (`drain`), so an event can never be both skipped and lost.
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


def dead_letter_headers(record: ConsumerRecord, rejection: Rejection) -> list[tuple[str, bytes]]:
    ours = [
        (HEADER_REASON, rejection.reason.value.encode()),
        (HEADER_DETAIL, rejection.detail.encode("utf-8", "replace")),
        (HEADER_TOPIC, record.topic.encode()),
        (HEADER_PARTITION, str(record.partition).encode()),
        (HEADER_OFFSET, str(record.offset).encode()),
        (HEADER_TIMESTAMP, str(record.timestamp).encode()),
    ]
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

    async def send(
        self, record: ConsumerRecord, rejection: Rejection
    ) -> asyncio.Future[RecordMetadata]:
        """Start sending; the returned future resolves when the broker has it."""
        future: asyncio.Future[RecordMetadata] = await self.producer.send(
            self.topic,
            value=record.value if record.value is not None else b"",
            key=record.key,
            headers=dead_letter_headers(record, rejection),
        )
        return future

    @staticmethod
    async def drain(futures: Iterable[asyncio.Future[RecordMetadata]]) -> None:
        """Wait until every send is acknowledged; raises if any failed."""
        pending = list(futures)
        if pending:
            await asyncio.gather(*pending)
