"""Workers consuming what real producers write: Kafka's Java producer with every
codec and setting, librdkafka at its defaults, and a hostile stream of 40+
kinds of bad record interleaved with good ones, across two worker processes.

Every good event is exact against tests/reference.py, every hostile one is in
the dead-letter topic with its reason, aborted transactions are never counted,
and no worker exits.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tally.synthetic import Workload, encoded, metric_definitions
from tests import reference
from tests.conftest import MakeTopic
from tests.hostile import COUNTED_METRICS, counted, dead_letters
from tests.integration.producers import (
    Record,
    java_partition,
    librdkafka_partition,
    produce_java,
    produce_librdkafka,
)
from tests.integration.support import (
    WorkerProcess,
    apply_metrics,
    diff,
    metric_sum,
    read_topic,
    values_by_reference_key,
    wait_caught_up,
    worker_env,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def good_records(seed: int, count: int, now: float) -> list[Record]:
    messages = encoded(Workload(seed=seed, end=now - 60, span_seconds=2 * 86400), count)
    headers = [("trace-id", b"\x00\xff binary"), ("empty", None)]
    return [
        Record(key=key if n % 7 else None, value=value, headers=headers if n % 3 else ())
        for n, (key, value) in enumerate(messages)
    ]


async def test_every_codec_and_producer_setting_is_counted_exactly(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    definitions = metric_definitions(10)
    topic = await make_topic(4)
    await apply_metrics(fresh_database, definitions, tmp_path)
    now = time.time()
    counted_values: list[bytes] = []
    for n, codec in enumerate(CODECS):  # idempotent (the Java default since 3.0), each codec
        records = good_records(100 + n, 600, now)
        await produce_java(kafka_bootstrap, topic, records, compression=codec)
        counted_values += [r.value for r in records if r.value is not None]
    plain = good_records(200, 400, now)
    await produce_java(kafka_bootstrap, topic, plain, compression="gzip", idempotent=False)
    counted_values += [r.value for r in plain if r.value is not None]
    committed_a, aborted, committed_b = (good_records(s, 300, now) for s in (300, 301, 302))
    produced = await produce_java(
        kafka_bootstrap,
        topic,
        compression="zstd",
        transactions=[("commit", committed_a), ("abort", aborted), ("commit", committed_b)],
    )
    assert len(produced.aborted) == len(aborted)
    counted_values += [r.value for r in committed_a + committed_b if r.value is not None]
    librdkafka = good_records(400, 500, now)
    await produce_librdkafka(kafka_bootstrap, topic, librdkafka)
    counted_values += [r.value for r in librdkafka if r.value is not None]

    env = worker_env(kafka_bootstrap, fresh_database, topic, "g-codecs")
    worker = WorkerProcess("codecs", env, tmp_path).start()
    try:
        await wait_caught_up(kafka_bootstrap, fresh_database, topic, timeout=180)
        samples = await worker.scrape()
        assert worker.alive
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    expected = reference.reference_values(definitions, counted_values)
    actual = await values_by_reference_key(fresh_database, definitions)
    assert actual == expected, diff(actual, expected)
    assert metric_sum(samples, "tally_events_consumed_total") == len(counted_values)
    assert metric_sum(samples, "tally_events_dead_lettered_total") == 0
    assert "UnsupportedCodecError" not in worker.log()


async def test_a_hostile_stream_over_every_codec_and_two_workers_keeps_flowing(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    now = time.time()
    hostile = dead_letters(now)
    odd = counted(now)
    assert len(hostile) >= 30
    definitions = metric_definitions(6) + COUNTED_METRICS
    topic = await make_topic(4)
    dlq = await make_topic(1)
    await apply_metrics(fresh_database, definitions, tmp_path)
    good = good_records(500, 2000, now)
    # Odd but valid events, each with an id of its own.
    good += [
        Record(key=b"odd", value=value.replace(b'"e1"', f'"odd-{n}"'.encode()))
        for n, value in enumerate(odd.values())
    ]
    expected_letters: dict[str, str] = {}
    stream: list[Record] = []
    bad = list(hostile.items())
    for n, record in enumerate(good):
        stream.append(record)
        if n % 25 == 0:
            for repeat in range(2):  # every kind at least twice, spread over the codecs
                kind, (value, reason) = bad[(n // 25 + repeat * 17) % len(bad)]
                mark = f"{kind} #{n}-{repeat}"
                expected_letters[mark] = reason
                stream.append(
                    Record(
                        key=None if n % 2 else b"k", value=value, headers=[("kind", mark.encode())]
                    )
                )
    assert {reason for reason in expected_letters.values()} >= {r for _, r in hostile.values()}
    env = worker_env(
        kafka_bootstrap,
        fresh_database,
        topic,
        "g-hostile",
        dlq_topic=dlq,
        max_event_bytes=str(64 * 1024),
    )
    workers = [WorkerProcess(f"hostile-{n}", env, tmp_path).start() for n in range(2)]
    try:
        quarter = -(-len(stream) // 4)
        for n, codec in enumerate(("gzip", "snappy", "lz4", "zstd")):
            await produce_java(
                kafka_bootstrap, topic, stream[n * quarter : (n + 1) * quarter], compression=codec
            )
        await wait_caught_up(kafka_bootstrap, fresh_database, topic, timeout=240)
        samples = [await w.scrape() for w in workers]
        assert all(w.alive for w in workers)
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0], [w.log()[-2000:] for w in workers]
    letters = await read_topic(kafka_bootstrap, dlq, expected=len(expected_letters))
    found = {}
    for record in letters:
        headers = {k: v for k, v in record.headers}
        found[headers["kind"].decode()] = headers["tally.reason"].decode()
        assert headers["tally.source.topic"] == topic.encode()
    assert found == expected_letters
    good_values = [r.value for r in good if r.value is not None]
    expected = reference.reference_values(definitions, good_values)
    actual = await values_by_reference_key(fresh_database, definitions)
    assert actual == expected, diff(actual, expected)
    assert sum(metric_sum(s, "tally_events_dead_lettered_total") for s in samples) == len(
        expected_letters
    )
    assert (
        sum(
            metric_sum(s, "tally_events_dead_lettered_total", reason="internal_error")
            for s in samples
        )
        == 0
    )


def split_key(partitions: int) -> bytes:
    """A key the Java and librdkafka default partitioners send to different partitions."""
    for n in range(1000):
        key = f"customer-{n}".encode()
        if java_partition(key, partitions) != librdkafka_partition(key, partitions):
            return key
    raise AssertionError("no key found")


@pytest.mark.parametrize(
    ("partitioner", "counted_times"), [(None, 2), ("murmur2_random", 1)], ids=["crc32", "murmur2"]
)
async def test_a_retry_through_another_partitioner_is_caught_only_with_murmur2(
    kafka_bootstrap: str,
    fresh_database: str,
    make_topic: MakeTopic,
    tmp_path: Path,
    partitioner: str | None,
    counted_times: int,
) -> None:
    """Dedup works per partition (README: one partitioner per topic). The same
    event sent by the Java producer, then retried by librdkafka: at librdkafka's
    default (CRC32) it lands in another partition and counts twice; with
    partitioner=murmur2_random it lands where Java put it and counts once."""
    definitions = [
        {"uid": "calls", "name": "calls", "eventType": "api_call", "aggregationType": "COUNT"}
    ]
    topic = await make_topic(4)
    await apply_metrics(fresh_database, definitions, tmp_path)
    key = split_key(4)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    value = (
        f'{{"id":"retried-1","eventType":"api_call","customerId":"{key.decode()}",'
        f'"timestamp":"{stamp}"}}'
    ).encode()
    first = await produce_java(kafka_bootstrap, topic, [Record(key=key, value=value)])
    config = {"partitioner": partitioner} if partitioner else None
    retry = await produce_librdkafka(
        kafka_bootstrap, topic, [Record(key=key, value=value)], config=config
    )
    same_partition = first.deliveries[0].partition == retry.deliveries[0].partition
    assert same_partition == (counted_times == 1)
    worker = WorkerProcess(
        f"partitioner-{partitioner}",
        worker_env(kafka_bootstrap, fresh_database, topic, "g-p"),
        tmp_path,
    ).start()
    try:
        await wait_caught_up(kafka_bootstrap, fresh_database, topic)
    finally:
        assert worker.stop() == 0
    actual = await values_by_reference_key(fresh_database, definitions)
    assert {v for v, _ in actual.values()} == {counted_times}
