"""Per-record isolation: a record that makes Tally's own code raise is
dead-lettered as internal_error and the batch goes on; applying an event is
all or nothing across the metrics it matches.

The faults are injected on purpose (a period lookup that raises for one hour): the
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
from tally.core.engine import Core, Deltas, aggregate
from tally.core.events import DecodeLimits
from tally.core.metrics import MetricIndex
from tally.core.periods import native_bounds
from tally.kafka.dead_letters import DeadLetters
from tally.telemetry.instruments import Telemetry
from tally.worker.intake import Intake
from tally.worker.partition import PartitionState
from tally.worker.retry import Clock

pytestmark = pytest.mark.asyncio(loop_scope="function")

NOW = time.time()
STAMP = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 60))
BOOM = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 7200))  # the bug's hour


def metric(uid: str, kind: str = "COUNT", **extra: Any) -> Any:
    return parse_metric(
        {"uid": uid, "name": uid, "eventType": "call", "aggregationType": kind, **extra}
    )


def core_with_a_bug() -> Core:
    """Three metrics; the third's zone lookup raises for events of BOOM's hour
    (a stand-in for a bug), after the first two have their operands."""
    boom = int(time.mktime(time.strptime(BOOM, "%Y-%m-%dT%H:%M:%SZ"))) - time.timezone

    def bounds(unit: str, zone: str, second: int) -> tuple[int, int]:
        if zone == "Asia/Kathmandu" and abs(second - boom) < 60:
            raise ZeroDivisionError("division by zero")
        return native_bounds(unit, zone, second)

    core = Core(bounds)
    core.set_metrics(
        MetricIndex(
            [
                metric("count"),
                metric("sum", "SUM", aggregationProperty="n"),
                metric(
                    "grouped", metricType="GROUPED", groupingProperty="g", timezone="Asia/Kathmandu"
                ),
            ]
        ).specs
    )
    return core


def raw(n: int, stamp: str) -> bytes:
    return (
        f'{{"id":"e{n}","eventType":"call","customerId":"c","timestamp":"{stamp}",'
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
    core = core_with_a_bug()
    deltas = aggregate(core, [raw(1, STAMP)], NOW, DecodeLimits())
    before = (deltas.snapshot(), deltas.events, deltas.unmatched, deltas.skipped, deltas.applied)
    batch = core.decode([raw(2, BOOM)], NOW, DecodeLimits().native())
    failed = core.apply(deltas, batch, bytes(1))
    assert [(i, "ZeroDivisionError" in detail) for i, detail in failed] == [(0, True)]
    after = (deltas.snapshot(), deltas.events, deltas.unmatched, deltas.skipped, deltas.applied)
    assert after == before


async def test_a_record_that_raises_is_dead_lettered_and_the_batch_goes_on() -> None:
    core = core_with_a_bug()
    deltas = Deltas(core)
    letters = RecordingLetters()
    intake = Intake(
        core=core,
        telemetry=Telemetry(CollectorRegistry()),
        limits=DecodeLimits(),
        clock=Clock(),
        deltas=lambda: deltas,
        dead_letters=cast(DeadLetters, letters),
    )
    state = PartitionState(TopicPartition("events", 0), window_seconds=3600)
    state.loaded(-1)
    stamps = [STAMP, BOOM, STAMP, BOOM, STAMP]
    records = [
        ConsumerRecord("events", 0, n, 0, 0, None, raw(n, s), None, 0, 0, [])
        for n, s in enumerate(stamps)
    ]
    intake.consume(state, records)
    assert deltas.events == 3  # the three good ones, whole
    assert [r.offset for r, _ in letters.sent] == [1, 3]
    assert {why.reason.value for _, why in letters.sent} == {"internal_error"}
    assert "ZeroDivisionError: division by zero" in letters.sent[0][1].detail
    assert state.rejected == {"internal_error": 2}
    assert state.next_offset == 5
    # The failed events' ids are not remembered: a replay after the fix counts.
    assert state.dedup is not None
    assert len(state.dedup.pending) == 3
