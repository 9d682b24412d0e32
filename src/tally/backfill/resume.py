"""Where a backfill that is stored already resumes reading (review item 9).

A partition that is finished needs nothing more from the log. One that has
not started needs what a new backfill needs: the ids of a dedup window and
an hour before `--from` (or, from the earliest offsets, the whole
partition). One that stopped part way replays its ids from there too while
the log still reaches it, as an uninterrupted run does; once retention has
passed that point, it needs only the ids of a dedup window and an hour
before the first record it has still to count (the live rule forgets ids
older than that, `tally.backfill.plan.ReplayedWindow`), and its replay
starts there. So a backfill resumed long after it stopped is not refused
while what it has still to read is retained.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import OffsetOutOfRangeError
from aiokafka.structs import TopicPartition

from tally.backfill.checks import BackfillRefused, log_starts, retention_refusals
from tally.backfill.plan import retention_refusal, warm_up_time
from tally.store import backfill as store

READ_TIMEOUT = 60.0  # for the first record of each resumed partition


@dataclass(frozen=True, slots=True)
class Resume:
    replay_from: dict[TopicPartition, int]  # where the id replay starts, per partition left
    oldest: float | None  # the time of the oldest record still to count (None: unknown)


async def first_times(
    consumer: AIOKafkaConsumer,
    wanted: dict[TopicPartition, tuple[int, int]],
    clock: Callable[[], float] = time.monotonic,
) -> dict[TopicPartition, float]:
    """The time (POSIX s) of the first record at or after each partition's
    offset and below its end, for `wanted` {tp: (offset, end)}; a partition
    with no such record (the range ends in a gap) is left out."""
    found: dict[TopicPartition, float] = {}
    if not wanted:
        return found
    consumer.assign(list(wanted))
    for tp, (offset, _) in wanted.items():
        consumer.seek(tp, offset)
    pending = set(wanted)
    deadline = clock() + READ_TIMEOUT
    while pending:
        if clock() > deadline:
            raise BackfillRefused(
                "could not read where this backfill resumes on "
                + ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(pending))
                + f" within {READ_TIMEOUT:.0f} s"
            )
        try:
            batch = await consumer.getmany(*pending, timeout_ms=500)
        except OffsetOutOfRangeError as exc:
            raise BackfillRefused(
                f"retention deleted records this backfill had still to read ({exc})"
            ) from exc
        for tp, records in batch.items():
            offset, end = wanted[tp]
            first = next((r for r in records if r.offset >= offset), None)
            if first is not None:
                if first.offset < end:
                    found[tp] = first.timestamp / 1000
                pending.discard(tp)
        for tp in list(pending):
            if tp not in batch and await consumer.position(tp) >= wanted[tp][1]:
                pending.discard(tp)
    return found


async def plan_resume(
    consumer: AIOKafkaConsumer,
    backfill: store.Backfill,
    window: float,
    clock: Callable[[], float] = time.monotonic,
) -> Resume:
    """Check that the log still holds what `backfill` has left to read, and
    say where each partition's id replay starts; BackfillRefused if not."""
    from_time = None if backfill.from_time is None else backfill.from_time.timestamp()
    left = {
        TopicPartition(p.topic, p.partition): p
        for p in backfill.partitions
        if p.next_offset < p.end_offset
    }
    if not left:
        return Resume({}, None)
    starts = await log_starts(consumer, list(left))
    lost = [
        f"{tp.topic}[{tp.partition}]: retention deleted records {p.next_offset}.."
        f"{starts[tp].offset - 1}, which this backfill had still to count"
        for tp, p in left.items()
        if starts[tp].offset > p.next_offset
    ]
    if lost:
        raise BackfillRefused(
            "the retained log no longer holds what this backfill has left:\n  "
            + "\n  ".join(lost)
            + f"\nits values are partial. Cancel it (tally backfill cancel {backfill.metric_uid})"
            " and backfill a new uid from a later --from"
        )
    resumed = {
        tp: (p.next_offset, p.end_offset) for tp, p in left.items() if p.next_offset > p.from_offset
    }
    # Where a new backfill's id replay starts (None: the whole partition).
    # A resumed partition whose log still reaches it replays from there, as
    # an uninterrupted run would (exact for ids re-sent again and again);
    # only one whose log no longer does falls back to its resume point.
    original = None if from_time is None else warm_up_time(from_time, window)
    moved = {
        tp
        for tp in resumed
        if retention_refusal(f"{tp.topic}[{tp.partition}]", starts[tp], original, window)
    }
    times = await first_times(consumer, resumed, clock)
    needed: dict[TopicPartition, float | None] = {}
    oldest: list[float] = []
    for tp in left:
        if tp not in moved:
            needed[tp] = original
        elif tp in times:  # else nothing left to count but a gap
            needed[tp] = warm_up_time(times[tp], window)
        if tp in resumed:
            if tp in times:
                oldest.append(times[tp])
        elif from_time is not None:
            oldest.append(from_time)
        elif (first := starts[tp].timestamp) is not None:
            oldest.append(first)
    refusal = retention_refusals(
        starts, needed, window, "what this backfill has left to read", "what it has left to count"
    )
    if refusal:
        raise BackfillRefused(refusal)
    at_times = {tp: when for tp, when in needed.items() if when is not None and window > 0}
    found = await consumer.offsets_for_times(
        {tp: int(when * 1000) for tp, when in at_times.items()}
    )
    replay_from: dict[TopicPartition, int] = {}
    for tp, p in left.items():
        if tp in at_times and found.get(tp) is not None:
            replay_from[tp] = min(found[tp].offset, p.next_offset)
        elif window <= 0:
            replay_from[tp] = p.next_offset  # no ids to replay
        elif needed.get(tp, 0.0) is None or tp not in resumed:
            replay_from[tp] = p.from_offset  # the whole partition
        else:
            replay_from[tp] = p.next_offset
    return Resume(replay_from, min(oldest) if oldest else None)
