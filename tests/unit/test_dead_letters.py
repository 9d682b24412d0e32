"""Starting a dead-letter send never waits and never raises (no broker here:
the real DLQ round trip is in tests/integration/test_worker_crashes.py)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord

from tally.core.events import Rejection, RejectReason
from tally.kafka.dead_letters import HEADER_TRUNCATED, MAX_VALUE_BYTES, DeadLetters

pytestmark = pytest.mark.asyncio(loop_scope="function")


class RecordingProducer:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.sent: list[dict[str, Any]] = []

    async def send(self, topic: str, **message: Any) -> asyncio.Future[str]:
        await asyncio.sleep(0)  # a real send may wait for buffer space or metadata
        if self.fail:
            raise MessageSizeTooLargeError()
        self.sent.append(message)
        delivered: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        delivered.set_result("ack")
        return delivered


def record(value: bytes) -> ConsumerRecord:
    return ConsumerRecord("events", 3, 42, 0, 0, b"key", value, None, len(value), 3, [])


REJECTION = Rejection(RejectReason.OVERSIZED, "too big")


async def test_a_send_that_fails_is_a_failed_future_not_an_exception() -> None:
    letters = DeadLetters(cast(AIOKafkaProducer, RecordingProducer(fail=True)), "events.dlq")
    future = letters.send(record(b"x"), REJECTION)  # must not raise
    with pytest.raises(MessageSizeTooLargeError):
        await DeadLetters.drain([future])


async def test_a_value_over_the_request_limit_is_sent_truncated_with_its_length() -> None:
    producer = RecordingProducer(fail=False)
    letters = DeadLetters(cast(AIOKafkaProducer, producer), "events.dlq")
    huge = b"y" * (MAX_VALUE_BYTES + 10)
    await DeadLetters.drain(
        [letters.send(record(huge), REJECTION), letters.send(record(b"small"), REJECTION)]
    )
    first, second = producer.sent
    assert first["value"] == huge[:MAX_VALUE_BYTES]
    assert dict(first["headers"])[HEADER_TRUNCATED] == str(len(huge)).encode()
    assert second["value"] == b"small"
    assert HEADER_TRUNCATED not in dict(second["headers"])
