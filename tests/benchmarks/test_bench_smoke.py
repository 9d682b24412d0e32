"""Smoke test of `tally bench` itself: a small run of real Tally workers,
their values checked against the reference, and a report that has every row.

Not a timing assertion: the numbers are printed by `tally bench`, and
docs/performance.md holds a full run.
"""

from __future__ import annotations

import pytest

from tally.bench import e2e

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.timeout(600)]

SCENARIOS = ["10 metrics, dedup on", "UNIQUE-heavy (8 metrics), dedup on"]


async def test_bench_runs_checks_exactness_and_reports(
    kafka_bootstrap: str, database_url: str
) -> None:
    messages: list[str] = []
    results = await e2e.bench(
        kafka_bootstrap,
        database_url,
        count=5_000,
        seed=101,
        chosen=SCENARIOS,
        peers=False,
        check=True,
        check_share=1.0,
        say=messages.append,
    )
    assert [r.name for r in results] == [f"Tally: {name}" for name in SCENARIOS]
    # check_exact raises on any difference; these lines say it compared rollups.
    exact = [m for m in messages if m.strip().startswith("exact:")]
    assert len(exact) == len(SCENARIOS)
    assert all(int(m.split()[1].replace(",", "")) > 1000 for m in exact), exact
    for result in results:
        assert result.events == 5_000
        assert result.rows > 0
        assert result.cpu_seconds > 0
        assert result.peak_rss_bytes > 0
    table = e2e.report(results)
    assert all(f"| Tally: {name} |" in table for name in SCENARIOS)
