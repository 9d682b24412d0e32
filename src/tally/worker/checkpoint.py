"""The flush: one owner (`Checkpoint`) for the one flush path, used by the
timer, size limits, revocation and shutdown.

Commit order, written down once:

1. `Checkpoint.start` takes a `FlushBatch` (the pending deltas, and for each
   dirty partition one `PartitionPart`: its target offset, new dedup ids and
   dead letters) and starts fresh deltas, so consuming goes on while the
   batch is written;
2. every dead letter of the batch is acknowledged by Kafka (re-sent if a
   send failed transiently), or parked when Kafka cannot take it: an event
   is never skipped before it is safe somewhere;
3. one PostgreSQL transaction (`tally.store.flush.write_flush`): offsets
   compare-and-set, parked dead letters, dedup ids, UNIQUE members, rollup
   deltas;
4. only then are the outcomes counted in Prometheus and Kafka's own offsets
   committed, for lag tooling only (a failure there loses nothing: on
   assignment the worker seeks to PostgreSQL's offsets);
5. `Checkpoint.settle` applies the outcome once: each partition's stored
   offset moves to the batch's (`FlushBatch.committed`); a failed batch is
   given back whole to the pending work (`FlushBatch.give_back`).

Steps 2 to 4 are `Checkpoint.commit`, in that order, in one method. They run
in a background task: PostgreSQL does its part of a flush on another core,
and a worker that waited for it would spend most of its time idle. One batch
is in flight at a time, and the next starts only after the previous one
settled, so each batch compares-and-sets the offsets the previous one
stored. A partition whose stored offset moved under us (a zombie worker, or
a commit we never heard back from) raises `Fenced`: nothing was written,
and the worker drops all pending work and reloads every partition from the
database, which is the truth.

The checkpoint calls nothing back in the worker: the partition states'
owner (`Partitions`), the Kafka committer (`KafkaOffsets`), the transaction
(`FlushStore`) and the dead letters are passed in.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from tally.core.dedup import FlushPlan
from tally.core.engine import Core, Deltas
from tally.kafka.dead_letters import DeadLetter, DeadLetters
from tally.store.flush import DedupRows, Fenced, FlushResult, ParkedRow, write_flush
from tally.store.member_cache import MemberCache
from tally.telemetry.instruments import Telemetry
from tally.telemetry.logs import Log
from tally.worker.partition import Partitions, PartitionState
from tally.worker.retry import Clock

log = Log("tally.flush")


@dataclass(slots=True)
class PartitionPart:
    """One partition's pending flush, from the moment it is taken (step 1)
    to the moment it is settled (step 5); the transaction reads it as it is
    (`tally.store.flush.FlushPart`)."""

    state: PartitionState
    expected: int  # the stored offset this flush compares with
    target: int  # the offset it stores
    plan: FlushPlan | None  # the dedup window's new ids, merges and expiry
    records: int
    duplicates: int
    rejected: Counter[str]  # dead letters, by reason
    letters: list[DeadLetter]  # and the letters themselves, until acknowledged or parked
    starts: dict[str, int] = field(default_factory=dict)
    epoch: int | None = None

    # What the flush transaction reads (tally.store.flush.FlushPart).
    @property
    def topic(self) -> str:
        return self.state.topic

    @property
    def partition(self) -> int:
        return self.state.partition

    @property
    def expected_offset(self) -> int:
        return self.expected

    @property
    def next_offset(self) -> int:
        return self.target

    @property
    def dedup(self) -> FlushPlan | None:
        return self.plan

    @property
    def dead_letters(self) -> int:
        return sum(self.rejected.values())

    @property
    def expected_epoch(self) -> int | None:
        return self.epoch


@dataclass(slots=True)
class FlushBatch:
    """Everything one flush makes durable, taken at once from the partitions."""

    deltas: Deltas
    reason: str
    parts: list[PartitionPart] = field(default_factory=list)
    parked: list[DeadLetter] = field(default_factory=list)  # dead letters Kafka refused

    @property
    def letters(self) -> list[DeadLetter]:
        return [letter for part in self.parts for letter in part.letters]

    @classmethod
    def take(
        cls, states: Sequence[PartitionState], deltas: Deltas, now: float, reason: str
    ) -> FlushBatch:
        """Move the pending work of ready, dirty partitions into a new batch;
        also of ready partitions with metric starts to store (the flush
        that first includes a metric writes where it started)."""
        batch = cls(deltas, reason)
        for state in states:
            if not (state.ready and (state.dirty or state.starts)):
                continue
            plan = state.dedup.plan_flush(now) if state.dedup is not None else None
            batch.parts.append(
                PartitionPart(
                    state,
                    state.stored_offset,
                    state.next_offset,
                    plan,
                    state.records,
                    state.duplicates,
                    state.rejected,
                    state.dead_letters,
                    state.starts,
                    state.epoch,
                )
            )
            state.starts = {}
            state.clear()
        return batch

    def committed(
        self,
        dedup_rows: Mapping[tuple[str, int], DedupRows],
        epochs: Mapping[tuple[str, int], int] | None = None,
    ) -> None:
        """The transaction committed: the partitions now stand at the batch's
        offsets and at the epochs the flush stored."""
        for part in self.parts:
            state = part.state
            state.stored_offset = part.target
            if epochs is not None and (state.topic, state.partition) in epochs:
                state.epoch = epochs[(state.topic, state.partition)]
            state.started.update(part.starts)
            if state.dedup is not None and part.plan is not None:
                rows = dedup_rows[(state.topic, state.partition)]
                state.dedup.commit(part.plan, rows.new_row, rows.merged_row)

    def give_back(self, current: Deltas) -> None:
        """The flush failed (nothing was written): the work is pending again."""
        current.merge(self.deltas)
        for part in self.parts:
            state = part.state
            state.starts.update(part.starts)  # taken before anything since: earlier
            if state.dedup is not None:
                state.dedup.abort()
            state.records += part.records
            state.duplicates += part.duplicates
            state.rejected.update(part.rejected)
            state.dead_letters[:0] = part.letters
            state.dead_letter_bytes += sum(letter.size for letter in part.letters)


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


class FlushStore:
    """Step 3: the flush transaction on a connection of the pool."""

    def __init__(self, pool: asyncpg.Pool, owner: str, members: MemberCache | None) -> None:
        self.pool = pool
        self.owner = owner
        self.members = members

    async def write(
        self, parts: Sequence[PartitionPart], deltas: Deltas, parked: Sequence[ParkedRow]
    ) -> FlushResult:
        async with self.pool.acquire() as connection:
            return await write_flush(
                connection, parts, deltas, self.owner, parked, members=self.members
            )


class Checkpoint:
    """The one owner of the flush: the pending deltas, the batch in flight,
    and steps 1 to 5 of the module docstring."""

    def __init__(
        self,
        *,
        states: Partitions,
        core: Core,
        store: FlushStore,
        dead_letters: DeadLetters,
        kafka: KafkaOffsets | None,
        telemetry: Telemetry,
        clock: Clock,
        members: MemberCache | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.states = states
        self.core = core
        self.store = store
        self.dead_letters = dead_letters
        self.kafka = kafka  # None: no Kafka offsets committed (tests)
        self.telemetry = telemetry
        self.clock = clock
        self.members = members
        self.timeout = timeout
        self.deltas = Deltas(core)  # where consumed events go
        self.last_success = 0.0  # wall time of the last committed flush
        self._batch: FlushBatch | None = None
        self._task: asyncio.Task[FlushResult] | None = None
        self._started = 0.0

    def started_at(self) -> float | None:
        """When the flush in flight started (monotonic), None when none is."""
        return self._started if self._task is not None else None

    @property
    def busy(self) -> bool:
        return self._task is not None

    @property
    def landed(self) -> bool:
        """The flush in flight has finished (settle() will not wait)."""
        return self._task is not None and self._task.done()

    # -- step 1 ----------------------------------------------------------------

    def start(self, reason: str) -> bool:
        """Take the pending work as a batch and start writing it; False if none."""
        assert self._task is None, "settle the flush in flight first"
        batch = FlushBatch.take(list(self.states.values()), self.deltas, self.clock.wall(), reason)
        if not batch.parts:
            return False
        self.deltas = Deltas(self.core)
        self._batch = batch
        self._started = self.clock.monotonic()
        self._task = asyncio.create_task(self._write(batch), name=f"flush-{reason}")
        return True

    async def _write(self, batch: FlushBatch) -> FlushResult:
        # A flush that hangs (a lock, a silent server) is abandoned and given
        # back; if its commit did land after all, the next one is fenced and
        # the worker reloads: never counted twice.
        async with asyncio.timeout(self.timeout):
            return await self.commit(batch)

    # -- steps 2 to 4 ------------------------------------------------------------

    async def commit(self, batch: FlushBatch) -> FlushResult:
        """Make `batch` durable. Raises `Fenced`, or a database or Kafka
        error, with nothing written."""
        started = time.perf_counter()
        log.debug("flush started", reason=batch.reason, partitions=len(batch.parts))
        try:
            # 2. Every dead letter acknowledged by Kafka, or parked.
            batch.parked = await self.dead_letters.deliver(batch.letters)
            # 3. One transaction: offsets, parked letters, dedup ids, members, rollups.
            parked = [letter.parked_row() for letter in batch.parked]
            result = await self.store.write(batch.parts, batch.deltas, parked)
        except BaseException as exc:
            self.telemetry.flushes.labels("fenced" if isinstance(exc, Fenced) else "error").inc()
            raise
        # 4. Durable: count the outcomes, from the batch alone (nothing else
        # touches it now), then commit Kafka's advisory offsets.
        self._count(batch)
        await self._commit_kafka(batch)
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
        self.last_success = self.clock.wall()
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

    def _count(self, batch: FlushBatch) -> None:
        """Outcomes into Prometheus, once the batch is durable."""
        t = self.telemetry
        for part in batch.parts:
            if part.duplicates:
                t.duplicates.labels(part.topic).inc(part.duplicates)
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

    async def _commit_kafka(self, batch: FlushBatch) -> None:
        if self.kafka is None:
            return
        offsets = {
            p.state.tp: OffsetAndMetadata(p.target, "") for p in batch.parts if p.target >= 0
        }
        try:
            await asyncio.wait_for(self.kafka.commit(offsets), timeout=10)
        except Exception as exc:  # advisory only: PostgreSQL holds the real offsets
            self.telemetry.errors.labels("kafka", "offset_commit").inc()
            log.debug("kafka offset commit skipped", reason=f"{type(exc).__name__}: {exc}")

    # -- step 5 ----------------------------------------------------------------

    async def settle(self) -> None:
        """Wait until no flush is in flight, applying each outcome once.

        The loop and a rebalance callback (another task) may both wait on
        one flush: the first to wake applies its outcome, and the other goes
        on waiting for whatever is in flight by then. On success the
        partitions move to the batch's offsets. On `Fenced` the exception
        propagates to the one that applied it (the worker drops everything);
        on any other error the batch is given back to the pending work
        before the exception propagates.
        """
        while (task := self._task) is not None:
            batch = self._batch
            assert batch is not None
            try:
                result = await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():
                    raise  # we were cancelled, not the flush: it stays in flight
                if self._task is task:
                    self._task = self._batch = None
                    batch.give_back(self.deltas)
                    raise
                continue
            except BaseException as exc:
                if self._task is not task:
                    continue  # the other waiter dealt with it
                self._task = self._batch = None
                if not isinstance(exc, Fenced):
                    batch.give_back(self.deltas)
                raise
            if self._task is task:
                self._task = self._batch = None
                batch.committed(result.dedup_rows, result.epochs)

    # -- all five, and giving up ----------------------------------------------------

    async def flush(self, reason: str) -> None:
        """Everything pending made durable before returning (revocation, shutdown)."""
        await self.settle()
        if self.start(reason):
            await self.settle()

    def drop(self) -> None:
        """Forget all pending work (after a fence): the events will be re-read."""
        assert self._task is None, "settle the flush in flight first"
        self.deltas = Deltas(self.core)

    def abandon(self) -> None:
        """Cancel the flush in flight without waiting for it, and forget all
        pending work; the caller reloads every partition. If the cancelled
        transaction committed after all, the next flush is fenced: the
        database stays the truth either way."""
        task, self._task, self._batch = self._task, None, None
        if task is not None:
            task.cancel()
            task.add_done_callback(_retrieve)
        self.deltas = Deltas(self.core)


def _retrieve(task: asyncio.Task[FlushResult]) -> None:
    if not task.cancelled():
        task.exception()
