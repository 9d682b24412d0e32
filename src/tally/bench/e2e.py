"""`tally bench`: Tally end to end against the consume ceiling and the peers.

A topic is pre-loaded once with a fixed, seeded synthetic workload. Each
scenario then runs a real `tally run` process against a fresh database,
timed from its first partition assignment until PostgreSQL holds the end
offsets of every partition. The baselines run in the same invocation, on
the same broker and data (`tally.bench.peers`). Results are ratios: the
machine is noisy, a ratio measured in one run is not.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tally.bench.checks import check_exact, check_peer, report, sample_customers
from tally.bench.peers import (
    PEER_JOB_METRICS,
    RunResult,
    run_ceiling,
    run_quixstreams,
    run_sql_route,
)
from tally.contracts.metric import parse_metric
from tally.store.definitions import apply_definitions
from tally.store.migrate import migrate
from tally.store.pool import connect
from tally.synthetic import Workload, events, metric_definitions

PARTITIONS = 4
BENCH_END = 1_795_000_000.0  # fixed event-time end, so the workload is the same every run


def count_sum_only(count: int) -> list[dict[str, Any]]:
    return [d for d in metric_definitions(count * 3) if d["aggregationType"] != "UNIQUE"][:count]


def unique_heavy() -> list[dict[str, Any]]:
    """Six UNIQUE metrics (users, emails, endpoints...) plus two COUNTs."""
    base: dict[str, Any] = {"name": "u", "aggregationType": "UNIQUE", "timeUnits": ["day", "month"]}
    uniques: list[dict[str, Any]] = [
        {
            **base,
            "uid": "u_api_users",
            "eventType": "api_call",
            "aggregationProperty": "user",
            "caseSensitive": False,
        },
        {
            **base,
            "uid": "u_api_endpoints",
            "eventType": "api_call",
            "aggregationProperty": "endpoint",
        },
        {
            **base,
            "uid": "u_users_by_region",
            "eventType": "api_call",
            "aggregationProperty": "user",
            "metricType": "GROUPED",
            "groupingProperty": "region",
        },
        {
            **base,
            "uid": "u_logins",
            "eventType": "login",
            "aggregationProperty": "email",
            "caseSensitive": False,
        },
        {**base, "uid": "u_senders", "eventType": "message_sent", "aggregationProperty": "user"},
        {
            **base,
            "uid": "u_countries",
            "eventType": "message_sent",
            "aggregationProperty": "recipient_country",
        },
    ]
    return uniques + metric_definitions(2)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    metrics: list[dict[str, Any]]
    dedup: bool = True


def scenarios() -> dict[str, Scenario]:
    found = [
        Scenario(name="peer job (2 metrics), dedup on", metrics=list(PEER_JOB_METRICS)),
        Scenario(name="1 metric, dedup on", metrics=metric_definitions(1)),
        Scenario(name="10 metrics, dedup on", metrics=metric_definitions(10)),
        Scenario(name="10 metrics, dedup off", metrics=metric_definitions(10), dedup=False),
        Scenario(name="10 metrics COUNT/SUM only, dedup on", metrics=count_sum_only(10)),
        Scenario(name="UNIQUE-heavy (8 metrics), dedup on", metrics=unique_heavy()),
        Scenario(name="50 metrics, dedup on", metrics=metric_definitions(50)),
    ]
    return {s.name: s for s in found}


# -- the workload ---------------------------------------------------------------


async def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    try:
        await consumer.start()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def preload(bootstrap: str, count: int, seed: int) -> str:
    """The topic holding `count` seeded events; produced once, reused after."""
    topic = f"tally-bench-s{seed}-n{count}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        exists = topic in await admin.list_topics()
        if exists and sum((await _end_offsets(bootstrap, topic)).values()) == count:
            return topic
        if exists:
            await admin.delete_topics([topic])
            await asyncio.sleep(2)
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=1 << 20, acks="all"
    )
    await producer.start()
    try:
        for document in events(Workload(seed=seed, end=BENCH_END, span_seconds=3 * 86400), count):
            await producer.send(topic, orjson.dumps(document), key=document["customerId"].encode())
        await producer.flush()
    finally:
        await producer.stop()
    return topic


def workload_values(count: int, seed: int) -> list[bytes]:
    return [
        orjson.dumps(d)
        for d in events(Workload(seed=seed, end=BENCH_END, span_seconds=3 * 86400), count)
    ]


# -- one Tally run ----------------------------------------------------------------


@dataclass(slots=True)
class _Database:
    admin_dsn: str
    name: str = field(default_factory=lambda: f"tally_bench_{uuid.uuid4().hex[:12]}")

    async def __aenter__(self) -> _Database:
        connection = await asyncpg.connect(self.admin_dsn)
        try:
            await connection.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await connection.close()
        return self

    async def __aexit__(self, *_: object) -> None:
        connection = await asyncpg.connect(self.admin_dsn)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await connection.close()


def _dsn_for(admin_dsn: str, database: str) -> str:
    head, _, tail = admin_dsn.rpartition("/")
    query = tail.partition("?")[2]
    return f"{head}/{database}" + (f"?{query}" if query else "")


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _scrape(port: str) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


async def run_tally(
    bootstrap: str,
    topic: str,
    count: int,
    admin_dsn: str,
    scenario: Scenario,
    keep: Callable[[str], Any] | None = None,
) -> RunResult:
    """One worker process over the whole topic; `keep(dsn)` runs before the database is dropped."""
    database = _Database(admin_dsn)
    async with database:
        dsn = _dsn_for(admin_dsn, database.name)
        connection = await connect(dsn)  # with the jsonb codec the definitions need
        try:
            await migrate(connection)
            await apply_definitions(connection, [parse_metric(d) for d in scenario.metrics])
        finally:
            await connection.close()
        ends = await _end_offsets(bootstrap, topic)
        env = {
            **os.environ,
            "TALLY_KAFKA_BOOTSTRAP": bootstrap,
            "TALLY_DATABASE_URL": dsn,
            "TALLY_TOPIC": topic,
            "TALLY_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
            "TALLY_METRICS_PORT": "0",
            "TALLY_METRICS_HOST": "127.0.0.1",
            "TALLY_DEDUP_WINDOW": "24h" if scenario.dedup else "0",
            "TALLY_MAX_LATENESS": "100000d",
            "TALLY_MAX_FUTURE_SKEW": "100000d",
            # The next flush starts as soon as the previous one has settled (the
            # pipeline allows one in flight), so a short interval keeps PostgreSQL
            # busy instead of leaving the last events waiting out a long timer.
            "TALLY_FLUSH_INTERVAL": os.environ.get("TALLY_FLUSH_INTERVAL", "1"),
        }
        with tempfile.NamedTemporaryFile("w+b", prefix="tally-bench-", suffix=".log") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "tally", "run"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                port, started = await _wait_assigned(Path(log.name), worker)
                await _wait_offsets(dsn, topic, ends, worker, Path(log.name))
                seconds = time.monotonic() - started
                cpu, rss = _cpu_seconds(worker.pid), _peak_rss(worker.pid)
                database_cpu = await _backend_cpu(dsn, database.name)
                totals = await asyncio.to_thread(_scrape, port)
            finally:
                os.killpg(worker.pid, signal.SIGTERM)
                await asyncio.to_thread(worker.wait, 60)
        connection = await asyncpg.connect(dsn)
        try:
            rows = int(await connection.fetchval("SELECT count(*) FROM tally.metric_values"))
        finally:
            await connection.close()
        if keep is not None:
            await keep(dsn)
    return RunResult(
        name=f"Tally: {scenario.name}",
        events=count,
        seconds=seconds,
        cpu_seconds=cpu,
        peak_rss_bytes=rss,
        rows=rows,
        detail={
            # The PostgreSQL backends' own CPU (the server runs on this machine):
            # what the database spent on this run, next to the worker's.
            "db_backend_cpu_seconds": database_cpu,
            "flush_in_flight_share": totals.get("tally_flush_duration_seconds_sum", 0.0) / seconds,
            "flushes": totals.get("tally_flushes_total", 0.0),
            "rollup_upserts": totals.get("tally_rollup_rows_written_total", 0.0),
        },
        results=None,
    )


async def _backend_cpu(dsn: str, database: str) -> float:
    """CPU seconds of the server processes serving `database` (a local server)."""
    connection = await asyncpg.connect(dsn)
    try:
        own = await connection.fetchval("SELECT pg_backend_pid()")
        pids = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", database
        )
    finally:
        await connection.close()
    total = 0.0
    for row in pids:
        if row["pid"] != own:
            try:
                total += _cpu_seconds(row["pid"])
            except OSError:  # not on this machine, or gone
                return float("nan")
    return total


async def _wait_assigned(log: Path, worker: subprocess.Popen[bytes]) -> tuple[str, float]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        port = re.findall(r"url=http://[^:]+:(\d+)/metrics", text)
        if port and "partition ready" in text:
            return port[-1], time.monotonic()
        if worker.poll() is not None:
            raise RuntimeError(f"the bench worker exited:\n{text[-3000:]}")
        await asyncio.sleep(0.02)
    raise RuntimeError("the bench worker did not get its partitions in time")


async def _wait_offsets(
    dsn: str, topic: str, ends: dict[int, int], worker: subprocess.Popen[bytes], log: Path
) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        while True:
            rows = await connection.fetch(
                "SELECT partition, next_offset FROM tally.partition_offsets WHERE topic = $1", topic
            )
            stored = {r["partition"]: r["next_offset"] for r in rows}
            if all(stored.get(p, -1) >= end for p, end in ends.items() if end > 0):
                return
            if worker.poll() is not None:
                raise RuntimeError(
                    f"the bench worker exited:\n{log.read_text(errors='replace')[-3000:]}"
                )
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


# -- the whole bench ----------------------------------------------------------------------


async def bench(
    bootstrap: str,
    dsn: str,
    *,
    count: int,
    seed: int,
    chosen: Sequence[str],
    peers: bool,
    check: bool,
    check_share: float,
    say: Callable[[str], None] = print,
) -> list[RunResult]:
    say(f"pre-loading {count:,} events (seed {seed}) ...")
    topic = await preload(bootstrap, count, seed)
    values = workload_values(count, seed) if check else []
    customers = sample_customers(values, check_share) if check else set()
    results: list[RunResult] = []
    table_of = scenarios()
    for name in chosen:
        scenario = table_of[name]
        say(f"running Tally: {name} ...")

        async def keep(database: str, scenario: Scenario = scenario) -> None:
            if check:
                compared = await check_exact(
                    database, scenario.metrics, values, customers, scenario.dedup
                )
                say(
                    f"  exact: {compared:,} rollups of {len(customers)} customers equal the reference"
                )

        result = await run_tally(bootstrap, topic, count, dsn, scenario, keep)
        say(f"  {result.events / result.seconds:,.0f} events/s")
        results.append(result)
    if peers:
        for runner in (run_ceiling, run_quixstreams, run_sql_route):
            say(f"running {runner.__name__.removeprefix('run_')} ...")
            args = (
                (bootstrap, topic, count)
                if runner is run_ceiling
                else (bootstrap, topic, count, dsn)
            )
            result = await asyncio.to_thread(runner, *args)
            if check and result.results is not None:
                check_peer(result, values, customers)
                say(f"  exact: {result.name} equals the reference for {len(customers)} customers")
            say(f"  {result.events / result.seconds:,.0f} events/s")
            results.append(result)
    return results


def main(
    bootstrap: str,
    dsn: str,
    count: int,
    seed: int,
    chosen: Sequence[str] | None,
    peers: bool,
    check: bool,
    check_share: float,
) -> str:
    names = list(chosen) if chosen else list(scenarios())
    results = asyncio.run(
        bench(
            bootstrap,
            dsn,
            count=count,
            seed=seed,
            chosen=names,
            peers=peers,
            check=check,
            check_share=check_share,
        )
    )
    return report(results)
