"""Freshness: seconds from produce to visible in `tally.metric_values`.

One worker runs a scenario's metrics against a fresh, empty topic and a fresh
database. A producer process (`tally.bench.live_producer`) sends live events
at a fixed rate for `warmup + seconds`, remembering when it handed each
batch to the client and, from the broker's answer, each event's partition
and offset. Meanwhile this process reads `tally.partition_offsets` every
`POLL_SECONDS`.

An event is visible once its partition's stored offset has passed its
offset: rollups and offsets commit in one transaction, so that is exact, and
cheaper to watch than the values themselves. Its visible time is the start
of the first poll that saw it; the figure is late by at most one poll
interval, half of it on average. The events produced in the first `warmup`
seconds are left out, so the percentiles describe the steady state.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from tally.bench.workers import (
    PARTITIONS,
    Fleet,
    create_topic,
    delete_topics,
    durable_counts,
    end_offsets,
    flush_interval,
    fresh_database,
    stored_offsets,
    wait_offsets,
    with_dead_letters,
    worker_env,
)

POLL_SECONDS = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class FreshnessResult:
    scenario: str
    max_rate: float  # the scenario's events/s over the live topic, this run
    target_rate: float  # what the producer was asked for: half of max_rate
    produced_rate: float  # what it achieved over the whole run
    behind_seconds: float  # the most its sends fell behind the schedule
    measured_events: int  # events produced after the warm-up
    seconds: float  # the measured window
    p50: float
    p99: float
    max: float
    flush_interval: str
    worker_cpu_share: float  # worker CPU seconds per wall second over the run
    producer_cpu_share: float


def visible_times(
    polls: Sequence[tuple[float, Mapping[int, int]]], batches: Sequence[Sequence[float]]
) -> tuple[np.ndarray[Any, np.dtype[np.float64]], np.ndarray[Any, np.dtype[np.float64]]]:
    """(sent_at, visible_at) of every event of `batches` (pure, for the tests).

    `polls` are (time, stored next offset per partition), in time order;
    `batches` are (sent_at, partition, base_offset, count). An event that no
    poll saw stored is visible at +inf.
    """
    sent: list[np.ndarray[Any, np.dtype[np.float64]]] = []
    seen: list[np.ndarray[Any, np.dtype[np.float64]]] = []
    for partition in sorted({int(b[1]) for b in batches}):
        mine = [b for b in batches if int(b[1]) == partition]
        times = np.array([t for t, _ in polls] + [np.inf])
        stored = np.array([s.get(partition, -1) for _, s in polls] + [np.iinfo(np.int64).max])
        stored = np.maximum.accumulate(stored)  # stored offsets only move forward
        counts = np.array([int(b[3]) for b in mine])
        bases = np.array([int(b[2]) for b in mine])
        offsets = np.repeat(bases, counts) + (
            np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        )
        first = np.searchsorted(stored, offsets, side="right")  # first poll with stored > offset
        sent.append(np.repeat(np.array([b[0] for b in mine], dtype=np.float64), counts))
        seen.append(times[first])
    if not sent:
        return np.empty(0), np.empty(0)
    return np.concatenate(sent), np.concatenate(seen)


async def run_freshness(
    bootstrap: str,
    admin_dsn: str,
    *,
    scenario: str,
    metrics: Sequence[Mapping[str, Any]],
    dedup: bool,
    max_rate: float,
    seconds: float,
    warmup: float,
    seed: int,
) -> FreshnessResult:
    rate = max_rate / 2
    topic = f"tally-bench-fresh-{uuid.uuid4().hex[:10]}"
    await create_topic(bootstrap, topic, replace=True)
    try:
        async with fresh_database(admin_dsn, metrics) as (_name, dsn):
            env = worker_env(
                bootstrap, dsn, topic, f"bench-{uuid.uuid4().hex[:8]}", dedup=dedup, live=True
            )
            fleet = Fleet(env, 1).start()
            try:
                await fleet.wait_ready()
                # every partition loaded (an empty topic: nothing to wait for but this)
                while fleet.text(0).count("partition ready") < PARTITIONS:
                    fleet.check_alive()
                    await asyncio.sleep(0.05)
                cpu_before = fleet.cpu_seconds()
                wall_before = time.monotonic()
                with tempfile.TemporaryDirectory(prefix="tally-fresh-") as folder:
                    out = Path(folder) / "batches.json"
                    errors = (Path(folder) / "producer.log").open("w+b")
                    producer = subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "tally.bench.live_producer",
                            "--bootstrap",
                            bootstrap,
                            "--topic",
                            topic,
                            "--rate",
                            f"{rate:.3f}",
                            "--seconds",
                            str(warmup + seconds),
                            "--seed",
                            str(seed),
                            "--partitions",
                            str(PARTITIONS),
                            "--out",
                            str(out),
                        ],
                        stdout=errors,
                        stderr=subprocess.STDOUT,
                    )
                    with errors:
                        try:
                            polls = await _poll_while(dsn, topic, producer, fleet)
                        finally:
                            if producer.poll() is None:
                                producer.kill()
                                producer.wait(10)
                        if producer.returncode != 0:
                            errors.seek(0)
                            raise RuntimeError(
                                f"the live producer exited with {producer.returncode}:\n"
                                f"{errors.read().decode(errors='replace')[-3000:]}"
                            )
                    report: dict[str, Any] = json.loads(out.read_text())
                # and on until every event is visible, still polling
                ends = await end_offsets(bootstrap, topic)
                polls += await _poll_until(dsn, topic, ends, fleet)
                await wait_offsets(dsn, topic, ends, fleet, within=30)
                worker_share = (fleet.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
            finally:
                await fleet.stop()
            counts = await durable_counts(dsn, topic)
    finally:
        await delete_topics(bootstrap, with_dead_letters(topic))
    if counts["records"] != report["events"] or counts["dead_letters"]:
        raise AssertionError(f"freshness run: produced {report['events']}, stored {counts}")
    sent, seen = visible_times(polls, report["batches"])
    begin = report["started"] + warmup
    window = (sent >= begin) & (sent < begin + seconds)
    latency = seen[window] - sent[window]
    return FreshnessResult(
        scenario=scenario,
        max_rate=max_rate,
        target_rate=rate,
        produced_rate=report["events"] / report["seconds"],
        behind_seconds=float(report["behind_seconds"]),
        measured_events=int(window.sum()),
        seconds=seconds,
        p50=float(np.percentile(latency, 50)),
        p99=float(np.percentile(latency, 99)),
        max=float(latency.max()),
        flush_interval=flush_interval(),
        worker_cpu_share=worker_share,
        producer_cpu_share=float(report["cpu_seconds"]) / float(report["seconds"]),
    )


async def _poll_while(
    dsn: str, topic: str, producer: subprocess.Popen[bytes], fleet: Fleet
) -> list[tuple[float, dict[int, int]]]:
    polls: list[tuple[float, dict[int, int]]] = []
    connection = await asyncpg.connect(dsn)
    try:
        while producer.poll() is None:
            fleet.check_alive()
            await _poll_once(connection, topic, polls)
    finally:
        await connection.close()
    return polls


async def _poll_until(
    dsn: str, topic: str, ends: Mapping[int, int], fleet: Fleet, within: float = 300
) -> list[tuple[float, dict[int, int]]]:
    polls: list[tuple[float, dict[int, int]]] = []
    deadline = time.monotonic() + within
    connection = await asyncpg.connect(dsn)
    try:
        while time.monotonic() < deadline:
            fleet.check_alive()
            stored = await _poll_once(connection, topic, polls)
            if all(stored.get(p, -1) >= end for p, end in ends.items() if end > 0):
                return polls
    finally:
        await connection.close()
    raise RuntimeError(f"freshness run: the worker did not catch up within {within:.0f} s")


async def _poll_once(
    connection: asyncpg.Connection[Any], topic: str, polls: list[tuple[float, dict[int, int]]]
) -> dict[int, int]:
    """One read of the stored offsets, remembered with the time it started; then
    sleep out the rest of the poll interval."""
    began = time.time()
    stored = await stored_offsets(connection, topic)
    polls.append((began, stored))
    await asyncio.sleep(max(0.0, POLL_SECONDS - (time.time() - began)))
    return stored
