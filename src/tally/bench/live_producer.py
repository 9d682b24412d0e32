"""A steady producer for the freshness bench: live events at a fixed rate.

`python -m tally.bench.live_producer --bootstrap B --topic T --rate R --seconds S --seed N --out F`

Events have the live workload's shape (`tally.synthetic`, ordered, with its
late tail): a pool of seeded templates is encoded once, and each send gives a
template a fresh id and an event time of now (or, for the 1 % late tail, up
to 6 h before now). Records are keyed by customerId and partitioned as
aiokafka's default partitioner does (murmur2, as the Java client), but sent as
one batch per partition every few milliseconds, so the offset of every event
is known from its batch's base offset without a future per record.

It writes one JSON document to `--out`: the wall-clock time of its first send,
and per batch `[sent_at, partition, base_offset, count]`, `sent_at` being
`time.time()` just before the batch was handed to the client. The bench
(`tally.bench.freshness`) joins these with the stored offsets it polls.
A separate process, so the poller's clock is not held up by the producer's
work, and its CPU is its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from tally.bench.peer_common import cpu_seconds
from tally.synthetic import Workload, events

TEMPLATES = 10_000
LATE_SHARE = 0.01
LATE_SECONDS = 6 * 3600.0
TICK_SECONDS = 0.005


@dataclass(frozen=True, slots=True)
class Template:
    key: bytes
    partition: int
    late_seconds: float  # 0 for on-time events
    rest: bytes  # the document without id and timestamp: b'"eventType":...}'


def templates(seed: int, partitions: int, count: int = TEMPLATES) -> list[Template]:
    """Seeded event templates of the live workload's shape."""
    rng = random.Random(seed ^ 0x5EED)
    found = []
    for document in events(Workload(seed=seed, end=1.0, span_seconds=1.0), count):
        key = document["customerId"].encode()
        late = rng.random() * LATE_SECONDS if rng.random() < LATE_SHARE else 0.0
        rest = {k: v for k, v in document.items() if k not in ("id", "timestamp")}
        found.append(
            Template(
                key=key,
                partition=(murmur2(key) & 0x7FFFFFFF) % partitions,
                late_seconds=late,
                rest=orjson.dumps(rest)[1:],
            )
        )
    return found


def _stamp(moment: float) -> bytes:
    text = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z").encode()


async def produce(
    bootstrap: str,
    topic: str,
    rate: float,
    seconds: float,
    seed: int,
    partitions: int,
) -> dict[str, Any]:
    pool = templates(seed, partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=0, max_batch_size=1 << 20
    )
    await producer.start()
    batches: list[list[float | int]] = []
    futures: list[asyncio.Future[Any]] = []
    sent = 0
    behind = 0.0  # the most the sends fell behind the schedule, in seconds
    prefix = f'{{"id":"fresh_{seed:x}_'.encode()
    try:
        started = time.time()
        while True:
            now = time.time()
            elapsed = now - started
            if elapsed >= seconds:
                break
            due = int(elapsed * rate)
            if due > sent:
                behind = max(behind, elapsed - sent / rate)
                stamp = _stamp(now)
                open_batches: dict[int, Any] = {}
                counts: dict[int, int] = {}
                for n in range(sent, due):
                    template = pool[n % len(pool)]
                    moment = (
                        stamp if not template.late_seconds else _stamp(now - template.late_seconds)
                    )
                    value = b"".join(
                        (prefix, str(n).encode(), b'","timestamp":"', moment, b'",', template.rest)
                    )
                    batch = open_batches.get(template.partition)
                    if batch is None:
                        batch = open_batches[template.partition] = producer.create_batch()
                        counts[template.partition] = 0
                    if batch.append(key=template.key, value=value, timestamp=None) is None:
                        raise RuntimeError("a tick's batch overflowed max_batch_size")
                    counts[template.partition] += 1
                handed = time.time()
                for partition, batch in open_batches.items():
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batches.append([handed, partition, -1, counts[partition]])
                sent = due
            await asyncio.sleep(TICK_SECONDS)
        await producer.flush()
        for row, future in zip(batches, futures, strict=True):
            row[2] = (await future).offset
    finally:
        await producer.stop()
    return {
        "started": started,
        "seconds": time.time() - started,
        "events": sent,
        "rate": rate,
        "behind_seconds": behind,
        "cpu_seconds": cpu_seconds(),
        "batches": batches,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="steady producer of live events")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--out", required=True, help="where the JSON report goes")
    args = parser.parse_args(argv)
    result = asyncio.run(
        produce(args.bootstrap, args.topic, args.rate, args.seconds, args.seed, args.partitions)
    )
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
