"""The test harness itself: real round trips through Kafka and PostgreSQL.

These run against the services from ``tests/conftest.py``; with ``CI`` set and
no services they fail rather than skip.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.conftest import MakeTopic

MESSAGES = 500
KEYS = 23
PARTITIONS = 4


@pytest.mark.asyncio
async def test_kafka_round_trip_keeps_per_key_order(
    kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    topic = await make_topic(PARTITIONS)
    sent: dict[str, list[int]] = defaultdict(list)

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        pending = []
        for i in range(MESSAGES):
            key = f"customer-{i % KEYS}"
            sent[key].append(i)
            value = json.dumps({"key": key, "seq": i}).encode()
            pending.append(await producer.send(topic, value=value, key=key.encode()))
        await producer.flush()
        metadata = await asyncio.gather(*pending)
    finally:
        await producer.stop()
    assert {m.partition for m in metadata} <= set(range(PARTITIONS))

    group = f"tally-t-group-{uuid.uuid4().hex[:12]}"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    received: dict[str, list[int]] = defaultdict(list)
    partition_of_key: dict[str, set[int]] = defaultdict(set)
    await consumer.start()
    try:
        async with asyncio.timeout(60):
            count = 0
            while count < MESSAGES:
                batches = await consumer.getmany(timeout_ms=1000)
                for tp, records in batches.items():
                    for record in records:
                        assert record.key is not None
                        assert record.value is not None
                        payload = json.loads(record.value)
                        assert record.key.decode() == payload["key"]
                        received[payload["key"]].append(payload["seq"])
                        partition_of_key[payload["key"]].add(tp.partition)
                        count += 1
        await consumer.commit()
        assignment = consumer.assignment()
        assert assignment == {TopicPartition(topic, p) for p in range(PARTITIONS)}
        end_offsets = await consumer.end_offsets(list(assignment))
        for tp in assignment:
            assert await consumer.committed(tp) == end_offsets[tp]
    finally:
        await consumer.stop()

    assert sum(len(v) for v in received.values()) == MESSAGES
    # Every payload exactly once, and each key's messages in the order they were sent
    # (one key -> one partition -> ordered).
    assert dict(received) == dict(sent)
    assert all(len(parts) == 1 for parts in partition_of_key.values())
    # 23 keys over 4 partitions: the data really is spread out.
    assert len(set().union(*partition_of_key.values())) > 1


@pytest.mark.asyncio
async def test_postgres_round_trip(fresh_database: str) -> None:
    conn = await asyncpg.connect(fresh_database)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        assert tables == 0, "a fresh database has no tables"

        await conn.execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, name text NOT NULL, amount numeric NOT NULL)"
        )
        rows = [(i, f"customer-{i}", f"{i}.25") for i in range(1000)]
        await conn.executemany("INSERT INTO t VALUES ($1, $2, $3::numeric)", rows)
        async with conn.transaction():
            await conn.execute("UPDATE t SET amount = amount + 1 WHERE id < 10")

        got = await conn.fetch("SELECT id, name, amount::text AS amount FROM t ORDER BY id")
        expected = [(i, n, f"{float(a) + (1 if i < 10 else 0):.2f}") for i, n, a in rows]
        assert [(r["id"], r["name"], r["amount"]) for r in got] == expected
        assert await conn.fetchval("SELECT current_setting('server_encoding')") == "UTF8"
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_fresh_databases_are_separate(fresh_database: str, database_url: str) -> None:
    assert fresh_database != database_url
    conn = await asyncpg.connect(database_url)
    try:
        name = fresh_database.rsplit("/", 1)[1].split("?", 1)[0]
        assert name.startswith("tally_t_")
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name) == 1
    finally:
        await conn.close()
