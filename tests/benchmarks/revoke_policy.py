"""Revoke policies measured side by side (docs/design.md §3): `flush` against `drop`.

Run from the repository with the services up (not a pytest test):

    TALLY_KAFKA_BOOTSTRAP=... TALLY_DATABASE_URL=... .venv/bin/python tests/benchmarks/revoke_policy.py

Worker w1 consumes 150k events produced over 12 s; w2 joins after 4 s; w1
leaves 4 s later. Printed per policy: the durable record count (it must equal
the events: nothing lost or counted twice), what w2 consumed (more than its
share means events read again), and w2's time from start to its first
assignment (the rebalance pause it saw).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tally.synthetic import Workload, encoded, metric_definitions
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    metric_sum,
    produce_paced,
    wait_caught_up,
    worker_env,
)

BOOTSTRAP = os.environ.get("TALLY_KAFKA_BOOTSTRAP", "127.0.0.1:39092")
ADMIN_DSN = os.environ.get("TALLY_DATABASE_URL", "postgresql://tally:tally@127.0.0.1:55432/tally")


def log_time(log: str, event: str) -> float:
    match = re.search(rf"ts=(\S+) .*{event}", log)
    assert match, event
    return datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()


async def measure(policy: str) -> str:
    name = f"rv_{uuid.uuid4().hex[:8]}"
    topic = f"rv-{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    kafka = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await kafka.start()
    await kafka.create_topics([NewTopic(topic, 8, 1)])
    folder = Path(tempfile.mkdtemp())
    try:
        await apply_metrics(dsn, metric_definitions(10), folder)
        events = encoded(
            Workload(seed=3, end=datetime.now(UTC).timestamp() - 60, span_seconds=3600), 150_000
        )
        env = worker_env(
            BOOTSTRAP,
            dsn,
            topic,
            f"g-{name}",
            session_timeout="6",
            revoke_policy=policy,
            flush_interval="5",
        )
        first = WorkerProcess("w1", env, folder).start()
        await first.wait_log("partition ready")
        producing = asyncio.create_task(produce_paced(BOOTSTRAP, topic, events, seconds=12))
        await asyncio.sleep(4)
        second = WorkerProcess("w2", env, folder).start()
        await second.wait_log("partitions assigned", timeout=60)
        await asyncio.sleep(4)
        assert first.stop() == 0
        await producing
        await wait_caught_up(BOOTSTRAP, dsn, topic, timeout=180)
        consumed = metric_sum(await second.scrape(), "tally_events_consumed_total")
        assert second.stop() == 0
        connection = await asyncpg.connect(dsn)
        durable = await connection.fetchval(
            "SELECT sum(records_total) FROM tally.partition_offsets"
        )
        await connection.close()
        log = second.log()
        pause = log_time(log, "partitions assigned") - log_time(log, "telemetry listening")
        return (
            f"{policy}: durable records {durable} of {len(events)} events; w2 consumed {consumed:,.0f}; "
            f"w2 start to first assignment {pause:.1f} s"
        )
    finally:
        await kafka.delete_topics([topic])
        await kafka.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def main() -> None:
    for policy in ("flush", "drop", "flush", "drop"):
        print(await measure(policy))


if __name__ == "__main__":
    asyncio.run(main())
