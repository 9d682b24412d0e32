"""Workers notice every committed definition change, whatever order writers commit in.

A sequence is not transactional: with `max(revision)` polling, a change that
drew a lower number but committed after a poll that saw a higher one was
never seen. These tests interleave two writers on two real connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from tally.contracts.metric import parse_metric
from tally.core.metrics import MetricIndex
from tally.store.definitions import (
    apply_definitions,
    delete_metric,
    find_metric,
    revision,
    update_metric,
)
from tally.store.migrate import migrate
from tally.store.pool import connect, create_pool
from tally.worker.definitions import DefinitionWatcher

pytestmark = pytest.mark.asyncio(loop_scope="function")

A: dict[str, Any] = {
    "uid": "metric_a",
    "name": "A",
    "eventType": "call",
    "aggregationType": "COUNT",
    "deletedAt": "2024-01-01T00:00:00Z",
}
B: dict[str, Any] = {
    "uid": "metric_b",
    "name": "B",
    "eventType": "call",
    "aggregationType": "COUNT",
}
SERVER_FIELDS = ("id", "createdAt", "updatedAt")


@pytest_asyncio.fixture
async def pool(fresh_database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(fresh_database, min_size=1, max_size=4)
    try:
        async with pool.acquire() as connection:
            await migrate(connection)
            await apply_definitions(connection, [parse_metric(A), parse_metric(B)])
        yield pool
    finally:
        await pool.close()


class Seen:
    def __init__(self) -> None:
        self.index: MetricIndex | None = None

    def __call__(self, index: MetricIndex) -> None:
        self.index = index

    @property
    def live(self) -> set[str]:
        assert self.index is not None
        return set(self.index.by_uid)


async def wait_blocked_or_done(
    observer: asyncpg.Connection, pid: int, task: asyncio.Task[Any]
) -> None:
    """Until `task` ended or the backend `pid` waits on a lock (a guard, not an assert on time)."""
    for _ in range(3000):
        if task.done():
            return
        waiting = await observer.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the second writer neither finished nor waited on a lock")


async def test_a_change_committed_after_a_later_one_was_seen_is_still_seen(
    pool: asyncpg.Pool, fresh_database: str
) -> None:
    seen = Seen()
    watcher = DefinitionWatcher(pool, seen)
    await watcher.refresh()
    assert seen.live == {"metric_b"}

    first = await connect(fresh_database)  # the API restoring metric_a (PATCH deletedAt: null)
    second = await connect(fresh_database)  # `tally metrics delete metric_b`
    observer = await connect(fresh_database)
    try:
        restore = first.transaction()
        await restore.start()
        metric = await find_metric(first, "metric_a", True, for_update=True)
        assert metric is not None
        document = {k: v for k, v in metric.to_document().items() if k not in SERVER_FIELDS}
        document.pop("deletedAt")
        await update_metric(first, metric.id, parse_metric(document))

        deleting = asyncio.create_task(delete_metric(second, "metric_b"))
        await wait_blocked_or_done(observer, second.get_server_pid(), deleting)
        await watcher.refresh()  # a poll between the two commits

        await restore.commit()
        assert await deleting
        await watcher.refresh()
        assert seen.live == {"metric_a"}
    finally:
        for connection in (first, second, observer):
            await connection.close()


async def test_writers_queue_on_the_revision_so_it_moves_in_commit_order(
    pool: asyncpg.Pool, fresh_database: str
) -> None:
    first = await connect(fresh_database)
    second = await connect(fresh_database)
    observer = await connect(fresh_database)
    try:
        before = await revision(observer)
        holding = first.transaction()
        await holding.start()
        await delete_metric(first, "metric_b")
        restoring = asyncio.create_task(
            apply_definitions(second, [parse_metric({**A, "deletedAt": None})])
        )
        await wait_blocked_or_done(observer, second.get_server_pid(), restoring)
        assert not restoring.done()  # queued behind the open change
        assert await revision(observer) == before  # nothing committed, nothing to see
        await holding.commit()
        await restoring
        after = await revision(observer)
        assert after > before
        rows = await observer.fetch("SELECT uid, revision FROM tally.metrics ORDER BY revision")
        assert [r["uid"] for r in rows] == ["metric_b", "metric_a"]  # the commit order
        assert rows[-1]["revision"] == after
    finally:
        for connection in (first, second, observer):
            await connection.close()


async def test_a_change_by_hand_in_sql_moves_the_revision_too(pool: asyncpg.Pool) -> None:
    seen = Seen()
    watcher = DefinitionWatcher(pool, seen)
    await watcher.refresh()
    async with pool.acquire() as connection:
        await connection.execute(
            "UPDATE tally.metrics SET deleted_at = NULL WHERE uid = 'metric_a'"
        )
    assert await watcher.refresh()
    assert seen.live == {"metric_a", "metric_b"}


async def test_the_watcher_retries_transient_errors_and_records_each_poll(
    pool: asyncpg.Pool, fresh_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    watcher = DefinitionWatcher(pool, Seen(), clock=lambda: now[0])
    assert watcher.age() is None
    await watcher.refresh()
    assert watcher.last_refresh == 1000.0
    now[0] = 1005.0
    assert watcher.age() == 5.0
    assert not await watcher.refresh()  # nothing changed: still a successful poll
    assert watcher.last_refresh == 1005.0

    # A lock timeout (transient) on every poll while another session holds the table.
    short = await create_pool(fresh_database, server_settings={"lock_timeout": "20ms"})
    locker = await connect(fresh_database)
    try:
        watcher.pool = short
        held = locker.transaction()
        await held.start()
        await locker.execute("LOCK TABLE tally.definitions_revision IN ACCESS EXCLUSIVE MODE")
        stop = asyncio.Event()
        running = asyncio.create_task(watcher.run(0.01, stop))
        for _ in range(3000):
            if "definitions not refreshed" in caplog.text or running.done():
                break
            await asyncio.sleep(0.01)
        (warning, *_) = [r for r in caplog.records if r.msg == "definitions not refreshed"]
        assert warning.fields["reason"].startswith("LockNotAvailableError")  # type: ignore[attr-defined]
        assert watcher.last_refresh == 1005.0
        now[0] = 2000.0
        await held.rollback()
        for _ in range(3000):
            if watcher.last_refresh == 2000.0 or running.done():
                break
            await asyncio.sleep(0.01)
        assert not running.done()  # retried, not ended
        assert watcher.last_refresh == 2000.0
        stop.set()
        await running
    finally:
        await locker.close()
        await short.close()


async def test_the_watcher_run_ends_with_a_permanent_error(pool: asyncpg.Pool) -> None:
    watcher = DefinitionWatcher(pool, Seen())
    await watcher.refresh()
    async with pool.acquire() as connection:
        await connection.execute("ALTER TABLE tally.definitions_revision RENAME TO gone")
    with pytest.raises(asyncpg.UndefinedTableError):
        await asyncio.wait_for(watcher.run(0.01, asyncio.Event()), timeout=30)


async def test_the_watcher_run_ends_with_an_unexpected_error(pool: asyncpg.Pool) -> None:
    def broken(index: MetricIndex) -> None:
        raise RuntimeError("bug")

    watcher = DefinitionWatcher(pool, broken)
    with pytest.raises(RuntimeError, match="bug"):
        await asyncio.wait_for(watcher.run(0.01, asyncio.Event()), timeout=30)
