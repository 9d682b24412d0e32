"""Judging and producing the events of one request: the worker's decoder, then Kafka.

`Ingest` is built once per process (`build_ingest`) with its producer,
telemetry, decode limits and clock, and passed to the app.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from tally.config import Settings
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

    def judge(self, candidates: list[Candidate]) -> Judged:
        """Each candidate decoded as a worker decodes it; nothing is sent yet."""
        now = self.clock()
        judged = Judged([])
        for index, candidate in enumerate(candidates):
            if candidate.refused is not None:
                outcome: Any = candidate.refused
            else:
                outcome = decode_event(candidate.value, now, self.limits)
            if isinstance(outcome, Rejection):
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
            assert candidate.value is not None
            judged.statuses.append({"index": index, "id": outcome.id, "status": "accepted"})
            record = Record(outcome.customer_id.encode("utf-8"), candidate.value, candidate.headers)
            judged.records.append((index, record))
        return judged

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
    """The worker's limits (tally.worker.runner builds the same)."""
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
