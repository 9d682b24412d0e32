"""Smoke test of `tally bench` itself: a small run of real Tally workers over
both workloads (backfill and live), their values checked against the
reference, a short freshness run, one worker against two, and a report that
has every section.

Not a timing assertion: the numbers are printed by `tally bench`, and
docs/performance.md holds a full run.
"""

from __future__ import annotations

import math
import os

import pytest

from tally.bench import e2e
from tally.bench.checks import full_report

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.timeout(600)]

SCENARIOS = ["10 metrics, dedup on", "UNIQUE-heavy (8 metrics), dedup on"]
EVENTS = 4_000


async def test_bench_runs_checks_exactness_and_reports(
    kafka_bootstrap: str, database_url: str
) -> None:
    messages: list[str] = []
    found = await e2e.bench(
        kafka_bootstrap,
        database_url,
        count=EVENTS,
        seed=101,
        chosen=SCENARIOS,
        peers=False,
        check=True,
        check_share=1.0,
        freshness_seconds=2.0,
        freshness_warmup=1.0,
        freshness_scenarios=SCENARIOS[:1],
        scale_out_workloads=["live"],
        say=messages.append,
    )
    assert list(found.runs) == ["backfill", "live"]
    for results in found.runs.values():
        assert [r.name for r in results] == [f"Tally: {name}" for name in SCENARIOS]
        for result in results:
            assert result.events == EVENTS
            assert result.rows > 0
            assert result.cpu_seconds > 0
            machine = result.detail["machine_cpu_seconds"]
            assert 0 < machine <= result.seconds * (os.cpu_count() or 1) * 1.05 + 0.1
            assert result.peak_rss_bytes > 0
    # check_exact raises on any difference; these lines say it compared rollups:
    # each scenario on each workload, and the 1- and 2-worker scale-out runs.
    exact = [m for m in messages if m.strip().startswith("exact:")]
    assert len(exact) == 2 * len(SCENARIOS) + 2, messages
    assert all(int(m.split()[1].replace(",", "")) > 500 for m in exact), exact
    # The live workload's hour periods are few: far fewer rollups than the backfill's.
    backfill, live = (found.runs[w][0] for w in ("backfill", "live"))
    assert live.rows < backfill.rows

    assert [(s.workload, s.scenario) for s in found.scale_out] == [("live", e2e.SCALE_OUT_SCENARIO)]
    for pair in found.scale_out:
        assert pair.one.detail["workers"] == 1
        assert pair.two.detail["workers"] == 2
        assert pair.two.events == EVENTS

    assert [f.scenario for f in found.freshness] == SCENARIOS[:1]
    for fresh in found.freshness:
        assert fresh.target_rate == pytest.approx(fresh.max_rate / 2)
        assert fresh.measured_events > 0
        assert 0 < fresh.p50 <= fresh.p99 <= fresh.max
        assert math.isfinite(fresh.max)

    table = full_report(found)
    for heading in (
        "Backfill workload",
        "Live workload",
        "side by side",
        "Freshness",
        "Scale-out",
        "cores busy",
    ):
        assert heading in table, heading
    assert all(f"| Tally: {name} |" in table for name in SCENARIOS)
