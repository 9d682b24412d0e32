"""Fetched records into deltas, dead letters and duplicates: the per-record path.

Every record ends in exactly one place: applied to the deltas, sent to the
dead-letter topic with a reason, or counted as a duplicate (its event then
counts as unmatched or skipped per metric inside the deltas). An exception
raised by Tally's own code while decoding or applying one record is that
record's, not the worker's: it is dead-lettered as `internal_error` with the
exception's class and message, and consuming goes on.

`consume` never awaits: aiokafka runs rebalance callbacks in another task,
and a revocation that flushed half-way through a batch would store an
offset past events not yet in the deltas.

It also notices where a partition's records do not continue its position
(`OffsetWatch`): the worker then finds out whether records were lost.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from aiokafka.structs import ConsumerRecord, TopicPartition

from tally.core.aggregate import Deltas
from tally.core.dedup import digest
from tally.core.events import DecodeLimits, Rejection, RejectReason, UsageEvent, decode_event
from tally.core.metrics import MetricIndex
from tally.kafka.dead_letters import MAX_DETAIL_BYTES, DeadLetters
from tally.telemetry.logs import Log
from tally.telemetry.metrics import Telemetry
from tally.worker.partition import PartitionState
from tally.worker.retry import Clock

log = Log("tally.worker")


class OffsetWatch:
    """Where fetched records did not start at a partition's position.

    A jump ahead is normal after transaction markers, aborted transactions and
    compaction, and is a loss when retention deleted records first: `jumps`
    keeps the earliest position each partition jumped from, for the worker to
    check against the log start. A step back means the consumer's position was
    reset below ours (the topic was recreated, or the log truncated): it is
    recorded in `resets` and the records are consumed as they come.
    """

    __slots__ = ("jumps", "resets")

    def __init__(self) -> None:
        self.jumps: dict[TopicPartition, tuple[int, int]] = {}  # tp -> (expected, got)
        self.resets: dict[TopicPartition, tuple[int, int]] = {}

    def saw(self, tp: TopicPartition, expected: int, got: int) -> None:
        if got > expected:
            if tp not in self.jumps:
                self.jumps[tp] = (expected, got)
        elif tp not in self.resets:
            self.resets[tp] = (expected, got)

    def forget(self, tp: TopicPartition) -> None:
        self.jumps.pop(tp, None)
        self.resets.pop(tp, None)


class Intake:
    def __init__(
        self,
        *,
        telemetry: Telemetry,
        limits: DecodeLimits,
        clock: Clock,
        deltas: Callable[[], Deltas],
        index: Callable[[], MetricIndex],
    ) -> None:
        self.telemetry = telemetry
        self.limits = limits
        self.clock = clock
        self.deltas = deltas
        self.index = index
        self.dead_letters: DeadLetters | None = None
        self.offsets = OffsetWatch()
        self.internal_errors = 0
        self._internal_error_logged = -math.inf

    def consume(self, state: PartitionState, records: list[ConsumerRecord]) -> None:
        """Take one fetched batch of a ready partition (never awaits)."""
        if not records:
            return
        tp = state.tp
        self.telemetry.consumed.labels(tp.topic, str(tp.partition)).inc(len(records))
        first = records[0].offset
        if state.next_offset >= 0 and first != state.next_offset:
            self.offsets.saw(tp, state.next_offset, first)
        now = self.clock.wall()
        limits = self.limits
        accepted: list[tuple[ConsumerRecord, UsageEvent]] = []
        for record in records:
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
            self.deltas().add(event, self.index())
        except Exception as exc:
            self._dead_letter(state, record, self._internal_error(record, exc))
            return False
        return True

    def _dead_letter(self, state: PartitionState, record: ConsumerRecord, why: Rejection) -> None:
        assert self.dead_letters is not None, "the dead-letter producer starts before consuming"
        letter = self.dead_letters.send(record, why)
        state.dead_letters.append(letter)
        state.dead_letter_bytes += letter.size
        state.rejected[why.reason.value] += 1

    def _internal_error(self, record: ConsumerRecord, exc: Exception) -> Rejection:
        detail = f"{type(exc).__name__}: {exc}"[:MAX_DETAIL_BYTES]
        now = self.clock.monotonic()
        self.internal_errors += 1
        if now - self._internal_error_logged >= 10.0:  # a flood of them is one line per 10 s
            self._internal_error_logged = now
            log.error(
                "a record raised inside Tally; it goes to the dead-letter topic",
                reason=detail,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                since_start=self.internal_errors,
            )
        return Rejection(RejectReason.INTERNAL_ERROR, detail)
