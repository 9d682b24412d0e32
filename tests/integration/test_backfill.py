"""Backfill (issue 16): where workers start a metric, and `tally backfill`
counting the records before that, exactly once, while the workers run."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition

from tally.synthetic import Workload, encoded, metric_definitions
from tests import reference
from tests.conftest import MakeTopic
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    diff,
    end_offsets,
    metric_sum,
    produce,
    produce_paced,
    read_topic,
    rows_by_reference_key,
    wait_caught_up,
    wait_until,
    worker_env,
)
from tests.integration.test_cli import tally
from tests.integration.test_offset_gaps import delete_before

pytestmark = pytest.mark.asyncio(loop_scope="function")

LIVE = metric_definitions(3)  # api_calls, api_calls_by_endpoint, api_bytes
NEW = metric_definitions(4)[3]  # active_api_users: UNIQUE by region
assert NEW["aggregationType"] == "UNIQUE"


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def starts_of(dsn: str, uid: str) -> dict[int, int]:
    rows = await fetch(
        dsn, "SELECT partition, start_offset FROM tally.metric_starts WHERE metric_uid = $1", uid
    )
    return {r["partition"]: r["start_offset"] for r in rows}


async def wait_started(dsn: str, uid: str, partitions: int) -> dict[int, int]:
    async def check() -> bool:
        return len(await starts_of(dsn, uid)) == partitions

    await wait_until(check, 60, f"the worker to store where it started {uid}")
    return await starts_of(dsn, uid)


async def backfill_done(dsn: str, uid: str) -> tuple[int, int]:
    """(records counted, records in the range) as stored."""
    rows = await fetch(
        dsn,
        "SELECT coalesce(sum(least(next_offset, end_offset) - from_offset), 0) AS done,"
        " coalesce(sum(end_offset - from_offset), 0) AS total"
        " FROM tally.backfill_partitions WHERE metric_uid = $1",
        uid,
    )
    return int(rows[0]["done"]), int(rows[0]["total"])


async def wait_backfill_blocked(dsn: str) -> None:
    """Until a backfill's flush is in its transaction and waits on a lock
    (the values table a test holds): a session holding tally.backfills' row
    lock (the flush's claim, its first statement) that waits for another."""

    async def blocked() -> bool:
        rows = await fetch(
            dsn,
            "SELECT 1 FROM pg_locks AS waiting JOIN pg_locks AS held USING (pid)"
            " WHERE NOT waiting.granted AND held.granted AND held.mode = 'RowExclusiveLock'"
            " AND held.relation = 'tally.backfills'::regclass",
        )
        return bool(rows)

    await wait_until(blocked, 60, "a backfill's flush to wait on a lock", interval=0.02)


async def produce_at(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[int | None, int, bytes | None, bytes | None]],
) -> None:
    """(partition or None for the key's, timestamp ms, key, value) each, in
    order, with that record timestamp: tests that cut by time do not depend
    on the producer's clock."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for partition, timestamp, key, value in records:
            await producer.send(
                topic, value=value, key=key, partition=partition, timestamp_ms=timestamp
            )
        await producer.flush()
    finally:
        await producer.stop()


def keyed(document: dict[str, Any]) -> tuple[bytes, bytes]:
    import orjson

    return document["customerId"].encode(), orjson.dumps(document)


async def test_a_metric_created_while_a_worker_runs_records_where_it_started(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """The start offset of each (metric, partition) is written by the flush
    that first includes the metric: an idle partition's is its end, and the
    live values of the metric are exactly the reference over the records
    from the start offset on."""
    topic = await make_topic(2)
    await apply_metrics(fresh_database, LIVE, tmp_path)
    worker = WorkerProcess(
        "starts", worker_env(kafka_bootstrap, fresh_database, topic, "g-starts"), tmp_path
    ).start()
    messages = encoded(Workload(seed=3, end=datetime.now(UTC).timestamp() - 60), 4000)
    try:
        await worker.wait_log("partition ready")
        await produce(kafka_bootstrap, topic, messages[:2000])
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        ends = await end_offsets(kafka_bootstrap, topic)
        await apply_metrics(fresh_database, [*LIVE, NEW], tmp_path)
        starts = await wait_started(fresh_database, NEW["uid"], 2)
        # Both partitions were idle when the worker started the metric.
        assert starts == ends
        await produce(kafka_bootstrap, topic, messages[2000:])
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
    finally:
        assert worker.stop() == 0
    # The metrics the worker knew when it loaded the partitions start at the
    # offset it loaded (-1: never flushed, from the beginning).
    for definition in LIVE:
        assert await starts_of(fresh_database, definition["uid"]) == {0: -1, 1: -1}
    records = await read_topic(kafka_bootstrap, topic, len(messages))
    live = [r.value for r in records if r.offset >= starts[r.partition]]
    assert 0 < len(live) < len(records)
    expected = reference.reference_rows([NEW], live)
    actual = {
        k: v
        for k, v in (await rows_by_reference_key(fresh_database, [*LIVE, NEW])).items()
        if k[0] == NEW["uid"]
    }
    assert actual == expected, diff(actual, expected)


async def test_backfill_from_the_start_while_workers_run_and_sigkilled_twice_is_exact(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """Stream events, create a metric halfway, backfill it from the start
    while the live worker keeps consuming, SIGKILL the backfill twice (in
    the middle of a flush each time): every row of every metric equals the
    reference over all events, with ids re-sent before the start offset
    (both copies inside the backfill's range) and across it (first copy
    before, the re-send after, counted by neither)."""
    topic = await make_topic(4)
    await apply_metrics(fresh_database, LIVE, tmp_path)
    now = datetime.now(UTC).timestamp()
    originals = encoded(Workload(seed=61, end=now - 120, span_seconds=6 * 3600), 24_000)
    rng = random.Random(16)
    early = [originals[i] for i in rng.sample(range(12_000), 900)]  # both copies before start
    across = [originals[i] for i in rng.sample(range(12_000), 900)]  # re-sent after start
    later = [originals[i] for i in rng.sample(range(12_000, 24_000), 300)]
    first = originals[:12_000] + early
    rng.shuffle(first)
    second = originals[12_000:] + across + later
    rng.shuffle(second)
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-backfill", session_timeout="3")
    worker = WorkerProcess("live", env, tmp_path).start()
    backfill_env = {**env, "TALLY_FLUSH_INTERVAL": "0.05", "TALLY_MAX_BATCH": "100"}
    backfill = WorkerProcess(
        "backfill",
        backfill_env,
        tmp_path,
        args=[
            NEW["uid"],
            "--from-offsets",
            "earliest",
            "--log-level",
            "DEBUG",
            "--flush-records",
            "100",
        ],
        command=["backfill"],
    )
    lock = await asyncpg.connect(fresh_database)
    producing: asyncio.Task[int] | None = None
    try:
        await worker.wait_log("partition ready")
        await produce(kafka_bootstrap, topic, first)
        await apply_metrics(fresh_database, [*LIVE, NEW], tmp_path)  # halfway
        await wait_started(fresh_database, NEW["uid"], 4)
        producing = asyncio.create_task(produce_paced(kafka_bootstrap, topic, second, seconds=20))
        # Kill 1: in the middle of its first flush (the values table held).
        async with lock.transaction():
            await lock.execute("LOCK TABLE tally.metric_values IN ACCESS EXCLUSIVE MODE")
            backfill.start()
            await backfill.wait_log("backfill flush started", timeout=60)
            await wait_backfill_blocked(fresh_database)
            backfill.kill()
        assert (await backfill_done(fresh_database, NEW["uid"]))[0] == 0
        # Kill 2: after some flushes committed, again in the middle of one.
        backfill.start()

        async def some_done() -> bool:
            return (await backfill_done(fresh_database, NEW["uid"]))[0] > 0

        await wait_until(some_done, 60, "the backfill to commit a flush", interval=0.02)
        samples = await backfill.scrape()
        async with lock.transaction():
            await lock.execute("LOCK TABLE tally.metric_values IN ACCESS EXCLUSIVE MODE")
            mark = len(backfill.current_log())
            await backfill.wait_log("backfill flush started", timeout=60, since=mark)
            await wait_backfill_blocked(fresh_database)
            done, total = await backfill_done(fresh_database, NEW["uid"])
            backfill.kill()
        assert 0 < done < total
        assert metric_sum(samples, "tally_backfill_records_total") == total
        assert 0 <= metric_sum(samples, "tally_backfill_records_done") <= total
        # The third run finishes, while the live worker still consumes.
        backfill.start()
        assert backfill.process is not None
        assert await asyncio.to_thread(backfill.process.wait, 120) == 0
        assert "done" in backfill.current_log()
        assert producing is not None
        await producing
        await wait_caught_up(kafka_bootstrap, fresh_database, topic, timeout=180)
    finally:
        await lock.close()
        if producing is not None:
            producing.cancel()
        backfill.kill()
        assert worker.stop() == 0
    assert backfill.starts == 3
    assert (await backfill_done(fresh_database, NEW["uid"])) == (total, total)
    everything = [value for _, value in first + second]
    expected = reference.reference_rows([*LIVE, NEW], everything, dedup=True)
    actual = await rows_by_reference_key(fresh_database, [*LIVE, NEW])
    assert {k[0] for k in actual} == {d["uid"] for d in [*LIVE, NEW]}
    assert actual == expected, diff(actual, expected)
    state = await fetch(
        fresh_database, "SELECT state FROM tally.backfills WHERE metric_uid = $1", NEW["uid"]
    )
    assert [r["state"] for r in state] == ["done"]
    # The stream really had both: ids with two copies inside the backfill's
    # range, and ids whose first copy is in it and a re-send after the start.
    starts = await starts_of(fresh_database, NEW["uid"])
    records = await read_topic(kafka_bootstrap, topic, len(everything))
    sides: dict[str, list[bool]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        key = json.loads(record.value)["id"]
        sides.setdefault(key, []).append(record.offset >= starts[record.partition])
    assert sum(1 for s in sides.values() if s[:2] == [False, False]) >= 100
    assert sum(1 for s in sides.values() if s[:2] == [False, True]) >= 100
    counted = await fetch(
        fresh_database,
        "SELECT sum(duplicates_total) AS d FROM tally.backfill_partitions WHERE metric_uid = $1",
        NEW["uid"],
    )
    assert counted[0]["d"] == sum(1 for s in sides.values() for later in s[1:] if not later)


async def test_backfill_refuses_when_retention_dropped_the_start_of_the_range(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """Records deleted from the log start: both --from (a time before them)
    and --from-offsets earliest refuse, say what was deleted and from when an
    exact backfill is still possible; nothing is stored."""
    topic = await make_topic(1)
    await apply_metrics(fresh_database, [*LIVE, NEW], tmp_path)
    messages = encoded(Workload(seed=5, end=datetime.now(UTC).timestamp() - 60), 200)
    await produce(kafka_bootstrap, topic, messages)
    await delete_before(kafka_bootstrap, TopicPartition(topic, 0), 50)
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-refuse")
    for args in (["--from", "2020-01-01T00:00:00Z"], ["--from-offsets", "earliest"]):
        refusal = WorkerProcess(
            "refused", env, tmp_path, args=[NEW["uid"], *args, "--wait", "1"], command=["backfill"]
        ).start()
        assert refusal.process is not None
        status = await asyncio.to_thread(refusal.process.wait, 60)
        output = refusal.current_log()
        assert status == 2, output
        assert "backfill refused: the retained log no longer reaches" in output
        assert f"{topic}[0]: retention deleted its records before offset 50" in output
        assert "still available: offset 50 on, first record at 20" in output
        assert "an exact backfill can start at --from 20" in output
    assert await fetch(fresh_database, "SELECT * FROM tally.backfills") == []


async def test_sigterm_stops_a_backfill_cleanly_and_cancel_marks_it(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """SIGTERM: the pending work is flushed, exit 0, progress kept. Cancel:
    status says cancelled, and running it again refuses."""
    topic = await make_topic(2)
    await apply_metrics(fresh_database, LIVE, tmp_path)
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-term")
    worker = WorkerProcess("live", env, tmp_path).start()
    messages = encoded(Workload(seed=8, end=datetime.now(UTC).timestamp() - 60), 20_000)
    backfill = WorkerProcess(
        "backfill",
        {**env, "TALLY_FLUSH_INTERVAL": "0.05", "TALLY_MAX_BATCH": "50"},
        tmp_path,
        args=[NEW["uid"], "--from-offsets", "earliest", "--flush-records", "100"],
        command=["backfill"],
    )
    try:
        await worker.wait_log("partition ready")
        await produce(kafka_bootstrap, topic, messages)
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        await apply_metrics(fresh_database, [*LIVE, NEW], tmp_path)
        await wait_started(fresh_database, NEW["uid"], 2)
        backfill.start()

        async def some_done() -> bool:
            return (await backfill_done(fresh_database, NEW["uid"]))[0] > 0

        await wait_until(some_done, 60, "the backfill to commit a flush", interval=0.02)
        backfill.signal(signal.SIGTERM)
        assert backfill.process is not None
        assert await asyncio.to_thread(backfill.process.wait, 60) == 0
        assert "run the same command to resume" in backfill.current_log()
        done, total = await backfill_done(fresh_database, NEW["uid"])
        assert 0 < done < total
        cancel = WorkerProcess(
            "cancel", env, tmp_path, args=["cancel", NEW["uid"]], command=["backfill"]
        ).start()
        assert cancel.process is not None
        assert await asyncio.to_thread(cancel.process.wait, 60) == 0
        again = WorkerProcess(
            "again",
            env,
            tmp_path,
            args=[NEW["uid"], "--from-offsets", "earliest"],
            command=["backfill"],
        ).start()
        assert again.process is not None
        assert await asyncio.to_thread(again.process.wait, 60) == 2
        assert "was cancelled" in again.current_log()
    finally:
        backfill.kill()
        assert worker.stop() == 0
    rows = await fetch(fresh_database, "SELECT state FROM tally.backfills")
    assert [r["state"] for r in rows] == ["cancelled"]
    env = {"TALLY_DATABASE_URL": fresh_database}
    status = tally("backfill", "status", NEW["uid"], "--format", "json", env=env)
    assert status.returncode == 0, status.stderr
    [shown] = json.loads(status.stdout)
    assert (shown["state"], shown["recordsDone"], shown["recordsTotal"]) == (
        "cancelled",
        done,
        total,
    )
    # Its values say they cover part of the range; the other metrics' do not.
    values = tally("values", "--format", "json", "--limit", "100000", env=env)
    assert values.returncode == 0, values.stderr
    marks = {(row["metric"], row["partial"]) for row in json.loads(values.stdout)}
    partial = {mark for uid, mark in marks if uid == NEW["uid"]}
    assert len(partial) == 1
    assert str(partial.pop()).startswith("PARTIAL: backfill from earliest cancelled at")
    assert {mark for uid, mark in marks if uid != NEW["uid"]} == {None}
    listed = tally("backfill", "status", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split("\n")[0].split() == [
        "METRIC",
        "STATE",
        "FROM",
        "RECORDS",
        "OF",
        "PERCENT",
        "UPDATED",
    ]
    assert f"{NEW['uid']}  cancelled  earliest  {done}" in " ".join(listed.stdout.split("\n")[1:])
    table = tally("values", "--metric", NEW["uid"], env=env)
    assert "PARTIAL: backfill from earliest cancelled" in table.stdout


async def test_backfill_refuses_a_metric_no_worker_has_started_or_that_does_not_exist(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    topic = await make_topic(2)
    external = {
        "uid": "total_ar",
        "name": "Total AR",
        "source": "EXTERNAL",
        "aggregationType": "SUM",
        "timeUnits": ["day"],
    }
    await apply_metrics(fresh_database, [NEW, external], tmp_path)
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-none")
    cases = {
        "total_ar": "metric 'total_ar' is EXTERNAL: its values come from the API",
        NEW["uid"]: f"the live workers have not started metric '{NEW['uid']}' on {topic}[0],"
        f" {topic}[1] within 1 s",
        "nothing": "no metric 'nothing': create it first",
    }
    for uid, said in cases.items():
        refusal = WorkerProcess(
            "refused",
            env,
            tmp_path,
            args=[uid, "--from-offsets", "earliest", "--wait", "1"],
            command=["backfill"],
        ).start()
        assert refusal.process is not None
        assert await asyncio.to_thread(refusal.process.wait, 60) == 2
        assert said in refusal.current_log()
    assert await fetch(fresh_database, "SELECT * FROM tally.backfills") == []


async def test_backfill_from_a_time_catches_ids_first_seen_before_it(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """--from TIME counts the records from the offset of TIME on; an id whose
    first copy came before TIME is a duplicate there, as it was for the live
    worker, because the backfill replays the ids of the window before TIME."""
    topic = await make_topic(2)
    await apply_metrics(fresh_database, LIVE, tmp_path)
    originals = encoded(Workload(seed=19, end=datetime.now(UTC).timestamp() - 60), 6000)
    rng = random.Random(3)
    before, after = originals[:3000], originals[3000:]
    resent = [originals[i] for i in rng.sample(range(3000), 400)]  # first copy before --from
    after = after + resent
    rng.shuffle(after)
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-from")
    worker = WorkerProcess("live", env, tmp_path).start()
    # Record timestamps are given: `before` from 30 s ago, 1 ms apart,
    # `after` from --from on, 10 s later (events are at most now - 60 s).
    base = int(datetime.now(UTC).timestamp() * 1000) - 30_000
    since = datetime.fromtimestamp((base + 10_000) / 1000, UTC)
    cut_ms = base + 10_000
    try:
        await worker.wait_log("partition ready")
        await produce_at(
            kafka_bootstrap, topic, [(None, base + i, k, v) for i, (k, v) in enumerate(before)]
        )
        await produce_at(
            kafka_bootstrap, topic, [(None, cut_ms + i, k, v) for i, (k, v) in enumerate(after)]
        )
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        await apply_metrics(fresh_database, [*LIVE, NEW], tmp_path)
        starts = await wait_started(fresh_database, NEW["uid"], 2)
        run = WorkerProcess(
            "backfill",
            env,
            tmp_path,
            args=[NEW["uid"], "--from", since.isoformat()],
            command=["backfill"],
        ).start()
        assert run.process is not None
        assert await asyncio.to_thread(run.process.wait, 120) == 0, run.current_log()
    finally:
        assert worker.stop() == 0
    records = sorted(
        await read_topic(kafka_bootstrap, topic, len(before) + len(after)),
        key=lambda r: (r.partition, r.offset),
    )
    # Independently: the first copy of each id, kept when it is at or after --from.
    cut = cut_ms
    seen: set[str] = set()
    counted = []
    for record in records:
        key = json.loads(record.value)["id"]
        if key in seen:
            continue
        seen.add(key)
        if record.timestamp >= cut:
            counted.append(record.value)
    assert all(starts[p] == end for p, end in (await end_offsets(kafka_bootstrap, topic)).items())
    expected = reference.reference_rows([NEW], counted)
    actual = {
        k: v
        for k, v in (await rows_by_reference_key(fresh_database, [*LIVE, NEW])).items()
        if k[0] == NEW["uid"]
    }
    assert actual == expected, diff(actual, expected)
    duplicates = await fetch(
        fresh_database,
        "SELECT sum(duplicates_total) AS d FROM tally.backfill_partitions WHERE metric_uid = $1",
        NEW["uid"],
    )
    assert duplicates[0]["d"] == len(resent)


async def test_backfill_from_the_epoch_counts_everything_once(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """--from 1970-01-01T00:00:00Z: the id replay would start a window and an
    hour before the epoch, a negative time Kafka refuses; it starts at the
    epoch, and the backfill counts every record once (review finding 1)."""
    topic = await make_topic(2)
    count = LIVE[0]  # api_calls: COUNT, created after the worker started
    await apply_metrics(fresh_database, LIVE[1:], tmp_path)
    originals = encoded(Workload(seed=23, end=datetime.now(UTC).timestamp() - 60), 800)
    resent = [originals[i] for i in random.Random(5).sample(range(800), 80)]
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-epoch")
    worker = WorkerProcess("live", env, tmp_path).start()
    try:
        await worker.wait_log("partition ready")
        await produce(kafka_bootstrap, topic, originals + resent)
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        await apply_metrics(fresh_database, LIVE, tmp_path)
        await wait_started(fresh_database, count["uid"], 2)
        run = WorkerProcess(
            "backfill",
            env,
            tmp_path,
            args=[count["uid"], "--from", "1970-01-01T00:00:00Z"],
            command=["backfill"],
        ).start()
        assert run.process is not None
        assert await asyncio.to_thread(run.process.wait, 120) == 0, run.current_log()
    finally:
        assert worker.stop() == 0
    assert await backfill_done(fresh_database, count["uid"]) == (880, 880)
    expected = reference.reference_rows([count], [v for _, v in originals])
    actual = {
        k: v
        for k, v in (await rows_by_reference_key(fresh_database, LIVE)).items()
        if k[0] == count["uid"]
    }
    assert actual == expected, diff(actual, expected)
    state = await fetch(
        fresh_database,
        "SELECT state, last_error FROM tally.backfills WHERE metric_uid = $1",
        count["uid"],
    )
    assert (state[0]["state"], state[0]["last_error"]) == ("done", None)
