"""Fetched records into deltas, dead letters and duplicates: the per-record path.

Every record ends in exactly one place: applied to the deltas, sent to the
dead-letter topic with a reason, or counted as a duplicate (its event then
counts as unmatched or skipped per metric inside the deltas). The native core
decodes and applies a whole batch per call; the dedup window sits between the
two calls. An error inside the core while decoding or applying one record
(a panic, a failed period lookup) is that record's, not the worker's: it is
dead-lettered as `internal_error` with what went wrong, and consuming goes on.

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

from tally.core.engine import Core, Deltas
from tally.core.events import DecodeLimits, Rejection, RejectReason
from tally.kafka.dead_letters import MAX_DETAIL_BYTES, DeadLetters
from tally.telemetry.instruments import Telemetry
from tally.telemetry.logs import Log
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
        core: Core,
        telemetry: Telemetry,
        limits: DecodeLimits,
        clock: Clock,
        deltas: Callable[[], Deltas],
        dead_letters: DeadLetters | None = None,
    ) -> None:
        self.core = core
        self.telemetry = telemetry
        self.limits = limits.native()
        self.clock = clock
        self.deltas = deltas
        self.dead_letters = dead_letters  # None only where no record is rejected (tests)
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
        batch = self.core.decode([r.value for r in records], self.clock.wall(), self.limits)
        state.next_offset = records[-1].offset + 1
        state.records += len(records)
        for n, reason, detail in batch.rejections:
            if reason == RejectReason.INTERNAL_ERROR:
                detail = self._internal_error(records[n], detail)
            self._dead_letter(state, records[n], Rejection(RejectReason(reason), detail))
        accepted = batch.accepted
        if not accepted:
            return
        dedup = state.dedup
        digests = batch.digests
        if dedup is None:
            duplicates = bytes(len(accepted))
        else:
            flags = bytearray(len(accepted))
            pending = dedup.pending
            flying = dedup.flying
            for i, stored in enumerate(dedup.persisted(digests)):
                key = digests[16 * i : 16 * i + 16]
                if stored or key in pending or key in flying:
                    flags[i] = 1
                else:
                    pending.add(key)  # a repeat later in this batch is a duplicate
            duplicates = bytes(flags)
            state.duplicates += sum(flags)
        for i, detail in self.core.apply(self.deltas(), batch, duplicates):
            # The event changed nothing; its id is forgotten, so a replay after the fix counts.
            if dedup is not None:
                dedup.pending.discard(digests[16 * i : 16 * i + 16])
            record = records[accepted[i]]
            self._dead_letter(
                state,
                record,
                Rejection(RejectReason.INTERNAL_ERROR, self._internal_error(record, detail)),
            )

    def _dead_letter(self, state: PartitionState, record: ConsumerRecord, why: Rejection) -> None:
        assert self.dead_letters is not None, "the dead-letter producer starts before consuming"
        letter = self.dead_letters.send(record, why)
        state.dead_letters.append(letter)
        state.dead_letter_bytes += letter.size
        state.rejected[why.reason.value] += 1

    def _internal_error(self, record: ConsumerRecord, detail: str) -> str:
        detail = detail[:MAX_DETAIL_BYTES]
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
        return detail
