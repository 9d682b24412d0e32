"""What PostgreSQL spends on a flush, per rollup row and per UNIQUE member,
for the write-path candidates, measured side by side in one run.

`TALLY_DATABASE_URL=... python -m tally.bench writepath [ROLLUPS,...] [ROUNDS] [RATES] [FLUSHES] [COMMIT_ROUNDS]`

(an empty list or 0 leaves a part out)

1. Flush shapes (`writepath_shapes`): flushes of ROLLUPS rollups (default
   20,000 and 200,000) of the ten synthetic metrics, aggregated by the
   native core from events made to give them, half of the COUNT and
   SUM ones already stored, UNIQUE ones with 5 members of which 4 (80 %)
   are stored, into a database prefilled with 400,000 rollups and 10
   members per UNIQUE rollup. Every variant (`writepath_variants`) has its
   own copy of that database (CREATE DATABASE ... TEMPLATE) and writes the
   same flushes; the variants take turns, in forward then reverse order,
   for ROUNDS rounds (default 3). The cache variants start knowing the
   prefilled members, as a worker that stored them would.
2. A live workload (`writepath_live`): the real core over synthetic events
   whose times are those of their arrival, at RATES events/s (default
   20,000, 100,000 and 200,000) and one flush per 5 s, FLUSHES flushes
   (default 3, all measured), through the code before this work and the
   store's write_flush without and with a MemberCache, each into its own
   copy of a database holding the day so far.
3. Commit settings (`writepath_live`): synchronous_commit on and off, and
   commit_delay, on small and medium flushes, one and four writers, for
   COMMIT_ROUNDS rounds (default 3).

PostgreSQL CPU is the user + system time of each connection's backend
(`pg_backend_pid()`, /proc/<pid>/stat, as `tally bench` reads it), so it
leaves out the WAL writer and checkpointer. At the end each variant's
tables are compared: every variant must have written the same rows.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tally.bench.writepath_shapes import (
    NOW,
    Shape,
    flush_deltas,
    make_shape,
    prefill_sql,
    stored_members,
)
from tally.bench.writepath_variants import Variant, variants
from tally.core.engine import Deltas
from tally.store.member_cache import MemberCache
from tally.store.migrate import migrate
from tally.store.pool import connect

PREFILL_ROLLUPS = 400_000
PREFILL_MEMBERS = 10  # per UNIQUE rollup
FLUSH_MEMBERS = 5  # per UNIQUE rollup in a flush, one of them new
TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a local PostgreSQL backend."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def dsn_for(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


class Databases:
    """Databases of this run, dropped at the end."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.tag = uuid.uuid4().hex[:8]
        self.names: list[str] = []

    async def create(self, label: str, template: str | None = None) -> str:
        name = f"tally_bench_wp_{self.tag}_{label}"
        admin = await asyncpg.connect(self.dsn)
        try:
            clause = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
            await admin.execute(f'CREATE DATABASE "{name}"{clause}')
        finally:
            await admin.close()
        self.names.append(name)
        return dsn_for(self.dsn, name)

    async def drop(self, last: int) -> None:
        """Drop the `last` databases created (their connections closed)."""
        admin = await asyncpg.connect(self.dsn)
        try:
            for _ in range(last):
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.names.pop()}" WITH (FORCE)')
        finally:
            await admin.close()

    async def drop_all(self) -> None:
        admin = await asyncpg.connect(self.dsn)
        try:
            for name in reversed(self.names):
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@dataclass
class Sample:
    members_cpu: float
    values_cpu: float
    commit_cpu: float
    wall: float
    client_cpu: float
    rows: int
    offered: int  # members pending in the flush
    sent: int  # members the variant sent


@dataclass
class Runner:
    variant: Variant
    connection: asyncpg.Connection
    pid: int
    cache: MemberCache | None
    samples: dict[int, list[Sample]] = field(default_factory=dict)

    async def flush(self, size: int, deltas: Deltas, offered: int) -> None:
        c = self.connection
        p0, w0, c0 = time.process_time(), time.perf_counter(), backend_cpu(self.pid)
        transaction = c.transaction()
        await transaction.start()
        try:
            added, offer = await self.variant.members(c, deltas, self.cache)
            c1 = backend_cpu(self.pid)
            rows = await self.variant.values(c, deltas, added)
            c2 = backend_cpu(self.pid)
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
        c3, w3, p3 = backend_cpu(self.pid), time.perf_counter(), time.process_time()
        if self.cache is not None:
            self.cache.remember(offer)
        sample = Sample(c1 - c0, c2 - c1, c3 - c2, w3 - w0, p3 - p0, rows, offered, offer.sent)
        self.samples.setdefault(size, []).append(sample)


async def _prefill(dsn: str, shape: Shape) -> list[tuple[str, tuple[object, ...]]]:
    """Store PREFILL_ROLLUPS rollups of `shape` (and note them in it)."""
    connection = await connect(dsn)
    try:
        await migrate(connection)
        per_table = PREFILL_ROLLUPS // shape.tables
        statements = [s for m in shape.metrics for s in prefill_sql(m, per_table, PREFILL_MEMBERS)]
        for sql, args in statements:
            await connection.execute(sql, *args)
        await connection.execute("VACUUM ANALYZE tally.metric_values")
        await connection.execute("VACUUM ANALYZE tally.unique_members")
    finally:
        await connection.close()
    return statements


async def _runner(dsn: str, variant: Variant, warm: MemberCache | None) -> Runner:
    connection = await connect(dsn)
    for sql in variant.setup:
        await connection.execute(sql)
    if variant.setup:
        await connection.execute("VACUUM ANALYZE")
    pid = int(await connection.fetchval("SELECT pg_backend_pid()"))
    return Runner(variant, connection, pid, warm)


_DIGEST = """
SELECT count(*), coalesce(sum(hashtextextended(concat_ws('|', metric_uid, customer_id, group_key, time_unit,
       extract(epoch FROM period_start)::int8, extract(epoch FROM period_end)::int8, value, event_count), 0)
       ::numeric), 0) FROM {table} WHERE $1::text[] IS NULL OR metric_uid = ANY($1)
"""
_INT_TABLE = """(SELECT i.metric_uid, v.customer_id, v.group_key,
       (ARRAY['hour', 'day', 'week', 'month', 'quarter', 'year'])[v.time_unit] AS time_unit,
       v.period_start, v.period_end, v.value, v.event_count
  FROM tally.metric_values_int AS v JOIN tally.metric_ids AS i USING (metric_id)) AS t"""
_MEMBER_DIGEST = """
SELECT count(*), coalesce(sum(hashtextextended(concat_ws('|', metric_uid, customer_id, time_unit,
       extract(epoch FROM period_start)::int8, group_key, member), 0)::numeric), 0) FROM tally.unique_members
"""


async def digest(
    connection: asyncpg.Connection,
    table: str = "tally.metric_values",
    uids: list[str] | None = None,
) -> str:
    """A hash over every rollup (of `uids` only, when given) and every member."""
    source = _INT_TABLE if table == "tally.metric_values_int" else table
    values = await connection.fetchrow(_DIGEST.format(table=source), uids)
    members = await connection.fetchrow(_MEMBER_DIGEST)
    assert values is not None
    assert members is not None
    return f"{values[0]}:{values[1]}/{members[0]}:{members[1]}"


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


async def shapes(dsn: str, sizes: list[int], rounds: int, databases: Databases) -> None:
    template = await databases.create("template")
    shape = make_shape()
    await _prefill(template, shape)
    template_name = databases.names[-1]
    known = stored_members(shape)
    runners = []
    for n, variant in enumerate(variants()):
        own = await databases.create(f"v{n}", template_name)
        warm: MemberCache | None = None
        if variant.cache:
            warm = MemberCache(max_members=2_000_000, clock=lambda: float(NOW))
            warm.remember(warm.offer(known))
        runners.append(await _runner(own, variant, warm))
    del known
    print(
        f"flush shapes: {PREFILL_ROLLUPS:,} rollups and {PREFILL_MEMBERS} members per UNIQUE rollup"
        f" stored; flushes of {', '.join(f'{s:,}' for s in sizes)} rollups, {rounds} rounds,"
        f" {len(runners)} variants",
        flush=True,
    )
    rng = random.Random(7)
    for r in range(rounds):
        for size in sizes:
            deltas = flush_deltas(shape, size, FLUSH_MEMBERS, rng)
            offered = deltas.members
            for runner in runners if r % 2 == 0 else reversed(runners):
                await runner.flush(size, deltas, offered)
    base = runners[0]
    for size in sizes:
        print()
        print(
            f"{size:,}-rollup flushes: {shape.tables} tables;"
            f" per flush {_median([s.rows for s in base.samples[size]]):,.0f} rollups,"
            f" {_median([s.offered for s in base.samples[size]]):,.0f} members pending"
        )
        print(
            f"{'variant':<22} {'PG us/rollup':>12} {'PG us/member':>12} {'PG ms/flush':>11}"
            f" {'x current':>9} {'wall ms':>8} {'x current':>9} {'client ms':>9} {'sent':>8}"
        )
        ref_pg = sum(_pg(s) for s in base.samples[size])
        ref_wall = _median([s.wall for s in base.samples[size]])
        for runner in runners:
            xs = runner.samples[size]
            rows, offered = sum(s.rows for s in xs), sum(s.offered for s in xs)
            pg = sum(_pg(s) for s in xs)
            wall = _median([s.wall for s in xs])
            print(
                f"{runner.variant.name:<22}"
                f" {sum(s.values_cpu + s.commit_cpu for s in xs) / rows * 1e6:>12.2f}"
                f" {sum(s.members_cpu for s in xs) / max(1, offered) * 1e6:>12.2f}"
                f" {pg / len(xs) * 1000:>11.0f} {pg / ref_pg:>9.2f}"
                f" {wall * 1000:>8.0f} {wall / ref_wall:>9.2f}"
                f" {_median([s.client_cpu for s in xs]) * 1000:>9.0f}"
                f" {_median([s.sent for s in xs]):>8,.0f}"
            )
    print(
        "PG us/rollup: the upsert's backend CPU (and the commit's) per rollup row; PG us/member:"
        " the members insert's per pending member (sent or skipped)"
    )
    digests = {}
    for runner in runners:
        digests[runner.variant.name] = await digest(runner.connection, runner.variant.table)
        hot = await runner.connection.fetchrow(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
            " WHERE schemaname = 'tally' AND relname = $1",
            runner.variant.table.split(".")[1],
        )
        assert hot is not None
        print(
            f"  {runner.variant.name:<22} HOT updates {hot[1] / max(1, hot[0]):.0%} of {hot[0]:,};"
            f" digest {digests[runner.variant.name]}"
        )
        if runner.cache is not None:
            print(
                f"  {'':<22} member cache: {len(runner.cache):,} members in"
                f" {runner.cache.rollups:,} rollups, {runner.cache.hits:,} skipped"
            )
        await runner.connection.close()
    same = len(set(digests.values())) == 1
    print(f"every variant wrote the same rows: {'yes' if same else 'NO'}")


def _pg(s: Sample) -> float:
    return s.members_cpu + s.values_cpu + s.commit_cpu


async def run_writepath_bench(
    dsn: str, sizes: list[int], rounds: int, rates: list[int], flushes: int, commit_rounds: int
) -> None:
    from tally.bench import writepath_live

    databases = Databases(dsn)
    try:
        if sizes:
            await shapes(dsn, sizes, rounds, databases)
        if rates:
            template, warm = await writepath_live.warm_template(databases)
            for rate in rates:
                await writepath_live.live(databases, rate, flushes, template, warm)
            del warm
        if commit_rounds:
            await writepath_live.commits(databases, rounds=commit_rounds)
    finally:
        await databases.drop_all()


def main(argv: list[str]) -> None:
    sizes = [int(s) for s in argv[0].split(",") if s] if argv else [20_000, 200_000]
    rounds = int(argv[1]) if len(argv) > 1 else 3
    rates = (
        [int(s) for s in argv[2].split(",") if s] if len(argv) > 2 else [20_000, 100_000, 200_000]
    )
    flushes = int(argv[3]) if len(argv) > 3 else 3
    commit_rounds = int(argv[4]) if len(argv) > 4 else 3
    dsn = os.environ.get("TALLY_DATABASE_URL", "postgresql://localhost:5432/tally")
    asyncio.run(run_writepath_bench(dsn, sizes, rounds, rates, flushes, commit_rounds))
