"""Helpers for tests that drive real `tally run` processes against the real
broker and database: start, signal and scrape workers; produce events; read
the values table in the reference's shape."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from tally.config import without_renamed
from tests import reference

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """One `tally run` (or another `command`) in its own process group, logging to a file."""

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        log_dir: Path,
        args: Sequence[str] = (),
        command: Sequence[str] = ("run",),
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = {
            **without_renamed(os.environ),
            **env,
            "TALLY_WORKER_ID": name,
            "TALLY_TELEMETRY_PORT": "0",
        }
        self.log_path = log_dir / f"{name}.log"
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> WorkerProcess:
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"---- start {self.starts} ----\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tally", "--debug", *self.command, *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def current_log(self) -> str:
        text = self.log()
        return text[text.rfind("---- start ") :]

    def metrics_url(self) -> str | None:
        found = re.findall(r"url=http://[^:]+:(\d+)/metrics", self.current_log())
        return f"http://127.0.0.1:{found[-1]}" if found else None

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        if self.alive:
            self.signal(signal.SIGKILL)
            assert self.process is not None
            self.process.wait(10)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.process is not None
        if self.alive:
            self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()  # never leave a worker behind for the next test
            raise

    async def wait_log(self, pattern: str, timeout: float = 60, since: int = 0) -> int:
        """Wait until `pattern` appears in this start's log after offset `since`;
        returns the offset after the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.current_log()
            match = regex.search(text, since)
            if match:
                return match.end()
            if not self.alive:
                raise AssertionError(
                    f"{self.name} exited ({self.process and self.process.returncode}):\n{text[-3000:]}"
                )
            await asyncio.sleep(0.02)
        raise AssertionError(
            f"{self.name}: no {pattern!r} within {timeout}s:\n{self.current_log()[-3000:]}"
        )

    async def wait_serving(self, timeout: float = 60) -> None:
        """Until a worker started with --with-api has a ready partition and its API listens."""
        await self.wait_log("partition ready", timeout)
        await self.wait_log('api listening"', timeout)

    async def scrape(self) -> dict[str, float]:
        """Samples of /metrics as {"name{label=value,...}": value}."""
        url = self.metrics_url()
        assert url is not None, "worker has not announced its telemetry port"
        text = await http_get(url + "/metrics")
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = sample.value
        return samples


def api_url(worker: WorkerProcess) -> str:
    """Where the API of a worker started with --with-api listens (from its log)."""
    found = worker.current_log().split('api listening" url=http://')
    assert len(found) > 1, worker.current_log()[-3000:]
    port = found[-1].split()[0].rsplit(":", 1)[1]
    return f"http://127.0.0.1:{port}"


async def http_get(url: str) -> str:
    match = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert match, url
    host, port, path = match.group(1), int(match.group(2)), match.group(3)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data.split(b"\r\n\r\n", 1)[1].decode()


def metric_sum(samples: Mapping[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for key, value in samples.items():
        sample_name, _, rest = key.partition("{")
        if sample_name != name:
            continue
        pairs = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if p)
        if all(pairs.get(k) == v for k, v in labels.items()):
            total += value
    return total


def worker_env(bootstrap: str, dsn: str, topic: str, group: str, **settings: str) -> dict[str, str]:
    env = {
        "TALLY_KAFKA_BOOTSTRAP": bootstrap,
        "TALLY_DATABASE_URL": dsn,
        "TALLY_TOPIC": topic,
        "TALLY_GROUP": group,
        "TALLY_FLUSH_INTERVAL": "0.5",
        "TALLY_SESSION_TIMEOUT": "6",
        "TALLY_DEFINITIONS_POLL_INTERVAL": "0.5",
        "TALLY_TELEMETRY_HOST": "127.0.0.1",
    }
    env.update({f"TALLY_{k.upper()}": v for k, v in settings.items()})
    return env


def worker_with_api(
    name: str,
    log_dir: Path,
    bootstrap: str,
    dsn: str,
    topic: str,
    group: str,
    *,
    tokens: str,
    **settings: str,
) -> WorkerProcess:
    """`tally run --with-api` (not started yet) with `tokens`, its API on a
    free port of 127.0.0.1; `wait_serving` and `api_url` after `start`."""
    env = worker_env(
        bootstrap,
        dsn,
        topic,
        group,
        api_tokens=tokens,
        api_host="127.0.0.1",
        api_port="0",
        **settings,
    )
    return WorkerProcess(name, env, log_dir, args=["--with-api"])


async def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes | None]],
    headers: Sequence[tuple[str, bytes]] = (),
) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=10
    )
    await producer.start()
    count = 0
    try:
        for key, value in messages:
            await producer.send(topic, value=value, key=key, headers=list(headers) or None)
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def stored_offsets(dsn: str, topic: str) -> dict[int, int]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT partition, next_offset FROM tally.partition_offsets WHERE topic = $1", topic
        )
    finally:
        await connection.close()
    return {r["partition"]: r["next_offset"] for r in rows}


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def wait_caught_up(bootstrap: str, dsn: str, topic: str, timeout: float = 120) -> None:
    """Until PostgreSQL's stored offsets reach the end of every partition."""
    ends = await end_offsets(bootstrap, topic)

    async def done() -> bool:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            stored = await stored_offsets(dsn, topic)
            return all(stored.get(p, -1) >= end for p, end in ends.items() if end > 0)
        return False

    await wait_until(done, timeout, f"the workers to store the end offsets {ends} of {topic}")


async def values_by_reference_key(
    dsn: str, definitions: Sequence[Mapping[str, Any]]
) -> dict[reference.RefKey, tuple[Decimal, int]]:
    """The values table keyed like the reference: periods by local wall-clock start."""
    zones = {d["uid"]: d.get("timezone", "UTC") for d in definitions}
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT metric_uid, customer_id, group_key, time_unit, period_start, value, event_count FROM tally.metric_values"
        )
    finally:
        await connection.close()
    result: dict[reference.RefKey, tuple[Decimal, int]] = {}
    for r in rows:
        label = reference.local_period(
            r["period_start"].timestamp(), r["time_unit"], zones[r["metric_uid"]]
        )
        key = (r["metric_uid"], r["customer_id"], r["group_key"], r["time_unit"], label)
        assert key not in result, f"two rows for {key}"
        result[key] = (r["value"], r["event_count"])
    return result


async def rows_by_reference_key(
    dsn: str, definitions: Sequence[Mapping[str, Any]]
) -> dict[reference.RefKey, reference.Row]:
    """The values table keyed like the reference, every column (`reference.Row`)."""
    zones = {d["uid"]: d.get("timezone", "UTC") for d in definitions}
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT metric_uid, customer_id, group_key, time_unit, period_start, value,"
            " event_count, value_text, value_sum, latest_at, latest_id FROM tally.metric_values"
        )
    finally:
        await connection.close()
    result: dict[reference.RefKey, reference.Row] = {}
    for r in rows:
        label = reference.local_period(
            r["period_start"].timestamp(), r["time_unit"], zones[r["metric_uid"]]
        )
        key = (r["metric_uid"], r["customer_id"], r["group_key"], r["time_unit"], label)
        assert key not in result, f"two rows for {key}"
        result[key] = reference.Row(
            r["value"],
            r["event_count"],
            r["value_text"],
            r["value_sum"],
            r["latest_at"],
            r["latest_id"],
        )
    return result


def diff(actual: Mapping[Any, Any], expected: Mapping[Any, Any], limit: int = 10) -> str:
    """A readable summary of how two value maps differ."""
    lines = []
    for key in sorted(set(actual) | set(expected), key=repr):
        if actual.get(key) != expected.get(key):
            lines.append(f"  {key}: actual={actual.get(key)} expected={expected.get(key)}")
    return f"{len(lines)} rollups differ:\n" + "\n".join(lines[:limit])


async def apply_metrics(dsn: str, definitions: Sequence[Mapping[str, Any]], tmp: Path) -> None:
    path = tmp / "metrics.json"
    path.write_bytes(orjson.dumps({"metrics": list(definitions)}))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tally",
        "metrics",
        "apply",
        str(path),
        env={**os.environ, "TALLY_DATABASE_URL": dsn},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()


async def produce_paced(
    bootstrap: str,
    topic: str,
    messages: Sequence[tuple[bytes | None, bytes | None]],
    seconds: float,
    chunks: int = 40,
) -> int:
    """Produce `messages` spread over about `seconds`, so events flow while a test acts."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=10
    )
    await producer.start()
    size = max(1, -(-len(messages) // chunks))
    try:
        for start in range(0, len(messages), size):
            for key, value in messages[start : start + size]:
                await producer.send(topic, value=value, key=key)
            await producer.flush()
            await asyncio.sleep(seconds / chunks)
    finally:
        await producer.stop()
    return len(messages)


async def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list[Any]:
    """All records of a topic, from the beginning, until `expected` have arrived."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records
