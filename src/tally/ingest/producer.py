"""The producer of events sent over HTTP: idempotent, acks=all, started on first use.

`send` answers, for each record, whether the broker acknowledged it: a record
is never reported as written before its acknowledgement. It is started on the
first request, not at start-up, so `tally api serve` keeps serving reads
while Kafka is away (POST /events then answers 503). After a failed send the
producer is closed and a new one made for the next request: aiokafka's
idempotent producer does not recover from a refused batch (later sends to the
partition fail with OutOfOrderSequenceNumber; see tally.kafka.clients).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from tally.config import Settings
from tally.kafka.clients import new_producer
from tally.telemetry.logs import Log

log = Log("tally.ingest")

ACK_TIMEOUT = 15.0
"""Seconds a request waits for the broker's acknowledgements, at most."""


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def make_producer(settings: Settings) -> AIOKafkaProducer:
    return producer_for(settings.kafka_bootstrap)


def producer_for(bootstrap: str) -> AIOKafkaProducer:
    """The ingest producer's settings; `tally bench ingest` produces directly with the same."""
    return new_producer(
        bootstrap,
        client_id="tally-ingest",
        idempotent=True,
        linger_ms=2,
        request_timeout_ms=10_000,
        max_request_size=2 * 1024 * 1024,
    )


class EventProducer:
    def __init__(
        self,
        topic: str,
        factory: Callable[[], AIOKafkaProducer],
        ack_timeout: float = ACK_TIMEOUT,
    ) -> None:
        self.topic = topic
        self._factory = factory
        self._ack_timeout = ack_timeout
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    @property
    def started(self) -> bool:
        return self._producer is not None

    async def _current(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = self._factory()
                try:
                    await asyncio.wait_for(producer.start(), self._ack_timeout)
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def ready(self) -> tuple[bool, str]:
        try:
            await self._current()
        except Exception as exc:
            return False, f"kafka: {type(exc).__name__}"
        return True, "ok"

    async def send(self, records: Sequence[Record]) -> list[str | None]:
        """For each record, None once the broker acknowledged it, else why not."""
        if not records:
            return []
        try:
            producer = await self._current()
        except Exception as exc:
            why = f"Kafka is unavailable ({type(exc).__name__}: {exc})"
            return [why] * len(records)
        pending: list[asyncio.Future[object] | str] = []
        try:
            # One deadline for handing over the whole request, not a wait_for (a task)
            # per record: a send that needs no metadata then returns without yielding,
            # so a request's records reach the accumulator together and leave in the
            # same batches, as a direct producer's do.
            async with asyncio.timeout(self._ack_timeout):
                for record in records:
                    sent = await producer.send(
                        self.topic, record.value, key=record.key, headers=record.headers
                    )
                    pending.append(sent)
        except Exception as exc:
            # Each later send would wait as long again (for metadata, say): stop here.
            why = f"{type(exc).__name__}: {exc}"
            pending.extend([why] * (len(records) - len(pending)))
        futures = [p for p in pending if not isinstance(p, str)]
        if futures:
            await asyncio.wait(futures, timeout=self._ack_timeout)
        outcome: list[str | None] = []
        for p in pending:
            if isinstance(p, str):
                outcome.append(p)
            elif not p.done():
                outcome.append(f"no acknowledgement within {self._ack_timeout:g} s")
            elif p.cancelled():
                outcome.append("cancelled before its acknowledgement")
            elif (error := p.exception()) is not None:
                outcome.append(f"{type(error).__name__}: {error}")
            else:
                outcome.append(None)
        if any(why is not None for why in outcome):
            await self._discard(producer)
        return outcome

    async def _discard(self, producer: AIOKafkaProducer) -> None:
        """Close a producer a send failed on; the next request makes a new one."""
        async with self._lock:
            replaced = self._producer is not producer
            if not replaced:
                self._producer = None
        if replaced:
            return
        log.warning("a send failed; the ingest producer is replaced")
        try:
            await asyncio.wait_for(producer.stop(), self._ack_timeout)
        except Exception as exc:
            log.warning("closing the ingest producer failed", reason=f"{type(exc).__name__}")

    async def close(self) -> None:
        async with self._lock:
            producer: AIOKafkaProducer | None = self._producer
            self._producer = None
        if producer is not None:
            await producer.stop()
