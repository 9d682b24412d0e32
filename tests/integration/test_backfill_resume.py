"""A resumed backfill checks only what it has left (issue 16 review, item 9):
retention is judged per unfinished partition, from where it resumes, so a
finished partition whose log start moved since does not refuse the resume."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiokafka.structs import TopicPartition

from tally.synthetic import Workload, encoded
from tests import reference
from tests.conftest import MakeTopic
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    diff,
    rows_by_reference_key,
    wait_caught_up,
    wait_until,
    worker_env,
)
from tests.integration.test_backfill import (
    LIVE,
    NEW,
    fetch,
    produce_at,
    wait_backfill_blocked,
    wait_started,
)
from tests.integration.test_offset_gaps import delete_before

pytestmark = pytest.mark.asyncio(loop_scope="function")

LOCK_VALUES = "LOCK TABLE tally.metric_values IN ACCESS EXCLUSIVE MODE"


async def progress(dsn: str, uid: str) -> dict[int, tuple[int, int]]:
    rows = await fetch(
        dsn,
        "SELECT partition, next_offset, end_offset FROM tally.backfill_partitions"
        " WHERE metric_uid = $1",
        uid,
    )
    return {r["partition"]: (r["next_offset"], r["end_offset"]) for r in rows}


async def test_a_resumed_backfill_ignores_retention_on_partitions_it_finished(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """Partition 0 is finished (the workers started the metric before its
    first record), partition 1 (6000 records before the start) is not, when
    the backfill is stopped; then retention deletes partition 0's first
    records. Resuming succeeds (it used to refuse: it checked the whole
    range again) and the values equal the reference over every event."""
    topic = await make_topic(2)
    await apply_metrics(fresh_database, LIVE, tmp_path)
    now = datetime.now(UTC).timestamp()
    messages = encoded(Workload(seed=23, end=now - 120, span_seconds=3600), 6010)
    base = int((now - 60) * 1000)
    before = [(1, base + i, k, v) for i, (k, v) in enumerate(messages[:6000])]
    after = [(0, base + 6000 + i, k, v) for i, (k, v) in enumerate(messages[6000:])]
    await produce_at(kafka_bootstrap, topic, before)
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-resume")
    worker = WorkerProcess("live", env, tmp_path).start()
    backfill = WorkerProcess(
        "backfill",
        {**env, "TALLY_FLUSH_INTERVAL": "0.05", "TALLY_MAX_BATCH": "50"},
        tmp_path,
        args=[
            NEW["uid"],
            "--from-offsets",
            "earliest",
            "--flush-records",
            "100",
            "--log-level",
            "DEBUG",
        ],
        command=["backfill"],
    )
    lock = await asyncpg.connect(fresh_database)
    try:
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        await apply_metrics(fresh_database, [*LIVE, NEW], tmp_path)
        # -1: partition 0 had no record yet, it is counted live from its first
        assert await wait_started(fresh_database, NEW["uid"], 2) == {0: -1, 1: 6000}
        await produce_at(kafka_bootstrap, topic, after)  # counted live
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        # Stopped in its first flush, which waits on the lock: partition 1 part way.
        async with lock.transaction():
            await lock.execute(LOCK_VALUES)
            backfill.start()
            await backfill.wait_log("backfill flush started")
            backfill.signal(signal.SIGTERM)
        assert backfill.process is not None
        assert await asyncio.to_thread(backfill.process.wait, 60) == 0
        assert "run the same command to resume" in backfill.current_log()
        left = await progress(fresh_database, NEW["uid"])
        assert left[0] == (0, 0)
        assert 0 < left[1][0] < left[1][1] == 6000
        await delete_before(kafka_bootstrap, TopicPartition(topic, 0), 5)
        backfill.start()
        assert await asyncio.to_thread(backfill.process.wait, 120) == 0, backfill.current_log()
        assert "done, " in backfill.current_log()
    finally:
        await lock.close()
        backfill.kill()
        assert worker.stop() == 0
    expected = reference.reference_rows([*LIVE, NEW], [value for _, value in messages], dedup=True)
    actual = await rows_by_reference_key(fresh_database, [*LIVE, NEW])
    assert actual == expected, diff(actual, expected)


async def test_a_partition_whose_replay_start_was_deleted_resumes_from_where_it_stopped(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """One partition, 20,000 records 0.6 s apart in log time (3.3 h), a
    dedup window of 1 s: the backfill is stopped past record 8,000, then
    retention deletes records 0..999. The whole partition is gone for
    `--from-offsets earliest`, but the ids it still needs (a window and an
    hour before record 8,000's time) are retained: the resume replays from
    there and finishes, exactly (it used to refuse)."""
    topic = await make_topic(1)
    await apply_metrics(fresh_database, LIVE, tmp_path)
    now = datetime.now(UTC).timestamp()
    start = now - 4 * 3600
    messages = encoded(Workload(seed=29, end=start, span_seconds=600), 20_000)
    records = [(0, int((start + 0.6 * i) * 1000), k, v) for i, (k, v) in enumerate(messages)]
    await produce_at(kafka_bootstrap, topic, records)
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-resume-moved", dedup_window="1s")
    worker = WorkerProcess("live", env, tmp_path).start()
    backfill = WorkerProcess(
        "backfill",
        {**env, "TALLY_FLUSH_INTERVAL": "0.05", "TALLY_MAX_BATCH": "50"},
        tmp_path,
        args=[NEW["uid"], "--from-offsets", "earliest", "--flush-records", "100"],
        command=["backfill"],
    )
    lock = await asyncpg.connect(fresh_database)
    try:
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        await apply_metrics(fresh_database, [*LIVE, NEW], tmp_path)
        assert await wait_started(fresh_database, NEW["uid"], 1) == {0: 20_000}
        backfill.start()

        async def past_8000() -> bool:
            return (await progress(fresh_database, NEW["uid"])).get(0, (0, 0))[0] >= 8000

        await wait_until(past_8000, 120, "the backfill to count 8,000 records", interval=0.01)
        async with lock.transaction():
            await lock.execute(LOCK_VALUES)
            await wait_backfill_blocked(fresh_database)
            backfill.signal(signal.SIGTERM)
        assert backfill.process is not None
        assert await asyncio.to_thread(backfill.process.wait, 60) == 0
        assert "run the same command to resume" in backfill.current_log()
        stopped = (await progress(fresh_database, NEW["uid"]))[0][0]
        assert 8000 <= stopped < 20_000
        await delete_before(kafka_bootstrap, TopicPartition(topic, 0), 1000)
        backfill.start()
        assert await asyncio.to_thread(backfill.process.wait, 120) == 0, backfill.current_log()
        assert "done, " in backfill.current_log()
    finally:
        await lock.close()
        backfill.kill()
        assert worker.stop() == 0
    expected = reference.reference_rows([*LIVE, NEW], [value for _, value in messages])
    actual = await rows_by_reference_key(fresh_database, [*LIVE, NEW])
    assert actual == expected, diff(actual, expected)


async def test_a_fallback_resume_drops_copies_whose_first_is_before_the_resume_point(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """Review finding 4: on the fallback path (retention passed the first
    replay start), an id whose first copy is before the resume point and
    whose second is after it is still a duplicate: the replay of a window
    and an hour before the resume point holds its first copy. One partition,
    records 0.6 s apart, a dedup window of 60 s, copies 30 s (50 records)
    after their first, all around where the backfill is stopped."""
    topic = await make_topic(1)
    await apply_metrics(fresh_database, LIVE, tmp_path)
    start = datetime.now(UTC).timestamp() - 4 * 3600
    messages = encoded(Workload(seed=31, end=start, span_seconds=600), 16_000)
    copied = set(range(7800, 12_000, 5))
    records: list[tuple[int | None, int, bytes | None, bytes | None]] = []
    first_at: dict[int, int] = {}  # original index -> offset of its first copy
    second_at: dict[int, int] = {}
    for i, (key, value) in enumerate(messages):
        first_at[i] = len(records)
        records.append((0, int((start + 0.6 * i) * 1000), key, value))
        if i - 50 in copied:
            second_at[i - 50] = len(records)
            k, v = messages[i - 50]
            records.append((0, int((start + 0.6 * i + 0.3) * 1000), k, v))
    await produce_at(kafka_bootstrap, topic, records)
    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-resume-dups", dedup_window="60s")
    worker = WorkerProcess("live", env, tmp_path).start()
    backfill = WorkerProcess(
        "backfill",
        {**env, "TALLY_FLUSH_INTERVAL": "0.05", "TALLY_MAX_BATCH": "50"},
        tmp_path,
        args=[NEW["uid"], "--from-offsets", "earliest", "--flush-records", "100"],
        command=["backfill"],
    )
    lock = await asyncpg.connect(fresh_database)
    try:
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
        await apply_metrics(fresh_database, [*LIVE, NEW], tmp_path)
        assert await wait_started(fresh_database, NEW["uid"], 1) == {0: len(records)}
        backfill.start()

        async def past_8000() -> bool:
            return (await progress(fresh_database, NEW["uid"])).get(0, (0, 0))[0] >= 8000

        await wait_until(past_8000, 120, "the backfill to count 8,000 records", interval=0.01)
        async with lock.transaction():
            await lock.execute(LOCK_VALUES)
            await wait_backfill_blocked(fresh_database)
            backfill.signal(signal.SIGTERM)
        assert backfill.process is not None
        assert await asyncio.to_thread(backfill.process.wait, 60) == 0
        stopped = (await progress(fresh_database, NEW["uid"]))[0][0]
        straddling = [i for i in copied if first_at[i] < stopped <= second_at[i]]
        assert straddling, stopped  # the case under test is there
        # The whole partition is no longer retained: the resume falls back.
        await delete_before(kafka_bootstrap, TopicPartition(topic, 0), 1000)
        backfill.start()
        assert await asyncio.to_thread(backfill.process.wait, 120) == 0, backfill.current_log()
        assert "done, " in backfill.current_log()
    finally:
        await lock.close()
        backfill.kill()
        assert worker.stop() == 0
    expected = reference.reference_rows([*LIVE, NEW], [value for _, value in messages])
    actual = await rows_by_reference_key(fresh_database, [*LIVE, NEW])
    assert actual == expected, diff(actual, expected)
    duplicates = await fetch(
        fresh_database,
        "SELECT sum(duplicates_total) AS d FROM tally.backfill_partitions WHERE metric_uid = $1",
        NEW["uid"],
    )
    assert duplicates[0]["d"] == len(copied)
