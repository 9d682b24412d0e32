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
from typing import Any

import orjson

from tally.contracts.metric import parse_metric
from tally.core.engine import Deltas, aggregate, new_core
from tally.core.events import DecodeLimits
from tally.core.metrics import MetricIndex
from tally.synthetic import Workload, encoded, metric_definitions, model_definitions


@dataclass(frozen=True, slots=True)
class CoreResult:
    name: str
    events_per_second: float
    ratio_to_baseline: float
    rollups: int


BATCH = 5000  # records per fetch, as the worker's max_batch
METRIC_COUNTS = (1, 10)


def _runner(
    values: list[bytes], definitions: list[dict[str, Any]], now: float
) -> Callable[[], int]:
    core = new_core(MetricIndex([parse_metric(d) for d in definitions]))
    limits = DecodeLimits().native()
    batches = [list(values[i : i + BATCH]) for i in range(0, len(values), BATCH)]

    def run() -> int:
        deltas = Deltas(core)
        for chunk in batches:
            batch = core.decode(chunk, now, limits)
            core.apply(deltas, batch, bytes(len(batch)))
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
    events: int = 200_000, rounds: int = 5, metric_counts: tuple[int, ...] = METRIC_COUNTS
) -> list[CoreResult]:
    now = datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp()
    workload = Workload(seed=7, end=now - 60)
    values = [value for _, value in encoded(workload, events)]
    variants: dict[str, Callable[[], int]] = {"orjson.loads only (baseline)": _baseline(values)}
    for count in metric_counts:
        variants[f"decode + aggregate, {count} metric{'s' if count > 1 else ''}"] = _runner(
            values, metric_definitions(count), now
        )
    # The metering model's kinds (MAX, MIN, AVG, LATEST, paths, several keys).
    variants["decode + aggregate, 10 model metrics"] = _runner(values, model_definitions(), now)
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


def main(
    events: int = 200_000, rounds: int = 5, metric_counts: tuple[int, ...] = METRIC_COUNTS
) -> None:
    results = run_core_bench(events, rounds, metric_counts)
    print(f"core micro-benchmark: {events} synthetic events, best of {rounds} interleaved rounds")
    print(f"{'variant':<36} {'events/s':>12} {'x baseline':>11} {'rollups':>8}")
    for r in results:
        print(
            f"{r.name:<36} {r.events_per_second:>12,.0f} {r.ratio_to_baseline:>11.3f} {r.rollups:>8}"
        )


def rollup_memory(events: int = 100_000) -> dict[str, float]:
    """Bytes of heap per pending rollup, by kind, as the native core counts
    them (its tables' capacity, interned strings and member sets).

    Each kind is measured alone: one metric of that kind over the synthetic
    workload, bytes held over the rollups held (over members for UNIQUE).
    """
    now = datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp()
    values = [
        value for _, value in encoded(Workload(seed=9, end=now - 60, span_seconds=86400), events)
    ]
    base: dict[str, object] = {"uid": "m", "name": "m", "eventType": "api_call"}
    kinds: dict[str, dict[str, object]] = {
        "COUNT": {
            **base,
            "aggregationType": "COUNT",
            "metricType": "GROUPED",
            "groupingProperty": "endpoint",
            "timeUnits": ["hour"],
        },
        "SUM": {
            **base,
            "aggregationType": "SUM",
            "aggregationProperty": "bytes",
            "metricType": "GROUPED",
            "groupingProperty": "endpoint",
            "timeUnits": ["hour"],
        },
        "MAX": {
            **base,
            "aggregationType": "MAX",
            "aggregationProperty": "bytes",
            "metricType": "GROUPED",
            "groupingProperty": "endpoint",
            "timeUnits": ["hour"],
        },
        "AVG": {
            **base,
            "aggregationType": "AVG",
            "aggregationProperty": "bytes",
            "metricType": "GROUPED",
            "groupingProperty": "endpoint",
            "timeUnits": ["hour"],
        },
        "LATEST (number)": {
            **base,
            "aggregationType": "LATEST",
            "aggregationProperty": "bytes",
            "metricType": "GROUPED",
            "groupingProperty": "endpoint",
            "timeUnits": ["hour"],
        },
        "LATEST (STRING)": {
            **base,
            "aggregationType": "LATEST",
            "valueType": "STRING",
            "aggregationProperty": "region",
            "metricType": "GROUPED",
            "groupingProperty": "endpoint",
            "timeUnits": ["hour"],
        },
        "UNIQUE (per member)": {
            **base,
            "aggregationType": "UNIQUE",
            "aggregationProperty": "user",
            "timeUnits": ["day"],
        },
    }
    result = {}
    for name, definition in kinds.items():
        core = new_core(MetricIndex([parse_metric(definition)]))
        deltas = aggregate(core, values, now, DecodeLimits())
        held = deltas.members if name.startswith("UNIQUE") else len(deltas)
        result[name] = deltas.allocated() / max(1, held)
    return result
