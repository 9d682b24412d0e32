"""Dead letters: starting a send never waits or raises, every letter fits the
1 MiB limits, and no failing send is retried forever (no broker here: the real
DLQ round trips are in tests/integration)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import ConsumerRecord

from tally.core.events import Rejection, RejectReason
from tally.kafka.dead_letters import (
    HEADER_HEADERS_DROPPED,
    HEADER_KEY_TRUNCATED,
    HEADER_REASON,
    HEADER_TRUNCATED,
    MAX_HEADER_BYTES,
    MAX_KEY_BYTES,
    MAX_SEND_ATTEMPTS,
    MAX_VALUE_BYTES,
    DeadLetter,
    DeadLetterNotDelivered,
    DeadLetters,
    fit,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")


class RecordingProducer:
    """Fails the first `failures` sends with `error`, then acknowledges."""

    def __init__(self, error: Exception | None = None, failures: int = 10**9) -> None:
        self.error = error
        self.failures = failures
        self.sent: list[dict[str, Any]] = []

    async def flush(self) -> None:
        await asyncio.sleep(0)

    async def send(self, topic: str, **message: Any) -> asyncio.Future[str]:
        await asyncio.sleep(0)  # a real send may wait for buffer space or metadata
        if self.error is not None and self.failures > 0:
            self.failures -= 1
            raise self.error
        self.sent.append(message)
        delivered: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        delivered.set_result("ack")
        return delivered


def record(
    value: bytes | None, key: bytes | None = b"key", headers: list[Any] | None = None
) -> ConsumerRecord:
    size = len(value or b"")
    return ConsumerRecord("events", 3, 42, 0, 0, key, value, None, size, 3, headers or [])


REJECTION = Rejection(RejectReason.OVERSIZED, "too big")


def letters_of(producer: RecordingProducer) -> DeadLetters:
    return DeadLetters(cast(AIOKafkaProducer, producer), "events.dlq")


async def test_a_send_that_fails_is_a_failed_future_not_an_exception() -> None:
    letter = letters_of(RecordingProducer(MessageSizeTooLargeError())).send(
        record(b"x"), REJECTION
    )  # must not raise
    with pytest.raises(MessageSizeTooLargeError):
        await letter.future


async def test_a_value_over_the_request_limit_is_sent_truncated_with_its_length() -> None:
    producer = RecordingProducer()
    letters = letters_of(producer)
    huge = b"y" * (MAX_VALUE_BYTES + 10)
    assert (
        await letters.deliver(
            [letters.send(record(huge), REJECTION), letters.send(record(b"small"), REJECTION)]
        )
        == []
    )
    first, second = producer.sent
    assert first["value"] == huge[:MAX_VALUE_BYTES]
    assert dict(first["headers"])[HEADER_TRUNCATED] == str(len(huge)).encode()
    assert second["value"] == b"small"
    assert HEADER_TRUNCATED not in dict(second["headers"])


async def test_key_and_headers_are_cut_to_their_budgets_with_markers() -> None:
    key = b"k" * (MAX_KEY_BYTES * 3)
    headers = [(f"h{n}", b"v" * 10_000) for n in range(20)] + [("nil", None)]
    cut_key, value, cut_headers = fit(record(b"{}", key, headers), REJECTION)
    named = dict(cut_headers)
    assert cut_key == key[:MAX_KEY_BYTES]
    assert named[HEADER_KEY_TRUNCATED] == str(len(key)).encode()
    original = [(n, v) for n, v in cut_headers if not n.startswith("tally.")]
    assert sum(len(n) + len(v) for n, v in original) <= MAX_HEADER_BYTES
    assert original == [(n, v or b"") for n, v in headers[: len(original)]]
    assert named[HEADER_HEADERS_DROPPED] == str(len(headers) - len(original)).encode()
    assert named[HEADER_REASON] == b"oversized"
    total = len(cut_key) + len(value) + sum(len(n) + len(v) for n, v in cut_headers)
    assert total < 1024 * 1024


async def test_the_worst_record_still_fits_one_mebibyte() -> None:
    headers = [("x" * 1000, b"y" * 100_000) for _ in range(50)]
    detail = Rejection(RejectReason.INTERNAL_ERROR, "é" * 100_000)
    key, value, cut = fit(record(b"v" * 5_000_000, b"k" * 5_000_000, headers), detail)
    total = len(key or b"") + len(value) + sum(len(n.encode()) + len(v) for n, v in cut)
    assert total < 700 * 1024


async def test_a_records_own_tally_headers_do_not_shadow_the_reason() -> None:
    _, _, headers = fit(record(b"{}", headers=[(HEADER_REASON, b"forged")]), REJECTION)
    assert [v for n, v in headers if n == HEADER_REASON] == [b"oversized"]


async def test_a_permanent_send_error_parks_the_letter_at_once() -> None:
    letters = letters_of(RecordingProducer(TopicAuthorizationFailedError()))
    letter = letters.send(record(b"x"), REJECTION)
    parked = await letters.deliver([letter])
    assert parked == [letter]
    assert "TopicAuthorizationFailedError" in letter.error
    assert letter.attempts == 1


async def test_a_size_error_is_tried_once_alone_before_it_parks() -> None:
    # The broker refuses the producer's batch: a small letter batched with a big one.
    producer = RecordingProducer(MessageSizeTooLargeError(), failures=2)
    letters = letters_of(producer)
    small, big = letters.send(record(b"x"), REJECTION), letters.send(record(b"y"), REJECTION)
    producer.error = MessageSizeTooLargeError()
    assert await letters.deliver([small, big]) == []  # both fit once sent alone
    assert (small.attempts, big.attempts) == (2, 2)
    stubborn = letters_of(RecordingProducer(MessageSizeTooLargeError()))
    letter = stubborn.send(record(b"z"), REJECTION)
    assert await stubborn.deliver([letter]) == [letter]
    assert letter.attempts == 2


async def test_a_transient_send_error_is_retried_then_parked_after_the_last_attempt() -> None:
    letters = letters_of(RecordingProducer(KafkaConnectionError()))
    letter = letters.send(record(b"x"), REJECTION)
    for attempt in range(1, MAX_SEND_ATTEMPTS):
        with pytest.raises(DeadLetterNotDelivered):
            await letters.deliver([letter])
        assert letter.attempts == attempt + 1
    assert await letters.deliver([letter]) == [letter]
    assert "KafkaConnectionError" in letter.error


async def test_a_transient_send_error_that_clears_delivers_without_parking() -> None:
    producer = RecordingProducer(KafkaConnectionError(), failures=1)
    letters = letters_of(producer)
    letter = letters.send(record(b"x"), REJECTION)
    with pytest.raises(DeadLetterNotDelivered):
        await letters.deliver([letter])
    assert await letters.deliver([letter]) == []
    assert len(producer.sent) == 1


async def test_a_parked_row_keeps_the_whole_record() -> None:
    headers = [("a", b"1"), ("b", None)]
    letter_record = record(b"v" * (MAX_VALUE_BYTES * 2), b"k", headers)
    letter = DeadLetter(letter_record, REJECTION, asyncio.get_running_loop().create_future())
    letter.error = "MessageSizeTooLargeError: "
    row = letter.parked_row()
    assert row[:6] == ("events", 3, 42, "oversized", "too big", "MessageSizeTooLargeError: ")
    assert row[6] == b"k"
    assert row[7] == letter_record.value
    assert row[8] == ["a", "b"]
    assert row[9] == [b"1", b""]
