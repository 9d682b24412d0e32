"""The one flush path, used by the timer, size limits, revocation and shutdown.

Commit order, written down once:

1. wait until every dead letter of the flushed partitions is acknowledged
   by Kafka (an event is never skipped before it is safe somewhere);
2. one PostgreSQL transaction (`tally.store.flush.write_flush`): offsets
   compare-and-set, dedup ids, UNIQUE members, rollup deltas;
3. only then forget the pending work and count outcomes in Prometheus;
4. last, commit Kafka's own offsets, for lag tooling only: a failure there
   loses nothing, since on assignment the worker seeks to PostgreSQL's.

A partition whose stored offset moved under us (a zombie worker, or a flush
whose commit we never heard back from) is fenced: its pending work is
dropped and it is reloaded from the database, which is the truth.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from tally.core.aggregate import merged
from tally.core.dedup import FlushPlan
from tally.kafka.dead_letters import DeadLetters
from tally.store.flush import DedupRows, Fenced, PartitionFlush, write_flush
from tally.telemetry.logs import Log
from tally.telemetry.metrics import Telemetry
from tally.worker.partition import PartitionState

log = Log("tally.flush")


@dataclass(frozen=True, slots=True)
class FlushOutcome:
    flushed: list[PartitionState]
    fenced: list[PartitionState]
    rows: int


class Checkpointer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        telemetry: Telemetry,
        owner: str,
        clock: Callable[[], float],
        commit_kafka: Callable[[dict[TopicPartition, OffsetAndMetadata]], object] | None = None,
    ) -> None:
        self.pool = pool
        self.telemetry = telemetry
        self.owner = owner
        self.clock = clock
        self.commit_kafka = commit_kafka
        self.lock = asyncio.Lock()  # revocation and the main loop never flush at once
        self.last_success = 0.0

    async def flush(self, states: Sequence[PartitionState], reason: str) -> FlushOutcome:
        """Flush the ready, dirty partitions among `states`.

        Raises on database or Kafka errors with all pending work intact, so
        the caller can retry. Fenced partitions are returned, already cleared
        and marked not ready; the caller reloads them.
        """
        async with self.lock:
            return await self._flush(states, reason)

    async def _flush(self, states: Sequence[PartitionState], reason: str) -> FlushOutcome:
        todo = [s for s in states if s.ready and s.dirty]
        if not todo:
            return FlushOutcome([], [], 0)
        started = time.perf_counter()
        log.debug("flush started", reason=reason, partitions=len(todo))
        await DeadLetters.drain(f for s in todo for f in s.dead_letters)
        fenced: list[PartitionState] = []
        while todo:
            now = self.clock()
            plans = {s.tp: s.dedup.plan_flush(now) if s.dedup is not None else None for s in todo}
            parts = [
                PartitionFlush(
                    s.topic,
                    s.partition,
                    s.stored_offset,
                    s.next_offset,
                    plans[s.tp],
                    records=s.pending_events,
                    duplicates=s.duplicates,
                    dead_letters=sum(s.rejected.values()),
                )
                for s in todo
            ]
            deltas = merged(s.deltas for s in todo)
            try:
                async with self.pool.acquire() as connection:
                    result = await write_flush(connection, parts, deltas, self.owner)
            except Fenced as exc:
                lost = {TopicPartition(t, p) for t, p in exc.partitions}
                for state in todo:
                    if state.tp in lost:
                        self._fence(state)
                        fenced.append(state)
                todo = [s for s in todo if s.tp not in lost]
                self.telemetry.flushes.labels("fenced").inc()
                continue
            except BaseException:
                self.telemetry.flushes.labels("error").inc()
                raise
            self._committed(
                todo, plans, result.dedup_rows, deltas.applied, deltas.skipped, deltas.unmatched
            )
            elapsed = time.perf_counter() - started
            self.telemetry.flushes.labels("ok").inc()
            self.telemetry.flush_duration.observe(elapsed)
            self.telemetry.flush_rows.observe(result.rows_written)
            self.telemetry.rows_written.inc(result.rows_written)
            self.last_success = self.clock()
            self.telemetry.last_flush.set(self.last_success)
            log.debug(
                "flushed",
                reason=reason,
                partitions=len(todo),
                rows=result.rows_written,
                events=deltas.events,
                seconds=round(elapsed, 4),
            )
            await self._commit_kafka(todo)
            return FlushOutcome(list(todo), fenced, result.rows_written)
        return FlushOutcome([], fenced, 0)

    def _fence(self, state: PartitionState) -> None:
        self.telemetry.fenced.labels(state.topic, str(state.partition)).inc()
        log.warning(
            "partition fenced: another worker moved its offset; dropping pending work and reloading",
            topic=state.topic,
            partition=state.partition,
            expected=state.stored_offset,
            dropped_events=state.pending_events,
        )
        state.clear()
        state.ready = False

    def _committed(
        self,
        states: Sequence[PartitionState],
        plans: dict[TopicPartition, FlushPlan | None],
        dedup_rows: dict[tuple[str, int], DedupRows],
        applied: dict[str, int],
        skipped: dict[tuple[str, str], int],
        unmatched: int,
    ) -> None:
        t = self.telemetry
        for state in states:
            plan = plans[state.tp]
            if state.dedup is not None and plan is not None:
                rows = dedup_rows[(state.topic, state.partition)]
                state.dedup.commit(plan, rows.new_row, rows.merged_row)
            if state.duplicates:
                t.duplicates.labels(state.topic).inc(state.duplicates)
            for why, count in state.rejected.items():
                t.dead_lettered.labels(why).inc(count)
            state.stored_offset = state.next_offset
            state.clear()
        for uid, count in applied.items():
            t.applied.labels(uid).inc(count)
        for (uid, why), count in skipped.items():
            t.skipped.labels(uid, why).inc(count)
        if unmatched:
            t.unmatched.inc(unmatched)

    async def _commit_kafka(self, states: Sequence[PartitionState]) -> None:
        if self.commit_kafka is None:
            return
        offsets = {
            s.tp: OffsetAndMetadata(s.stored_offset, "") for s in states if s.stored_offset >= 0
        }
        try:
            result = self.commit_kafka(offsets)
            if asyncio.iscoroutine(result):
                await result
        except Exception as exc:  # advisory only: PostgreSQL holds the real offsets
            self.telemetry.errors.labels("kafka", "offset_commit").inc()
            log.debug("kafka offset commit skipped", reason=f"{type(exc).__name__}: {exc}")
