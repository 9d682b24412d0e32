"""Per-record isolation: a record that makes Tally's own code raise is
dead-lettered as internal_error and the batch goes on; applying an event is
all or nothing across the metrics it matches.

The faults are injected on purpose (a metric whose group key raises): the
hostile inputs that once raised are fixed at their causes, and the fuzzer
(test_fuzz.py) keeps them fixed; this is the safety net behind it.
"""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from tally.contracts.metric import parse_metric
from tally.core.aggregate import Deltas
from tally.core.events import DecodeLimits, UsageEvent, decode_event
from tally.core.metrics import CompiledMetric, MetricIndex
from tally.kafka.dead_letters import DeadLetters
from tally.telemetry.metrics import Telemetry
from tally.worker.intake import Intake
from tally.worker.partition import PartitionState
from tally.worker.retry import Clock

pytestmark = pytest.mark.asyncio(loop_scope="function")

STAMP = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))


def metric(uid: str, kind: str = "COUNT", **extra: Any) -> Any:
    return parse_metric(
        {"uid": uid, "name": uid, "eventType": "call", "aggregationType": kind, **extra}
    )


class Exploding(CompiledMetric):
    """A metric whose group key raises for the customer `boom` (a stand-in for a bug)."""

    def group_key(self, event: UsageEvent) -> str:
        if event.customer_id == "boom":
            raise ZeroDivisionError("division by zero")
        return super().group_key(event)


def index_with_a_bug() -> MetricIndex:
    index = MetricIndex([metric("count"), metric("sum", "SUM", aggregationProperty="n")])
    good = index.by_event_type["call"]
    broken = metric("grouped", metricType="GROUPED", groupingProperty="g")
    compiled = MetricIndex([broken]).by_uid["grouped"]
    exploding = object.__new__(Exploding)
    for name in CompiledMetric.__slots__:
        object.__setattr__(exploding, name, getattr(compiled, name))
    index.by_event_type["call"] = (*good, exploding)  # the bug strikes after two metrics
    return index


def raw(n: int, customer: str) -> bytes:
    return (
        f'{{"id":"e{n}","eventType":"call","customerId":"{customer}","timestamp":"{STAMP}",'
        f'"properties":{{"n":{n},"g":"x"}}}}'
    ).encode()


class RecordingLetters:
    def __init__(self) -> None:
        self.sent: list[tuple[ConsumerRecord, Any]] = []

    def send(self, record: ConsumerRecord, rejection: Any) -> Any:
        self.sent.append((record, rejection))

        class Letter:
            size = 10

        return Letter()


async def test_an_event_that_raises_changes_nothing_in_the_deltas() -> None:
    index = index_with_a_bug()
    deltas = Deltas()
    good = decode_event(raw(1, "acme"), time.time(), DecodeLimits())
    bad = decode_event(raw(2, "boom"), time.time(), DecodeLimits())
    deltas.add(cast(UsageEvent, good), index)
    before = (deltas.snapshot(), deltas.events, deltas.unmatched, dict(deltas.skipped))
    with pytest.raises(ZeroDivisionError):
        deltas.add(cast(UsageEvent, bad), index)
    assert (deltas.snapshot(), deltas.events, deltas.unmatched, dict(deltas.skipped)) == before


async def test_a_record_that_raises_is_dead_lettered_and_the_batch_goes_on() -> None:
    index = index_with_a_bug()
    deltas = Deltas()
    letters = RecordingLetters()
    intake = Intake(
        telemetry=Telemetry(CollectorRegistry()),
        limits=DecodeLimits(),
        clock=Clock(),
        deltas=lambda: deltas,
        index=lambda: index,
    )
    intake.dead_letters = cast(DeadLetters, letters)
    state = PartitionState(TopicPartition("events", 0), window_seconds=3600)
    state.loaded(-1)
    customers = ["acme", "boom", "acme", "boom", "zeta"]
    records = [
        ConsumerRecord("events", 0, n, 0, 0, None, raw(n, c), None, 0, 0, [])
        for n, c in enumerate(customers)
    ]
    intake.consume(state, records)
    assert deltas.events == 3  # the three good ones, whole
    assert [r.offset for r, _ in letters.sent] == [1, 3]
    assert {why.reason.value for _, why in letters.sent} == {"internal_error"}
    assert letters.sent[0][1].detail == "ZeroDivisionError: division by zero"
    assert state.rejected == {"internal_error": 2}
    assert state.next_offset == 5
    # The failed events' ids are not remembered: a replay after the fix counts.
    assert state.dedup is not None
    assert len(state.dedup.pending) == 3
