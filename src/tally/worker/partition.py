"""What a worker holds for one assigned partition between two flushes."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiokafka.structs import RecordMetadata, TopicPartition

from tally.core.aggregate import Deltas
from tally.core.dedup import DedupWindow


class PartitionState:
    """Pending work of one partition, and where it stands.

    `stored_offset` is what PostgreSQL holds (the compare-and-set's expected
    value, -1 before the first flush); `next_offset` is one past the last
    record consumed. Everything between them is pending: `deltas`, the new
    ids in `dedup.pending`, `duplicates`, and dead letters in flight.
    """

    __slots__ = (
        "dead_letters",
        "dedup",
        "deltas",
        "duplicates",
        "next_offset",
        "ready",
        "rejected",
        "stored_offset",
        "tp",
    )

    def __init__(self, tp: TopicPartition, window_seconds: float) -> None:
        self.tp = tp
        self.ready = False  # stored state loaded and the consumer seeked
        self.stored_offset = -1
        self.next_offset = -1
        self.deltas = Deltas()
        self.dedup: DedupWindow | None = DedupWindow(window_seconds) if window_seconds > 0 else None
        self.duplicates = 0
        self.rejected: Counter[str] = Counter()
        self.dead_letters: list[asyncio.Future[RecordMetadata]] = []

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

    @property
    def pending_events(self) -> int:
        return self.deltas.events + self.duplicates + sum(self.rejected.values())

    def loaded(self, stored_offset: int) -> None:
        self.stored_offset = stored_offset
        self.next_offset = stored_offset
        self.clear()
        self.ready = True

    def clear(self) -> None:
        """Forget pending work (after it was flushed, or to drop it)."""
        self.deltas = Deltas()
        self.duplicates = 0
        self.rejected = Counter()
        self.dead_letters = []
