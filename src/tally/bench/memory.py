"""Peak memory of a dedup window reload and of a dead-letter flood (tracemalloc).

`python -m tally.bench memory` prints these next to the pending-rollup sizes.
Reload: N ids in 24 closed hours of 4 flush segments each, loaded (a) as the
worker does, one segment at a time from a cursor (`WindowLoad`), and (b) from
a list of every segment fetched at once, as reloads did before. Each figure is
the traced peak over the ids loaded, measured in the same run.
"""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from tally.core.dedup import BUCKET_SECONDS, DedupWindow
from tally.core.events import Rejection, RejectReason
from tally.kafka.dead_letters import DeadLetters

_RECORD = np.dtype([("hi", ">u8"), ("lo", ">u8")])


def _segments(ids: int, now: float) -> list[tuple[int, int, bytes]]:
    hours, per_hour = 24, 4
    current = int(now // BUCKET_SECONDS)
    rows = []
    size = ids // (hours * per_hour)
    for n in range(hours * per_hour):
        words = np.frombuffer(
            b"".join(
                hashlib.blake2b(f"{n}-{i}".encode(), digest_size=16).digest() for i in range(size)
            ),
            dtype=_RECORD,
        )
        words = words[np.argsort(words["hi"], kind="stable")]
        rows.append((n, current - 1 - n // per_hour, words.tobytes()))
    return rows


def _peak(run: Any) -> tuple[int, int]:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = run()
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    return peak - before, after - before


def reload_memory(ids: int = 1_000_000) -> dict[str, float]:
    now = 1_796_000_000.0
    stored = _segments(ids, now)
    loaded = sum(len(blob) for _, _, blob in stored) // 16

    def from_cursor() -> DedupWindow:
        window = DedupWindow(48 * 3600.0)
        loading = window.loader(now, loaded)

        def fetched() -> Iterator[tuple[int, int, bytes]]:
            for segment_id, bucket, blob in stored:
                yield segment_id, bucket, bytes(bytearray(blob))  # each arrives as a new bytes

        for row in fetched():
            loading.add(*row)
        loading.finish()
        return window

    def from_list() -> DedupWindow:
        window = DedupWindow(48 * 3600.0)
        rows = [(s, b, bytes(bytearray(blob))) for s, b, blob in stored]  # all fetched at once
        window.load(rows, now)
        return window

    result = {}
    for name, run in (
        ("reload, one segment at a time", from_cursor),
        ("reload, all fetched", from_list),
    ):
        peak, kept = _peak(run)
        result[f"{name}: peak"] = peak / loaded
        result[f"{name}: held after"] = kept / loaded
    return result


class _Producer:
    async def send(self, topic: str, **message: Any) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def flush(self) -> None:
        return None


def dead_letter_memory(letters: int = 10_000, value_bytes: int = 1000) -> float:
    """Bytes held per pending dead letter beyond its record (the send task and
    the letter), while its flush has not started."""
    rejection = Rejection(RejectReason.NOT_JSON, "the value is not UTF-8 JSON")
    records = [
        ConsumerRecord("t", 0, n, 0, 0, None, b"x" * value_bytes, None, value_bytes, 1, [])
        for n in range(letters)
    ]

    async def flood() -> int:
        sender = DeadLetters(cast(AIOKafkaProducer, _Producer()), "t.dlq")
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        held = [sender.send(record, rejection) for record in records]
        size = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        await sender.deliver(held)
        return size

    return asyncio.run(flood()) / letters
