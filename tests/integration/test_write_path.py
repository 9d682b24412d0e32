"""The write path against the real PostgreSQL: the store's flush writes
exactly what the code before it wrote (`tally.bench.writepath_baseline`),
and the MemberCache never skips a member that is not stored, whatever
fails on the way (rollback, fence, cancellation) and however many workers
write one rollup.

Deltas come from the native core over event bytes, as a worker's do. A
flush that must fail inside its transaction, after its members' insert,
carries an event of customer POISON, whose rollups the test databases'
`refuse_poison` CHECK rejects.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio

from tally.bench.writepath_baseline import write_flush_baseline
from tally.contracts.metric import parse_metric
from tally.core.engine import Deltas, aggregate, new_core
from tally.core.events import DecodeLimits
from tally.core.metrics import MetricIndex
from tally.store import flush
from tally.store.flush import Fenced, PartitionFlush, load_partition, write_flush
from tally.store.member_cache import MemberCache
from tally.store.migrate import migrate
from tally.store.pool import connect
from tests.integration.roles_support import users
from tests.integration.support import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="function")
__all__ = ["users"]  # the fixture

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()
METRICS = [
    {
        "uid": "users",
        "name": "Users by region",
        "eventType": "call",
        "aggregationType": "UNIQUE",
        "aggregationProperty": "user",
        "metricType": "GROUPED",
        "groupingProperty": "region",
        "timeUnits": ["day", "month"],
    },
    {
        "uid": "emails",
        "name": "Emails (case-folded)",
        "eventType": "call",
        "aggregationType": "UNIQUE",
        "aggregationProperty": "user",
        "caseSensitive": False,
        "timeUnits": ["hour"],
        "timezone": "Asia/Kathmandu",
    },
    {
        "uid": "calls",
        "name": "Calls",
        "eventType": "call",
        "aggregationType": "COUNT",
        "timeUnits": ["day", "month"],
    },
    {
        "uid": "bytes",
        "name": "Bytes",
        "eventType": "call",
        "aggregationType": "SUM",
        "aggregationProperty": "bytes",
        "timeUnits": ["day"],
        "timezone": "America/Los_Angeles",
    },
]
INDEX = MetricIndex([parse_metric(m) for m in METRICS])
CORE = new_core(INDEX)
WIDE = DecodeLimits(max_lateness_seconds=1e12, max_future_seconds=1e12)
POISON = "poison"  # a customer whose rollups tally.metric_values refuses (refuse_poison)


def cache_at_now() -> MemberCache:
    """A worker's cache, its clock at the test's "now"."""
    return MemberCache(clock=lambda: NOW + 3600)


def event(n: int, customer: str, user: str, when: float, region: str = "eu") -> bytes:
    return orjson.dumps(
        {
            "id": f"e{n}",
            "eventType": "call",
            "customerId": customer,
            "timestamp": datetime.fromtimestamp(when, UTC).isoformat(),
            "properties": {"user": user, "region": region, "bytes": "0.25" if n % 3 else n},
        }
    )


def deltas_of(values: Sequence[bytes], deltas: Deltas | None = None) -> Deltas:
    """The core's Deltas of `values` (added to `deltas` if given), every one accepted."""
    before = deltas.events if deltas is not None else 0
    deltas = aggregate(CORE, values, NOW + 3600, WIDE, deltas)
    assert deltas.events - before == len(values)
    return deltas


async def refuse_poison(connection: asyncpg.Connection) -> None:
    """Make a flush's rollups' upsert fail, after its members' insert has
    succeeded, when it carries customer POISON: a CHECK violation, the same
    failure as a rollup whose period_end is not after its start (which the
    native core's Deltas cannot be made to hold)."""
    await connection.execute(
        "ALTER TABLE tally.metric_values ADD CONSTRAINT refuse_poison"
        f" CHECK (customer_id <> '{POISON}')"
    )


def random_flush(rng: random.Random, first: int, count: int, customers: int = 6) -> Deltas:
    """Events of a few customers and a few users each, over two days, so
    rollups and members come back from flush to flush."""
    return deltas_of(
        [
            event(
                first + n,
                f"c{rng.randrange(customers)}",
                rng.choice(["Ann", "ann", "bob", "Cy", "dee", "eve", "fay"])
                + str(rng.randrange(4)),
                NOW - rng.randrange(2 * 86400),
                rng.choice(["eu", "us"]),
            )
            for n in range(count)
        ]
    )


async def _db(stack: AsyncExitStack, dsn: str) -> asyncpg.Connection:
    connection = await connect(dsn)
    stack.push_async_callback(connection.close)
    await migrate(connection)
    return connection


@pytest_asyncio.fixture
async def databases(
    database_url: str,
) -> AsyncIterator[list[asyncpg.Connection]]:
    """Three fresh, migrated databases: baseline, store with cache, store without."""
    names = [f"tally_t_wp_{random.getrandbits(48):012x}" for _ in range(3)]
    admin = await asyncpg.connect(database_url)
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}"')
        async with AsyncExitStack() as stack:
            base = database_url.rsplit("/", 1)[0]
            connections = [await _db(stack, f"{base}/{name}") for name in names]
            for connection in connections:
                await refuse_poison(connection)
            yield connections
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def contents(connection: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    queries = {
        "values": "SELECT metric_uid, customer_id, group_key, time_unit, period_start, period_end,"
        " value, event_count FROM tally.metric_values ORDER BY 1, 2, 3, 4, 5",
        "members": "SELECT * FROM tally.unique_members ORDER BY 1, 2, 3, 4, 5, 6",
        "offsets": "SELECT topic, partition, next_offset, owner, records_total FROM"
        " tally.partition_offsets ORDER BY 1, 2",
    }
    return {k: [tuple(r) for r in await connection.fetch(q)] for k, q in queries.items()}


async def assert_cache_stored(connection: asyncpg.Connection, cache: MemberCache) -> None:
    """Every member the cache holds is committed in tally.unique_members."""
    held = list(cache.known())
    if not held:
        return
    found = await connection.fetchval(
        "SELECT count(*) FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[],"
        " $6::text[]) AS k(u, c, t, s, g, m) JOIN tally.unique_members AS um"
        " ON (um.metric_uid, um.customer_id, um.time_unit, um.period_start, um.group_key, um.member)"
        " = (k.u, k.c, k.t, to_timestamp(k.s), k.g, k.m)",
        *[list(x) for x in zip(*[(*key, m) for key, m in held], strict=True)],
    )
    assert found == len(held)


async def outcome(
    connection: asyncpg.Connection,
    parts: list[PartitionFlush],
    deltas: Deltas,
    owner: str,
    cache: MemberCache | None,
    *,
    baseline: bool = False,
) -> tuple[object, int]:
    try:
        if baseline:
            result = await write_flush_baseline(connection, parts, deltas, owner)
        else:
            result = await write_flush(connection, parts, deltas, owner, members=cache)
    except Fenced:
        return "fenced", 0
    except asyncpg.CheckViolationError:
        return "rolled back", 0
    return result.rows_written, result.members_added


async def test_the_store_writes_what_the_baseline_wrote(
    databases: list[asyncpg.Connection],
) -> None:
    """The same flushes through the old path, the store with a member cache
    and the store without one: two workers (the second one's customers
    overlap the first's, as misrouted producers make them), rollups and
    members already present, a fenced flush and one that rolls back."""
    old, new, plain = databases
    caches = [cache_at_now(), cache_at_now()]  # one per worker, for `new`
    offsets = {0: -1, 1: -1, 2: -1}
    for connection in databases:
        for partition in offsets:
            await load_partition(connection, "t", partition, None)
    rng = random.Random(5)
    first = 0
    for step in range(14):
        worker = step % 2
        partitions = [0, 1] if worker == 0 else [2]
        deltas = random_flush(rng, first, rng.randrange(20, 120), customers=4 + 2 * worker)
        first += 200
        parts = [PartitionFlush("t", p, offsets[p], offsets[p] + 10, None, 10) for p in partitions]
        if step == 9:  # a zombie: its stored offset moved under it
            parts = [PartitionFlush("t", partitions[0], offsets[partitions[0]] - 1, 1, None)]
        if step == 11:  # the rollups' upsert fails (CHECK refuse_poison), members inserted
            deltas_of([event(first - 1, POISON, "zed", NOW)], deltas)
        outcomes = [
            await outcome(old, parts, deltas, f"w{worker}", None, baseline=True),
            await outcome(new, parts, deltas, f"w{worker}", caches[worker]),
            await outcome(plain, parts, deltas, f"w{worker}", None),
        ]
        assert outcomes[0] == outcomes[1] == outcomes[2], (step, outcomes)
        assert outcomes[0][0] == {9: "fenced", 11: "rolled back"}.get(step, len(deltas))
        if step == 9:
            assert len(caches[worker]) == 0  # cleared by the fence
        if isinstance(outcomes[0][0], int):
            for p in partitions:
                offsets[p] += 10
        for cache in caches:
            await assert_cache_stored(new, cache)
    assert sum(c.hits for c in caches) > 0  # the cache did skip members
    expected = await contents(old)
    assert await contents(new) == expected
    assert await contents(plain) == expected
    assert len(expected["members"]) > 50


async def test_a_flush_that_rolls_back_teaches_the_cache_nothing(fresh_database: str) -> None:
    async with AsyncExitStack() as stack:
        db = await _db(stack, fresh_database)
        await refuse_poison(db)
        cache = cache_at_now()
        failing = deltas_of(
            [
                event(1, "acme", "ann", NOW),
                event(2, "acme", "bob", NOW),
                event(3, POISON, "zed", NOW),
            ]
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await write_flush(db, [], failing, "w", members=cache)
        assert len(cache) == 0
        assert await db.fetchval("SELECT count(*) FROM tally.unique_members") == 0
        assert await db.fetchval("SELECT count(*) FROM tally.metric_values") == 0
        result = await write_flush(
            db, [], deltas_of([event(4, "acme", "ann", NOW)]), "w", members=cache
        )
        assert (result.members_sent, result.members_skipped, result.members_added) == (3, 0, 3)
        await assert_cache_stored(db, cache)
        assert await user_counts(db) == {"day": 1, "month": 1}


async def user_counts(db: asyncpg.Connection, customer: str = "acme") -> dict[str, int]:
    rows = await db.fetch(
        "SELECT time_unit, value FROM tally.metric_values WHERE metric_uid = 'users'"
        " AND customer_id = $1",
        customer,
    )
    return {r[0]: int(r[1]) for r in rows}


async def test_a_cancelled_flush_teaches_the_cache_nothing(fresh_database: str) -> None:
    """Cancelled while its upsert waits on a row lock, as an abandoned flush is."""
    async with AsyncExitStack() as stack:
        db = await _db(stack, fresh_database)
        blocker = await connect(fresh_database)
        stack.push_async_callback(blocker.close)
        cache = cache_at_now()
        await write_flush(db, [], deltas_of([event(1, "acme", "ann", NOW)]), "w", members=cache)
        assert len(cache) == 3
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("SELECT * FROM tally.metric_values FOR UPDATE")
        second = deltas_of([event(2, "acme", "ann", NOW), event(3, "acme", "bob", NOW)])
        task = asyncio.create_task(write_flush(db, [], second, "w", members=cache))

        async def waiting() -> bool:
            return bool(
                await blocker.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
                )
            )

        await wait_until(waiting, 10, "the flush to wait on the lock", interval=0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await lock.rollback()
        assert len(cache) == 3  # bob's members were inserted, then rolled back
        await assert_cache_stored(db, cache)
        result = await write_flush(db, [], second, "w", members=cache)
        assert (result.members_sent, result.members_skipped) == (3, 3)
        assert await user_counts(db) == {"day": 2, "month": 2}


async def test_concurrent_workers_with_caches_count_each_member_once(
    fresh_database: str,
) -> None:
    """Two workers, each with its own cache, flush the same rollups at the
    same time (a customer on two partitions): every member counts once."""
    async with AsyncExitStack() as stack:
        connections = [await _db(stack, fresh_database) for _ in range(2)]
        caches = [cache_at_now(), cache_at_now()]
        rng = random.Random(11)
        offered: set[tuple[str, str]] = set()
        for round_ in range(12):
            batches = [
                [
                    event(round_ * 100 + w * 50 + n, "acme", f"u{rng.randrange(40)}", NOW)
                    for n in range(15)
                ]
                for w in range(2)
            ]
            for batch in batches:
                offered |= {("acme", orjson.loads(b)["properties"]["user"]) for b in batch}
            await asyncio.gather(
                *(
                    write_flush(c, [], deltas_of(b), f"w{w}", members=caches[w])
                    for w, (c, b) in enumerate(zip(connections, batches, strict=True))
                )
            )
            for cache in caches:
                await assert_cache_stored(connections[0], cache)
        assert await user_counts(connections[0]) == {"day": len(offered), "month": len(offered)}
        assert sum(c.hits for c in caches) > 0


async def test_a_worker_that_may_not_create_temp_tables_sends_arrays(
    users: dict[str, str], fresh_database: str, database_url: str
) -> None:
    """Without TEMPORARY on the database (revoked from PUBLIC) the store
    sends unnest arrays, and writes what the staged path writes."""
    admin = await asyncpg.connect(fresh_database)
    name = await admin.fetchval("SELECT current_database()")
    await admin.execute(f'REVOKE TEMPORARY ON DATABASE "{name}" FROM PUBLIC')
    await admin.close()
    other = f"tally_t_wp_{random.getrandbits(48):012x}"
    root = await asyncpg.connect(database_url)
    await root.execute(f'CREATE DATABASE "{other}"')
    try:
        async with AsyncExitStack() as stack:
            worker = await connect(users["tally_worker"])
            stack.push_async_callback(worker.close)
            staged = await _db(stack, f"{database_url.rsplit('/', 1)[0]}/{other}")
            assert not await flush._staging(worker)
            assert await flush._staging(staged)
            caches = {id(worker): cache_at_now(), id(staged): cache_at_now()}
            rng = random.Random(3)
            for n in range(6):
                deltas = random_flush(rng, n * 100, 60)
                for connection in (worker, staged):
                    await write_flush(connection, [], deltas, "w", members=caches[id(connection)])
            assert await contents(worker) == await contents(staged)
            assert all(c.hits for c in caches.values())
    finally:
        await root.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
        await root.close()
