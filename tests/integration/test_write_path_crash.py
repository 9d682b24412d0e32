"""A real PostgreSQL crash under flushes committed with synchronous_commit =
off (docs/decisions.md, "Write path"), on a server of the test's own
(deploy/local/postgres.sh in a temporary directory, another port), never
the shared one.

What it shows:

- the database after the crash is a prefix of the commits: its rows are
  exactly the aggregate of the events up to its stored offsets, although the
  writer had been told of later commits;
- the writer's next flush of a partition whose commit was lost is fenced,
  which clears its MemberCache; reloading from the stored offsets and
  reading again ends exact;
- a partition whose lost commit is not followed by another flush of it is
  never fenced: its events stay missing until something reloads it. This is
  why synchronous_commit = off is not used for flushes.

The WAL writer is made lazy (wal_writer_delay = 10 s) so that a crash right
after a commit loses it every time, not only sometimes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from tally.core.engine import merged
from tally.store.flush import Fenced, PartitionFlush, load_partition, write_flush
from tally.store.member_cache import MemberCache
from tally.store.migrate import migrate
from tally.store.pool import connect
from tests.integration.test_write_path import CORE, NOW, cache_at_now, deltas_of, event

pytestmark = pytest.mark.asyncio(loop_scope="function")

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local" / "postgres.sh"
BINDIR = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
TOPIC = "crash"


@dataclass
class Server:
    root: Path
    port: int
    dsn: str = ""

    def _env(self) -> dict[str, str]:
        return {**os.environ, "TALLY_LOCAL_DIR": str(self.root), "TALLY_PG_PORT": str(self.port)}

    def start(self) -> None:
        out = subprocess.run(
            ["bash", str(SCRIPT), "start"],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        self.dsn = out.stdout.strip().partition("=")[2]

    def crash(self) -> None:
        """pg_ctl stop -m immediate: no shutdown checkpoint, unflushed WAL lost."""
        assert BINDIR is not None
        command = [str(BINDIR / "pg_ctl"), "stop", "-D", str(self.root / "postgres/data")]
        command += ["-m", "immediate", "-w"]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "tally", "--", *command]
        subprocess.run(command, cwd=self.root, capture_output=True, timeout=60, check=True)

    def stop(self) -> None:
        subprocess.run(
            ["bash", str(SCRIPT), "stop"], env=self._env(), capture_output=True, timeout=120
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def server() -> Iterator[Server]:
    if BINDIR is None or not (BINDIR / "pg_ctl").exists():
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    root = Path(tempfile.mkdtemp(prefix="tally-crash-"))
    own = Server(root, _free_port())
    try:
        own.start()
        yield own
    finally:
        own.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture
async def crashable(server: Server) -> AsyncIterator[Server]:
    connection = await asyncpg.connect(server.dsn)
    try:
        await connection.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        await connection.execute("SELECT pg_reload_conf()")
        await migrate(connection)
    finally:
        await connection.close()
    yield server


def events_of(partition: int, start: int, end: int) -> list[bytes]:
    """Partition p's records, offsets [start, end): a few customers and users."""
    return [
        event(
            partition * 1_000_000 + o,
            f"c{(partition * 7 + o) % 5}",
            f"u{(o * 13 + partition) % 23}",
            NOW - (o % 50) * 60,
        )
        for o in range(start, end)
    ]


@dataclass
class Writer:
    """A worker's flush bookkeeping, reduced to what a crash tests: the
    offset it believes stored per partition, and its member cache."""

    connection: asyncpg.Connection
    believed: dict[int, int]
    cache: MemberCache = field(default_factory=cache_at_now)
    fences: int = 0

    async def flush(self, partitions: list[int], count: int) -> None:
        values: list[bytes] = []
        parts = []
        for p in partitions:
            start = max(self.believed[p], 0)
            values += events_of(p, start, start + count)
            parts.append(PartitionFlush(TOPIC, p, self.believed[p], start + count, None, count))
        await write_flush(self.connection, parts, deltas_of(values), "w", members=self.cache)
        for part in parts:
            self.believed[part.partition] = part.next_offset  # the commit returned

    async def reload(self) -> None:
        """After a fence: the database is the truth."""
        for p in self.believed:
            self.believed[p], _ = await load_partition(self.connection, TOPIC, p, None)


async def open_writer(dsn: str, partitions: range) -> Writer:
    connection = await connect(dsn)
    await connection.execute("SET synchronous_commit = off")
    believed = {p: (await load_partition(connection, TOPIC, p, None))[0] for p in partitions}
    return Writer(connection, believed)


async def stored_offsets(connection: asyncpg.Connection) -> dict[int, int]:
    rows = await connection.fetch("SELECT partition, next_offset FROM tally.partition_offsets")
    return {r[0]: r[1] for r in rows}


async def table_state(connection: asyncpg.Connection) -> dict[tuple[object, ...], object]:
    """Rows as Deltas.snapshot() keys them: (end, events, value or members)."""
    members: dict[tuple[object, ...], set[str]] = {}
    for r in await connection.fetch(
        "SELECT metric_uid, customer_id, group_key, time_unit,"
        " extract(epoch FROM period_start)::int8, member FROM tally.unique_members"
    ):
        members.setdefault(tuple(r)[:5], set()).add(r[5])
    state: dict[tuple[object, ...], object] = {}
    for r in await connection.fetch(
        "SELECT metric_uid, customer_id, group_key, time_unit,"
        " extract(epoch FROM period_start)::int8, extract(epoch FROM period_end)::int8,"
        " event_count, value FROM tally.metric_values"
    ):
        key = tuple(r)[:5]
        value: object = r[7]
        if r[0] in UNIQUES:
            value = frozenset(members.get(key, ()))
            assert r[7] == len(value), key  # a UNIQUE value is its stored members
        state[key] = (r[5], r[6], value)
    return state


UNIQUES = {"users", "emails"}


def expected_state(offsets: dict[int, int]) -> dict[tuple[object, ...], object]:
    deltas = merged(CORE, [deltas_of(events_of(p, 0, max(o, 0))) for p, o in offsets.items()])
    return dict(deltas.snapshot())


async def test_a_crash_loses_a_suffix_of_commits_and_the_fence_recovers(
    crashable: Server,
) -> None:
    writer = await open_writer(crashable.dsn, range(3))
    forty = asyncio.Event()

    async def flush_forever() -> None:
        flushes = 0
        while True:
            await writer.flush([flushes % 3, (flushes + 1) % 3], 7)
            flushes += 1
            if flushes == 40:
                forty.set()

    running = asyncio.create_task(flush_forever())
    await forty.wait()
    await asyncio.to_thread(crashable.crash)
    with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
        await running
    believed = dict(writer.believed)
    await writer.connection.close()
    crashable.start()
    db = await asyncpg.connect(crashable.dsn)
    try:
        stored = await stored_offsets(db)
        lost = sum(believed[p] - stored[p] for p in believed)
        assert all(stored[p] <= believed[p] for p in believed)
        assert lost > 0, "no commit was lost: the crash came too late to show anything"
        print(f"believed {believed}, stored after the crash {stored}: {lost} records lost")
        # The survivors are a prefix: the rows are the events up to the stored offsets.
        assert await table_state(db) == expected_state(stored)
    finally:
        await db.close()

    # The writer carries on from what it believes: fenced, cleared, reloaded, exact.
    again = await open_writer(crashable.dsn, range(3))
    again.believed, again.cache = believed, writer.cache
    assert len(again.cache) > 0
    with pytest.raises(Fenced):
        await again.flush([0, 1, 2], 7)
    assert len(again.cache) == 0
    await again.reload()
    assert again.believed == stored
    for _ in range(10):
        await again.flush([0, 1, 2], 7)
    assert await table_state(again.connection) == expected_state(again.believed)
    await again.connection.close()


async def test_a_partition_idle_after_its_lost_commit_is_never_fenced(
    crashable: Server,
) -> None:
    writer = await open_writer(crashable.dsn, range(2))
    await writer.connection.execute("SET synchronous_commit = on")
    await writer.flush([0, 1], 5)  # durable
    await writer.connection.execute("SET synchronous_commit = off")
    await writer.flush([1], 5)  # partition 1's last flush for a while: lost below
    believed = dict(writer.believed)
    crashable.crash()
    await writer.connection.close()
    crashable.start()
    again = await open_writer(crashable.dsn, range(2))
    again.believed = believed
    assert await stored_offsets(again.connection) == {0: 5, 1: 5}  # lost: 1 believed at 10
    await again.flush([0], 5)  # only partition 0 has new records: not fenced
    assert again.believed == {0: 10, 1: 10}
    stored = await stored_offsets(again.connection)
    assert stored == {0: 10, 1: 5}
    # Exact for what the database says, but partition 1's records 5-9 are in
    # no rollup, and nothing will read them again until partition 1 is reloaded.
    assert await table_state(again.connection) == expected_state(stored)
    assert expected_state(stored) != expected_state(again.believed)
    await again.connection.close()
