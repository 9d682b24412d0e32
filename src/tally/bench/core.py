"""Micro-benchmark of the pure core: decode + aggregate, against orjson alone.

The baseline is `orjson.loads` over the same encoded events: what any Python
consumer pays just to read them. Variants run interleaved, several rounds,
and the best round of each is compared, so machine noise hits all alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from tally.contracts.metric import parse_metric
from tally.core.aggregate import Deltas
from tally.core.events import DecodeLimits, UsageEvent, decode_event
from tally.core.metrics import MetricIndex
from tally.synthetic import Workload, encoded, metric_definitions


@dataclass(frozen=True, slots=True)
class CoreResult:
    name: str
    events_per_second: float
    ratio_to_baseline: float
    rollups: int


def _runner(values: list[bytes], metrics: int, now: float) -> Callable[[], int]:
    index = MetricIndex([parse_metric(d) for d in metric_definitions(metrics)])
    limits = DecodeLimits()

    def run() -> int:
        deltas = Deltas()
        add = deltas.add
        for value in values:
            event = decode_event(value, now, limits)
            if type(event) is UsageEvent:
                add(event, index)
        return len(deltas)

    return run


def _baseline(values: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        loads = orjson.loads
        for value in values:
            loads(value)
        return 0

    return run


def run_core_bench(
    events: int = 200_000, rounds: int = 5, metric_counts: tuple[int, ...] = (1, 10)
) -> list[CoreResult]:
    now = datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp()
    workload = Workload(seed=7, end=now - 60)
    values = [value for _, value in encoded(workload, events)]
    variants: dict[str, Callable[[], int]] = {"orjson.loads only (baseline)": _baseline(values)}
    for count in metric_counts:
        variants[f"decode + aggregate, {count} metric{'s' if count > 1 else ''}"] = _runner(
            values, count, now
        )
    timings: dict[str, list[float]] = {name: [] for name in variants}
    rollups: dict[str, int] = {}
    for _ in range(rounds):
        for name, run in variants.items():
            started = time.perf_counter()
            rollups[name] = run()
            timings[name].append(time.perf_counter() - started)
    base = min(timings["orjson.loads only (baseline)"])
    results = []
    for name, seconds in timings.items():
        best = min(seconds)
        results.append(CoreResult(name, events / best, base / best, rollups[name]))
    return results


def main(events: int = 200_000, rounds: int = 5) -> None:
    results = run_core_bench(events, rounds)
    print(f"core micro-benchmark: {events} synthetic events, best of {rounds} interleaved rounds")
    print(f"{'variant':<36} {'events/s':>12} {'x baseline':>11} {'rollups':>8}")
    for r in results:
        print(
            f"{r.name:<36} {r.events_per_second:>12,.0f} {r.ratio_to_baseline:>11.3f} {r.rollups:>8}"
        )


def rollup_memory(events: int = 100_000) -> dict[str, float]:
    """Bytes of Python heap per pending rollup, by kind, measured with tracemalloc.

    Each kind is measured alone: one metric of that kind over the synthetic
    workload, heap after aggregation minus heap before, over the rollups held.
    """
    import tracemalloc

    now = datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp()
    values = [
        value for _, value in encoded(Workload(seed=9, end=now - 60, span_seconds=86400), events)
    ]
    limits = DecodeLimits()
    decoded = [decode_event(v, now, limits) for v in values]
    kinds = {
        "COUNT": {
            "uid": "m",
            "name": "m",
            "eventType": "api_call",
            "aggregationType": "COUNT",
            "metricType": "GROUPED",
            "groupingProperty": "endpoint",
            "timeUnits": ["hour"],
        },
        "SUM": {
            "uid": "m",
            "name": "m",
            "eventType": "api_call",
            "aggregationType": "SUM",
            "aggregationProperty": "bytes",
            "metricType": "GROUPED",
            "groupingProperty": "endpoint",
            "timeUnits": ["hour"],
        },
        "UNIQUE (per member)": {
            "uid": "m",
            "name": "m",
            "eventType": "api_call",
            "aggregationType": "UNIQUE",
            "aggregationProperty": "user",
            "timeUnits": ["day"],
        },
    }
    result = {}
    for name, definition in kinds.items():
        index = MetricIndex([parse_metric(definition)])
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        deltas = Deltas()
        for event in decoded:
            if type(event) is UsageEvent:
                deltas.add(event, index)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        held = len(deltas)
        if name.startswith("UNIQUE"):
            held = sum(len(acc[1]) for _, _, acc in deltas.rollups())
        result[name] = (after - before) / held
    return result
