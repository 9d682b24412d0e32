"""Judging and producing the events of one request: the worker's decoder, then Kafka.

`Ingest` is built once per process (`build_ingest`) with its producer,
telemetry, decode limits and clock, and passed to the app.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from tally.config import Settings
from tally.core.engine import new_core
from tally.core.events import DecodeLimits, Rejection, RejectReason, decode_event
from tally.ingest.producer import EventProducer, Record, make_producer
from tally.ingest.shapes import TALLY_TO_CE, Candidate
from tally.ingest.telemetry import IngestTelemetry

# The fields a decoder detail starts with ("customerId is missing"), as the event names them.
_FIELDS = (
    "id",
    "customerEventId",
    "eventType",
    "customerId",
    "customerAlias",
    "timestamp",
    "eventTimestamp",
    "properties",
    "eventProperties",
)
_CE_ATTRIBUTES = ("specversion", "id", "source", "type", "subject", "time", "data", "data_base64")
_TIME_REASONS = (RejectReason.BAD_TIMESTAMP, RejectReason.TOO_LATE, RejectReason.TOO_FAR_IN_FUTURE)


def field_of(why: Rejection, cloudevent: bool) -> str | None:
    """The event field a rejection is about, in the names the client used, if any."""
    word = why.detail.split(" ", 1)[0]
    if cloudevent and word in _CE_ATTRIBUTES and why.reason in _CE_REASONS:
        name: str | None = word
    elif word in _FIELDS:
        name = word
    elif why.reason in _TIME_REASONS:
        name = "timestamp"
    else:
        return None
    if cloudevent and name in TALLY_TO_CE:
        return TALLY_TO_CE[name]
    if cloudevent and name in ("customerEventId", "customerAlias", "eventTimestamp"):
        return None  # not a CloudEvent attribute: it came from nowhere the client wrote
    return name


_CE_REASONS = (RejectReason.MISSING_FIELD, RejectReason.INVALID_FIELD)


def _given(document: dict[str, Any], name: str, alias: str) -> Any:
    value = document.get(name)
    return document.get(alias) if value is None else value


@dataclass(slots=True)
class Judged:
    """The statuses of a request's events, and the records of the valid ones."""

    statuses: list[dict[str, Any]]
    records: list[tuple[int, Record]] = field(default_factory=list)

    @property
    def rejected(self) -> list[dict[str, Any]]:
        return [s for s in self.statuses if s["status"] == "rejected"]


class Ingest:
    def __init__(
        self,
        *,
        producer: EventProducer,
        telemetry: IngestTelemetry,
        limits: DecodeLimits,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.producer = producer
        self.telemetry = telemetry
        self.limits = limits
        self.clock = clock
        self._core = new_core()  # no metrics: it only decodes
        self._native_limits = limits.native()

    def judge(self, candidates: list[Candidate]) -> Judged:
        """Each candidate decoded as a worker decodes it; nothing is sent yet.

        The request's values go through the native core's batch decode in one
        call, the very call a worker makes for a batch of records, so the
        verdicts, reasons and details are the worker's. Of each accepted event
        only its id and customerId (the record's key) are read here:
        `_identity`, which falls back on the one-value decoder for any event
        orjson cannot read."""
        now = self.clock()
        values = [c.value for c in candidates if c.refused is None]
        batch = self._core.decode(values, now, self._native_limits)
        verdicts: dict[int, Rejection | None] = dict.fromkeys(batch.accepted)
        for at, reason, detail in batch.rejections:
            verdicts[at] = Rejection(RejectReason(reason), detail)
        judged = Judged([])
        decoded = 0
        for index, candidate in enumerate(candidates):
            outcome = candidate.refused
            if outcome is None:
                outcome = verdicts[decoded]
                decoded += 1
            if outcome is not None:
                judged.statuses.append(
                    {
                        "index": index,
                        "status": "rejected",
                        "reason": outcome.reason.value,
                        "field": field_of(outcome, candidate.cloudevent),
                        "detail": outcome.detail,
                    }
                )
                continue
            value = candidate.value
            assert value is not None
            event_id, customer_id = self._identity(candidate, now)
            judged.statuses.append({"index": index, "id": event_id, "status": "accepted"})
            record = Record(customer_id.encode("utf-8"), value, candidate.headers)
            judged.records.append((index, record))
        return judged

    def _identity(self, candidate: Candidate, now: float) -> tuple[str, str]:
        """(id, customerId) of an event the decoder accepted, as it reads them:
        the field, or its alias when the field is absent or null (an accepted
        event's field and alias agree), the last of repeated keys (the json
        module, orjson and the decoder all keep the last). Read from the array
        element as splitting parsed it, else with orjson; what neither reads as
        two strings of valid Unicode (orjson refuses an integer over 64 bits, the
        json module takes a lone surrogate) is read by the one-value decoder."""
        value = candidate.value
        assert value is not None
        document = candidate.parsed
        if document is None:
            try:
                document = orjson.loads(value)
            except orjson.JSONDecodeError:
                document = None
        if isinstance(document, dict):
            event_id = _given(document, "id", "customerEventId")
            customer_id = _given(document, "customerId", "customerAlias")
            if isinstance(event_id, str) and isinstance(customer_id, str):
                try:
                    event_id.encode("utf-8")
                    customer_id.encode("utf-8")
                except UnicodeEncodeError:
                    pass
                else:
                    return event_id, customer_id
        event = decode_event(value, now, self.limits)
        assert not isinstance(event, Rejection), "the batch decoder accepted it"
        return event.id, event.customer_id

    async def produce(self, judged: Judged) -> list[tuple[int, str]]:
        """Send the valid events; (index, why) of each one Kafka did not acknowledge."""
        outcome = await self.producer.send([record for _, record in judged.records])
        failed = [
            (index, why)
            for (index, _), why in zip(judged.records, outcome, strict=True)
            if why is not None
        ]
        self.telemetry.accepted.inc(len(outcome) - len(failed))
        if failed:
            self.telemetry.unacknowledged.inc(len(failed))
        return failed

    def count_rejected(self, judged: Judged) -> None:
        for status in judged.rejected:
            self.telemetry.rejected.labels(status["reason"]).inc()

    async def close(self) -> None:
        await self.producer.close()


def decode_limits(settings: Settings) -> DecodeLimits:
    """The worker's limits (tally.worker.build builds the same)."""
    return DecodeLimits(
        max_bytes=settings.max_event_bytes,
        max_lateness_seconds=settings.max_lateness,
        max_future_seconds=settings.max_future_skew,
    )


def build_ingest(
    settings: Settings,
    registry: CollectorRegistry,
    clock: Callable[[], float] = time.time,
    ack_timeout: float | None = None,
) -> Ingest:
    """The collaborators of POST /events, in one place: producer, telemetry, limits, clock."""
    producer = EventProducer(
        settings.topic[0],
        lambda: make_producer(settings),
        **({} if ack_timeout is None else {"ack_timeout": ack_timeout}),
    )
    return Ingest(
        producer=producer,
        telemetry=IngestTelemetry(registry),
        limits=decode_limits(settings),
        clock=clock,
    )
