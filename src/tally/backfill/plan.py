"""The pure parts of a backfill: its dedup window, its ranges, its progress.

The dedup argument (docs/decisions.md, "Backfill"): a live worker decided,
for every record before the metric's start offset, whether its id was seen
earlier in the partition within the dedup window. `ReplayedWindow` reaches
the same decisions by replaying the partition's ids in offset order, with
each record's Kafka timestamp standing in for the worker's wall clock: an id
is remembered in the hour bucket of the record that brought it, and is a
duplicate while that bucket is not older than `(time - window) // 3600`,
the live window's own expiry rule (`tally.core.dedup`). The replay starts a
window and one hour before `--from`, so ids whose first copy is before
`--from` are caught.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tally.core.dedup import BUCKET_SECONDS


class ReplayedWindow:
    """One partition's dedup window, rebuilt from the log (not from the
    stored segments, which hold the ids of the last window before now)."""

    __slots__ = ("_since_prune", "ids", "window")

    def __init__(self, window_seconds: float) -> None:
        self.window = window_seconds
        self.ids: dict[bytes, int] = {}  # digest -> hour bucket it arrived in
        self._since_prune = 0

    def check(self, digests: bytes, when: float) -> bytearray:
        """Duplicate flags for packed 16-byte digests arriving at `when`
        (POSIX seconds); ids not seen become remembered."""
        flags = bytearray(len(digests) // 16)
        if self.window <= 0:
            return flags
        oldest = int((when - self.window) // BUCKET_SECONDS)
        bucket = int(when // BUCKET_SECONDS)
        ids = self.ids
        for i in range(len(flags)):
            key = digests[16 * i : 16 * i + 16]
            seen = ids.get(key)
            if seen is not None and seen >= oldest:
                flags[i] = 1
            else:
                ids[key] = bucket
        self._since_prune += len(flags)
        if self._since_prune >= max(100_000, len(ids)):
            self._since_prune = 0
            self.ids = {k: b for k, b in ids.items() if b >= oldest}
        return flags

    def forget(self, digest: bytes) -> None:
        """The event changed nothing (an error inside the core): a replay counts it."""
        self.ids.pop(digest, None)


RUN_SPAN_MS = 1000  # records judged with one clock span at most this much log time


def time_runs(timestamps: Sequence[int], span_ms: int = RUN_SPAN_MS) -> list[tuple[int, int]]:
    """[start, end) index ranges of consecutive records whose timestamps (ms)
    lie within `span_ms` of each other. Each run is decoded and deduplicated
    with its own latest time, which stands in for the live worker's clock;
    one fetch may span hours on a quiet partition, so judging it all by its
    latest record would reject or accept events a live worker did not."""
    runs: list[tuple[int, int]] = []
    start = 0
    low = high = 0
    for i, ts in enumerate(timestamps):
        if i == start:
            low = high = ts
            continue
        low, high = min(low, ts), max(high, ts)
        if high - low > span_ms:
            runs.append((start, i))
            start, low, high = i, ts, ts
    if timestamps:
        runs.append((start, len(timestamps)))
    return runs


def warm_up_time(from_time: float, window_seconds: float) -> float:
    """Where the id replay starts: the live window is at most one hour
    longer than `window_seconds`. Never before the epoch: no record is older
    (Kafka refuses a negative time), so a `--from` near it replays from it."""
    if window_seconds <= 0:
        return from_time
    return max(0.0, from_time - window_seconds - BUCKET_SECONDS)


@dataclass(frozen=True, slots=True)
class LogStart:
    """A partition's first retained record: offset, and its timestamp (POSIX s)."""

    offset: int
    timestamp: float | None


def retention_refusal(
    partition: str,
    start: LogStart,
    needed_time: float | None,
    window_seconds: float,
    before: str = "--from",
) -> str | None:
    """Why the retained log does not reach what the backfill needs, or None.

    `needed_time`: the earliest record time the backfill must read (the id
    replay start); None for `--from-offsets earliest`, which needs the whole
    partition. A log that starts at offset 0 lost nothing."""
    if start.offset <= 0:
        return None
    if needed_time is not None and start.timestamp is not None and start.timestamp <= needed_time:
        return None
    first = "no record" if start.timestamp is None else iso(start.timestamp)
    exact = (
        f"; an exact backfill can start at --from"
        f" {iso(start.timestamp + window_seconds + BUCKET_SECONDS)} at the earliest"
        " (a dedup window and an hour after the first retained record)"
        if start.timestamp is not None
        else ""
    )
    needs = (
        f" (it needs the ids of the dedup window before {before}, from {iso(needed_time)})"
        if needed_time is not None
        else " (it needs the whole partition)"
    )
    return (
        f"{partition}: retention deleted its records before offset {start.offset}{needs};"
        f" still available: offset {start.offset} on, first record at {first}{exact}"
    )


def iso(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Progress:
    done: int  # records of the range counted
    total: int
    rate: float  # records of the range counted per second, this run
    events_rate: float = 0.0  # events applied to the metric per second, this run

    @property
    def eta(self) -> float | None:
        """Seconds until done at the current rate (None when unknown)."""
        left = self.total - self.done
        if left <= 0:
            return 0.0
        if self.rate <= 0 or math.isnan(self.rate):
            return None
        return left / self.rate

    def line(self, uid: str) -> str:
        share = 100.0 * self.done / self.total if self.total else 100.0
        eta = self.eta
        return (
            f"backfill {uid}: {self.done:,} / {self.total:,} records ({share:.1f}%),"
            f" {self.rate:,.0f} records/s, {self.events_rate:,.0f} events/s,"
            f" ETA {'unknown' if eta is None else f'{eta:.0f} s'}"
        )
