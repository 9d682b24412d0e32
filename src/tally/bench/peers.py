"""The side-by-side baselines of `tally bench`: the same job, done by Tally's peers.

The peer job, the same for everyone: over a topic pre-loaded with synthetic
events, per customer per UTC day, (a) the number of `api_call` events and
(b) the sum of their `bytes` property. In Tally terms, `PEER_JOB_METRICS`.

- `run_ceiling`: aiokafka + `orjson.loads` of every value, nothing else: what
  any Python consumer pays just to read the topic (`peer_ceiling`).
- `run_quixstreams`: quixstreams, a tumbling one-day window per customer, its
  PostgreSQL sink upserting the running values (`peer_quix`).
- `run_sql_route`: the raw events COPYed into PostgreSQL behind a unique index
  on `id`, then one GROUP BY (`peer_sql`).

Each runs in its own child process (`python -m tally.bench.peer_*`), with a
fresh consumer group, from the beginning of the topic until `events` records
are consumed; the child reports its own wall time, CPU time (all threads) and
peak RSS just before it exits. The peers that write do so into a database of
their own, created here and dropped afterwards; the results are read from it
for the exactness check. Kafka topics a peer creates (quixstreams' changelog
and repartition topics) are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from tally.bench.peer_common import MARKER

PEER_JOB_METRICS: tuple[dict[str, Any], ...] = (
    {
        "uid": "bench_calls",
        "name": "calls",
        "eventType": "api_call",
        "aggregationType": "COUNT",
        "timeUnits": ["day"],
    },
    {
        "uid": "bench_bytes",
        "name": "bytes",
        "eventType": "api_call",
        "aggregationType": "SUM",
        "aggregationProperty": "bytes",
        "timeUnits": ["day"],
    },
)

Results = dict[tuple[str, str], tuple[int, int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    name: str
    events: int  # events processed
    seconds: float  # from the first assignment to done, results written
    cpu_seconds: float  # user+sys of the process doing the work (the child), all threads
    peak_rss_bytes: int  # its VmHWM
    rows: int  # result rows written (0 for the ceiling)
    detail: dict[str, float]  # e.g. {"load_seconds": ..., "query_seconds": ...}
    results: Results | None  # (customer, 'YYYY-MM-DD') -> (count, bytes); None for the ceiling


CEILING_NAME = "ceiling: aiokafka getmany + orjson.loads"
QUIX_NAME = "quixstreams: 1-day tumbling window, .current() upserted"
QUIX_REGROUPED_NAME = "quixstreams with group_by (repartition topic)"
SQL_NAME = "SQL route: COPY + ON CONFLICT (id), then GROUP BY"


def run_ceiling(bootstrap: str, topic: str, events: int) -> RunResult:
    group = _fresh("tally-peer-ceiling")
    report = _child("tally.bench.peer_ceiling", _kafka_args(bootstrap, topic, events, group))
    return _result(CEILING_NAME, report, None)


def run_quixstreams(bootstrap: str, topic: str, events: int, dsn: str) -> RunResult:
    return _run_writer(QUIX_NAME, "tally.bench.peer_quix", bootstrap, topic, events, dsn)


def run_quixstreams_regrouped(bootstrap: str, topic: str, events: int, dsn: str) -> RunResult:
    """The same with `group_by("customerId")`, as if the topic were not keyed by customer."""
    return _run_writer(
        QUIX_REGROUPED_NAME, "tally.bench.peer_quix", bootstrap, topic, events, dsn, "--group-by"
    )


def run_sql_route(bootstrap: str, topic: str, events: int, dsn: str) -> RunResult:
    return _run_writer(SQL_NAME, "tally.bench.peer_sql", bootstrap, topic, events, dsn)


# -- one child ---------------------------------------------------------------------------


def _fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _kafka_args(bootstrap: str, topic: str, events: int, group: str) -> list[str]:
    return ["--bootstrap", bootstrap, "--topic", topic, "--events", str(events), "--group", group]


def _child(module: str, args: list[str]) -> dict[str, Any]:
    """Run `python -m module args`; its last MARKER line, decoded."""
    events = int(args[args.index("--events") + 1])
    with tempfile.TemporaryFile() as log:
        try:
            completed = subprocess.run(
                [sys.executable, "-m", module, *args],
                stdout=subprocess.PIPE,
                stderr=log,
                env=os.environ.copy(),
                timeout=300 + events / 200,
                check=False,
            )
        except subprocess.TimeoutExpired as timeout:
            raise RuntimeError(f"{module} timed out:\n{_tail(log)}") from timeout
        found = [
            line.removeprefix(MARKER)
            for line in completed.stdout.decode(errors="replace").splitlines()
            if line.startswith(MARKER)
        ]
        if completed.returncode != 0 or not found:
            raise RuntimeError(
                f"{module} exited with {completed.returncode}:\n{_tail(log)}"
                f"{completed.stdout.decode(errors='replace')[-2000:]}"
            )
    report: dict[str, Any] = json.loads(found[-1])
    return report


def _tail(log: Any) -> str:
    log.seek(0)
    return str(log.read()[-4000:].decode(errors="replace"))


def _result(name: str, report: dict[str, Any], results: Results | None) -> RunResult:
    return RunResult(
        name=name,
        events=int(report["events"]),
        seconds=float(report["seconds"]),
        cpu_seconds=float(report["cpu_seconds"]),
        peak_rss_bytes=int(report["peak_rss_bytes"]),
        rows=int(report["rows"]) if results is None else len(results),
        detail={key: float(value) for key, value in report["detail"].items()},
        results=results,
    )


def _run_writer(
    name: str, module: str, bootstrap: str, topic: str, events: int, dsn: str, *extra: str
) -> RunResult:
    """A peer that writes its results into a database of its own."""
    database = _fresh("tally_peer").replace("-", "_")
    group = _fresh(module.rsplit(".", 1)[-1].replace("_", "-"))
    asyncio.run(_create_database(dsn, database))
    try:
        own = _dsn_for(dsn, database)
        args = [*_kafka_args(bootstrap, topic, events, group), "--dsn", own, *extra]
        report = _child(module, args)
        results = asyncio.run(_read_results(own))
    finally:
        asyncio.run(_clean_up(dsn, database, bootstrap, group))
    return _result(name, report, results)


# -- PostgreSQL and Kafka housekeeping ---------------------------------------------------------


def _dsn_for(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


async def _create_database(dsn: str, database: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{database}"')
    finally:
        await connection.close()


async def _read_results(dsn: str) -> Results:
    """Both writers leave `peer_job (customer_id, day, calls, bytes)`."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT customer_id, day::text AS day, calls, bytes FROM peer_job"
        )
    finally:
        await connection.close()
    return {(r["customer_id"], r["day"]): (int(r["calls"]), int(r["bytes"])) for r in rows}


async def _clean_up(dsn: str, database: str, bootstrap: str, group: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await connection.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        mine = [name for name in await admin.list_topics() if group in name]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()
