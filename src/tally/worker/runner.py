"""`tally run`: one consumer in the group, the core, and the flush pipeline.

The loop: load state for newly assigned partitions and seek to their stored
offsets; fetch a batch; decode, dead-letter, deduplicate and aggregate it;
when the interval or a pending-work limit says so, hand the pending work
to the flush pipeline and go on consuming while it is written. Errors from
PostgreSQL or Kafka are retried with capped backoff while the pending work
stays in memory (fetching pauses when it is full); nothing is lost, since
no offset is stored before the rollups it produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import math
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition
from prometheus_client import CollectorRegistry

from tally.config import Settings
from tally.core.dedup import BUCKET_SECONDS, digest
from tally.core.events import DecodeLimits, Rejection, RejectReason, UsageEvent, decode_event
from tally.core.metrics import MetricIndex
from tally.kafka.clients import ConsumerFactory, ProducerFactory, make_consumer, make_producer
from tally.kafka.dead_letters import DeadLetters
from tally.store.flush import Fenced, load_partition
from tally.store.pool import DATABASE_ERRORS
from tally.telemetry.http import TelemetryServer
from tally.telemetry.logs import Log
from tally.telemetry.metrics import Telemetry
from tally.worker.checkpoint import Checkpointer
from tally.worker.definitions import DefinitionWatcher
from tally.worker.partition import PartitionState
from tally.worker.pipeline import FlushPipeline
from tally.worker.retry import RETRYABLE, Backoff, Clock, error_kind, retry_until

log = Log("tally.worker")

# Each dead letter is held (record, rejection, send task) until its flush: a
# flood of bad events is flushed in slices of this size, which also waits for
# the sends, instead of holding up to TALLY_MAX_PENDING_EVENTS of them.
MAX_PENDING_DEAD_LETTERS = 10_000
MAX_PENDING_DEAD_LETTER_BYTES = 64 * 1024 * 1024  # their records, held until sent
# An internal error's detail (class and message) in the dead letter's header.
MAX_DETAIL_CHARS = 1000


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.worker.partitions_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.worker.partitions_assigned(set(assigned))


@dataclass
class Worker:
    settings: Settings
    pool: asyncpg.Pool
    registry: CollectorRegistry
    consumer_factory: ConsumerFactory = make_consumer
    producer_factory: ProducerFactory = make_producer
    clock: Clock = field(default_factory=Clock)
    states: dict[TopicPartition, PartitionState] = field(default_factory=dict)
    index: MetricIndex = field(default_factory=lambda: MetricIndex([]))
    metrics_port: int = 0

    def __post_init__(self) -> None:
        self.owner = self.settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.telemetry = Telemetry(self.registry)
        self.limits = DecodeLimits(
            max_bytes=self.settings.max_event_bytes,
            max_lateness_seconds=self.settings.max_lateness,
            max_future_seconds=self.settings.max_future_skew,
        )
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.dead_letters: DeadLetters | None = None
        self.checkpointer = Checkpointer(
            self.pool, self.telemetry, self.owner, self.clock.wall, self._commit_kafka
        )
        self.pipeline = FlushPipeline(self.checkpointer, self.states.values, self.clock.wall)
        self.watcher = DefinitionWatcher(self.pool, self._set_index)
        self.backoff = Backoff(self.settings.retry_max_backoff)
        self.paused_for_backpressure = False
        self.joined = False
        self.loading = asyncio.Lock()
        self.retry_at = 0.0
        self.internal_errors = 0
        self.internal_error_logged = -math.inf

    def _set_index(self, index: MetricIndex) -> None:
        self.index = index
        self.telemetry.metrics_defined.set(len(index))

    # -- partition lifecycle ----------------------------------------------

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.telemetry.rebalances.inc()
        leaving = [self.states[tp] for tp in revoked if tp in self.states]
        if not leaving:
            return
        try:
            # Deltas are shared by all partitions: hand over everything pending.
            if self.settings.revoke_policy == "flush":
                await asyncio.wait_for(
                    self.pipeline.flush("revoke"), timeout=self.settings.session_timeout
                )
            else:
                await self.pipeline.settle()
                self._drop_pending("revocation with revoke_policy=drop")
        except Fenced as exc:
            self._fenced(exc)
        except (TimeoutError, *RETRYABLE) as exc:
            self.telemetry.errors.labels(*error_kind(exc)).inc()
            log.warning(
                "flush on revocation failed; the next owner re-reads",
                reason=f"{type(exc).__name__}: {exc}",
            )
            with contextlib.suppress(BaseException):
                await self.pipeline.settle()
            self._drop_pending("failed flush on revocation")
        for state in leaving:
            self.states.pop(state.tp, None)
            with contextlib.suppress(KeyError):  # another worker reports its lag now
                self.telemetry.lag.remove(state.topic, str(state.partition))
        self._update_gauges()

    def _drop_pending(self, why: str) -> None:
        """Forget all pending work and reload every partition (its events are re-read)."""
        dropped = self.pipeline.deltas.events
        self.pipeline.drop()
        # Nothing is pending any more: the reload resumes the partitions.
        self.paused_for_backpressure = False
        for state in self.states.values():
            state.clear()
            state.ready = False
        if self.consumer is not None:
            # Paused until reloaded and seeked: nothing fetched meanwhile is used.
            stale = [tp for tp in self.states if tp in self.consumer.assignment()]
            if stale:
                self.consumer.pause(*stale)
        if dropped:
            log.info("pending work dropped; the events will be read again", why=why, events=dropped)

    def _fenced(self, exc: Fenced) -> None:
        for topic, partition in exc.partitions:
            self.telemetry.fenced.labels(topic, str(partition)).inc()
        log.warning(
            "partition fenced: another worker moved its offset; dropping pending work and reloading",
            partitions=",".join(f"{t}[{p}]" for t, p in exc.partitions),
        )
        self._drop_pending("fenced")

    async def partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.joined = True
        for tp in assigned:
            if tp not in self.states:
                self.states[tp] = PartitionState(tp, self.settings.dedup_window)
        if self.consumer is not None:
            loading = [tp for tp, s in self.states.items() if not s.ready]
            if loading:
                self.consumer.pause(*loading)
        try:
            await self.load_partitions()
        except RETRYABLE as exc:
            self.telemetry.errors.labels(*error_kind(exc)).inc()
            log.warning(
                "partition state not loaded yet; will retry", reason=f"{type(exc).__name__}: {exc}"
            )
        self._update_gauges()
        log.info(
            "partitions assigned",
            partitions=",".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)),
        )

    async def load_partitions(self) -> None:
        """Load stored offsets and dedup windows of partitions not ready yet, then seek."""
        async with self.loading:  # the rebalance callback and the loop may both ask
            pending = [s for s in self.states.values() if not s.ready]
            if not pending:
                return
            now = self.clock.wall()
            window = self.settings.dedup_window
            min_bucket = int((now - window) // BUCKET_SECONDS) if window > 0 else None
            async with self.pool.acquire() as connection:
                loaded = [
                    (
                        state,
                        await load_partition(connection, state.topic, state.partition, min_bucket),
                    )
                    for state in pending
                ]
            from_start = []
            assignment = self.consumer.assignment() if self.consumer is not None else set()
            for state, (offset, rows) in loaded:
                if self.states.get(state.tp) is not state:
                    continue  # revoked while we were loading
                if state.dedup is not None:
                    state.dedup.load(rows, now)
                state.loaded(offset)
                if self.consumer is not None and state.tp in assignment:
                    if offset >= 0:
                        self.consumer.seek(state.tp, offset)
                    else:
                        from_start.append(state.tp)
                log.info(
                    "partition ready",
                    topic=state.topic,
                    partition=state.partition,
                    offset=offset,
                    dedup_ids=state.dedup.held if state.dedup is not None else 0,
                )
            if self.consumer is not None:
                if from_start:
                    await self.consumer.seek_to_beginning(*from_start)
                ready = [s.tp for s, _ in loaded if s.ready and s.tp in assignment]
                if ready and not self.paused_for_backpressure:
                    self.consumer.resume(*ready)

    # -- consuming -----------------------------------------------------------

    def consume(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        # Never awaits: aiokafka runs the rebalance callbacks in another task,
        # and a revoke that flushed half-way through a batch would store an
        # offset past events not yet in the deltas.
        state = self.states.get(tp)
        if state is None or not state.ready:
            return  # fetched before a revoke or a reload; re-read after the seek
        self.telemetry.consumed.labels(tp.topic, str(tp.partition)).inc(len(records))
        now = self.clock.wall()
        limits = self.limits
        accepted: list[tuple[ConsumerRecord, UsageEvent]] = []
        for record in records:
            if record.offset < state.next_offset:
                continue
            state.next_offset = record.offset + 1
            state.records += 1
            try:
                result = decode_event(record.value, now, limits)
            except Exception as exc:  # a bug: this record, not the worker, pays for it
                result = self._internal_error(record, exc)
            if type(result) is Rejection:
                self._dead_letter(state, record, result)
            else:
                accepted.append((record, result))  # type: ignore[arg-type]
        if not accepted:
            return
        dedup = state.dedup
        if dedup is None:
            for record, event in accepted:
                self._apply(state, record, event)
            return
        digests = [digest(event.id) for _, event in accepted]
        pending = dedup.pending
        for (record, event), key, seen in zip(accepted, digests, dedup.seen(digests), strict=True):
            if seen or key in pending:
                state.duplicates += 1
            elif self._apply(state, record, event):
                pending.add(key)  # remembered only once applied

    def _apply(self, state: PartitionState, record: ConsumerRecord, event: UsageEvent) -> bool:
        """Add one event to the deltas; an exception dead-letters the record
        instead (Deltas.add changes nothing when it raises)."""
        try:
            self.pipeline.deltas.add(event, self.index)
        except Exception as exc:
            self._dead_letter(state, record, self._internal_error(record, exc))
            return False
        return True

    def _dead_letter(self, state: PartitionState, record: ConsumerRecord, why: Rejection) -> None:
        assert self.dead_letters is not None
        letter = self.dead_letters.send(record, why)
        state.dead_letters.append(letter)
        state.dead_letter_bytes += letter.size
        state.rejected[why.reason.value] += 1

    def _internal_error(self, record: ConsumerRecord, exc: Exception) -> Rejection:
        detail = f"{type(exc).__name__}: {exc}"[:MAX_DETAIL_CHARS]
        now = self.clock.monotonic()
        self.internal_errors += 1
        if now - self.internal_error_logged >= 10.0:  # a flood of them is one line per 10 s
            self.internal_error_logged = now
            log.error(
                "a record raised inside Tally; it goes to the dead-letter topic",
                reason=detail,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                since_start=self.internal_errors,
            )
        return Rejection(RejectReason.INTERNAL_ERROR, detail)

    def pending(self) -> tuple[int, int]:
        """(events, rollups) consumed but not yet flushed, the flush in flight excluded."""
        events = self.pipeline.deltas.events
        for state in self.states.values():
            events += state.duplicates + sum(state.rejected.values())
        deltas = self.pipeline.deltas
        return events, len(deltas) + deltas.members

    def _update_gauges(self) -> None:
        events, rollups = self.pending()
        t = self.telemetry
        t.pending_events.set(events)
        t.pending_rollups.set(rollups)
        t.partitions.set(len(self.states))
        t.dedup_ids.set(sum(s.dedup.held for s in self.states.values() if s.dedup is not None))
        if self.consumer is not None:
            for tp, state in self.states.items():
                high = self.consumer.highwater(tp)
                if high is not None and state.next_offset >= 0:
                    t.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - state.next_offset))

    # -- flushing ------------------------------------------------------------

    async def _commit_kafka(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if self.consumer is not None and offsets:
            current = self.consumer.assignment()
            mine = {tp: o for tp, o in offsets.items() if tp in current}
            if mine:
                await self.consumer.commit(mine)

    def _flush_due(self, last_flush: float) -> str | None:
        events, rollups = self.pending()
        if events >= self.settings.max_pending_events:
            return "pending_events"
        if rollups >= self.settings.max_pending_rollups:
            return "pending_rollups"
        states = self.states.values()
        if (
            sum(len(s.dead_letters) for s in states) >= MAX_PENDING_DEAD_LETTERS
            or sum(s.dead_letter_bytes for s in states) >= MAX_PENDING_DEAD_LETTER_BYTES
        ):
            return "pending_dead_letters"
        if self.clock.monotonic() - last_flush >= self.settings.flush_interval:
            return "interval"
        return None

    async def _settle(self) -> bool:
        """Settle the flush in flight; False if it failed (and was dealt with)."""
        try:
            await self.pipeline.settle()
        except Fenced as exc:
            self._fenced(exc)
            return False
        except RETRYABLE as exc:
            self._failed(exc, "flushing")
            if self.pending()[0] >= self.settings.max_pending_events:
                self._set_backpressure(True)
            return False
        self.backoff.reset()
        self._set_backpressure(False)
        return True

    def _set_backpressure(self, on: bool) -> None:
        if self.consumer is None or on == self.paused_for_backpressure:
            return
        self.paused_for_backpressure = on
        ready = [
            tp for tp, s in self.states.items() if s.ready and tp in self.consumer.assignment()
        ]
        if on:
            self.consumer.pause(*ready)
            log.warning("pending work is full; fetching paused until a flush succeeds")
        elif ready:
            self.consumer.resume(*ready)

    def _failed(self, exc: BaseException, doing: str) -> None:
        self.telemetry.errors.labels(*error_kind(exc)).inc()
        delay = self.backoff.next_delay()
        log.warning(
            f"error while {doing}; pending work kept, retrying",
            reason=f"{type(exc).__name__}: {exc}",
            retry_in=round(delay, 2),
            pending_events=self.pending()[0],
        )
        self.retry_at = self.clock.monotonic() + delay

    # -- the loop ------------------------------------------------------------

    async def ready_check(self) -> tuple[bool, str]:
        if not self.joined:
            return False, "not yet in the consumer group"
        if any(not s.ready for s in self.states.values()):
            return False, "loading partition state"
        age = self.clock.wall() - self.checkpointer.last_success
        if (
            self.checkpointer.last_success
            and age > self.settings.ready_flush_age
            and self.pending()[0]
        ):
            return False, f"last successful flush {age:.0f} s ago"
        try:
            async with self.pool.acquire(timeout=2) as connection:
                await connection.fetchval("SELECT 1", timeout=2)
        except (TimeoutError, *DATABASE_ERRORS) as exc:
            return False, f"database unreachable: {type(exc).__name__}"
        return True, f"ok: {len(self.states)} partitions"

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        self.telemetry.up_since.set(self.clock.wall())
        server = TelemetryServer(
            self.registry, self.ready_check, settings.metrics_host, settings.metrics_port
        )
        self.metrics_port = await server.start()
        log.info(
            "telemetry listening", url=f"http://{settings.metrics_host}:{self.metrics_port}/metrics"
        )
        retry = functools.partial(
            retry_until, stop, telemetry=self.telemetry, max_backoff=settings.retry_max_backoff
        )
        await retry(self.watcher.refresh, "load metric definitions")
        self.producer = self.producer_factory(settings)
        await retry(self.producer.start, "start the dead-letter producer")
        self.dead_letters = self.checkpointer.dead_letters = DeadLetters(
            self.producer, settings.dead_letter_topic
        )
        self.consumer = self.consumer_factory(settings)
        self.consumer.subscribe(topics=list(settings.topic), listener=_Rebalance(self))
        await retry(self.consumer.start, "join the consumer group")
        watcher = asyncio.create_task(self.watcher.run(settings.metrics_poll_interval, stop))
        # Pending rollups are many long-lived small objects: full collections
        # would scan them again and again for cycles they never form.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        log.info(
            "worker started",
            owner=self.owner,
            topics=",".join(settings.topic),
            group=settings.group,
        )
        try:
            await self._loop(stop)
        except BaseException:
            # An unexpected error may have left a batch half-consumed (offsets
            # moved past events not yet in the deltas): storing that would lose
            # them. Nothing is flushed; the next owner re-reads from PostgreSQL.
            await self._shutdown(watcher, server, final_flush=False)
            raise
        await self._shutdown(watcher, server, final_flush=True)

    async def _loop(self, stop: asyncio.Event) -> None:
        assert self.consumer is not None
        consumer = self.consumer
        last_flush = self.clock.monotonic()
        while not stop.is_set():
            now = self.clock.monotonic()
            if now >= self.retry_at and any(not s.ready for s in self.states.values()):
                try:
                    await self.load_partitions()
                except RETRYABLE as exc:
                    self._failed(exc, "loading partition state")
            # Never 0: a fetch that need not wait does not yield to the event loop,
            # and the flush in flight only advances when the loop yields.
            timeout = max(0.005, min(0.5, self.settings.flush_interval - (now - last_flush)))
            try:
                batch = await consumer.getmany(
                    timeout_ms=int(timeout * 1000), max_records=self.settings.max_batch
                )
            except KafkaError as exc:
                self._failed(exc, "fetching")
                await asyncio.sleep(self.backoff.next_delay())
                continue
            for tp, records in batch.items():
                self.consume(tp, records)
            await asyncio.sleep(0)  # let the flush in flight take its turn
            if self.pipeline.landed:
                await self._settle()
            reason = self._flush_due(last_flush)
            if reason is not None and self.clock.monotonic() < self.retry_at:
                if reason != "interval":
                    self._set_backpressure(True)  # full, and the database is failing: stop reading
            elif reason is not None:
                if self.pipeline.busy and reason != "interval":
                    await self._settle()  # a limit is reached: wait for the database
                if (
                    not self.pipeline.busy
                    and self.clock.monotonic() >= self.retry_at  # that settle may have failed
                    and self.pipeline.start(reason)
                ):
                    last_flush = self.clock.monotonic()
            elif self.paused_for_backpressure:
                self._set_backpressure(False)  # below every limit again
            self._update_gauges()

    async def _shutdown(
        self, watcher: asyncio.Task[None], server: TelemetryServer, *, final_flush: bool
    ) -> None:
        deadline = self.clock.monotonic() + self.settings.shutdown_timeout
        backoff = Backoff(2.0)
        if not final_flush:
            # Nothing half-consumed may be flushed, here or by the revoke
            # callback that consumer.stop() runs: no partition is ready now.
            for state in self.states.values():
                state.ready = False
            with contextlib.suppress(BaseException):
                await self.pipeline.settle()  # a whole batch, taken before the error
        while final_flush:
            try:
                await self.pipeline.flush("shutdown")
                break
            except Fenced as exc:
                self._fenced(exc)
                break
            except RETRYABLE as exc:
                self.telemetry.errors.labels(*error_kind(exc)).inc()
                if self.clock.monotonic() + 0.5 >= deadline:
                    log.warning(
                        "final flush failed; the next owner re-reads the pending events",
                        reason=f"{type(exc).__name__}: {exc}",
                        pending_events=self.pending()[0],
                    )
                    break
                await asyncio.sleep(backoff.next_delay())
        watcher.cancel()
        if self.consumer is not None:
            await self.consumer.stop()  # leaves the group; the revoke callback finds nothing left
        if self.producer is not None:
            await self.producer.stop()
        await server.stop()
        log.info("worker stopped", owner=self.owner)
