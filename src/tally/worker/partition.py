"""What a worker holds for one assigned partition, and the owner of them all.

Rollup deltas are shared by all partitions (one `Deltas` per worker); what
is per partition is where it stands and what its records did since the
last batch was taken: records read, duplicates, dead letters, new dedup ids
(in its `DedupWindow`). The flush takes that as a `PartitionPart`
(`tally.worker.checkpoint`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from aiokafka.structs import TopicPartition

from tally.core.dedup import DedupWindow
from tally.kafka.dead_letters import DeadLetter


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
