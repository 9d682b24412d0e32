"""Crashes, duplicates and bad input: nothing lost, nothing counted twice."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import pytest

from tally.synthetic import Workload, encoded, events, metric_definitions, model_definitions
from tests import reference
from tests.conftest import MakeTopic
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    diff,
    metric_sum,
    produce,
    produce_paced,
    read_topic,
    rows_by_reference_key,
    values_by_reference_key,
    wait_caught_up,
    worker_env,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_sigkill_while_consuming_and_while_flushing(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    definitions = metric_definitions(10)
    topic = await make_topic(4)
    await apply_metrics(fresh_database, definitions, tmp_path)
    messages = encoded(
        Workload(seed=21, end=datetime.now(UTC).timestamp() - 60, span_seconds=86400), 60_000
    )
    env = worker_env(
        kafka_bootstrap,
        fresh_database,
        topic,
        "g-crash",
        flush_interval="0.2",
        session_timeout="3",
        log_level="DEBUG",
    )
    worker = WorkerProcess("crashy", env, tmp_path)
    rng = random.Random(5)
    producing = asyncio.create_task(produce_paced(kafka_bootstrap, topic, messages, seconds=25))
    kills = {"consuming": 0, "flushing": 0}
    lock = await asyncpg.connect(fresh_database)
    try:
        for round_ in range(6):
            worker.start()
            await worker.wait_log("partition ready", timeout=60)
            if round_ % 2:
                # Hold the values table so the next flush stops half-way through its
                # transaction (offsets, dedup ids and members already written), then kill.
                async with lock.transaction():
                    await lock.execute("LOCK TABLE tally.metric_values IN ACCESS EXCLUSIVE MODE")
                    await worker.wait_log("flush started", timeout=30)
                    await asyncio.sleep(0.3)
                    worker.kill()
                kills["flushing"] += 1
            else:
                await asyncio.sleep(rng.uniform(0.5, 2.5))
                worker.kill()
                kills["consuming"] += 1
        assert kills == {"consuming": 3, "flushing": 3}
        await producing
        worker.start()
        await wait_caught_up(kafka_bootstrap, fresh_database, topic, timeout=180)
    finally:
        await lock.close()
        producing.cancel()
        assert worker.stop() == 0
    assert worker.starts == 7
    expected = reference.reference_values(definitions, [value for _, value in messages])
    actual = await values_by_reference_key(fresh_database, definitions)
    assert actual == expected, diff(actual, expected)


async def test_new_kinds_exact_through_sigkills_row_for_row(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """MAX, MIN, AVG, LATEST (number and STRING), a 3-key grouping, nested
    paths and presence filters: 100,000 events over 4 partitions, the worker
    killed while consuming and while flushing; every column of every row equals
    the reference's (value, value_text, value_sum, event_count, latest_at,
    latest_id)."""
    definitions = model_definitions() + metric_definitions(4)
    kinds = {d["aggregationType"] for d in definitions}
    assert {"MAX", "MIN", "AVG", "LATEST", "COUNT", "SUM", "UNIQUE"} <= kinds
    assert any(d.get("valueType") == "STRING" for d in definitions)
    assert any(len(d.get("groupingProperties", [])) == 3 for d in definitions)
    assert any(d.get("presenceFilters") for d in definitions)
    assert any(str(d.get("aggregationProperty", "")).startswith("$") for d in definitions)
    topic = await make_topic(4)
    await apply_metrics(fresh_database, definitions, tmp_path)
    # Two days of a producer's ordered stream with a late tail: LATEST meets
    # events older than its winner, in later flushes and after restarts.
    messages = encoded(
        Workload(
            seed=41,
            end=datetime.now(UTC).timestamp() - 60,
            span_seconds=2 * 86400,
            ordered=True,
            late_share=0.1,
            late_seconds=6 * 3600,
        ),
        100_000,
    )
    env = worker_env(
        kafka_bootstrap,
        fresh_database,
        topic,
        "g-kinds",
        flush_interval="0.2",
        session_timeout="3",
        log_level="DEBUG",
    )
    worker = WorkerProcess("kinds", env, tmp_path)
    rng = random.Random(9)
    producing = asyncio.create_task(produce_paced(kafka_bootstrap, topic, messages, seconds=20))
    kills = {"consuming": 0, "flushing": 0}
    lock = await asyncpg.connect(fresh_database)
    try:
        for round_ in range(4):
            worker.start()
            await worker.wait_log("partition ready", timeout=60)
            if round_ % 2:
                async with lock.transaction():
                    await lock.execute("LOCK TABLE tally.metric_values IN ACCESS EXCLUSIVE MODE")
                    await worker.wait_log("flush started", timeout=30)
                    await asyncio.sleep(0.3)
                    worker.kill()
                kills["flushing"] += 1
            else:
                await asyncio.sleep(rng.uniform(0.5, 2.5))
                worker.kill()
                kills["consuming"] += 1
        assert kills == {"consuming": 2, "flushing": 2}
        await producing
        worker.start()
        await wait_caught_up(kafka_bootstrap, fresh_database, topic, timeout=240)
    finally:
        await lock.close()
        producing.cancel()
        assert worker.stop() == 0
    assert worker.starts == 5
    expected = reference.reference_rows(definitions, [value for _, value in messages])
    actual = await rows_by_reference_key(fresh_database, definitions)
    assert actual == expected, diff(actual, expected)
    stored_kinds = {uid for uid, *_ in actual}
    assert {d["uid"] for d in model_definitions()} <= stored_kinds


async def test_duplicates_resent_before_and_after_a_restart_count_once(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    definitions = metric_definitions(10)
    topic = await make_topic(4)
    await apply_metrics(fresh_database, definitions, tmp_path)
    now = datetime.now(UTC).timestamp()
    originals = [
        (d["customerId"].encode(), orjson.dumps(d))
        for d in events(Workload(seed=31, end=now - 60), 20_000)
    ]
    rng = random.Random(7)
    early = [originals[i] for i in rng.sample(range(10_000), 1_200)]  # re-sent in the same stream
    late = [originals[i] for i in rng.sample(range(20_000), 1_000)]  # re-sent after a restart
    first = originals[:10_000] + early
    rng.shuffle(first)
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-dups", session_timeout="3")
    worker = WorkerProcess("dedup", env, tmp_path).start()
    try:
        await produce(kafka_bootstrap, topic, first)
        await produce(kafka_bootstrap, topic, originals[10_000:])
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        assert worker.stop() == 0
        worker.start()
        await worker.wait_log("partition ready")
        await produce(kafka_bootstrap, topic, late)
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        samples = await worker.scrape()
    finally:
        assert worker.stop() == 0
    resent = len(early) + len(late)
    assert resent >= 0.1 * len(originals)
    everything = [value for _, value in first + originals[10_000:] + late]
    expected = reference.reference_values(definitions, everything, dedup=True)
    actual = await values_by_reference_key(fresh_database, definitions)
    assert actual == expected, diff(actual, expected)
    connection = await asyncpg.connect(fresh_database)
    try:
        durable = await connection.fetchval(
            "SELECT sum(duplicates_total) FROM tally.partition_offsets WHERE topic = $1", topic
        )
    finally:
        await connection.close()
    assert durable == resent
    assert metric_sum(samples, "tally_events_duplicate_total") == len(
        late
    )  # this process saw the late ones


def event(n: int, **overrides: object) -> dict[str, object]:
    document: dict[str, object] = {
        "id": f"good-{n}",
        "eventType": "api_call",
        "customerId": f"c{n % 7}",
        "timestamp": datetime.now(UTC).isoformat(),
        "properties": {
            "endpoint": "/v1/x",
            "status": 200,
            "bytes": n,
            "user": f"u{n}",
            "region": "eu",
        },
    }
    document.update(overrides)
    return {k: v for k, v in document.items() if v is not ...}


BAD: list[tuple[str, bytes | None]] = [
    ("empty", None),
    ("empty", b""),
    ("oversized", b'{"id":"' + b"x" * 70_000 + b'"}'),
    ("not_json", b"{not json"),
    ("not_json", b'{"id": "\xff"}'),
    ("not_an_object", b"[1,2,3]"),
    ("not_an_object", b'"text"'),
    ("missing_field", orjson.dumps(event(0, id=...))),
    ("missing_field", orjson.dumps(event(0, customerId=...))),
    ("missing_field", orjson.dumps(event(0, eventType=...))),
    ("invalid_field", orjson.dumps(event(0, id=""))),
    ("invalid_field", orjson.dumps(event(0, customerId=42))),
    ("invalid_field", orjson.dumps(event(0, properties=[1]))),
    ("invalid_field", orjson.dumps(event(0, properties="text"))),  # nested values count now
    ("invalid_field", orjson.dumps(event(0, customerAlias="someone-else"))),
    ("bad_timestamp", orjson.dumps(event(0, timestamp="2026-11-18 08:00"))),
    ("bad_timestamp", orjson.dumps(event(0, timestamp="2026-11-18T08:00:00"))),
    ("bad_timestamp", orjson.dumps(event(0, timestamp=1763452800))),
    ("too_late", orjson.dumps(event(0, timestamp="2020-01-01T00:00:00Z"))),
    ("too_far_in_future", orjson.dumps(event(0, timestamp="2099-01-01T00:00:00Z"))),
]


async def test_bad_input_goes_to_the_dead_letter_topic_and_good_input_is_counted(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    definitions = metric_definitions(4)
    topic = await make_topic(4)
    dlq = await make_topic(1)
    await apply_metrics(fresh_database, definitions, tmp_path)
    assert len({reason for reason, _ in BAD}) >= 9
    assert len(BAD) >= 12
    good = [orjson.dumps(event(n)) for n in range(3000)]
    # Valid events whose group value or UNIQUE member is too long for a key
    # (random text: PostgreSQL would compress a repetitive one into its index).
    rng = random.Random(5)
    for n, name in enumerate(("endpoint", "user", "region", "user")):
        long_text = "".join(rng.choices("abcdefghijklmnopqrstuvwxyzé", k=3000))
        document = event(3000 + n)
        document["properties"][name] = long_text  # type: ignore[index]
        good[700 * n + 1] = orjson.dumps(document)
    stream: list[tuple[bytes | None, bytes | None]] = []
    bad_ids = {}
    for n, value in enumerate(good):
        stream.append((b"k%d" % (n % 13), value))
        if n % 150 == 0:
            reason, raw = BAD[(n // 150) % len(BAD)]
            marker = f"bad-{n}".encode()
            bad_ids[marker] = reason
            stream.append((marker, raw))  # the key identifies the bad event in the DLQ
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-bad", dlq_topic=dlq)
    worker = WorkerProcess("bad-input", env, tmp_path).start()
    try:
        await produce(kafka_bootstrap, topic, stream, headers=[("trace", b"abc")])
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        assert worker.alive
        samples = await worker.scrape()
    finally:
        assert worker.stop() == 0
    letters = await read_topic(kafka_bootstrap, dlq, expected=len(bad_ids))
    found = {}
    for record in letters:
        headers = {k: v.decode() for k, v in record.headers}
        found[record.key] = headers["tally.reason"]
        assert headers["tally.source.topic"] == topic
        assert headers["trace"] == "abc"
        assert int(headers["tally.source.offset"]) >= 0
        assert headers["tally.detail"]
    assert found == bad_ids
    assert len({r for r in found.values()}) >= 9
    expected = reference.reference_values(definitions, good)
    actual = await values_by_reference_key(fresh_database, definitions)
    assert actual == expected, diff(actual, expected)
    assert metric_sum(samples, "tally_events_skipped_total", reason="value_too_long") == 4
    for reason in set(bad_ids.values()):
        assert metric_sum(samples, "tally_events_dead_lettered_total", reason=reason) == sum(
            1 for r in bad_ids.values() if r == reason
        )
