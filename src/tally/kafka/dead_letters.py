"""The dead-letter topic: the original bytes and headers, plus the reason.

Sends are started at once and awaited by the flush that moves the offset
past them (`deliver`), so an event can never be both skipped and lost.
Starting a send never waits and never raises: the worker's consume step must
not yield to a rebalance callback half-way through a batch, and a send that
fails is retried by the flush that needs it.

No dead letter may block the flushes behind it:

- it always fits the producer's and the broker's default 1 MiB limits: the
  key, the original headers and the value are cut to fixed budgets, each cut
  marked by a header that gives what was there (`fit`);
- a send that fails for good (say the DLQ topic's own size limit is lower,
  or the worker may not write to it), or transiently `MAX_SEND_ATTEMPTS`
  times, is parked instead: written with its reason into
  `tally.parked_dead_letters`, in the flush transaction that moves the offset
  past it. A size error is first retried in a batch of its own, since the
  broker judges the producer's whole batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord, RecordMetadata

from tally.core.events import Rejection
from tally.errors import TallyError, is_transient

HEADER_REASON = "tally.reason"
HEADER_DETAIL = "tally.detail"
HEADER_TOPIC = "tally.source.topic"
HEADER_PARTITION = "tally.source.partition"
HEADER_OFFSET = "tally.source.offset"
HEADER_TIMESTAMP = "tally.source.timestamp"
HEADER_TRUNCATED = "tally.truncated"  # the value's original length
HEADER_KEY_TRUNCATED = "tally.key.truncated"  # the key's original length
HEADER_HEADERS_DROPPED = "tally.headers.dropped"  # original headers left out

# Budgets that keep key + headers + value well below 1 MiB, the producer's
# max_request_size and the broker's message.max.bytes by default. A larger
# value (a compressed message the broker took) could never be sent whole; its
# first bytes are, with its original length.
MAX_VALUE_BYTES = 512 * 1024
MAX_KEY_BYTES = 16 * 1024
MAX_HEADER_BYTES = 64 * 1024  # the original headers, names and values
MAX_DETAIL_BYTES = 1024
MAX_SEND_ATTEMPTS = 5


class DeadLetterNotDelivered(TallyError):
    """Some dead letters of a flush are not acknowledged yet; they were sent
    again, and the flush retries (nothing was written)."""

    retriable = True


class DeadLetter:
    """One rejected record on its way to the dead-letter topic."""

    __slots__ = ("alone", "attempts", "error", "future", "record", "rejection")

    def __init__(
        self,
        record: ConsumerRecord,
        rejection: Rejection,
        future: asyncio.Future[RecordMetadata],
    ) -> None:
        self.record = record
        self.rejection = rejection
        self.future = future
        self.attempts = 1
        self.alone = False  # sent again in a batch of its own after a size error
        self.error = ""  # why it was parked, once it is

    @property
    def size(self) -> int:
        """Bytes this letter holds in memory (its record's key and value)."""
        record = self.record
        return len(record.value or b"") + len(record.key or b"") + 200

    def parked_row(self) -> tuple[object, ...]:
        """This letter as a row of tally.parked_dead_letters (`store.flush`)."""
        record = self.record
        headers = [(name, value or b"") for name, value in record.headers or ()]
        return (
            record.topic,
            record.partition,
            record.offset,
            self.rejection.reason.value,
            self.rejection.detail,
            self.error,
            record.key,
            record.value,
            [name for name, _ in headers],
            [value for _, value in headers],
            record.timestamp,
        )


def fit(
    record: ConsumerRecord, rejection: Rejection
) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """The key, value and headers of a record's dead letter, within the budgets."""
    key = record.key
    ours = [
        (HEADER_REASON, rejection.reason.value.encode()),
        (HEADER_DETAIL, rejection.detail.encode("utf-8", "replace")[:MAX_DETAIL_BYTES]),
        (HEADER_TOPIC, record.topic.encode()),
        (HEADER_PARTITION, str(record.partition).encode()),
        (HEADER_OFFSET, str(record.offset).encode()),
        (HEADER_TIMESTAMP, str(record.timestamp).encode()),
    ]
    if key is not None and len(key) > MAX_KEY_BYTES:
        ours.append((HEADER_KEY_TRUNCATED, str(len(key)).encode()))
        key = key[:MAX_KEY_BYTES]
    value = record.value if record.value is not None else b""
    if len(value) > MAX_VALUE_BYTES:
        ours.append((HEADER_TRUNCATED, str(len(value)).encode()))
        value = value[:MAX_VALUE_BYTES]
    original: list[tuple[str, bytes]] = []
    used = dropped = 0
    for name, data in record.headers or ():
        if name.startswith("tally."):
            continue  # ours win: a record dead-lettered twice says why this time
        data = data if data is not None else b""
        used += len(name.encode("utf-8", "replace")) + len(data)
        if used > MAX_HEADER_BYTES:
            dropped += 1
            continue
        original.append((name, data))
    if dropped:
        ours.append((HEADER_HEADERS_DROPPED, str(dropped).encode()))
    return key, value, original + ours


class DeadLetters:
    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        # Cleared while one letter is sent in a batch of its own: other sends wait.
        self._open = asyncio.Event()
        self._open.set()

    def send(self, record: ConsumerRecord, rejection: Rejection) -> DeadLetter:
        """Start sending; the letter's future resolves when the broker has it,
        or holds the error."""
        return DeadLetter(record, rejection, self._start(record, rejection))

    def _start(
        self, record: ConsumerRecord, rejection: Rejection, *, alone: bool = False
    ) -> asyncio.Future[RecordMetadata]:
        task = asyncio.ensure_future(self._send(record, rejection, alone))
        # A batch dropped after a fence never awaits its sends: retrieve the error here.
        task.add_done_callback(_retrieve)
        return task

    async def _send(
        self, record: ConsumerRecord, rejection: Rejection, alone: bool
    ) -> RecordMetadata:
        if not alone:
            await self._open.wait()
        key, value, headers = fit(record, rejection)
        delivery = await self.producer.send(self.topic, value=value, key=key, headers=headers)
        return await delivery

    async def _send_alone(self, letter: DeadLetter) -> None:
        """Send `letter` in a producer batch that holds nothing else."""
        self._open.clear()
        try:
            await self.producer.flush()  # what is batched already goes first
            letter.future = self._start(letter.record, letter.rejection, alone=True)
            await asyncio.wait([letter.future])
        finally:
            self._open.set()

    async def deliver(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """Wait until every letter is acknowledged or parked; returns the parked.

        A letter that failed transiently and has attempts left is sent again
        and `DeadLetterNotDelivered` is raised: the flush retries later."""
        if not letters:
            return []
        await asyncio.wait([letter.future for letter in letters])
        parked: list[DeadLetter] = []
        resent = 0
        for letter in letters:
            error = _error(letter.future)
            if error is None:
                continue
            if isinstance(error, MessageSizeTooLargeError) and not letter.alone:
                # The limit is on the producer's batch: a small letter batched
                # with a big one is refused with it. Sent alone, it is judged alone.
                letter.alone = True
                letter.attempts += 1
                await self._send_alone(letter)
                error = _error(letter.future)
                if error is None:
                    continue
            if is_transient(error) and letter.attempts < MAX_SEND_ATTEMPTS:
                letter.attempts += 1
                letter.future = self._start(letter.record, letter.rejection)
                resent += 1
            else:
                letter.error = f"{type(error).__name__}: {error}"[:MAX_DETAIL_BYTES]
                parked.append(letter)
        if resent:
            raise DeadLetterNotDelivered(f"{resent} dead letters not acknowledged; sent again")
        return parked


def _error(future: asyncio.Future[RecordMetadata]) -> BaseException | None:
    return future.exception() if not future.cancelled() else asyncio.CancelledError()


def _retrieve(task: asyncio.Future[RecordMetadata]) -> None:
    if not task.cancelled():
        task.exception()
