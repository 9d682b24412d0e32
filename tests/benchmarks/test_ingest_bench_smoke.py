"""Smoke test of `tally bench ingest`: a tiny run through a real `tally ingest
serve` and straight to Kafka, each topic read back.

Not a timing assertion: the figures are printed by the bench, and
docs/performance.md ("Ingest over HTTP") holds a full run.
"""

from __future__ import annotations

import pytest

from tally.bench import ingest

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.timeout(300)]

EVENTS = 1_050  # ten full batches and a short one


async def test_every_posted_event_reaches_the_topic_exactly_once(kafka_bootstrap: str) -> None:
    messages: list[str] = []
    report = await ingest.bench_ingest(
        kafka_bootstrap, EVENTS, seed=11, batch=100, connections=3, say=messages.append
    )
    sent = {
        document_id
        for batch in ingest.make_batches(EVENTS, 11, 100, 0.0)
        for document_id in ingest.ids_of(batch)
    }
    assert len(sent) == EVENTS
    for leg in ("http", "direct"):
        counts = report.topics[leg]
        assert set(counts) == sent, leg
        assert set(counts.values()) == {1}, leg
    assert report.http.events == report.direct.events == EVENTS
    assert len(report.http.latencies) == len(report.direct.latencies) == 11
    assert set(report.http.cpu_seconds) == {"bench (load generator)", "tally ingest serve"}
    assert set(report.direct.cpu_seconds) == {"bench (producer)"}

    table = ingest.markdown(report, EVENTS)
    assert "| HTTP: POST /events (tally ingest serve) |" in table
    assert "| direct: aiokafka producer |" in table
    assert "HTTP / direct:" in table
    assert table.count("each posted id exactly once: yes") == 2
    assert [m.split(":")[0] for m in messages if m.startswith("load average")] == [
        "load average at start",
        "load average at end",
    ]
