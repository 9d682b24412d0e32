"""The one flush path, used by the timer, size limits, revocation and shutdown.

Commit order, written down once:

1. the worker takes a `FlushBatch` (its pending deltas, each dirty
   partition's target offset, new dedup ids and dead letters) and starts
   a fresh one, so consuming goes on while the batch is written;
2. every dead letter of the batch is acknowledged by Kafka (re-sent if a
   send failed transiently), or parked when Kafka cannot take it: an event
   is never skipped before it is safe somewhere;
3. one PostgreSQL transaction (`tally.store.flush.write_flush`): offsets
   compare-and-set, parked dead letters, dedup ids, UNIQUE members, rollup
   deltas;
4. only then are the outcomes counted in Prometheus and Kafka's own offsets
   committed, for lag tooling only (a failure there loses nothing: on
   assignment the worker seeks to PostgreSQL's offsets);
5. the worker settles the batch: each partition's stored offset moves to the
   batch's (`FlushBatch.committed`); a failed batch is given back whole to
   the pending work (`FlushBatch.give_back`).

One batch is in flight at a time. A partition whose stored offset moved
under us (a zombie worker, or a commit we never heard back from) raises
`Fenced`: nothing was written, and the worker drops all pending work and
reloads every partition from the database, which is the truth.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from tally.kafka.dead_letters import DeadLetters
from tally.store.flush import Fenced, FlushResult, PartitionFlush, write_flush
from tally.store.member_cache import MemberCache
from tally.telemetry.instruments import Telemetry
from tally.telemetry.logs import Log
from tally.worker.partition import FlushBatch

log = Log("tally.flush")

KafkaCommit = Callable[[dict[TopicPartition, OffsetAndMetadata]], Awaitable[None]]


class KafkaOffsets:
    """Step 4's Kafka commit: the advisory offsets of the partitions the
    consumer still holds (a partition given up meanwhile is the next
    owner's to commit)."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if offsets:
            current = self.consumer.assignment()
            mine = {tp: o for tp, o in offsets.items() if tp in current}
            if mine:
                await self.consumer.commit(mine)


class Checkpointer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        telemetry: Telemetry,
        owner: str,
        clock: Callable[[], float],
        commit_kafka: KafkaCommit | None = None,
        members: MemberCache | None = None,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        self.pool = pool
        self.members = members
        self.telemetry = telemetry
        self.owner = owner
        self.clock = clock
        self.commit_kafka = commit_kafka
        self.dead_letters = dead_letters
        self.last_success = 0.0

    async def write(self, batch: FlushBatch) -> FlushResult:
        """Make `batch` durable (steps 2 to 4). Raises `Fenced`, or a
        database or Kafka error, with nothing written."""
        started = time.perf_counter()
        log.debug("flush started", reason=batch.reason, partitions=len(batch.parts))
        try:
            assert self.dead_letters is not None
            batch.parked = await self.dead_letters.deliver(batch.dead_letters)
            parts = [
                PartitionFlush(
                    p.state.topic,
                    p.state.partition,
                    p.expected,
                    p.target,
                    p.plan,
                    records=p.records,
                    duplicates=p.duplicates,
                    dead_letters=sum(p.rejected.values()),
                    starts=tuple(sorted(p.starts.items())),
                    expected_epoch=p.epoch,
                )
                for p in batch.parts
            ]
            async with self.pool.acquire() as connection:
                result = await write_flush(
                    connection,
                    parts,
                    batch.deltas,
                    self.owner,
                    [letter.parked_row() for letter in batch.parked],
                    members=self.members,
                )
        except BaseException as exc:
            self.telemetry.flushes.labels("fenced" if isinstance(exc, Fenced) else "error").inc()
            raise
        # Counted as soon as durable, from the batch alone (nothing else touches it now).
        self.count(batch)
        await self.commit_kafka_offsets(batch)
        elapsed = time.perf_counter() - started
        t = self.telemetry
        t.flushes.labels("ok").inc()
        t.flush_duration.observe(elapsed)
        t.flush_rows.observe(result.rows_written)
        t.rows_written.inc(result.rows_written)
        t.members_sent.inc(result.members_sent)
        t.members_skipped.inc(result.members_skipped)
        if self.members is not None:
            t.member_cache.set(len(self.members))
        self.last_success = self.clock()
        t.last_flush.set(self.last_success)
        log.debug(
            "flushed",
            reason=batch.reason,
            partitions=len(batch.parts),
            rows=result.rows_written,
            events=batch.deltas.events,
            seconds=round(elapsed, 4),
        )
        return result

    def count(self, batch: FlushBatch) -> None:
        """Outcomes into Prometheus, once the batch is durable."""
        t = self.telemetry
        for part in batch.parts:
            if part.duplicates:
                t.duplicates.labels(part.state.topic).inc(part.duplicates)
            for why, count in part.rejected.items():
                t.dead_lettered.labels(why).inc(count)
        for letter in batch.parked:
            t.dead_letters_parked.labels(letter.rejection.reason.value).inc()
        for uid, count in batch.deltas.applied.items():
            t.applied.labels(uid).inc(count)
        for (uid, why), count in batch.deltas.skipped.items():
            t.skipped.labels(uid, why).inc(count)
        if batch.deltas.unmatched:
            t.unmatched.inc(batch.deltas.unmatched)

    async def commit_kafka_offsets(self, batch: FlushBatch) -> None:
        if self.commit_kafka is None:
            return
        offsets = {
            p.state.tp: OffsetAndMetadata(p.target, "") for p in batch.parts if p.target >= 0
        }
        try:
            await asyncio.wait_for(self.commit_kafka(offsets), timeout=10)
        except Exception as exc:  # advisory only: PostgreSQL holds the real offsets
            self.telemetry.errors.labels("kafka", "offset_commit").inc()
            log.debug("kafka offset commit skipped", reason=f"{type(exc).__name__}: {exc}")
