"""Smoke test of `tally bench`'s peers: each one's results equal the reference.

20,000 synthetic events over three UTC days, in no time order, on a fresh
four-partition topic keyed by customerId; each peer runs as it does in the
bench (its own child process, consumer group and database).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tally.bench.peers import (
    PEER_JOB_METRICS,
    RunResult,
    run_ceiling,
    run_quixstreams,
    run_sql_route,
)
from tally.synthetic import Workload, encoded
from tests import reference
from tests.conftest import MakeTopic
from tests.integration.support import produce

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.timeout(600)]

EVENTS = 20_000
WORKLOAD = Workload(seed=23, end=1_795_000_000.0, span_seconds=3 * 86400)


def expected(values: list[bytes]) -> dict[tuple[str, str], tuple[int, int]]:
    """(customer, UTC day) -> (api_call count, bytes sum), from the reference."""
    found: dict[tuple[str, str], list[int]] = {}
    for (uid, customer, _, _, day), (value, _) in reference.reference_values(
        list(PEER_JOB_METRICS), values
    ).items():
        found.setdefault((customer, day.date().isoformat()), [0, 0])[
            0 if uid == "bench_calls" else 1
        ] = int(value)
    return {key: (calls, total) for key, (calls, total) in found.items()}


def check(result: RunResult) -> None:
    assert result.events == EVENTS
    assert result.seconds > 0
    assert result.cpu_seconds > 0
    assert result.peak_rss_bytes > 10 * 2**20


async def loaded(make_topic: MakeTopic, bootstrap: str) -> tuple[str, list[bytes]]:
    topic = await make_topic(4)
    messages = encoded(WORKLOAD, EVENTS)
    await produce(bootstrap, topic, messages)
    return topic, [value for _, value in messages]


async def test_ceiling_reads_every_event(make_topic: MakeTopic, kafka_bootstrap: str) -> None:
    topic, _ = await loaded(make_topic, kafka_bootstrap)
    result = await asyncio.to_thread(run_ceiling, kafka_bootstrap, topic, EVENTS)
    check(result)
    assert result.results is None
    assert result.rows == 0


@pytest.mark.parametrize(
    ("runner", "detail"),
    [
        pytest.param(run_quixstreams, "late_dropped", id="quixstreams"),
        pytest.param(run_sql_route, "load_seconds", id="sql-route"),
    ],
)
async def test_peer_equals_reference(
    make_topic: MakeTopic,
    kafka_bootstrap: str,
    database_url: str,
    runner: Callable[[str, str, int, str], RunResult],
    detail: str,
) -> None:
    topic, values = await loaded(make_topic, kafka_bootstrap)
    result = await asyncio.to_thread(runner, kafka_bootstrap, topic, EVENTS, database_url)
    check(result)
    want = expected(values)
    assert result.results == want
    assert result.rows == len(want)
    assert detail in result.detail
    assert result.detail.get("late_dropped", 0) == 0
