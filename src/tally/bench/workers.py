"""Real `tally run` processes for the benches, and what is measured around them.

Everything here looks at a worker from the outside, as an operator would: its
log lines ("telemetry listening", "partitions assigned", "partition ready"),
its /metrics, its /proc entries, and what PostgreSQL holds. Nothing imports
the worker's or the core's internals, so the benches keep working whatever
those become.
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
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tally.config import without_renamed
from tally.contracts.metric import parse_metric
from tally.store.definitions import apply_definitions
from tally.store.migrate import migrate
from tally.store.pool import connect

PARTITIONS = 4
# The bench workers flush every second (TALLY_FLUSH_INTERVAL overrides it).
# The next flush starts as soon as the previous one has settled (the pipeline
# allows one in flight), so a short interval keeps PostgreSQL busy instead of
# leaving the last events waiting out a long timer.
DEFAULT_FLUSH_INTERVAL = "1"


def flush_interval() -> str:
    return os.environ.get("TALLY_FLUSH_INTERVAL", DEFAULT_FLUSH_INTERVAL)


# -- Kafka -------------------------------------------------------------------------------


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    try:
        await consumer.start()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def create_topic(bootstrap: str, topic: str, *, replace: bool = False) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        if topic in await admin.list_topics():
            if not replace:
                return
            await admin.delete_topics([topic])
            await asyncio.sleep(2)
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    await _wait_known(bootstrap, topic)


async def _wait_known(bootstrap: str, topic: str, within: float = 30) -> None:
    """Until the broker's metadata has the topic (a producer that starts
    sooner logs that the topic is missing, and retries)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    deadline = time.monotonic() + within
    try:
        await consumer.start()
        while topic not in await consumer.topics():
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} has no metadata after {within:.0f} s")
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()


def with_dead_letters(topic: str) -> list[str]:
    """A bench topic and the dead-letter topic its workers create (`<topic>.dlq`)."""
    return [topic, f"{topic}.dlq"]


async def delete_topics(bootstrap: str, topics: Sequence[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        present = set(await admin.list_topics())
        gone = [t for t in topics if t in present]
        if gone:
            await admin.delete_topics(gone)
    finally:
        await admin.close()


# -- PostgreSQL -----------------------------------------------------------------------------


def dsn_for(admin_dsn: str, database: str) -> str:
    head, _, tail = admin_dsn.rpartition("/")
    query = tail.partition("?")[2]
    return f"{head}/{database}" + (f"?{query}" if query else "")


@asynccontextmanager
async def fresh_database(
    admin_dsn: str, metrics: Sequence[Mapping[str, Any]]
) -> AsyncIterator[tuple[str, str]]:
    """(name, dsn) of a new database, migrated and holding `metrics`; dropped after."""
    name = f"tally_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        dsn = dsn_for(admin_dsn, name)
        connection = await connect(dsn)  # with the jsonb codec the definitions need
        try:
            await migrate(connection)
            await apply_definitions(connection, [parse_metric(dict(d)) for d in metrics])
        finally:
            await connection.close()
        yield name, dsn
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def stored_offsets(connection: asyncpg.Connection[Any], topic: str) -> dict[int, int]:
    rows = await connection.fetch(
        "SELECT partition, next_offset FROM tally.partition_offsets WHERE topic = $1", topic
    )
    return {r["partition"]: r["next_offset"] for r in rows}


async def durable_counts(dsn: str, topic: str) -> dict[str, float]:
    """What tally.partition_offsets says became of the records, and the rollup rows."""
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT coalesce(sum(records_total), 0) AS records,"
            " coalesce(sum(duplicates_total), 0) AS duplicates,"
            " coalesce(sum(dead_letters_total), 0) AS dead_letters"
            " FROM tally.partition_offsets WHERE topic = $1",
            topic,
        )
        rows = await connection.fetchval("SELECT count(*) FROM tally.metric_values")
    finally:
        await connection.close()
    assert row is not None
    return {
        "records": float(row["records"]),
        "duplicates": float(row["duplicates"]),
        "dead_letters": float(row["dead_letters"]),
        "rows": float(rows),
    }


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def machine_busy_seconds() -> float:
    """CPU time every process on the machine used so far, all cores (/proc/stat:
    user, nice, system, irq and softirq; not idle, iowait or a hypervisor's
    steal). The broker, PostgreSQL, the worker and any neighbour: with the
    run's wall time, how much of the machine it took."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


async def backend_cpu(dsn: str, database: str) -> float:
    """CPU seconds of the server processes serving `database` (a local server).

    Only the backends still connected count: read it before the workers stop.
    """
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
                total += proc_cpu_seconds(row["pid"])
            except OSError:  # not on this machine, or gone
                return float("nan")
    return total


# -- the worker processes ---------------------------------------------------------------------


def worker_env(
    bootstrap: str, dsn: str, topic: str, group: str, *, dedup: bool, live: bool
) -> dict[str, str]:
    """The environment of a bench worker.

    A backfill's event times are fixed in the past (so the run is the same
    every time), so its acceptance window is opened wide; a live workload's
    are close to the wall clock and go through the default window (35 days
    late, 5 minutes ahead), as a production stream does.
    """
    return {
        **without_renamed(os.environ),
        "TALLY_KAFKA_BOOTSTRAP": bootstrap,
        "TALLY_DATABASE_URL": dsn,
        "TALLY_TOPIC": topic,
        "TALLY_GROUP": group,
        "TALLY_TELEMETRY_PORT": "0",
        "TALLY_TELEMETRY_HOST": "127.0.0.1",
        "TALLY_LOG_FORMAT": "text",  # the bench reads the log lines
        "TALLY_DEDUP_WINDOW": "24h" if dedup else "0",
        "TALLY_MAX_LATENESS": "35d" if live else "100000d",
        "TALLY_MAX_FUTURE_SKEW": "5m" if live else "100000d",
        "TALLY_FLUSH_INTERVAL": flush_interval(),
    }


class Fleet:
    """`count` worker processes of one consumer group, each logging to a file of its own."""

    def __init__(self, env: Mapping[str, str], count: int) -> None:
        self.env = dict(env)
        self.count = count
        self.logs: list[IO[bytes]] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> Fleet:
        for _ in range(self.count):
            log = tempfile.NamedTemporaryFile("w+b", prefix="tally-bench-", suffix=".log")  # noqa: SIM115
            self.logs.append(log)
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tally", "run"],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return self

    def text(self, n: int) -> str:
        return Path(self.logs[n].name).read_text(errors="replace")

    def check_alive(self) -> None:
        for n, process in enumerate(self.processes):
            if process.poll() is not None:
                raise RuntimeError(f"bench worker {n} exited:\n{self.text(n)[-3000:]}")

    async def wait_ready(self, within: float = 120) -> tuple[list[str], float]:
        """(telemetry ports, time of the first "partition ready" of any worker)."""
        deadline = time.monotonic() + within
        started: float | None = None
        ports: list[str | None] = [None] * self.count
        while time.monotonic() < deadline:
            for n in range(self.count):
                text = self.text(n)
                if ports[n] is None:
                    found = re.findall(r"url=http://[^:]+:(\d+)/metrics", text)
                    ports[n] = found[-1] if found else None
                if started is None and "partition ready" in text:
                    started = time.monotonic()
            if started is not None and all(ports):
                return [p for p in ports if p is not None], started
            self.check_alive()
            await asyncio.sleep(0.02)
        raise RuntimeError("the bench workers did not get their partitions in time")

    def balanced(self) -> bool:
        """Every worker holds partitions, they add up to all of them, and each
        of its latest assignment's partitions has been ready (a worker logs a
        ready line per partition as it loads it, then the assignment). A
        partition reloaded after a rebalance may count as ready a moment early:
        `wait_balanced` waits for the assignment to stay put a while anyway."""
        held = 0
        for n in range(self.count):
            lines = self.text(n).splitlines()
            assigned = [i for i, line in enumerate(lines) if "partitions assigned" in line]
            if not assigned:
                return False
            found = re.search(r"partitions=(\S+)", lines[assigned[-1]])
            mine = {int(p) for p in re.findall(r"\[(\d+)\]", found.group(1))} if found else set()
            ready = {
                int(m.group(1))
                for line in lines
                if "partition ready" in line and (m := re.search(r" partition=(\d+)", line))
            }
            if not mine or not mine <= ready:
                return False
            held += len(mine)
        return held == PARTITIONS

    async def wait_balanced(self, within: float = 120, steady: float = 0.5) -> None:
        """Until `balanced()` has held for `steady` seconds with no new assignment."""
        deadline = time.monotonic() + within
        since: tuple[float, int] | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            if not self.balanced():
                since = None
            elif since is None or since[1] != self.assignments():
                since = (time.monotonic(), self.assignments())
            elif time.monotonic() - since[0] >= steady:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("the bench workers did not settle on a balanced assignment in time")

    def assignments(self) -> int:
        """ "partitions assigned" lines of all the workers: 1 per worker without a rebalance."""
        return sum(self.text(n).count("partitions assigned") for n in range(self.count))

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(p.pid) for p in self.processes)

    def peak_rss(self) -> int:
        return max(peak_rss(p.pid) for p in self.processes)

    async def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                await asyncio.to_thread(process.wait, 60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait, 10)
        for log in self.logs:
            log.close()


async def wait_offsets(
    dsn: str, topic: str, ends: Mapping[int, int], fleet: Fleet, within: float | None = None
) -> None:
    """Until PostgreSQL holds `ends` for every partition that has records."""
    deadline = None if within is None else time.monotonic() + within
    connection = await asyncpg.connect(dsn)
    try:
        while True:
            stored = await stored_offsets(connection, topic)
            if all(stored.get(p, -1) >= end for p, end in ends.items() if end > 0):
                return
            fleet.check_alive()
            if deadline is not None and time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not reach {dict(ends)} in time: {stored}")
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


def scrape(port: str) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def scrape_all(ports: Sequence[str]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for port in ports:
        for name, value in scrape(port).items():
            totals[name] = totals.get(name, 0.0) + value
    return totals


SETTLED = ("tally_flushes_total", "tally_rollup_rows_written_total")


def settled_scrape(ports: Sequence[str], pause: float = 0.3, tries: int = 10) -> dict[str, float]:
    """The workers' counters once the last flush's are in.

    PostgreSQL may hold a flush's offsets a moment before the worker has
    counted that flush, so scrape until two scrapes `pause` apart agree.
    """
    totals = scrape_all(ports)
    for _ in range(tries):
        time.sleep(pause)
        again = scrape_all(ports)
        if all(again.get(k) == totals.get(k) for k in SETTLED):
            return again
        totals = again
    return totals


class TransactionGate:
    """A topic whose events are all produced in one open Kafka transaction.

    Tally consumes with `read_committed`, so its workers see none of them until
    `release()` commits: they can join the group, settle their assignment and
    load their partitions first, and then all start on the same backlog at
    once. The commit writes one control record at the end of every partition
    it touched, so a partition is consumed once its stored offset reaches its
    end offset less one (a worker may or may not store the position past the
    marker; both count).
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.producer: AIOKafkaProducer | None = None
        self.committed = False

    async def fill(self, messages: Iterable[tuple[bytes, bytes]]) -> None:
        await create_topic(self.bootstrap, self.topic, replace=True)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            transactional_id=f"tally-bench-{uuid.uuid4().hex[:12]}",
            enable_idempotence=True,
            acks="all",
            linger_ms=50,
            max_batch_size=1 << 20,
            transaction_timeout_ms=900_000,  # the broker's default maximum
        )
        await self.producer.start()
        await self.producer.begin_transaction()
        for key, value in messages:
            await self.producer.send(self.topic, value, key=key)
        await self.producer.flush()

    async def release(self) -> dict[int, int]:
        """Commit; the offsets that mean "all consumed", per partition with records."""
        assert self.producer is not None
        await self.producer.commit_transaction()
        self.committed = True
        ends = await end_offsets(self.bootstrap, self.topic)
        return {p: end - 1 for p, end in ends.items() if end > 0}

    async def close(self) -> None:
        try:
            if self.producer is not None:
                if not self.committed:
                    await self.producer.abort_transaction()
                await self.producer.stop()
        finally:
            await delete_topics(self.bootstrap, with_dead_letters(self.topic))
