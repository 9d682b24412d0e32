"""A flush that does not move the offset still fences a zombie (review item
2 of issue 16): the compare-and-set is on (next_offset, epoch), and every
load and every flush bumps the epoch (docs/design.md section 3)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tally.core.engine import Deltas, new_core
from tally.store.flush import Fenced, PartitionFlush, load_partition_into, write_flush
from tally.store.migrate import migrate
from tally.store.pool import Connection, connect

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest_asyncio.fixture
async def db(fresh_database: str) -> AsyncIterator[Connection]:
    connection = await connect(fresh_database)
    try:
        await migrate(connection)
        yield connection
    finally:
        await connection.close()


def nothing() -> Deltas:
    return Deltas(new_core())


async def stored(db: Connection) -> tuple[int, dict[str, int]]:
    offset = await db.fetchval("SELECT next_offset FROM tally.partition_offsets")
    starts = await db.fetch("SELECT metric_uid, start_offset FROM tally.metric_starts")
    return offset, {r["metric_uid"]: r["start_offset"] for r in starts}


async def test_a_start_only_flush_fences_a_zombie_that_loaded_the_same_offset(
    db: Connection,
) -> None:
    """The review's case: stored offset 100; zombie A loaded at 100; worker B
    loads and flushes only a start (100 -> 100, m at 100); A's flush
    (100 -> 160, m at 130) is fenced, so nothing is lost or counted twice."""
    await load_partition_into(db, "t", 0, None, None, 0.0)
    await write_flush(db, [PartitionFlush("t", 0, -1, 100, None)], nothing(), "setup")
    offset_a, epoch_a = await load_partition_into(db, "t", 0, None, None, 0.0)
    offset_b, epoch_b = await load_partition_into(db, "t", 0, None, None, 0.0)
    assert offset_a == offset_b == 100
    assert epoch_a != epoch_b
    b = PartitionFlush("t", 0, 100, 100, None, starts={"m": 100}, expected_epoch=epoch_b)
    result = await write_flush(db, [b], nothing(), "B")
    a = PartitionFlush("t", 0, 100, 160, None, starts={"m": 130}, expected_epoch=epoch_a)
    with pytest.raises(Fenced):
        await write_flush(db, [a], nothing(), "A")
    assert await stored(db) == (100, {"m": 100})
    # B's next flush, with the epoch its last flush stored, goes through.
    epoch = result.epochs[("t", 0)]
    await write_flush(
        db, [PartitionFlush("t", 0, 100, 130, None, expected_epoch=epoch)], nothing(), "B"
    )
    assert await stored(db) == (130, {"m": 100})


async def test_a_load_alone_fences_an_earlier_loader(db: Connection) -> None:
    """Before any flush of the new owner: its load bumped the epoch."""
    _, epoch_a = await load_partition_into(db, "t", 0, None, None, 0.0)
    await load_partition_into(db, "t", 0, None, None, 0.0)
    zombie = PartitionFlush("t", 0, -1, 50, None, starts={"m": -1}, expected_epoch=epoch_a)
    with pytest.raises(Fenced):
        await write_flush(db, [zombie], nothing(), "A")
    assert await stored(db) == (-1, {})
