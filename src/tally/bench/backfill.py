"""`tally bench backfill`: a backfill's events/s against a live worker's, in one run.

One topic, one database. A live worker (`tally run`) reads the whole topic
with one metric, A, and its events/s are timed from its first ready
partition until PostgreSQL holds the end offsets. Then metric B is created
with A's definition under a new uid (a changed metric). The worker, now
idle, records where it started B (the end of each partition), and
`tally backfill B --from-offsets earliest` counts B over the same events
while that worker keeps running. The per-event work is the same for both. At
the end B's rows must equal A's, row for row, or the bench fails.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from tally.bench.workers import (
    PARTITIONS,
    Fleet,
    create_topic,
    delete_topics,
    end_offsets,
    fresh_database,
    wait_offsets,
    with_dead_letters,
    worker_env,
)
from tally.contracts.metric import parse_metric
from tally.store.definitions import apply_definitions
from tally.store.pool import connect
from tally.synthetic import Workload, encoded, metric_definitions

LIVE_UID, BACKFILL_UID = "bench_live", "bench_backfilled"


def definitions() -> tuple[dict[str, Any], dict[str, Any]]:
    """The UNIQUE-by-region metric of the synthetic workload, twice."""
    base = metric_definitions(4)[3]
    return {**base, "uid": LIVE_UID}, {**base, "uid": BACKFILL_UID}


async def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def _rows(dsn: str, uid: str) -> list[tuple[Any, ...]]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT customer_id, group_key, time_unit, period_start, value, event_count"
            " FROM tally.metric_values WHERE metric_uid = $1 ORDER BY 1, 2, 3, 4",
            uid,
        )
    finally:
        await connection.close()
    return [tuple(r) for r in rows]


async def _wait_started(dsn: str, uid: str, within: float = 60) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + within
        while (
            await connection.fetchval(
                "SELECT count(*) FROM tally.metric_starts WHERE metric_uid = $1", uid
            )
            < PARTITIONS
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start {uid} within {within:.0f} s")
            await asyncio.sleep(0.1)
    finally:
        await connection.close()


async def run(bootstrap: str, admin_dsn: str, events: int, seed: int) -> str:
    live, backfilled = definitions()
    topic = f"tally-bench-backfill-{uuid.uuid4().hex[:8]}"
    messages = encoded(
        Workload(seed=seed, end=datetime.now(UTC).timestamp() - 60, span_seconds=6 * 3600),
        events,
    )
    await create_topic(bootstrap, topic)
    lines = [f"## Backfill against a live worker ({events:,} events, {PARTITIONS} partitions)", ""]
    try:
        await _produce(bootstrap, topic, messages)
        ends = await end_offsets(bootstrap, topic)
        async with fresh_database(admin_dsn, [live]) as (_, dsn):
            env = worker_env(bootstrap, dsn, topic, f"bench-{topic}", dedup=True, live=True)
            fleet = Fleet(env, 1).start()
            try:
                _, started = await fleet.wait_ready()
                await wait_offsets(dsn, topic, ends, fleet, within=900)
                live_seconds = time.monotonic() - started
                connection = await connect(dsn)
                try:
                    await apply_definitions(
                        connection, [parse_metric(live), parse_metric(backfilled)]
                    )
                finally:
                    await connection.close()
                await _wait_started(dsn, BACKFILL_UID)
                backfill_seconds, output = await asyncio.to_thread(_backfill, env)
                fleet.check_alive()
            finally:
                await fleet.stop()
            same = await _rows(dsn, LIVE_UID) == await _rows(dsn, BACKFILL_UID)
        if not same:
            raise RuntimeError("the backfilled metric's rows differ from the live metric's")
    finally:
        await delete_topics(bootstrap, with_dead_letters(topic))
    live_rate, backfill_rate = events / live_seconds, events / backfill_seconds
    lines += [
        "| reader | seconds | events/s |",
        "|---|---:|---:|",
        f"| live worker (`tally run`, from its first ready partition) | {live_seconds:.2f} | {live_rate:,.0f} |",
        f"| `tally backfill --from-offsets earliest` (whole run, worker still running) | {backfill_seconds:.2f} | {backfill_rate:,.0f} |",
        "",
        f"Backfill / live: {backfill_rate / live_rate:.2f}. The backfilled metric's rows equal"
        " the live one's, row for row (same definition, another uid).",
        "",
        "Last backfill line: " + (output.strip().splitlines() or ["-"])[-1],
    ]
    return "\n".join(lines)


def _backfill(env: dict[str, str]) -> tuple[float, str]:
    """Run the backfill to the end; (seconds from start to exit, its output)."""
    with tempfile.NamedTemporaryFile("w+b", prefix="tally-bench-backfill-", suffix=".log") as log:
        started = time.monotonic()
        status = subprocess.run(
            [sys.executable, "-m", "tally", "backfill", BACKFILL_UID, "--from-offsets", "earliest"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=1800,
        ).returncode
        seconds = time.monotonic() - started
        output = Path(log.name).read_text(errors="replace")
    if status != 0:
        raise RuntimeError(f"tally backfill exited with {status}:\n{output[-3000:]}")
    return seconds, output
