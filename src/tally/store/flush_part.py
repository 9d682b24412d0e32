"""What the flush transaction (`tally.store.flush.write_flush`) reads of one
partition's part of a flush: the `FlushPart` protocol, and `PartitionFlush`,
its plain implementation for writers that are not a worker. Both are
re-exported by `tally.store.flush`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tally.core.dedup import FlushPlan


class FlushPart(Protocol):
    """What the transaction reads of one partition's part of a flush: a
    worker passes its own pending flush (`tally.worker.checkpoint.PartitionPart`)
    as it is; other writers (benches, tests) build a `PartitionFlush`."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def expected_offset(self) -> int: ...  # what the writer believes is stored (-1: nothing yet)
    @property
    def next_offset(self) -> int: ...
    @property
    def dedup(self) -> FlushPlan | None: ...
    @property
    def records(self) -> int: ...
    @property
    def duplicates(self) -> int: ...
    @property
    def dead_letters(self) -> int: ...
    @property
    def starts(
        self,
    ) -> Mapping[str, int]: ...  # metric uid -> offset, for metrics it first includes
    @property
    def expected_epoch(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class PartitionFlush:
    """One partition's part of a flush, for writers that are not a worker."""

    topic: str
    partition: int
    expected_offset: int  # what this writer believes is stored (-1: nothing yet)
    next_offset: int
    dedup: FlushPlan | None
    records: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    # Metric uid -> offset, of metrics this flush is the first to include.
    starts: Mapping[str, int] = field(default_factory=dict)
    # The epoch this writer loaded or last flushed (None: not compared; for
    # writers that own the row by construction, benches and tests).
    expected_epoch: int | None = None
