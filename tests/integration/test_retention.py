"""Retention against the real PostgreSQL: what it deletes, what it keeps, and
that it cannot hurt the flushes running beside it.

The state retention works on is written by the real flush transaction
(`tally.store.flush.write_flush`) from deltas the real core built out of
decoded events, each flushed "at its own time" (the event decoded with a
clock just after its timestamp), as a worker running then would have.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from tally.config import Settings
from tally.contracts.metric import parse_metric
from tally.core.dedup import BUCKET_SECONDS, DedupWindow, digest
from tally.core.engine import Deltas, aggregate, new_core
from tally.core.events import DecodeLimits
from tally.core.metrics import MetricIndex
from tally.store.flush import PartitionFlush, load_partition, write_flush
from tally.store.migrate import migrate
from tally.store.pool import connect, create_pool
from tally.store.retention import LOCK_KEY, Policy, run_pass
from tally.worker.retention import RetentionTask

pytestmark = pytest.mark.asyncio(loop_scope="function")

DAY = 86400
RETENTION = 125 * DAY
NO_PAUSE = 0.0

USERS = {  # UTC days and months
    "uid": "users",
    "name": "Users",
    "eventType": "login",
    "aggregationType": "UNIQUE",
    "aggregationProperty": "user",
    "timeUnits": ["day", "month"],
}
LA_USERS = {  # Los Angeles days: 2025-11-02 is 25 hours long (fall back)
    **USERS,
    "uid": "la_users",
    "timeUnits": ["day"],
    "timezone": "America/Los_Angeles",
}
INDEX = MetricIndex([parse_metric(USERS), parse_metric(LA_USERS)])


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def event(when: float, user: str, customer: str = "acme", n: int = 0) -> bytes:
    stamp = datetime.fromtimestamp(when, UTC).isoformat()
    return orjson.dumps(
        {
            "id": f"{customer}-{user}-{when}-{n}",
            "eventType": "login",
            "customerId": customer,
            "timestamp": stamp,
            "properties": {"user": user},
        }
    )


def deltas_of(values: Sequence[bytes], now: float, index: MetricIndex = INDEX) -> Deltas:
    core = new_core(index)
    batch = core.decode(list(values), now, DecodeLimits().native())
    assert batch.rejections == [], batch.rejections
    return aggregate(core, values, now, DecodeLimits())


async def flush_at(connection: Any, when: float, users: Sequence[str], **kw: Any) -> None:
    """Flush one event per user at `when`, decoded a minute later."""
    values = [event(when, user, **kw) for user in users]
    await write_flush(connection, [], deltas_of(values, when + 60), "test")


@pytest_asyncio.fixture
async def db(fresh_database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(fresh_database)
    try:
        await migrate(connection)
        yield connection
    finally:
        await connection.close()


async def members(connection: Any) -> set[tuple[str, str, str, str]]:
    rows = await connection.fetch(
        "SELECT metric_uid, time_unit, period_start, member FROM tally.unique_members"
    )
    return {
        (r["metric_uid"], r["time_unit"], r["period_start"].isoformat(), r["member"]) for r in rows
    }


async def values_table(connection: Any) -> list[tuple[Any, ...]]:
    rows = await connection.fetch("SELECT * FROM tally.metric_values ORDER BY 1, 2, 3, 4, 5")
    return [tuple(r) for r in rows]


async def count(connection: Any, table: str) -> int:
    return int(await connection.fetchval(f"SELECT count(*) FROM tally.{table}"))


def policy(**kw: Any) -> Policy:
    return Policy(**{"member_retention": RETENTION, "dedup_window": DAY, "pause": NO_PAUSE, **kw})


# -- UNIQUE members ---------------------------------------------------------------------


async def test_members_of_periods_that_ended_before_the_retention_go_and_newer_ones_stay(
    db: asyncpg.Connection,
) -> None:
    nov2, nov3 = at("2025-11-02T12:00:00+00:00"), at("2025-11-03T12:00:00+00:00")
    await flush_at(db, nov2, ["ann", "bob"])
    await flush_at(db, nov3, ["ann", "cid"])
    values = await values_table(db)
    everything = await members(db)
    assert len(everything) == 2 + 2 + 3 + 2 + 2  # users: 2 days and the month; la_users: 2 days

    # The Los Angeles day of Nov 2 ends at 2025-11-03T08:00Z (25 hours): one
    # second before that plus the retention, only the UTC day of Nov 2 has ended.
    la_end = at("2025-11-03T08:00:00+00:00")
    report = await run_pass(db, policy(), la_end + RETENTION - 1)
    assert report.ran
    assert report.complete
    assert report.members == {"day": 2}
    gone = {m for m in everything if m[0] == "users" and m[2] == "2025-11-02T00:00:00+00:00"}
    assert {m[3] for m in gone} == {"ann", "bob"}
    assert await members(db) == everything - gone

    # At exactly period_end + retention the Los Angeles day goes too ("ended by
    # the cutoff": period_end <= now - retention). Later periods stay.
    report = await run_pass(db, policy(), la_end + RETENTION)
    assert report.members == {"day": 2}
    kept = await members(db)
    assert kept == {m for m in everything - gone if m[2] != "2025-11-02T07:00:00+00:00"}
    assert {(m[0], m[1], m[2]) for m in kept} == {
        ("users", "day", "2025-11-03T00:00:00+00:00"),
        ("users", "month", "2025-11-01T00:00:00+00:00"),
        ("la_users", "day", "2025-11-03T08:00:00+00:00"),
    }
    # The values billing reads are untouched: same rows, same numbers.
    assert await values_table(db) == values


async def test_a_month_is_judged_by_its_end_not_its_start(db: asyncpg.Connection) -> None:
    await flush_at(db, at("2025-10-30T12:00:00+00:00"), ["ann"])
    month_end = at("2025-11-01T00:00:00+00:00")
    report = await run_pass(db, policy(), month_end + RETENTION - 1)
    assert report.members == {"day": 2}  # the UTC and the Los Angeles day of Oct 30
    assert {(m[0], m[1]) for m in await members(db)} == {("users", "month")}
    report = await run_pass(db, policy(), month_end + RETENTION)
    assert report.members == {"month": 1}
    assert await count(db, "unique_members") == 0
    assert await count(db, "metric_values") == 3


async def test_row_counts_before_and_after_a_pass(db: asyncpg.Connection) -> None:
    now = at("2026-06-01T00:00:00+00:00")
    old = [f"old-{n}" for n in range(300)]
    new = [f"new-{n}" for n in range(200)]
    await flush_at(db, now - 200 * DAY, old)
    await flush_at(db, now - 10 * DAY, new)
    before = await count(db, "unique_members")
    assert before == 3 * 300 + 3 * 200
    report = await run_pass(db, policy(), now)
    after = await count(db, "unique_members")
    assert report.members_total == before - after == 3 * 300
    assert after == 3 * 200


async def test_a_late_event_inside_max_lateness_never_meets_a_deleted_period(
    db: asyncpg.Connection,
) -> None:
    """With the shortest retention configuration allows (max_lateness + 1d),
    the oldest event a worker still accepts finds its period's members in
    place, so a member seen before is not counted again."""
    settings = Settings(member_retention="36d")  # type: ignore[arg-type]
    now = at("2026-06-01T00:00:00+00:00")
    oldest = now - settings.max_lateness  # accepted: the window's edge is inclusive
    await flush_at(db, oldest, ["ann"])
    report = await run_pass(db, Policy.from_settings(settings), now)
    assert report.members == {}
    # The same user again, in a late event decoded now: accepted, not new.
    late = deltas_of([event(oldest, "ann", n=1)], now)
    await write_flush(db, [], late, "test")
    day = await db.fetchval(
        "SELECT value FROM tally.metric_values WHERE metric_uid = 'users' AND time_unit = 'day'"
    )
    assert day == 1


async def test_why_configuration_refuses_a_retention_inside_the_lateness_window(
    db: asyncpg.Connection,
) -> None:
    """What the validation prevents: a pass (built here without it) deletes a
    period that still accepts events, and a late repeat of a member counts twice."""
    now = at("2026-06-01T00:00:00+00:00")
    edge = now - 35 * DAY
    await flush_at(db, edge, ["ann"])
    await run_pass(db, policy(member_retention=10 * DAY), now)
    await write_flush(db, [], deltas_of([event(edge, "ann", n=1)], now), "test")
    day = await db.fetchval(
        "SELECT value FROM tally.metric_values WHERE metric_uid = 'users' AND time_unit = 'day'"
    )
    assert day == 2  # one user, counted twice


async def test_members_without_a_value_row_are_never_deleted(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO tally.unique_members VALUES ('ghost', 'acme', 'day', '2020-01-01', '', 'x')"
    )
    report = await run_pass(db, policy(), at("2026-06-01T00:00:00+00:00"))
    assert report.members == {}
    assert await count(db, "unique_members") == 1


async def test_zero_retention_keeps_members(db: asyncpg.Connection) -> None:
    await flush_at(db, at("2020-01-01T00:00:00+00:00"), ["ann"])
    report = await run_pass(db, policy(member_retention=0), at("2026-06-01T00:00:00+00:00"))
    assert report.member_cutoff is None
    assert report.members == {}
    assert await count(db, "unique_members") == 3


# -- batches and the lock ---------------------------------------------------------------------


async def test_the_batch_size_bounds_every_delete(db: asyncpg.Connection) -> None:
    now = at("2026-06-01T00:00:00+00:00")
    users_only = MetricIndex([parse_metric({**USERS, "timeUnits": ["day"]})])
    values = [event(now - 200 * DAY, f"u{n}") for n in range(1000)]
    await write_flush(db, [], deltas_of(values, now - 200 * DAY + 60, users_only), "test")
    pauses = 0

    async def between() -> bool:
        nonlocal pauses
        pauses += 1
        return True

    report = await run_pass(db, policy(batch_size=100), now, between_batches=between)
    assert [(b.table, b.unit, b.rows) for b in report.batches] == [
        ("unique_members", "day", 100)
    ] * 10
    assert pauses == 10
    assert await count(db, "unique_members") == 0


async def test_a_pass_stopped_between_batches_resumes_at_the_next(db: asyncpg.Connection) -> None:
    now = at("2026-06-01T00:00:00+00:00")
    await flush_at(db, now - 200 * DAY, [f"u{n}" for n in range(250)])

    async def stop() -> bool:
        return False

    report = await run_pass(db, policy(batch_size=100), now, between_batches=stop)
    assert not report.complete
    assert report.members_total == 100
    report = await run_pass(db, policy(batch_size=100), now)  # the lock was released
    assert report.complete
    assert report.members_total == 3 * 250 - 100
    assert await count(db, "unique_members") == 0


async def test_a_second_pass_does_nothing_while_the_first_holds_the_lock(
    db: asyncpg.Connection, fresh_database: str
) -> None:
    now = at("2026-06-01T00:00:00+00:00")
    await flush_at(db, now - 200 * DAY, [f"u{n}" for n in range(300)])
    in_pause, resume = asyncio.Event(), asyncio.Event()

    async def held() -> bool:
        in_pause.set()
        await resume.wait()
        return True

    first = asyncio.create_task(run_pass(db, policy(batch_size=100), now, between_batches=held))
    await asyncio.wait_for(in_pause.wait(), timeout=30)
    other = await connect(fresh_database)
    pool = await create_pool(fresh_database, min_size=1, max_size=1)
    try:
        left = await count(other, "unique_members")
        second = await run_pass(other, policy(batch_size=100), now)
        assert not second.ran
        assert second.members == {}
        assert second.batches == []
        assert await count(other, "unique_members") == left
        # The worker's task counts the skip.
        registry = CollectorRegistry()
        task = RetentionTask(pool, Settings(retention_pause=0), registry)  # type: ignore[arg-type]
        assert not (await task.run_once()).ran
        assert registry.get_sample_value("tally_retention_passes_total", {"outcome": "skipped"})
        resume.set()
        report = await asyncio.wait_for(first, timeout=60)
        assert report.complete
        assert report.members_total == 3 * 300
        # Released: the next pass runs (and finds nothing left).
        assert (await run_pass(other, policy(), now)).ran
    finally:
        resume.set()
        await other.close()
        await pool.close()


# -- dedup segments -------------------------------------------------------------------------


async def flush_ids(
    connection: Any, window: DedupWindow, partition: int, when: float, ids: Sequence[str]
) -> None:
    """A real flush of a partition's new dedup ids at `when` (no rollups)."""
    offset, _rows = await load_partition(connection, "t", partition, None)
    window.check([digest(i) for i in ids])
    plan = window.plan_flush(when)
    flushed = PartitionFlush("t", partition, offset, offset + len(ids), plan)
    result = await write_flush(connection, [flushed], Deltas(new_core()), "test")
    window.commit(plan, *vars_of(result.dedup_rows[("t", partition)]))


def vars_of(rows: Any) -> tuple[int | None, int | None]:
    return rows.new_row, rows.merged_row


async def segments(connection: Any, partition: int) -> list[int]:
    rows = await connection.fetch(
        "SELECT bucket FROM tally.dedup_segments WHERE partition = $1 ORDER BY bucket", partition
    )
    return [r["bucket"] for r in rows]


async def test_dedup_segments_of_an_idle_partition_expire(db: asyncpg.Connection) -> None:
    now = at("2026-06-01T12:30:00+00:00")
    idle, busy = DedupWindow(DAY), DedupWindow(DAY)
    idle.load([], now - 3 * DAY)
    busy.load([], now - 3 * DAY)
    for hour in range(3):  # partition 0 got events three days ago, then none
        await flush_ids(db, idle, 0, now - 3 * DAY + hour * 3600, [f"old-{hour}"])
    await flush_ids(db, busy, 1, now - 2 * 3600, ["recent-a"])
    await flush_ids(db, busy, 1, now, ["recent-b"])
    # A flush expires only its own partition's hours: the idle one keeps its three.
    assert len(await segments(db, 0)) == 3
    report = await run_pass(db, policy(member_retention=0), now)
    assert report.segments == 3
    assert await segments(db, 0) == []
    hour = int(now // BUCKET_SECONDS)
    assert await segments(db, 1) == [hour - 2, hour]


async def test_segments_are_kept_an_hour_past_what_a_flush_keeps(db: asyncpg.Connection) -> None:
    now = at("2026-06-01T12:30:00+00:00")
    window = DedupWindow(DAY)
    window.load([], now - DAY - 2 * 3600)
    await flush_ids(db, window, 0, now - DAY - 2 * 3600, ["a"])  # bucket: window + 2 h ago
    await flush_ids(db, window, 0, now - DAY - 3600, ["b"])  # window + 1 h ago
    flush_expires_before = window.plan_flush(now).expire_before
    window.abort()
    cutoff = policy().segment_cutoff(now)
    assert cutoff == flush_expires_before - 1
    await run_pass(db, policy(member_retention=0), now)
    assert await segments(db, 0) == [flush_expires_before - 1]


async def test_a_live_owner_flushes_on_after_retention_deleted_rows_it_still_lists(
    db: asyncpg.Connection,
) -> None:
    """Retention deletes rows an owner still lists in DedupWindow.rows: its
    next flush deletes nothing there (harmless), and its window and the
    rows a new owner would load agree on every id."""
    now = at("2026-06-01T12:30:00+00:00")
    window = DedupWindow(DAY)
    first = now - DAY - 3 * 3600
    window.load([], first)
    await flush_ids(db, window, 0, first, ["expired-1"])
    await flush_ids(db, window, 0, first + 60, ["expired-2"])
    # Three hours ago: that hour was still inside the window; it is compacted.
    await flush_ids(db, window, 0, now - 3 * 3600, ["live-1"])
    await flush_ids(db, window, 0, now - 3 * 3600 + 100, ["live-2"])
    expired_bucket = int(first // BUCKET_SECONDS)
    assert expired_bucket in window.rows
    report = await run_pass(db, policy(member_retention=0), now)
    assert report.segments == 1  # the expired hour, compacted into one row
    assert expired_bucket in window.rows  # the owner has not flushed since
    # The owner's next flush: compacts the live hour, expires the old one.
    await flush_ids(db, window, 0, now, ["live-3"])
    assert expired_bucket not in window.rows
    reloaded = DedupWindow(DAY)
    _offset, rows = await load_partition(db, "t", 0, int((now - DAY) // BUCKET_SECONDS))
    reloaded.load(rows, now)
    ids = ["expired-1", "expired-2", "live-1", "live-2", "live-3", "never"]
    digests = [digest(i) for i in ids]
    assert reloaded.check(digests) == [False, False, True, True, True, False]
    assert window.check(digests)[:5] == [False, False, True, True, True]


async def test_an_owner_whose_clock_is_hours_behind_resurrects_nothing_for_long(
    db: asyncpg.Connection,
) -> None:
    """Past the grace hour (an owner clock 3 h behind), retention deletes an
    hour the owner still uses; its compaction then writes that hour again.
    The flush succeeds, the row holds exactly ids the owner still counts, and
    the next pass (or the owner's own expiry) deletes it; a new owner at the
    retention's clock never loads it."""
    now = at("2026-06-01T12:30:00+00:00")
    owner_now = now - 3 * 3600
    window = DedupWindow(DAY)
    hour = owner_now - DAY + 600  # inside the owner's window, not in retention's
    window.load([], hour)
    await flush_ids(db, window, 0, hour, ["a"])
    await flush_ids(db, window, 0, hour + 60, ["b"])
    bucket = int(hour // BUCKET_SECONDS)
    assert (await run_pass(db, policy(member_retention=0), now)).segments == 2
    await flush_ids(db, window, 0, owner_now, ["c"])  # compacts `bucket` into a new row
    assert bucket in await segments(db, 0)
    assert window.check([digest("a"), digest("b")]) == [True, True]
    _offset, rows = await load_partition(db, "t", 0, int((now - DAY) // BUCKET_SECONDS))
    assert bucket not in {r[1] for r in rows}
    assert (await run_pass(db, policy(member_retention=0), now)).segments == 1
    assert bucket not in await segments(db, 0)


async def test_a_pass_never_waits_on_a_row_a_flush_has_locked(
    db: asyncpg.Connection, fresh_database: str
) -> None:
    now = at("2026-06-01T12:30:00+00:00")
    window = DedupWindow(DAY)
    window.load([], now - 3 * DAY)
    for n in range(3):
        await flush_ids(db, window, 0, now - 3 * DAY + n * 3600, [f"id-{n}"])
    locked = await db.fetchval("SELECT min(segment_id) FROM tally.dedup_segments")
    flush = await connect(fresh_database)
    try:
        transaction = flush.transaction()
        await transaction.start()
        # What a flush's compaction or expiry does, left uncommitted.
        await flush.execute("DELETE FROM tally.dedup_segments WHERE segment_id = $1", locked)
        report = await asyncio.wait_for(run_pass(db, policy(member_retention=0), now), 30)
        assert report.complete
        assert report.segments == 2
        await transaction.rollback()
    finally:
        await flush.close()
    assert (await run_pass(db, policy(member_retention=0), now)).segments == 1
    assert await count(db, "dedup_segments") == 0


# -- the background task and the command -------------------------------------------------------


async def test_the_worker_task_runs_passes_until_stopped(fresh_database: str) -> None:
    now = at("2026-06-01T00:00:00+00:00")
    connection = await connect(fresh_database)
    pool = await create_pool(fresh_database, min_size=1, max_size=2)
    try:
        await migrate(connection)
        await flush_at(connection, now - 200 * DAY, [f"u{n}" for n in range(50)])
        registry = CollectorRegistry()
        settings = Settings(retention_interval=0.05, retention_pause=0)  # type: ignore[arg-type]
        task = RetentionTask(pool, settings, registry, wall=lambda: now, first_delay=0)
        stop = asyncio.Event()
        running = asyncio.create_task(task.run(stop))
        for _ in range(600):
            if (
                registry.get_sample_value("tally_retention_passes_total", {"outcome": "ok"}) or 0
            ) >= 2:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(running, timeout=30)
        assert await count(connection, "unique_members") == 0
        deleted = {"table": "unique_members"}
        assert registry.get_sample_value("tally_retention_rows_deleted_total", deleted) == 150
        assert (
            registry.get_sample_value("tally_retention_passes_total", {"outcome": "ok"}) or 0
        ) >= 2
    finally:
        await pool.close()
        await connection.close()


def tally(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tally", "retention", "run", *args],
        env={**os.environ, "TALLY_DATABASE_URL": dsn},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


async def test_the_command_counts_deletes_and_refuses_while_a_pass_runs(
    db: asyncpg.Connection, fresh_database: str
) -> None:
    old = datetime.now(UTC).timestamp() - 200 * DAY
    await flush_at(db, old, ["ann", "bob"])
    dry = tally("--dry-run", dsn=fresh_database)
    assert dry.returncode == 0, dry.stderr
    assert "would delete 6 (day 4, month 2)" in dry.stdout
    assert await count(db, "unique_members") == 6
    await db.fetchval("SELECT pg_advisory_lock($1)", LOCK_KEY)
    held = tally(dsn=fresh_database)
    assert held.returncode == 2
    assert "another process holds the retention lock" in held.stderr
    assert await count(db, "unique_members") == 6
    await db.fetchval("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    done = tally(dsn=fresh_database)
    assert done.returncode == 0, done.stderr
    assert "deleted 6 (day 4, month 2)" in done.stdout
    assert await count(db, "unique_members") == 0
    refused = tally("--member-retention", "20d", dsn=fresh_database)
    assert refused.returncode == 2
    assert "--member-retention: is 20d" in refused.stderr


async def test_a_stopping_worker_ends_its_pass_at_the_next_pause(fresh_database: str) -> None:
    now = at("2026-06-01T00:00:00+00:00")
    connection = await connect(fresh_database)
    pool = await create_pool(fresh_database, min_size=1, max_size=2)
    try:
        await migrate(connection)
        await flush_at(connection, now - 200 * DAY, [f"u{n}" for n in range(100)])
        settings = Settings(retention_batch_size=10, retention_pause=3600)  # type: ignore[arg-type]
        task = RetentionTask(pool, settings, wall=lambda: now, first_delay=0)
        stop = asyncio.Event()
        running = asyncio.create_task(task.run(stop))
        for _ in range(600):  # until the first batch is deleted and the pass pauses
            if await count(connection, "unique_members") < 300:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(running, timeout=30)  # not the hour's pause
        assert await count(connection, "unique_members") == 290
        report = await run_pass(connection, policy(), now)  # the lock is free again
        assert report.ran
        assert report.members_total == 290
    finally:
        await pool.close()
        await connection.close()


async def test_a_database_error_waits_for_the_next_pass(fresh_database: str) -> None:
    """No schema (an error from PostgreSQL): each pass fails, is counted, and
    the task keeps going until stopped."""
    pool = await create_pool(fresh_database, min_size=1, max_size=1)
    try:
        registry = CollectorRegistry()
        settings = Settings(retention_interval=0.05)  # type: ignore[arg-type]
        task = RetentionTask(pool, settings, registry, first_delay=0)
        stop = asyncio.Event()
        running = asyncio.create_task(task.run(stop))
        errors = {"outcome": "error"}
        for _ in range(600):
            if (registry.get_sample_value("tally_retention_passes_total", errors) or 0) >= 2:
                break
            await asyncio.sleep(0.05)
        assert not running.done()
        stop.set()
        await asyncio.wait_for(running, timeout=30)
        assert (registry.get_sample_value("tally_retention_passes_total", errors) or 0) >= 2
        assert registry.get_sample_value("tally_retention_passes_total", {"outcome": "ok"}) == 0
    finally:
        await pool.close()
