"""Smoke test of `tally bench backfill`: a tiny run of a live worker and a
backfill of the same definition over the same events.

Not a timing assertion: the bench itself fails unless the backfilled rows
equal the live ones; docs/backfill.md holds a run's figures.
"""

from __future__ import annotations

import pytest

from tally.bench import backfill

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.timeout(300)]


async def test_the_backfill_bench_reports_both_readers_with_equal_rows(
    kafka_bootstrap: str, database_url: str
) -> None:
    report = await backfill.run(kafka_bootstrap, database_url, 3_000, seed=3)
    assert "| live worker (`tally run`, from its first ready partition) |" in report
    assert "| `tally backfill --from-offsets earliest`" in report
    assert "rows equal the live one's, row for row" in report
    assert "done, 3,000 records counted" in report
