"""`tally bench ingest`: POST /events against producing the same events straight to Kafka.

One run, one broker, two fresh topics:

- direct: the bench's own aiokafka producer, with the ingest producer's
  settings (acks=all, idempotent; tally.ingest.producer.producer_for), sends
  the events in batches of `batch`, `connections` batches in flight, each
  batch waited on until every record is acknowledged;
- HTTP: a `tally ingest serve` subprocess (its own process, as deployed) and
  a load generator in this one (`KeepAlive`, a minimal HTTP/1.1 client):
  `connections` keep-alive connections, each posting a JSON array of `batch`
  events and reading its answer whole (status 202, every event accepted).

The events are the same seeded synthetic ones (tally.synthetic), timed within
the last hour so the decoder accepts them all. Afterwards each topic is read
back: every event id must be there exactly once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from tally.api.auth import new_token, token_entry
from tally.bench.peer_common import cpu_seconds, proc_cpu_seconds
from tally.bench.workers import PARTITIONS, create_topic, delete_topics, end_offsets
from tally.ingest.producer import producer_for
from tally.synthetic import Workload, events

BATCH = 100
CONNECTIONS = 8
LAGO_REST_EVENTS_PER_SECOND = 10_000  # Lago's published figure for its REST ingest
SERVER_START_SECONDS = 60.0
STOP_SECONDS = 30.0  # then the server is killed


@dataclass(frozen=True, slots=True)
class Batch:
    body: bytes  # the JSON array POST /events gets
    records: list[tuple[bytes, bytes]]  # (key, value) of each event, as Kafka gets them


@dataclass(frozen=True, slots=True)
class Leg:
    """One way in: how many events, how long, and each request's (or batch's) latency."""

    name: str
    events: int
    seconds: float
    latencies: list[float]
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # by process

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(slots=True)
class IngestBenchReport:
    direct: Leg
    http: Leg
    connections: int
    batch: int
    topics: dict[str, Counter[str]] = field(default_factory=dict)  # leg name -> id counts
    load: list[str] = field(default_factory=list)  # /proc/loadavg at start and end

    @property
    def ratio(self) -> float:
        return self.http.rate / self.direct.rate


def make_batches(count: int, seed: int, batch: int, now: float) -> list[Batch]:
    workload = Workload(seed=seed, end=now, span_seconds=3600.0)
    found: list[Batch] = []
    records: list[tuple[bytes, bytes]] = []
    for document in events(workload, count):
        records.append((document["customerId"].encode(), orjson.dumps(document)))
        if len(records) == batch:
            found.append(_batch(records))
            records = []
    if records:
        found.append(_batch(records))
    return found


def ids_of(batch: Batch) -> list[str]:
    return [orjson.loads(value)["id"] for _, value in batch.records]


def _batch(records: list[tuple[bytes, bytes]]) -> Batch:
    return Batch(b"[" + b",".join(value for _, value in records) + b"]", records)


def read_loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unavailable"


async def _in_flight(
    batches: Sequence[Batch], connections: int, one: Callable[[Batch], Awaitable[None]]
) -> tuple[float, list[float]]:
    """Every batch through `one` (a coroutine function), `connections` at a time."""
    latencies: list[float] = []
    pending = iter(batches)

    async def lane() -> None:
        for item in pending:  # one shared iterator: each batch goes to one lane
            started = time.perf_counter()
            await one(item)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(connections)))
    return time.perf_counter() - started, latencies


async def produce_direct(
    bootstrap: str, topic: str, batches: Sequence[Batch], connections: int
) -> Leg:
    producer = producer_for(bootstrap)
    await producer.start()
    try:

        async def one(item: Batch) -> None:
            sent = [await producer.send(topic, value, key=key) for key, value in item.records]
            await asyncio.gather(*sent)

        seconds, latencies = await _in_flight(batches, connections, one)
    finally:
        await producer.stop()
    return Leg("direct", sum(len(b.records) for b in batches), seconds, latencies)


class KeepAlive:
    """One keep-alive HTTP/1.1 connection posting JSON bodies: the load
    generator's client. Hand-written rather than httpx, which spent about 1 ms
    of CPU a request (1.0 CPU s per 100k events, as much as the ingest server's
    own Kafka producer) on the same two cores as the server it measures. It
    still reads every answer whole and checks its status and its count."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self._address = (host, port)
        self._head = (
            f"POST /events HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        ).encode()
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(*self._address)
        reader, writer = self._streams
        writer.write(self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(":", 1) for line in lines if line)
        length = {k.strip().lower(): v.strip() for k, v in headers.items()}.get("content-length")
        if length is None:
            raise RuntimeError(f"POST /events answered without a Content-Length: {head!r}")
        return int(status_line.split(" ", 2)[1]), await reader.readexactly(int(length))

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            await self._streams[1].wait_closed()


async def post_http(url: str, token: str, batches: Sequence[Batch], connections: int) -> Leg:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    lanes = [KeepAlive(host, int(port), token) for _ in range(connections)]
    free = list(lanes)  # each request takes a connection no other request is using

    async def one(item: Batch) -> None:
        lane = free.pop()
        try:
            status, content = await lane.post(item.body)
        finally:
            free.append(lane)
        answer = orjson.loads(content)
        if status != 202 or answer["accepted"] != len(item.records):
            raise RuntimeError(f"POST /events answered {status}: {answer}")

    try:
        seconds, latencies = await _in_flight(batches, connections, one)
    finally:
        for lane in lanes:
            await lane.close()
    return Leg("http", sum(len(b.records) for b in batches), seconds, latencies)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class IngestServer:
    """`python -m tally ingest serve` on a free port, with one ingest token."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        start_seconds: float = SERVER_START_SECONDS,
        stop_seconds: float = STOP_SECONDS,
    ) -> None:
        self.start_seconds = start_seconds
        self.stop_seconds = stop_seconds
        self.token = new_token()
        self.url = f"http://127.0.0.1:{_free_port()}"
        self._env = {
            **os.environ,
            "TALLY_KAFKA_BOOTSTRAP": bootstrap,
            "TALLY_TOPIC": topic,
            "TALLY_API_HOST": "127.0.0.1",
            "TALLY_API_PORT": self.url.rsplit(":", 1)[1],
            "TALLY_API_TOKENS": token_entry("bench", "ingest", self.token),
            "TALLY_LOG_LEVEL": "WARNING",
        }
        self._process: subprocess.Popen[bytes] | None = None

    def cpu_seconds(self) -> float:
        """user + sys of the server process so far (0 where /proc is not readable)."""
        assert self._process is not None
        return proc_cpu_seconds(self._process.pid) or 0.0

    async def __aenter__(self) -> IngestServer:
        command = [sys.executable, "-m", "tally", "ingest", "serve"]
        self._process = subprocess.Popen(command, env=self._env)
        try:
            await self._wait_ready()
        except BaseException:
            # __aexit__ does not run when __aenter__ raises: stop it here, or a
            # server that is slow to start (or a Ctrl-C) leaves it running.
            await self._stop()
            raise
        return self

    async def _wait_ready(self) -> None:
        """Until /readyz answers 200 (its producer is started), or the server exits."""
        assert self._process is not None
        deadline = time.monotonic() + self.start_seconds
        async with httpx.AsyncClient(base_url=self.url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"tally ingest serve exited {self._process.returncode}")
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError(f"tally ingest serve not ready after {self.start_seconds:g} s")

    async def _stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within stop_seconds; reaped either way."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, self.stop_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()


async def topic_ids(bootstrap: str, topic: str) -> Counter[str]:
    """How many times each event id is in the topic (every record, start to end)."""
    ends = await end_offsets(bootstrap, topic)
    counts: Counter[str] = Counter()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp.partition]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    counts[orjson.loads(record.value or b"{}")["id"]] += 1
    finally:
        await consumer.stop()
    return counts


async def bench_ingest(
    bootstrap: str,
    count: int,
    *,
    seed: int = 7,
    batch: int = BATCH,
    connections: int = CONNECTIONS,
    say: Callable[[str], None] = print,
) -> IngestBenchReport:
    run = uuid.uuid4().hex[:8]
    direct_topic, http_topic = f"tally-bench-ingest-direct-{run}", f"tally-bench-ingest-http-{run}"
    load = [read_loadavg()]
    say(f"load average at start: {load[0]}")
    batches = make_batches(count, seed, batch, time.time())
    try:
        for topic in (direct_topic, http_topic):
            await create_topic(bootstrap, topic)
        say(f"direct: {count:,} events to {direct_topic}, {connections} batches in flight")
        before = cpu_seconds()
        direct = await produce_direct(bootstrap, direct_topic, batches, connections)
        direct = replace(direct, cpu_seconds={"bench (producer)": cpu_seconds() - before})
        say(f"HTTP: {count:,} events through tally ingest serve, {connections} connections")
        async with IngestServer(bootstrap, http_topic) as server:
            before, server_before = cpu_seconds(), server.cpu_seconds()
            http = await post_http(server.url, server.token, batches, connections)
            used = {
                "bench (load generator)": cpu_seconds() - before,
                "tally ingest serve": server.cpu_seconds() - server_before,
            }
            http = replace(http, cpu_seconds=used)
        load.append(read_loadavg())
        say(f"load average at end: {load[1]}")
        report = IngestBenchReport(direct, http, connections, batch, load=load)
        for leg, topic in (("direct", direct_topic), ("http", http_topic)):
            report.topics[leg] = await topic_ids(bootstrap, topic)
    finally:
        await delete_topics(bootstrap, [direct_topic, http_topic])
    return report


def markdown(report: IngestBenchReport, expected_ids: int) -> str:
    def row(label: str, leg: Leg) -> str:
        return (
            f"| {label} | {leg.events:,} | {leg.seconds:.1f} | {leg.rate:,.0f} | "
            f"{leg.quantile(0.5) * 1000:.1f} | {leg.quantile(0.99) * 1000:.1f} |"
        )

    lines = [
        f"Ingest: batches of {report.batch}, {report.connections} in flight, acks=all, idempotent",
        "",
        "| way in | events | seconds | events/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
        row("HTTP: POST /events (tally ingest serve)", report.http),
        row("direct: aiokafka producer", report.direct),
        "",
        f"HTTP / direct: {report.ratio:.2f} (target >= 0.5)",
        f"HTTP events/s: {report.http.rate:,.0f} (Lago publishes"
        f" {LAGO_REST_EVENTS_PER_SECOND:,} events/s over REST)",
        "latency: per request (HTTP) or per batch until every record is acknowledged (direct)",
    ]
    for way in (report.http, report.direct):
        used = ", ".join(
            f"{name} {seconds / way.events * 100_000:.1f}"
            for name, seconds in way.cpu_seconds.items()
        )
        lines.append(f"CPU s per 100k events, {way.name}: {used}")
    for leg, counts in report.topics.items():
        once = all(n == 1 for n in counts.values()) and len(counts) == expected_ids
        lines.append(
            f"topic of {leg}: {sum(counts.values()):,} records, {len(counts):,} distinct ids,"
            f" each posted id exactly once: {'yes' if once else 'NO'}"
        )
    lines.append(f"load average: start {report.load[0]}; end {report.load[-1]}")
    return "\n".join(lines)


async def run(bootstrap: str, count: int, seed: int, batch: int, connections: int) -> str:
    """One bench and its markdown report (`tally bench ingest`, `python -m tally.bench ingest`)."""
    report = await bench_ingest(bootstrap, count, seed=seed, batch=batch, connections=connections)
    return markdown(report, count)
