"""`tally run`: one consumer in the group, the core, and the flush.

The loop: load state for newly assigned partitions and seek to their stored
offsets; fetch a batch; decode, dead-letter, deduplicate and aggregate it
(worker/intake.py); when the interval or a pending-work limit says so, hand
the pending work to the flush (worker/checkpoint.py) and go on consuming
while it is written. Transient errors from PostgreSQL or Kafka are retried
with capped backoff while the pending work stays in memory (fetching pauses
when it is full); nothing is lost, since no offset is stored before the
rollups it produced. An error retrying cannot mend stops the worker loudly
(`PermanentError`): readiness false, `tally_permanent_errors_total`, one log
line with the reason, /metrics kept up for `stop_linger`, exit status 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from tally.config import Settings
from tally.core.dedup import BUCKET_SECONDS
from tally.errors import CorruptBatch, PermanentError, UnreadableBatch, is_transient
from tally.store.backfill import started_metrics
from tally.store.flush import Fenced, load_partition_into
from tally.store.member_cache import MemberCache
from tally.store.pool import DATABASE_ERRORS
from tally.telemetry.http import TelemetryServer
from tally.telemetry.instruments import Telemetry
from tally.telemetry.logs import Log
from tally.worker.checkpoint import Checkpoint
from tally.worker.definitions import DefinitionWatcher, LiveMetrics
from tally.worker.health import Health
from tally.worker.intake import Intake
from tally.worker.partition import Partitions, PartitionState
from tally.worker.positions import check_jumps, resume_points
from tally.worker.retention import RetentionTask
from tally.worker.retry import Clock, Retry, describe, retry_until

log = Log("tally.worker")

# Each dead letter is held (record, rejection, send task) until its flush: a
# flood of bad events is flushed in slices of this size, which also waits for
# the sends, instead of holding up to TALLY_MAX_PENDING_EVENTS of them.
MAX_PENDING_DEAD_LETTERS = 10_000
MAX_PENDING_DEAD_LETTER_BYTES = 64 * 1024 * 1024  # their records, held until sent
JUMP_CHECK_SECONDS = 5.0  # how often fetches that skipped offsets are checked for losses


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.worker.partitions_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.worker.partitions_assigned(set(assigned))


@dataclass(kw_only=True)
class Worker:
    """One consumer in the group. Every collaborator is passed in, built by
    `tally.worker.build.build_worker` (tests pass fakes); the worker builds
    none of them itself."""

    settings: Settings
    pool: asyncpg.Pool
    registry: CollectorRegistry
    telemetry: Telemetry
    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer  # the dead-letter producer, started by `run`
    states: Partitions  # shared with the checkpoint, which takes their pending work
    metrics: LiveMetrics  # the index the core runs, kept current by `watcher`
    # Members this worker's committed flushes stored, left out of later
    # ones; never older than an event can be (retention is longer).
    members: MemberCache
    checkpoint: Checkpoint  # the flush: pending deltas, the batch in flight, steps 1 to 5
    intake: Intake
    watcher: DefinitionWatcher
    retry: Retry
    health: Health
    retention: RetentionTask
    clock: Clock
    owner: str  # written with every flush (partition_offsets.owner)

    def __post_init__(self) -> None:
        self.telemetry_port = 0  # bound by `run`
        self.paused_for_backpressure = False
        self.joined = False
        self.loading = asyncio.Lock()
        self.retry_at = 0.0
        self.jumps_checked = 0.0
        self.side_tasks: list[asyncio.Task[None]] = []  # supervised by the loop

    # -- partition lifecycle ----------------------------------------------

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.telemetry.rebalances.inc()
        leaving = [self.states[tp] for tp in revoked if tp in self.states]
        if not leaving:
            return
        timeout = self.settings.session_timeout
        try:
            # Deltas are shared by all partitions: hand over everything pending.
            async with asyncio.timeout(timeout):
                if self.settings.revoke_policy == "flush":
                    await self.checkpoint.flush("revoke")
                else:
                    await self.checkpoint.settle()
                    self._drop_pending("revocation with revoke_policy=drop")
        except Fenced as exc:
            self._fenced(exc)
        except Exception as exc:
            self.telemetry.count_error(exc)
            log.warning(
                "flush on revocation failed or took longer than the session timeout; "
                "the next owner re-reads",
                reason=describe(exc),
            )
            self.checkpoint.abandon()
            self._drop_pending("failed flush on revocation")
        for state in leaving:
            self.states.pop(state.tp, None)
            self.intake.offsets.forget(state.tp)
            with contextlib.suppress(KeyError):  # another worker reports its lag now
                self.telemetry.lag.remove(state.topic, str(state.partition))
        self._update_gauges()

    def _drop_pending(self, why: str) -> None:
        """Forget all pending work and reload every partition (its events are re-read)."""
        dropped = self.checkpoint.deltas.events
        self.checkpoint.drop()
        self.members.clear()  # reloading: the database is the truth
        # Nothing is pending any more: the reload resumes the partitions.
        self.paused_for_backpressure = False
        for state in self.states.values():
            state.clear()
            state.ready = False
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
        self.members.clear()  # other workers flushed these partitions meanwhile
        for tp in assigned:
            if tp not in self.states:
                self.states[tp] = PartitionState(tp, self.settings.dedup_window)
        loading = [tp for tp, s in self.states.items() if not s.ready]
        if loading:
            self.consumer.pause(*loading)
        try:
            await self.load_partitions()
        except Exception as exc:  # the loop retries, and stops on a permanent error
            self.telemetry.count_error(exc)
            log.warning("partition state not loaded yet; will retry", reason=describe(exc))
        self._update_gauges()
        log.info(
            "partitions assigned",
            partitions=",".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)),
        )

    async def load_partitions(self) -> None:
        """Load stored offsets and dedup windows of partitions not ready yet, then
        seek, one partition at a time (bounded memory, a bounded wait each)."""
        async with self.loading:  # the rebalance callback and the loop may both ask
            for state in [s for s in self.states.values() if not s.ready]:
                async with asyncio.timeout(self.settings.load_timeout):
                    await self._load(state)

    async def _load(self, state: PartitionState) -> None:
        now = self.clock.wall()
        window = self.settings.dedup_window
        min_bucket = int((now - window) // BUCKET_SECONDS) if window > 0 else None
        async with self.pool.acquire() as connection:
            offset, epoch = await load_partition_into(
                connection, state.topic, state.partition, min_bucket, state.dedup, now
            )
            started = await started_metrics(connection, state.topic, state.partition)
        if started - self.metrics.index.by_uid.keys():
            # Another worker started a metric this one does not know yet: the
            # definition is committed, so reading it now closes the gap.
            await self.watcher.refresh()
        if self.states.get(state.tp) is not state:
            return  # revoked while we were loading
        consumer = self.consumer
        assigned = state.tp in consumer.assignment()
        start = offset
        if assigned:
            start = (await resume_points(consumer, {state.tp: offset}, self.telemetry))[state.tp]
            if self.states.get(state.tp) is not state:
                return
        state.loaded(offset, start, started, self.metrics.index.by_uid)
        state.epoch = epoch
        if assigned:
            if start >= 0:
                consumer.seek(state.tp, start)
            else:
                await consumer.seek_to_beginning(state.tp)
            if not self.paused_for_backpressure:
                consumer.resume(state.tp)
        log.info(
            "partition ready",
            topic=state.topic,
            partition=state.partition,
            offset=offset,
            dedup_ids=state.dedup.held if state.dedup is not None else 0,
        )

    # -- pending work and gauges ---------------------------------------------

    def pending(self) -> tuple[int, int]:
        """(events, rollups) consumed but not yet flushed, the flush in flight excluded."""
        events = self.checkpoint.deltas.events
        for state in self.states.values():
            events += state.duplicates + sum(state.rejected.values())
        deltas = self.checkpoint.deltas
        return events, len(deltas) + deltas.members

    def _update_gauges(self) -> None:
        events, rollups = self.pending()
        t = self.telemetry
        t.pending_events.set(events)
        t.pending_rollups.set(rollups)
        t.partitions.set(len(self.states))
        t.dedup_ids.set(sum(s.dedup.held for s in self.states.values() if s.dedup is not None))
        for tp, state in self.states.items():
            high = self.consumer.highwater(tp)
            if high is not None and state.next_offset >= 0:
                t.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - state.next_offset))

    # -- flushing ------------------------------------------------------------

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
        """Settle the flush in flight; False if it failed (and was dealt with).
        Raises PermanentError when flushing keeps failing in a way retrying cannot mend."""
        try:
            await self.checkpoint.settle()
        except Fenced as exc:
            self._fenced(exc)
            return False
        except Exception as exc:
            self._failed(exc, "flushing")
            if self.pending()[0] >= self.settings.max_pending_events:
                self._set_backpressure(True)
            return False
        self.retry.succeeded()
        self._set_backpressure(False)
        return True

    def _set_backpressure(self, on: bool) -> None:
        if on == self.paused_for_backpressure:
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
        delay = self.retry.failed(exc, doing)  # raises PermanentError when it is time to stop
        log.warning(
            f"error while {doing}; pending work kept, retrying",
            reason=describe(exc),
            transient=is_transient(exc),
            retry_in=round(delay, 2),
            pending_events=self.pending()[0],
        )
        self.retry_at = self.clock.monotonic() + delay

    # -- health --------------------------------------------------------------

    async def ready_check(self) -> tuple[bool, str]:
        if self.health.stopping:
            return False, f"stopping: {self.health.stopping}"
        if not self.joined:
            return False, "not yet in the consumer group"
        if any(not s.ready for s in self.states.values()):
            return False, "loading partition state"
        age = self.clock.wall() - self.checkpoint.last_success
        if (
            self.checkpoint.last_success
            and age > self.settings.ready_flush_age
            and self.pending()[0]
        ):
            return False, f"last successful flush {age:.0f} s ago"
        stale = self.watcher.age()
        if stale is not None and stale > max(30.0, 10 * self.settings.definitions_poll_interval):
            return False, f"definitions last read {stale:.0f} s ago"
        try:
            async with self.pool.acquire(timeout=2) as connection:
                await connection.fetchval("SELECT 1", timeout=2)
        except (TimeoutError, *DATABASE_ERRORS) as exc:
            return False, f"database unreachable: {type(exc).__name__}"
        return True, f"ok: {len(self.states)} partitions"

    # -- the loop ------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        self.telemetry.up_since.set(self.clock.wall())
        server = TelemetryServer(
            self.registry,
            self.ready_check,
            settings.telemetry_host,
            settings.telemetry_port,
            live=self.health.live,
        )
        self.telemetry_port = await server.start()
        log.info(
            "telemetry listening",
            url=f"http://{settings.telemetry_host}:{self.telemetry_port}/metrics",
        )
        try:
            await retry_until(stop, self.watcher.refresh, "load metric definitions", self.retry)
            await retry_until(
                stop, self.producer.start, "start the dead-letter producer", self.retry
            )
            self.consumer.subscribe(topics=list(settings.topic), listener=_Rebalance(self))
            await retry_until(stop, self.consumer.start, "join the consumer group", self.retry)
            # Supervised by the loop: one that ends while the worker runs stops it.
            self.side_tasks = [
                asyncio.create_task(
                    self.watcher.run(settings.definitions_poll_interval, stop), name="definitions"
                )
            ]
            if self.retention.enabled:  # else it would end at once, as if it had died
                self.side_tasks.append(
                    asyncio.create_task(self.retention.run(stop), name="retention")
                )
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
            await self._loop(stop)
        except PermanentError as exc:
            await self._stop_permanently(exc, server, stop)
            raise
        except BaseException:
            # An unexpected error may have left a batch half-consumed (offsets
            # moved past events not yet in the deltas): storing that would lose
            # them. Nothing is flushed; the next owner re-reads from PostgreSQL.
            await self._shutdown(server, final_flush=False)
            raise
        await self._shutdown(server, final_flush=True)

    async def _loop(self, stop: asyncio.Event) -> None:
        consumer = self.consumer
        last_flush = self.clock.monotonic()
        while not stop.is_set():
            self.health.turned()
            for task in self.side_tasks:  # a side task that dies stops the worker visibly
                if task.done():
                    error = None if task.cancelled() else task.exception()
                    raise PermanentError(
                        f"the {task.get_name()} task stopped: {describe(error) if error else 'ended'}",
                        component="tally",
                        kind=task.get_name(),
                    ) from error
            now = self.clock.monotonic()
            if now >= self.retry_at and any(not s.ready for s in self.states.values()):
                try:
                    await self.load_partitions()
                except Exception as exc:
                    self._failed(exc, "loading partition state")
            if (self.intake.offsets.jumps or self.intake.offsets.resets) and (
                now - self.jumps_checked >= JUMP_CHECK_SECONDS
            ):
                self.jumps_checked = now
                try:
                    await check_jumps(consumer, self.intake.offsets, self.telemetry)
                except Exception as exc:  # checked again with the next jump
                    self.telemetry.count_error(exc)
            # Never 0: a fetch that need not wait does not yield to the event loop,
            # and the flush in flight only advances when the loop yields.
            timeout = max(0.005, min(0.5, self.settings.flush_interval - (now - last_flush)))
            try:
                batch = await consumer.getmany(
                    timeout_ms=int(timeout * 1000), max_records=self.settings.max_batch
                )
            except UnsupportedCodecError as exc:
                raise UnreadableBatch(
                    f"cannot read a record batch: {exc}; install tally with its dependencies "
                    "(cramjam reads snappy, lz4 and zstd)",
                    component="kafka",
                    kind="unsupported_codec",
                ) from exc
            except CorruptRecordException as exc:
                # Re-fetching may mend a batch damaged on the way; one damaged
                # on disk stays so, and then the worker must stop and say so.
                self._failed(CorruptBatch(describe(exc)), "fetching")
                await asyncio.sleep(self.retry_at - self.clock.monotonic())
                continue
            except Exception as exc:
                self._failed(exc, "fetching")
                await asyncio.sleep(self.retry_at - self.clock.monotonic())
                continue
            for tp, records in batch.items():
                state = self.states.get(tp)
                if state is not None and state.ready:  # else fetched before a revoke or reload
                    self.intake.consume(state, records)
            await asyncio.sleep(0)  # let the flush in flight take its turn
            if self.checkpoint.landed:
                await self._settle()
            reason = self._flush_due(last_flush)
            if reason is not None and self.clock.monotonic() < self.retry_at:
                if reason != "interval":
                    self._set_backpressure(True)  # full, and the database is failing: stop reading
            elif reason is not None:
                if self.checkpoint.busy and reason != "interval":
                    await self._settle()  # a limit is reached: wait for the database
                if not self.checkpoint.busy and self.clock.monotonic() >= self.retry_at:
                    # Also when there was nothing to flush: an idle worker then
                    # waits out a whole interval in getmany, instead of spinning.
                    self.checkpoint.start(reason)
                    last_flush = self.clock.monotonic()
            elif self.paused_for_backpressure:
                self._set_backpressure(False)  # below every limit again
            self._update_gauges()

    async def _stop_permanently(
        self,
        exc: PermanentError,
        server: TelemetryServer,
        stop: asyncio.Event,
    ) -> None:
        """Say why, loudly, and give the partitions up; /metrics stays up a
        little so Prometheus sees the counter and the reason."""
        self.health.stopping = str(exc)
        self.telemetry.permanent_errors.inc()
        self.telemetry.stopping.labels(exc.component, exc.kind).set(1)
        log.error("stopping: an error retrying cannot mend", reason=str(exc), kind=exc.kind)
        await self._shutdown(None, final_flush=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=self.settings.stop_linger)
        await server.stop()

    async def _shutdown(
        self,
        server: TelemetryServer | None,
        *,
        final_flush: bool,
    ) -> None:
        deadline = self.clock.monotonic() + self.settings.shutdown_timeout
        if not final_flush:
            # Nothing half-consumed may be flushed, here or by the revoke
            # callback that consumer.stop() runs: no partition is ready now.
            for state in self.states.values():
                state.ready = False
            with contextlib.suppress(BaseException):
                async with asyncio.timeout(self.settings.flush_timeout):
                    await self.checkpoint.settle()  # a whole batch, taken before the error
            self.checkpoint.abandon()
        retry = Retry(self.telemetry, 2.0, 1)
        while final_flush:
            try:
                await self.checkpoint.flush("shutdown")
                break
            except Fenced as exc:
                self._fenced(exc)
                break
            except Exception as exc:
                self.telemetry.count_error(exc)
                if not is_transient(exc) or self.clock.monotonic() + 0.5 >= deadline:
                    log.warning(
                        "final flush failed; the next owner re-reads the pending events",
                        reason=describe(exc),
                        pending_events=self.pending()[0],
                    )
                    self.checkpoint.abandon()
                    break
                await asyncio.sleep(retry.backoff.next_delay())
        for task in self.side_tasks:
            task.cancel()
        if self.side_tasks:
            await asyncio.wait(self.side_tasks, timeout=5)
        await self.consumer.stop()  # leaves the group; the revoke callback finds nothing left
        await self.producer.stop()
        if server is not None:
            await server.stop()
        log.info("worker stopped", owner=self.owner)
