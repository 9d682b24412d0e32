"""What a worker holds for one assigned partition, and the flush batch.

Rollup deltas are shared by all partitions (one `Deltas` per worker); what
is per partition is where it stands and what its records did since the
last batch was taken: records read, duplicates, dead letters, new dedup ids
(in its `DedupWindow`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka.structs import TopicPartition

from tally.core.dedup import DedupWindow, FlushPlan
from tally.core.engine import Deltas
from tally.kafka.dead_letters import DeadLetter
from tally.store.flush import DedupRows


class PartitionState:
    """`stored_offset` is what PostgreSQL holds (-1 before the first flush):
    the expected value of the next compare-and-set. `next_offset` is one
    past the last record consumed."""

    __slots__ = (
        "dead_letter_bytes",
        "dead_letters",
        "dedup",
        "duplicates",
        "epoch",
        "next_offset",
        "ready",
        "records",
        "rejected",
        "started",
        "starts",
        "stored_offset",
        "tp",
    )

    def __init__(self, tp: TopicPartition, window_seconds: float) -> None:
        self.tp = tp
        self.ready = False  # stored state loaded and the consumer seeked
        self.stored_offset = -1
        self.next_offset = -1
        # The generation of the stored offset row this worker holds (loaded
        # or set by its last flush); None: not compared (tests).
        self.epoch: int | None = None
        self.dedup: DedupWindow | None = DedupWindow(window_seconds) if window_seconds > 0 else None
        self.records = 0
        self.duplicates = 0
        self.rejected: Counter[str] = Counter()
        self.dead_letters: list[DeadLetter] = []
        self.dead_letter_bytes = 0
        # Where this worker started aggregating each metric, not yet stored
        # (tally.metric_starts), and the metrics whose start is stored.
        self.starts: dict[str, int] = {}
        self.started: set[str] = set()

    @property
    def topic(self) -> str:
        topic: str = self.tp.topic
        return topic

    @property
    def partition(self) -> int:
        partition: int = self.tp.partition
        return partition

    @property
    def dirty(self) -> bool:
        """Consumed past the stored offset (even if every record was a duplicate)."""
        return self.next_offset != self.stored_offset

    def loaded(
        self,
        stored_offset: int,
        resume_at: int | None = None,
        started: set[str] | None = None,
        live: Iterable[str] = (),
    ) -> None:
        """State read from PostgreSQL; consuming resumes at `resume_at` (the
        stored offset unless it lay outside the log, worker/positions.py).
        `started`: the metrics whose start offset is stored for this
        partition; every other metric of `live` starts where consuming
        resumes (after a log reset that is not the stored offset: the records
        from the resume point on are counted live)."""
        self.stored_offset = stored_offset
        self.next_offset = stored_offset if resume_at is None else resume_at
        self.clear()
        self.started = set(started or ())
        self.starts = {}
        self.metrics_added(live, self.next_offset)
        self.ready = True

    def metrics_added(self, uids: Iterable[str], at: int | None = None) -> None:
        """Metrics the worker aggregates from now on: they start at `at`
        (default: the next record consumed) unless their start is known."""
        offset = self.next_offset if at is None else at
        for uid in uids:
            if uid not in self.started:
                self.starts.setdefault(uid, offset)

    @property
    def pending_starts(self) -> bool:
        return bool(self.starts)

    def clear(self) -> None:
        """Forget what was counted since the last batch (dropped or taken)."""
        self.records = 0
        self.duplicates = 0
        self.rejected = Counter()
        self.dead_letters = []
        self.dead_letter_bytes = 0


class Partitions(dict[TopicPartition, PartitionState]):
    """The states of the partitions a worker holds: the one owner, shared by
    the worker (which adds and removes them as the group rebalances) and the
    flush (which takes their pending work and settles them)."""

    __slots__ = ()


@dataclass(slots=True)
class PartitionPart:
    """One partition's share of a flush batch."""

    state: PartitionState
    expected: int
    target: int
    plan: FlushPlan | None
    records: int
    duplicates: int
    rejected: Counter[str]
    dead_letters: list[DeadLetter]
    starts: dict[str, int] = field(default_factory=dict)
    epoch: int | None = None


@dataclass(slots=True)
class FlushBatch:
    """Everything one flush makes durable, taken at once from the worker."""

    deltas: Deltas
    reason: str
    parts: list[PartitionPart] = field(default_factory=list)
    parked: list[DeadLetter] = field(default_factory=list)  # dead letters Kafka refused

    @property
    def dead_letters(self) -> list[DeadLetter]:
        return [letter for part in self.parts for letter in part.dead_letters]

    @classmethod
    def take(
        cls, states: list[PartitionState], deltas: Deltas, now: float, reason: str
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
            state.dead_letters[:0] = part.dead_letters
            state.dead_letter_bytes += sum(letter.size for letter in part.dead_letters)
