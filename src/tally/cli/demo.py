"""`tally demo` (what `make run` starts): a worker, a synthetic stream, a live summary.

It migrates, applies `deploy/metrics.example.yaml`, creates the topic, starts
`tally run` as a child process and a synthetic producer (with a few repeats
and malformed events, so duplicates and dead letters show), and redraws a
summary every second until Ctrl-C, which stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tally.cli.commands import stop_on_signals
from tally.cli.options import settings_from
from tally.config import Settings, without_renamed
from tally.kafka.clients import ensure_topics, new_producer
from tally.store import definitions as store
from tally.store.migrate import migrate
from tally.store.pool import database
from tally.synthetic import Workload, events

ROLLUPS_SQL = """
SELECT metric_uid, customer_id, group_key, time_unit, period_start, value, event_count
  FROM tally.metric_values ORDER BY updated_at DESC, metric_uid, customer_id LIMIT 8
"""


@dataclass
class Counts:
    sent: int = 0
    malformed: int = 0
    repeated: int = 0
    started: float = field(default_factory=time.monotonic)


def say(text: str) -> None:
    print(text, flush=True)


async def produce(
    settings: Settings, topic: str, rate: float, counts: Counts, stop: asyncio.Event
) -> None:
    producer = new_producer(settings.kafka_bootstrap, idempotent=False, linger_ms=20)
    await producer.start()
    rng = random.Random(1)
    stream = events(Workload(seed=int(time.time()), end=time.time(), span_seconds=3600), 10**9)
    recent: list[tuple[bytes, bytes]] = []
    try:
        while not stop.is_set():
            tick = time.monotonic()
            for _ in range(max(1, int(rate / 10))):
                roll = rng.random()
                if roll < 0.005:
                    key, value = b"bad", b'{"id": "oops", "eventType": "api_call"'  # not JSON
                    counts.malformed += 1
                elif roll < 0.03 and recent:
                    key, value = rng.choice(recent)  # a producer retry: same id again
                    counts.repeated += 1
                else:
                    document = next(stream)
                    key, value = document["customerId"].encode(), orjson.dumps(document)
                    recent = [*recent[-99:], (key, value)]
                await producer.send(topic, value=value, key=key)
                counts.sent += 1
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    finally:
        await producer.stop()


def scrape_text(url: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + (
                "{" + ",".join(f"{v}" for v in sample.labels.values()) + "}"
                if sample.labels
                else ""
            )
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def total(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def bar(done: float, whole: float, width: int = 24) -> str:
    filled = int(width * min(1.0, done / whole)) if whole else 0
    return "▕" + "█" * filled + "░" * (width - filled) + "▏"


def render(
    settings: Settings,
    url: str,
    counts: Counts,
    samples: dict[str, float],
    rows: list[asyncpg.Record],
    rate: float,
) -> str:
    consumed = total(samples, "tally_events_consumed_total")
    applied_events = consumed - total(samples, "tally_pending_events")
    by_reason = {
        k.split("{", 1)[1].rstrip("}"): int(v)
        for k, v in samples.items()
        if k.startswith("tally_events_dead_lettered_total{") and v
    }
    last = samples.get("tally_last_flush_timestamp_seconds", 0.0)
    age = f"{time.time() - last:.1f} s ago" if last else "not yet"
    lines = [
        "Tally, live  (Ctrl-C stops the worker, the stream and the services make run started)",
        f"worker /metrics: {url}/metrics   database: {settings.redacted_database_url()}",
        "",
        f"sent     {counts.sent:>9,}   consumed {int(consumed):>9,} {bar(applied_events, counts.sent)} "
        f"{applied_events / max(1, counts.sent):>4.0%} flushed",
        f"rate     {rate:>9,.0f} events/s   lag {int(total(samples, 'tally_consumer_lag_events')):>7,}   "
        f"pending {int(total(samples, 'tally_pending_events')):>7,}   last flush {age}",
        f"repeats  {int(total(samples, 'tally_events_duplicate_total')):>9,} dropped as duplicates   "
        f"dead letters {sum(by_reason.values()):,} "
        + " ".join(f"({r}: {n})" for r, n in by_reason.items()),
        "",
        "latest rollups:",
        f"  {'metric':<24} {'customer':<11} {'group':<16} {'unit':<6} {'period start (UTC)':<20} {'value':>12} {'events':>7}",
    ]
    lines += [
        f"  {r['metric_uid'][:24]:<24} {r['customer_id'][:11]:<11} {r['group_key'][:16]:<16} {r['time_unit']:<6} "
        f"{r['period_start'].strftime('%Y-%m-%d %H:%M'):<20} {r['value']!s:>12} {r['event_count']:>7}"
        for r in rows
    ]
    if not rows:
        lines.append("  (none yet: waiting for the first flush)")
    return "\n".join(lines)


async def demo(args: argparse.Namespace) -> int:
    settings: Settings = settings_from(args)
    topic = settings.topic[0]
    say(f"PostgreSQL: {settings.redacted_database_url()}   Kafka: {settings.kafka_bootstrap}")
    async with database(settings) as connection:
        applied = await migrate(connection)
        say(f"schema: {'migrated' if applied else 'up to date'}")
        from tally.cli.commands import read_definitions

        changes = await store.apply_definitions(connection, read_definitions(args.metrics))
        say(f"metrics from {args.metrics}: " + ", ".join(c.describe() for c in changes))
    created = await ensure_topics(settings.kafka_bootstrap, {topic: 4})
    say(f"topic {topic}: {'created with 4 partitions' if created else 'exists'}")
    log_path = Path(args.worker_log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **without_renamed(os.environ),
        "TALLY_TOPIC": topic,
        "TALLY_TELEMETRY_PORT": str(settings.telemetry_port),
        "TALLY_TELEMETRY_HOST": "127.0.0.1",
        "TALLY_FLUSH_INTERVAL": "1",
    }
    log_start = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log:
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tally",
            "run",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stop = stop_on_signals()
    counts = Counts()
    producer: asyncio.Task[None] | None = None
    try:
        url = await wait_for_worker(log_path, log_start, worker, stop)
        say(f"worker started (log: {log_path}); metrics at {url}/metrics")
        producer = asyncio.create_task(produce(settings, topic, args.rate, counts, stop))
        await summarise(settings, url, counts, stop)
    finally:
        stop.set()
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer
        if worker.returncode is None:
            os.killpg(worker.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.wait(), 60)
        say(
            f"\nstopped: {counts.sent:,} events sent; worker exited with status {worker.returncode}"
        )
    return 0


async def wait_for_worker(
    log_path: Path, log_start: int, worker: asyncio.subprocess.Process, stop: asyncio.Event
) -> str:
    """The worker's /metrics base URL, once it has joined its group."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not stop.is_set():
        with log_path.open("rb") as log:
            log.seek(log_start)
            text = log.read().decode(errors="replace")
        found = re.findall(r"url=http://[^:]+:(\d+)/metrics", text)
        if found and "partitions assigned" in text:
            return f"http://127.0.0.1:{found[-1]}"
        if worker.returncode is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode}); see {log_path}")
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the worker did not join its group in time; see {log_path}")


async def summarise(settings: Settings, url: str, counts: Counts, stop: asyncio.Event) -> None:
    tty = sys.stdout.isatty()
    previous, previous_at = 0.0, time.monotonic()
    async with database(settings) as connection:
        while not stop.is_set():
            try:
                samples = await asyncio.to_thread(scrape_text, url + "/metrics")
            except OSError as exc:
                print(f"cannot read the worker's metrics at {url}: {exc}", flush=True)
            else:
                consumed = total(samples, "tally_events_consumed_total")
                now = time.monotonic()
                rate = (consumed - previous) / max(1e-3, now - previous_at)
                previous, previous_at = consumed, now
                rows = await connection.fetch(ROLLUPS_SQL)
                screen = render(settings, url, counts, samples, rows, rate)
                print(("\x1b[H\x1b[J" if tty else "\n") + screen, flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
