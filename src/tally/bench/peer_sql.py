"""The SQL route: raw events into PostgreSQL, then one GROUP BY (Lago's way on PostgreSQL).

`python -m tally.bench.peer_sql --bootstrap B --topic T --events N --group G --dsn D`

What many teams do instead of a streaming aggregator: a plain loader keeps
every raw event in an `events` table whose unique index on `id` absorbs
duplicates and redeliveries (Lago indexes its events the same way), and the
billing figures come from one query over that table.

- Load: aiokafka `getmany` (5,000 records), `orjson.loads` of each value, one
  transaction per batch: binary COPY (asyncpg `copy_records_to_table`) into a
  temporary staging table (never WAL-logged, like an UNLOGGED one, and
  emptied at commit), then `INSERT INTO events SELECT ... ON CONFLICT (id) DO
  NOTHING`. COPY alone cannot skip duplicates, hence the staging table. Kafka
  offsets are auto-committed (aiokafka's default, every 5 s): a redelivered
  batch is harmless, the index drops it.
- Query: `INSERT INTO peer_job SELECT customer_id, UTC day, count(*),
  sum(bytes) ... GROUP BY`, so the results are written as rows like the others'.

`seconds` is load + query. PostgreSQL does much of this route's work in its
own backend process, which the child's CPU time does not include: its CPU
over the run is reported apart (`db_backend_cpu_seconds`) when /proc shows it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import asyncpg
import orjson

from tally.bench.peer_ceiling import MAX_RECORDS, subscribed_consumer
from tally.bench.peer_common import IDLE_SECONDS, Clock, arguments, proc_cpu_seconds, report

SCHEMA = """
CREATE TABLE events (
    id text NOT NULL,
    event_type text NOT NULL,
    customer_id text NOT NULL,
    ts timestamptz NOT NULL,
    properties jsonb NOT NULL
);
CREATE UNIQUE INDEX events_id ON events (id);
CREATE TABLE peer_job (
    customer_id text NOT NULL,
    day date NOT NULL,
    calls bigint NOT NULL,
    bytes bigint NOT NULL,
    PRIMARY KEY (customer_id, day)
);
CREATE TEMPORARY TABLE events_staging (LIKE events) ON COMMIT DELETE ROWS;
"""
COLUMNS = ("id", "event_type", "customer_id", "ts", "properties")
MERGE = "INSERT INTO events SELECT * FROM events_staging ON CONFLICT (id) DO NOTHING"
JOB = """
INSERT INTO peer_job (customer_id, day, calls, bytes)
SELECT customer_id,
       date_trunc('day', ts AT TIME ZONE 'UTC')::date,
       count(*),
       sum((properties ->> 'bytes')::bigint)
FROM events
WHERE event_type = 'api_call'
GROUP BY 1, 2
"""

Row = tuple[str, str, str, datetime, str]


def rows_of(values: list[bytes]) -> list[Row]:
    loads, dumps, parse = orjson.loads, orjson.dumps, datetime.fromisoformat
    rows = []
    for value in values:
        event = loads(value)
        rows.append(
            (
                event["id"],
                event["eventType"],
                event["customerId"],
                parse(event["timestamp"]),
                dumps(event["properties"]).decode(),
            )
        )
    return rows


async def load_and_query(bootstrap: str, topic: str, events: int, group: str, dsn: str) -> None:
    clock = Clock()
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(SCHEMA)
        backend = int(await connection.fetchval("SELECT pg_backend_pid()"))
        backend_cpu = proc_cpu_seconds(backend)
        consumer = subscribed_consumer(bootstrap, topic, group, clock, auto_commit=True)
        await consumer.start()
        try:
            count = 0
            last_record = time.monotonic()
            while count < events:
                batches = await consumer.getmany(timeout_ms=1000, max_records=MAX_RECORDS)
                if not batches:
                    if time.monotonic() - last_record > IDLE_SECONDS:
                        raise RuntimeError(f"only {count} of {events} records arrived")
                    continue
                last_record = time.monotonic()
                values = [r.value for records in batches.values() for r in records]
                rows = rows_of(values[: events - count])
                async with connection.transaction():
                    await connection.copy_records_to_table(
                        "events_staging", records=rows, columns=COLUMNS
                    )
                    await connection.execute(MERGE)
                count += len(rows)
            load_seconds = clock.elapsed()
        finally:
            await consumer.stop()
        started = time.perf_counter()
        status = await connection.execute(JOB)
        query_seconds = time.perf_counter() - started
        stored = int(await connection.fetchval("SELECT count(*) FROM events"))
        backend_end = proc_cpu_seconds(backend)
    finally:
        await connection.close()
    clock.detail.update(load_seconds=load_seconds, query_seconds=query_seconds)
    if backend_cpu is not None and backend_end is not None:
        clock.detail["db_backend_cpu_seconds"] = round(backend_end - backend_cpu, 3)
    if stored != count:
        clock.detail["duplicates_dropped"] = count - stored
    rows_written = int(status.split()[-1])
    report(events=count, seconds=load_seconds + query_seconds, rows=rows_written, clock=clock)


def main() -> None:
    args = arguments("the SQL route", database=True)
    asyncio.run(load_and_query(args.bootstrap, args.topic, args.events, args.group, args.dsn))


if __name__ == "__main__":
    main()
