"""`tally backfill UID`: count one metric over the records live workers read
before they started it, exactly once, while they keep running.

For each partition the range is [from, start): `from` is the offset of
`--from` (`offsets_for_times`) or the log start (`--from-offsets earliest`),
`start` the offset at which the live workers started the metric
(`tally.metric_starts`). The records are read in offset order, decoded and
deduplicated as a live worker did (`ReplayedWindow`, whose ids are replayed
from a window before `from`), applied to this metric alone, and written in
one transaction per flush that moves the backfill's own progress rows by
compare-and-set (`tally.store.backfill.claim_and_move`) and upserts the
deltas (`tally.store.flush.write_flush`). A kill loses only the pending
deltas; the next run re-reads from the stored progress. The values it writes
merge with the live workers' (sums, counts, UNIQUE members inserted once,
MAX/MIN/AVG/LATEST commutative), so both may write the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import OffsetOutOfRangeError
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from tally.backfill.checks import (
    BackfillRefused,
    check_metric,
    log_starts,
    members_refusal,
    retention_refusals,
)
from tally.backfill.plan import (
    LogStart,
    Progress,
    ReplayedWindow,
    iso,
    time_runs,
    warm_up_time,
)
from tally.backfill.resume import plan_resume
from tally.backfill.telemetry import BackfillTelemetry
from tally.config import Settings
from tally.contracts.metric import UsageMetric
from tally.core.engine import Core, Deltas, new_core
from tally.core.events import DecodeLimits
from tally.core.metrics import MetricIndex
from tally.errors import is_transient
from tally.kafka.records import partition_count
from tally.store import backfill as store
from tally.store.flush import write_flush
from tally.store.pool import DATABASE_ERRORS
from tally.telemetry.logs import Log

log = Log("tally.backfill")

EARLIEST = "earliest"
FLUSH_ATTEMPTS = 30  # transient failures in a row before a flush gives up (about 4 min)
MAX_PENDING_RECORDS = 200_000  # flush at least this often, so a kill loses little


@dataclass(slots=True)
class _Part:
    """One partition's reading state in this run."""

    tp: TopicPartition
    row: store.BackfillPartition
    stored: int  # progress stored: next offset to count
    position: int  # next offset to read
    window: ReplayedWindow
    records: int = 0  # since the last flush taken
    duplicates: int = 0

    @property
    def done(self) -> bool:
        return self.position >= self.row.end_offset


@dataclass
class Backfiller:
    settings: Settings
    pool: asyncpg.Pool
    uid: str
    from_spec: str  # EARLIEST or an ISO 8601 instant
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    out: TextIO = sys.stderr
    wait_for_start: float = 120.0
    progress_every: float = 2.0
    flush_records: int = MAX_PENDING_RECORDS  # records read between flushes, at most
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.owner = f"backfill:{socket.gethostname()}:{os.getpid()}"
        self.telemetry = BackfillTelemetry(self.registry)
        self.parts: dict[TopicPartition, _Part] = {}
        self.applied = 0  # records counted in this run (durable)
        self.events = 0  # events applied, pending (not yet flushed)
        self.applied_events = 0  # events applied and flushed
        self.started = self.clock()
        self.stop = asyncio.Event()
        self.replay_from: dict[TopicPartition, int] = {}  # set when it resumes

    # -- set-up ----------------------------------------------------------------

    async def metric(self) -> UsageMetric:
        async with self.pool.acquire() as connection:
            return await check_metric(connection, self.uid)

    def from_time(self) -> float | None:
        if self.from_spec == EARLIEST:
            return None
        try:
            when = datetime.fromisoformat(self.from_spec.replace("Z", "+00:00"))
        except ValueError as exc:
            raise BackfillRefused(
                f"--from {self.from_spec!r} is not an ISO 8601 date or date-time"
            ) from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if when.timestamp() < 0:  # Kafka has no record time before the epoch
            raise BackfillRefused(
                f"--from {self.from_spec!r} is before 1970-01-01T00:00:00Z, the earliest record"
                " time Kafka keeps; use --from-offsets earliest to count from the start"
            )
        return when.timestamp()

    async def _starts(
        self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Each partition's start offset, waiting for the live workers' first
        flush that includes the metric (within `wait_for_start`)."""
        deadline = self.clock() + self.wait_for_start
        while True:
            async with self.pool.acquire() as connection:
                stored = await store.metric_starts(connection, self.uid)
            missing = [tp for tp in tps if (tp.topic, tp.partition) not in stored]
            others = sorted(set(stored) - {(tp.topic, tp.partition) for tp in tps})
            if others:
                # Workers count the metric on more topics than this backfill
                # reads: it would end "done" with those ranges never counted.
                raise BackfillRefused(
                    f"the live workers count metric {self.uid!r} on "
                    + ", ".join(f"{t}[{p}]" for t, p in others)
                    + f" too, which this backfill does not read (TALLY_TOPIC="
                    f"{','.join(self.settings.topic)}): run it with every topic the workers read"
                )
            if not missing:
                return {tp: stored[(tp.topic, tp.partition)] for tp in tps}
            if self.stop.is_set():
                raise BackfillRefused("stopped while waiting for the live workers; nothing stored")
            if self.clock() >= deadline:
                raise BackfillRefused(
                    f"the live workers have not started metric {self.uid!r} on "
                    + ", ".join(f"{tp.topic}[{tp.partition}]" for tp in missing)
                    + f" within {self.wait_for_start:.0f} s: are workers running on these topics?"
                )
            print(
                f"backfill {self.uid}: waiting for the live workers to start the metric on"
                f" {len(missing)} partition(s)",
                file=self.out,
                flush=True,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=1.0)

    async def _refuse_if_retention(
        self,
        consumer: AIOKafkaConsumer,
        tps: list[TopicPartition],
        from_time: float | None,
        window: float,
    ) -> dict[TopicPartition, LogStart]:
        starts = await log_starts(consumer, tps)
        needed = None if from_time is None else warm_up_time(from_time, window)
        refusal = retention_refusals(
            starts,
            {tp: needed for tp in tps},
            window,
            "the start of the topic" if from_time is None else f"--from {iso(from_time)}",
        )
        if refusal:
            raise BackfillRefused(refusal)
        return starts

    async def _offsets_at(
        self, consumer: AIOKafkaConsumer, tps: list[TopicPartition], when: float
    ) -> dict[TopicPartition, int]:
        found = await consumer.offsets_for_times({tp: int(when * 1000) for tp in tps})
        ends = await consumer.end_offsets(tps)
        return {tp: ends[tp] if found.get(tp) is None else found[tp].offset for tp in tps}

    async def _refuse_if_members_expire(
        self, from_time: float | None, starts: dict[TopicPartition, LogStart]
    ) -> None:
        if from_time is None:
            known = [s.timestamp for s in starts.values() if s.timestamp is not None]
            oldest = min(known) if known else None
        else:
            oldest = from_time
        refusal = members_refusal(
            await self.metric(), oldest, self.settings.member_retention, self.settings.max_lateness
        )
        if refusal:
            raise BackfillRefused(refusal)

    async def prepare(self, consumer: AIOKafkaConsumer) -> store.Backfill:
        """The stored backfill (created now if new), after every refusal check."""
        from_time = self.from_time()
        tps = []
        for topic in self.settings.topic:
            try:
                count = await partition_count(self.settings.kafka_bootstrap, topic)
            except LookupError as exc:
                raise BackfillRefused(str(exc)) from exc
            tps += [TopicPartition(topic, p) for p in range(count)]
        if not tps:
            raise BackfillRefused(f"topic(s) {', '.join(self.settings.topic)} not found")
        async with self.pool.acquire() as connection:
            existing = await store.load_backfill(connection, self.uid)
        if existing is not None:
            if existing.state == store.CANCELLED:
                raise BackfillRefused(
                    f"the backfill of {self.uid!r} was cancelled; its values cover part of the range"
                    " and say so. A new backfill needs a new metric (a new uid)"
                )
            if existing.from_spec != self.from_spec:
                raise BackfillRefused(
                    f"a backfill of {self.uid!r} from {existing.from_spec} exists ({existing.state});"
                    f" resume it with --from {existing.from_spec}"
                    if existing.from_spec != EARLIEST
                    else f"a backfill of {self.uid!r} from the earliest offsets exists ({existing.state});"
                    " resume it with --from-offsets earliest"
                )
            if existing.state == store.RUNNING:
                # Only what is left, from where each partition resumes (review item 9).
                resume = await plan_resume(
                    consumer, existing, self.settings.dedup_window, self.clock
                )
                refusal = members_refusal(
                    await self.metric(),
                    resume.oldest,
                    self.settings.member_retention,
                    self.settings.max_lateness,
                )
                if refusal:
                    raise BackfillRefused(refusal)
                self.replay_from = resume.replay_from
            return existing
        log_starts = await self._refuse_if_retention(
            consumer, tps, from_time, self.settings.dedup_window
        )
        await self._refuse_if_members_expire(from_time, log_starts)
        starts = await self._starts(consumer, tps)
        if from_time is None:
            froms = await consumer.beginning_offsets(tps)
        else:
            froms = await self._offsets_at(consumer, tps, from_time)
        # Again, now the `from` offsets are known: retention may have deleted
        # records while this waited for the workers (review item 3).
        await self._refuse_if_retention(consumer, tps, from_time, self.settings.dedup_window)
        rows = []
        for tp in tps:
            end = starts[tp]
            begin = min(froms[tp], end) if end >= 0 else 0
            rows.append(store.BackfillPartition(tp.topic, tp.partition, begin, max(end, 0), begin))
        async with self.pool.acquire() as connection:
            created = await store.create_backfill(
                connection,
                self.uid,
                self.from_spec,
                None if from_time is None else datetime.fromtimestamp(from_time, UTC),
                rows,
                self.owner,
            )
            backfill = await store.load_backfill(connection, self.uid)
        assert backfill is not None
        if not created and backfill.from_spec != self.from_spec:
            raise BackfillRefused(f"another backfill of {self.uid!r} was created meanwhile")
        return backfill

    # -- the run -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> store.Backfill:
        """Backfill until done, stopped (SIGTERM: pending work flushed) or
        cancelled. Returns the stored backfill as it ends."""
        self.stop = stop
        settings = self.settings
        metric = await self.metric()
        self.from_time()  # refused before a consumer starts (stopping one at once can hang)
        core = new_core(MetricIndex([metric]))
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=f"tally-backfill-{self.uid}"[:200],
            enable_auto_commit=False,
            isolation_level="read_committed",  # what the live workers read
            max_poll_records=settings.max_batch,
            fetch_max_wait_ms=200,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            # A position retention deleted is a refusal, never a jump to the log end.
            auto_offset_reset="none",
        )
        await consumer.start()
        try:
            backfill = await self.prepare(consumer)
            if backfill.state != store.RUNNING:
                return backfill
            if backfill.last_error is not None:  # this run reads again
                async with self.pool.acquire() as connection:
                    await store.record_error(connection, self.uid, None)
            await self._read(consumer, core, backfill, stop)
        finally:
            await consumer.stop()
        async with self.pool.acquire() as connection:
            final = await store.load_backfill(connection, self.uid)
        assert final is not None
        self._report(final, force=True)
        return final

    async def _read(
        self, consumer: AIOKafkaConsumer, core: Core, backfill: store.Backfill, stop: asyncio.Event
    ) -> None:
        settings = self.settings
        window = settings.dedup_window
        from_time = None if backfill.from_time is None else backfill.from_time.timestamp()
        tps = [TopicPartition(p.topic, p.partition) for p in backfill.partitions]
        warm = (
            await self._offsets_at(consumer, tps, warm_up_time(from_time, window))
            if from_time is not None and window > 0
            else {tp: p.from_offset for tp, p in zip(tps, backfill.partitions, strict=True)}
        )
        warm.update(self.replay_from)  # a resumed backfill's, per partition left
        # A finished partition is not read again, not even for its ids: the
        # log may no longer hold it (review item 9).
        left = [
            tp
            for tp, row in zip(tps, backfill.partitions, strict=True)
            if row.next_offset < row.end_offset
        ]
        consumer.assign(left)
        for tp, row in zip(tps, backfill.partitions, strict=True):
            position = min(warm[tp], row.next_offset) if tp in left else row.next_offset
            self.parts[tp] = _Part(tp, row, row.next_offset, position, ReplayedWindow(window))
            if tp in left:
                consumer.seek(tp, position)
        limits = DecodeLimits(
            max_bytes=settings.max_event_bytes,
            max_lateness_seconds=settings.max_lateness,
            max_future_seconds=settings.max_future_skew,
        ).native()
        deltas = Deltas(core)
        self.started = last_flush = last_report = self.clock()
        self._report(backfill, force=True)
        while not stop.is_set() and not all(p.done for p in self.parts.values()):
            try:
                batch = await consumer.getmany(timeout_ms=200, max_records=settings.max_batch)
            except OffsetOutOfRangeError as exc:
                raise BackfillRefused(
                    f"retention deleted records this backfill had still to read ({exc});"
                    " its values are partial. Cancel it (tally backfill cancel"
                    f" {self.uid}) and backfill a new uid from a later --from"
                ) from exc
            for tp, records in batch.items():
                part = self.parts[tp]
                if not part.done:
                    await self._refuse_if_skipped(consumer, part, records)
                    self._consume(core, deltas, part, records, limits)
                    if part.done:
                        consumer.pause(tp)
            for tp, part in self.parts.items():
                if not part.done and tp not in batch:
                    # Offsets may end in a gap (transaction markers): the
                    # consumer's position says the range was read.
                    position = await consumer.position(tp)
                    if position >= part.row.end_offset:
                        part.position = part.row.end_offset
                        consumer.pause(tp)
            now = self.clock()
            read = sum(p.records for p in self.parts.values())
            if read >= self.flush_records or now - last_flush >= settings.flush_interval:
                await self._flush_retrying(deltas)
                deltas = Deltas(core)
                last_flush = now
            if now - last_report >= self.progress_every:
                last_report = now
                self._report(await self._stored(), force=False)
        await self._flush_retrying(deltas)
        if all(p.done for p in self.parts.values()):
            async with self.pool.acquire() as connection:
                await store.finish(connection, self.uid, self.owner)

    async def _refuse_if_skipped(
        self, consumer: AIOKafkaConsumer, part: _Part, records: list[ConsumerRecord]
    ) -> None:
        """Offsets may skip (transaction markers, compaction); a skip the log
        start has passed means retention deleted records not yet read."""
        if not records or records[0].offset <= part.position:
            return
        begin = (await consumer.beginning_offsets([part.tp]))[part.tp]
        if begin > part.position:
            raise BackfillRefused(
                f"retention deleted {part.tp.topic}[{part.tp.partition}] records"
                f" {part.position}..{begin - 1} before this backfill read them; its values are"
                f" partial. Cancel it (tally backfill cancel {self.uid}) and backfill a new uid"
                " from a later --from"
            )

    def _consume(
        self,
        core: Core,
        deltas: Deltas,
        part: _Part,
        records: list[ConsumerRecord],
        limits: object,
    ) -> None:
        end = part.row.end_offset
        records = [r for r in records if r.offset >= part.position and r.offset < end]
        # Lateness is judged against the time the record reached the log,
        # the wall clock of a live worker that was keeping up: per run of
        # records within about a second, never a whole fetch's latest time.
        for first, last in time_runs([r.timestamp for r in records]):
            self._consume_run(core, deltas, part, records[first:last], limits)

    def _consume_run(
        self,
        core: Core,
        deltas: Deltas,
        part: _Part,
        records: list[ConsumerRecord],
        limits: object,
    ) -> None:
        now = max(r.timestamp for r in records) / 1000
        decoded = core.decode([r.value for r in records], now, limits)  # type: ignore[arg-type]
        accepted = decoded.accepted
        digests = decoded.digests
        flags = part.window.check(digests, now)
        counted = [records[i].offset >= part.stored for i in accepted]
        if all(counted):
            failed = core.apply(deltas, decoded, bytes(flags))
            part.records += len(records)
            part.duplicates += sum(flags)
            self.events += len(accepted) - sum(flags)
        else:
            # Records below the stored progress only replay their ids.
            skip = bytes(1 if (flags[i] or not counted[i]) else 0 for i in range(len(accepted)))
            failed = core.apply(deltas, decoded, skip)
            part.records += sum(1 for r in records if r.offset >= part.stored)
            part.duplicates += sum(1 for i in range(len(accepted)) if counted[i] and flags[i])
            self.events += sum(1 for i in range(len(accepted)) if counted[i] and not flags[i])
        for i, _detail in failed:
            part.window.forget(digests[16 * i : 16 * i + 16])
        part.position = records[-1].offset + 1

    async def _flush_retrying(self, deltas: Deltas) -> None:
        """`_flush`, retried with backoff while PostgreSQL fails transiently
        (a lock timeout, a lost connection). A failed transaction wrote
        nothing and `_flush` changes no state before its commit, so the same
        work is tried again. If a commit landed without our hearing of it, the
        retry's compare-and-set fails (`Moved`) and the process stops; run
        again, it resumes from what is stored."""
        delay = 0.2
        for attempt in range(1, FLUSH_ATTEMPTS + 1):
            try:
                await self._flush(deltas)
                return
            except DATABASE_ERRORS as exc:
                if not is_transient(exc) or attempt == FLUSH_ATTEMPTS:
                    raise
                log.warning(
                    "backfill flush failed; retrying",
                    reason=f"{type(exc).__name__}: {exc}",
                    attempt=attempt,
                    retry_in=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _flush(self, deltas: Deltas) -> None:
        steps = []
        for part in self.parts.values():
            target = min(part.position, part.row.end_offset)
            if target > part.stored:
                steps.append(
                    store.ProgressStep(
                        part.tp.topic,
                        part.tp.partition,
                        part.stored,
                        target,
                        part.records,
                        part.duplicates,
                    )
                )
        if not steps and not len(deltas):
            return
        log.debug("backfill flush started", uid=self.uid, partitions=len(steps))
        # The flush that reaches every end offset marks the backfill done in
        # its own transaction: a kill between the two cannot leave it running
        # with nothing left to read (review item 9).
        targets = {(s.topic, s.partition): s.target for s in steps}
        last = all(
            targets.get((part.tp.topic, part.tp.partition), part.stored) >= part.row.end_offset
            for part in self.parts.values()
        )
        async with self.pool.acquire() as connection, connection.transaction():
            await store.claim_and_move(connection, self.uid, self.owner, steps)
            await write_flush(connection, [], deltas, self.owner)
            if last:
                await store.finish(connection, self.uid, self.owner)
        for step in steps:
            part = self.parts[TopicPartition(step.topic, step.partition)]
            self.applied += step.target - step.expected
            part.stored = step.target
            part.records = part.duplicates = 0
        self.applied_events += self.events
        self.events = 0
        self.telemetry.flushes.labels(self.uid).inc()
        log.debug("backfill flushed", uid=self.uid, partitions=len(steps), rows=len(deltas))

    async def _stored(self) -> store.Backfill:
        async with self.pool.acquire() as connection:
            backfill = await store.load_backfill(connection, self.uid)
        assert backfill is not None
        return backfill

    def progress(self, backfill: store.Backfill) -> Progress:
        elapsed = max(1e-9, self.clock() - self.started)
        return Progress(
            backfill.done, backfill.total, self.applied / elapsed, self.applied_events / elapsed
        )

    def _report(self, backfill: store.Backfill, *, force: bool) -> None:
        progress = self.progress(backfill)
        t = self.telemetry
        t.read.labels(self.uid).set(progress.done)
        t.total.labels(self.uid).set(progress.total)
        t.rate.labels(self.uid).set(progress.rate)
        t.events_rate.labels(self.uid).set(progress.events_rate)
        eta = progress.eta
        t.eta.labels(self.uid).set(float("nan") if eta is None else eta)
        with contextlib.suppress(OSError, ValueError):
            print(progress.line(self.uid), file=self.out, flush=True)
