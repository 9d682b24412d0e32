"""The real-producer harness (tests/integration/producers.py) against the real broker.

Kafka's Java producer and librdkafka write what production clients write; these
tests prove it: every codec, idempotence on and off, committed and aborted
transactions, hostile bytes, and each client's own partitioner. An aiokafka
consumer, as Tally's worker uses, reads it all back byte for byte.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from tests.conftest import MakeTopic
from tests.integration.producers import (
    CODECS,
    Codec,
    Delivery,
    JavaProducerError,
    Produced,
    Record,
    java_partition,
    librdkafka_partition,
    murmur2,
    produce_java,
    produce_librdkafka,
    read_all,
    read_batches,
)

PARTITIONS = 3
# Just under the broker's and both clients' 1 MB limits on one record.
HUGE = 900_000


def hostile_records(*, partition_for_batch: int) -> list[Record]:
    """Records a worker must survive: every shape Kafka allows, bytes nobody promised."""
    rng = random.Random(20240611)
    event = b'{"id":"e-1","eventType":"api_call","customerId":"c-1","timestamp":"2024-06-11T10:00:00Z","properties":{}}'
    records = [
        Record(key=b"c-1", value=event, headers=[("source", b"java"), ("trace", None)]),
        Record(key=None, value=event),
        Record(key=b"c-2", value=None, headers=[("tombstone", b"")]),  # a tombstone
        Record(key=b"", value=b""),
        Record(key=b"\x00\xff\xfe", value=bytes(range(256)) * 4),
        Record(key=b"c-3", value=b"\xc3\x28 not utf-8 \xa0\xa1 \xed\xa0\x80"),
        Record(key=b"c-4", value="événement ünïcödé 🧾".encode()),
        Record(
            key=b"c-5",
            value=event,
            headers=[("dup", b"1"), ("dup", b"2"), ("bin", bytes(range(255, -1, -1))), ("", None)],
        ),
        Record(key=None, value=rng.randbytes(HUGE)),  # incompressible
        Record(key=b"c-6", value=b"{" * HUGE),  # compresses a lot, and is not JSON
    ]
    # Small records to one partition back to back: a real producer batches them.
    records += [
        Record(key=None, value=b'{"n":%d}' % i, partition=partition_for_batch) for i in range(30)
    ]
    return records


def assert_read_back(records: Sequence[Any], deliveries: Sequence[Delivery]) -> None:
    """The consumer saw exactly the delivered records, where the producer said."""
    expected = {(d.partition, d.offset): d.record for d in deliveries}
    seen = {(r.partition, r.offset): r for r in records}
    assert sorted(seen) == sorted(expected)
    for position, record in expected.items():
        got = seen[position]
        assert got.key == record.key, position
        assert got.value == record.value, position
        assert [tuple(h) for h in got.headers] == list(record.headers), position
        if record.partition is not None:
            assert got.partition == record.partition


async def assert_batches(
    bootstrap: str, topic: str, codec: Codec, *, idempotent: bool, batched_partition: int
) -> None:
    batches = [b for b in await read_batches(bootstrap, topic) if not b.control]
    assert batches
    assert {b.codec for b in batches} == {codec}
    assert all((b.producer_id >= 0) == idempotent for b in batches)
    # Several records share one (compressed) batch, as from any real producer.
    assert max(b.offsets for b in batches if b.partition == batched_partition) > 1


# --- Kafka's Java producer -----------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("codec", CODECS)
async def test_java_producer_every_codec_reads_back_byte_for_byte(
    kafka_bootstrap: str, make_topic: MakeTopic, codec: Codec
) -> None:
    topic = await make_topic(PARTITIONS)
    records = hostile_records(partition_for_batch=1)

    produced = await produce_java(kafka_bootstrap, topic, records, compression=codec)

    assert [d.record for d in produced.deliveries] == records
    assert produced.visible == list(produced.deliveries)
    assert_read_back(await read_all(kafka_bootstrap, topic), produced.deliveries)
    await assert_batches(kafka_bootstrap, topic, codec, idempotent=True, batched_partition=1)


@pytest.mark.asyncio
async def test_java_producer_without_idempotence(
    kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    topic = await make_topic(PARTITIONS)
    records = hostile_records(partition_for_batch=2)

    produced = await produce_java(
        kafka_bootstrap, topic, records, compression="gzip", idempotent=False
    )

    assert_read_back(await read_all(kafka_bootstrap, topic), produced.deliveries)
    await assert_batches(kafka_bootstrap, topic, "gzip", idempotent=False, batched_partition=2)


def batch_of(name: str, size: int) -> list[Record]:
    return [
        Record(key=f"c-{i % 5}".encode(), value=f"{name}-{i}".encode(), headers=[("batch", None)])
        for i in range(size)
    ]


@pytest.mark.asyncio
async def test_java_transactions_commit_abort_commit(
    kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    topic = await make_topic(PARTITIONS)
    committed_a, aborted_b, committed_c = batch_of("A", 25), batch_of("B", 25), batch_of("C", 25)

    produced = await produce_java(
        kafka_bootstrap,
        topic,
        compression="zstd",
        transactions=[("commit", committed_a), ("abort", aborted_b), ("commit", committed_c)],
    )

    assert [d.record for d in produced.visible] == committed_a + committed_c
    assert [d.record for d in produced.aborted] == aborted_b
    assert {d.transaction for d in produced.aborted} == {1}
    committed = await read_all(kafka_bootstrap, topic, isolation_level="read_committed")
    assert_read_back(committed, produced.visible)
    # The aborted records are in the log: a read_uncommitted consumer sees them.
    uncommitted = await read_all(kafka_bootstrap, topic, isolation_level="read_uncommitted")
    assert_read_back(uncommitted, produced.deliveries)

    batches = await read_batches(kafka_bootstrap, topic)
    data = [b for b in batches if not b.control]
    assert data
    assert all(b.transactional and b.codec == "zstd" for b in data)
    # One commit or abort marker per transaction in each partition it wrote to.
    markers = sum(1 for b in batches if b.control)
    touched = sum(
        len({d.partition for d in produced.deliveries if d.transaction == t}) for t in range(3)
    )
    assert markers == touched


@pytest.mark.asyncio
async def test_java_producer_failure_raises_with_java_stderr(
    kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    topic = await make_topic(1)

    with pytest.raises(JavaProducerError) as failure:
        await produce_java(
            kafka_bootstrap,
            topic + "-missing",
            [Record(value=b"x")],
            extra_config={"max.block.ms": "1500"},
        )

    assert failure.value.returncode == 1
    assert "TimeoutException" in failure.value.stderr
    assert "not present in metadata" in str(failure.value)


# --- librdkafka ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_librdkafka_defaults_read_back_byte_for_byte(
    kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    topic = await make_topic(PARTITIONS)
    records = hostile_records(partition_for_batch=0)

    produced = await produce_librdkafka(kafka_bootstrap, topic, records)

    assert [d.record for d in produced.deliveries] == records
    assert_read_back(await read_all(kafka_bootstrap, topic), produced.deliveries)
    # librdkafka's defaults: no compression, no idempotence (producer id -1).
    await assert_batches(kafka_bootstrap, topic, "none", idempotent=False, batched_partition=0)


# --- partitioners --------------------------------------------------------------------

# Kafka's own expectations for Utils.murmur2 (clients' UtilsTest), confirmed with
# kafka-clients 4.1.1's Utils.murmur2.
MURMUR2_CASES = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
    (b"", 275646681),
]


@pytest.mark.parametrize(("key", "expected"), MURMUR2_CASES)
def test_murmur2_matches_kafka(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def keys_of_every_shape() -> list[bytes]:
    rng = random.Random(7)
    keys = [f"customer-{i}".encode() for i in range(60)]
    keys += [rng.randbytes(n) for n in range(1, 41)]  # every tail length, high bytes
    keys += ["клиент-1".encode(), "顧客".encode(), b"\x00", b"\xff" * 9]
    return keys


def partitions_seen(records: Sequence[Any]) -> dict[bytes, int]:
    seen: dict[bytes, set[int]] = {}
    for r in records:
        seen.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in seen.values())
    return {key: p.pop() for key, p in seen.items()}


def landed(produced: Produced) -> dict[bytes | None, int]:
    return {d.record.key: d.partition for d in produced.deliveries}


@pytest.mark.asyncio
async def test_partition_helpers_agree_with_the_real_clients(
    kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    partitions = 7  # not a power of two: a wrong modulo shows
    keys = keys_of_every_shape()
    java_topic, librdkafka_topic = await make_topic(partitions), await make_topic(partitions)
    records = [Record(key=k, value=b"v") for k in keys]

    java = await produce_java(kafka_bootstrap, java_topic, [*records, Record(key=b"", value=b"")])
    librdkafka = await produce_librdkafka(kafka_bootstrap, librdkafka_topic, records)

    java_seen = partitions_seen(await read_all(kafka_bootstrap, java_topic))
    librdkafka_seen = partitions_seen(await read_all(kafka_bootstrap, librdkafka_topic))
    assert java_seen == landed(java)
    assert librdkafka_seen == landed(librdkafka)
    # The Java producer hashes an empty key too (only a null key is sticky).
    assert java_seen == {k: java_partition(k, partitions) for k in [*keys, b""]}
    assert librdkafka_seen == {k: librdkafka_partition(k, partitions) for k in keys}
    # The two clients disagree, so a test that mixes them must not assume one.
    assert sum(java_seen[k] != librdkafka_seen[k] for k in keys) > len(keys) // 2


def test_librdkafka_has_no_partition_for_an_empty_key() -> None:
    with pytest.raises(ValueError, match="at random"):
        librdkafka_partition(b"", 4)
