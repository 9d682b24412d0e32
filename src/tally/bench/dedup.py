"""Dedup designs measured side by side (docs/design.md §3): which one caps the worker?

- `table`: every id into an indexed `seen_ids` table, batch by batch
  (`INSERT ... SELECT unnest($1) ON CONFLICT DO NOTHING RETURNING`), the
  simple durable design.
- `window`: Tally's in-memory window (`tally.core.dedup`): 128-bit hashes in
  sorted arrays, checked a batch at a time, and the batch's new ids written
  as one blob per flush.

Both run on the same ids against the same PostgreSQL, with the window
already holding `preload` ids, and report ids per second.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg

from tally.core.dedup import DedupWindow, digest


@dataclass(frozen=True, slots=True)
class DedupResult:
    design: str
    ids_per_second: float
    bytes_per_id: float


async def _table(connection: asyncpg.Connection, batches: list[list[str]], preload: int) -> float:
    await connection.execute(
        "DROP TABLE IF EXISTS bench_seen_ids;"
        "CREATE TABLE bench_seen_ids (id text PRIMARY KEY, seen_at timestamptz NOT NULL DEFAULT now())"
    )
    # The window holds a day of ids: the table starts as full as the window does.
    await connection.execute(
        "INSERT INTO bench_seen_ids (id) SELECT 'preload-' || n FROM generate_series(1, $1) AS n",
        preload,
    )
    await connection.execute("VACUUM ANALYZE bench_seen_ids")
    started = time.perf_counter()
    for batch in batches:
        async with connection.transaction():
            await connection.fetch(
                "INSERT INTO bench_seen_ids (id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING RETURNING id",
                batch,
            )
    elapsed = time.perf_counter() - started
    await connection.execute("DROP TABLE bench_seen_ids")
    return elapsed


async def _window(
    connection: asyncpg.Connection, batches: list[list[str]], preload: int
) -> tuple[float, float]:
    await connection.execute(
        "DROP TABLE IF EXISTS bench_segments;"
        "CREATE TABLE bench_segments (segment_id bigserial PRIMARY KEY, bucket bigint, ids bytea)"
    )
    now = time.time()
    window = DedupWindow(86400)
    window.load([], now)
    chunk = 100_000
    for start in range(0, preload, chunk):
        window.check([digest(f"preload-{n}") for n in range(start, min(preload, start + chunk))])
        plan = window.plan_flush(now)
        window.commit(plan, 1, None)
    started = time.perf_counter()
    for batch in batches:
        window.check([digest(event_id) for event_id in batch])
        plan = window.plan_flush(now)
        async with connection.transaction():
            row = await connection.fetchval(
                "INSERT INTO bench_segments (bucket, ids) VALUES ($1, $2) RETURNING segment_id",
                plan.bucket,
                plan.blob,
            )
        window.commit(plan, row, None)
    elapsed = time.perf_counter() - started
    held = window.held
    nbytes = window.closed_hi.nbytes + window.closed_lo.nbytes + window.closed_bucket.nbytes
    nbytes += sum(r.hi.nbytes + r.lo.nbytes for r in window.open_runs)
    await connection.execute("DROP TABLE bench_segments")
    return elapsed, nbytes / held


async def run_dedup_bench(
    dsn: str, ids: int = 200_000, batch: int = 5000, preload: int = 1_000_000
) -> list[DedupResult]:
    names = [f"evt_{n:012d}_{(n * 2654435761) % 2**32:08x}" for n in range(ids)]
    batches = [names[i : i + batch] for i in range(0, ids, batch)]
    connection = await asyncpg.connect(dsn)
    try:
        table = await _table(connection, batches, preload)
        window, per_id = await _window(connection, batches, preload)
    finally:
        await connection.close()
    return [
        DedupResult(
            f"seen_ids table ({preload:,} rows), one INSERT per batch", ids / table, float("nan")
        ),
        DedupResult(
            f"in-memory window ({preload:,} ids held) + blob per batch", ids / window, per_id
        ),
    ]


def main(dsn: str, ids: int = 200_000) -> None:
    results = asyncio.run(run_dedup_bench(dsn, ids))
    base = results[0].ids_per_second
    print(f"dedup designs: {ids:,} new ids in batches of 5,000, one PostgreSQL connection")
    print(f"{'design':<58} {'ids/s':>10} {'x table':>8} {'bytes/id':>9}")
    for r in results:
        print(
            f"{r.design:<58} {r.ids_per_second:>10,.0f} {r.ids_per_second / base:>8.1f} {r.bytes_per_id:>9.1f}"
        )
