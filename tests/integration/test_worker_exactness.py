"""End to end: the values table equals an independent reference, row for row."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tally.synthetic import Workload, encoded, metric_definitions
from tests import reference
from tests.conftest import MakeTopic
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    diff,
    metric_sum,
    produce,
    values_by_reference_key,
    wait_caught_up,
    worker_env,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")


def coverage(definitions: list[dict[str, object]]) -> set[str]:
    seen = set()
    for d in definitions:
        seen.add(str(d["aggregationType"]))
        seen.add(str(d.get("metricType", "SIMPLE")))
        if d.get("propertyFilters"):
            seen.add("filters")
        if d.get("propertiesToNegate"):
            seen.add("negated filters")
        if d.get("caseSensitive") is False:
            seen.add("case-insensitive")
        seen.update(str(u) for u in d.get("timeUnits", []))  # type: ignore[attr-defined]
        seen.add(f"zone:{d.get('timezone', 'UTC')}")
    return seen


async def test_100k_events_over_4_partitions_match_the_reference(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    definitions = metric_definitions(10)
    covered = coverage(definitions)
    assert {
        "COUNT",
        "SUM",
        "UNIQUE",
        "SIMPLE",
        "GROUPED",
        "filters",
        "negated filters",
        "case-insensitive",
    } <= covered
    kinds = {(d["aggregationType"], d.get("metricType", "SIMPLE")) for d in definitions}
    # gb_stored became a MAX (af5f1bc); the reference computes MAX too.
    assert {(a, m) for a in ("COUNT", "SUM", "UNIQUE") for m in ("SIMPLE", "GROUPED")} <= kinds
    assert ("MAX", "SIMPLE") in kinds
    assert (
        len({c for c in covered if c in {"hour", "day", "week", "month", "quarter", "year"}}) >= 3
    )
    assert len({c for c in covered if c.startswith("zone:")}) >= 2
    topic = await make_topic(4)
    await apply_metrics(fresh_database, definitions, tmp_path)
    now = datetime.now(UTC).timestamp()
    # Three days of event time: periods of every unit, in every zone, cross boundaries.
    messages = encoded(Workload(seed=11, end=now - 60, span_seconds=3 * 86400), 100_000)
    worker = WorkerProcess(
        "w1", worker_env(kafka_bootstrap, fresh_database, topic, "g-exact"), tmp_path
    ).start()
    try:
        await produce(kafka_bootstrap, topic, messages)
        await wait_caught_up(kafka_bootstrap, fresh_database, topic, timeout=240)
        samples = await worker.scrape()
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    expected = reference.reference_values(definitions, [value for _, value in messages])
    actual = await values_by_reference_key(fresh_database, definitions)
    assert actual == expected, diff(actual, expected)
    assert len(actual) > 10_000
    assert metric_sum(samples, "tally_events_consumed_total") == 100_000
