"""The dedup window of one partition: exact, compact, and persisted per flush.

Each event id is remembered as a 128-bit BLAKE2b hash (two uint64 words), so
a false "duplicate" needs a 128-bit collision. Remembered hashes live in
sorted numpy arrays, looked up a whole batch at a time:

- `closed`: every hash of the finished hours in the window, one sorted array,
  with the hour ("bucket") each came in, so an hour can expire as a whole;
- `open`: the current hour's hashes, a few sorted arrays merged by size;
- `pending`: a set of hashes accepted since the last flush began;
- `flying`: the hashes of the flush under way (`plan_flush` moves `pending`
  there; `commit` makes them durable, `abort` hands them back).

A flush persists its ids as one sorted blob (`FlushPlan.blob`) in the same
transaction as the offsets it covers; after an hour has passed, its blobs
are merged into one row, and an hour older than the window is deleted. The
database rows and these arrays always describe the same set of ids.

Cost: 16 bytes of hash + 4 bytes of bucket = 20 bytes per remembered id
(closed), 16 (open); `pending` and `flying` cost ~90 bytes per id until
their flush commits.
Ids are remembered for at least the window and at most one hour more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

BUCKET_SECONDS = 3600
_RECORD = np.dtype(
    [("hi", ">u8"), ("lo", ">u8")]
)  # blob layout: big-endian, byte order = sort order

U64 = npt.NDArray[np.uint64]


def digest(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _words(blob: bytes) -> tuple[U64, U64]:
    records = np.frombuffer(blob, dtype=_RECORD)
    return records["hi"].astype(np.uint64), records["lo"].astype(np.uint64)


def _blob(hi: U64, lo: U64) -> bytes:
    records = np.empty(len(hi), dtype=_RECORD)
    records["hi"] = hi
    records["lo"] = lo
    return records.tobytes()


def _order(hi: U64) -> npt.NDArray[np.intp]:
    """The permutation that sorts by the high word.

    Stable sort (timsort) finds the sorted runs that concatenated arrays are
    made of, so merging sorted arrays costs about n, not n log n. The low
    word's order does not matter: a lookup scans every entry sharing a high word.
    """
    return np.argsort(hi, kind="stable")


def _contains(hi: U64, lo: U64, q_hi: U64, q_lo: U64) -> npt.NDArray[np.bool_]:
    """For each query (q_hi, q_lo), whether it is in the set sorted by hi."""
    found = np.zeros(len(q_hi), dtype=bool)
    if len(hi) == 0 or len(q_hi) == 0:
        return found
    left = np.searchsorted(hi, q_hi, side="left")
    inside = left < len(hi)
    candidates = np.nonzero(inside)[0]
    candidates = candidates[hi[left[candidates]] == q_hi[candidates]]
    # Almost always a single entry per matching high word; more is a 64-bit
    # collision between different ids, resolved exactly by the scan.
    for i in candidates.tolist():
        at = int(left[i])
        while at < len(hi) and hi[at] == q_hi[i]:
            if lo[at] == q_lo[i]:
                found[i] = True
                break
            at += 1
    return found


@dataclass(slots=True)
class _Run:
    """Sorted hashes of the open hour (not yet compacted in memory)."""

    hi: U64
    lo: U64


def _merge_runs(runs: Sequence[_Run]) -> _Run:
    if not runs:
        return _Run(np.empty(0, np.uint64), np.empty(0, np.uint64))
    hi = np.concatenate([r.hi for r in runs])
    lo = np.concatenate([r.lo for r in runs])
    order = _order(hi)
    return _Run(hi[order], lo[order])


@dataclass(frozen=True, slots=True)
class FlushPlan:
    """What one flush writes for this partition's window (`tally.dedup_segments`)."""

    bucket: int
    blob: bytes  # the new ids, sorted; empty if none
    count: int
    # (bucket, row ids to replace, merged blob, count): an hour that is over.
    compaction: tuple[int, tuple[int, ...], bytes, int] | None
    expire_before: int  # delete rows of buckets below this


class WindowLoad:
    """One reload of a `DedupWindow`, segment by segment.

    Closed hours are copied into arrays allocated once for all of them and
    sorted at the end: the peak is their 20 bytes per id, plus 8 for the sort
    order and 8 for one array being reordered, plus the one blob in hand (the
    old way held every blob, each hour's copies and their concatenation: about
    84 bytes per id). `python -m tally.bench memory` measures it."""

    __slots__ = ("bucket", "current", "cutoff", "filled", "hi", "lo", "window")

    def __init__(self, window: DedupWindow, now: float, ids: int) -> None:
        self.window = window
        self.current = int(now // BUCKET_SECONDS)
        self.cutoff = window._expire_before(now)
        self.hi = np.empty(ids, np.uint64)
        self.lo = np.empty(ids, np.uint64)
        self.bucket = np.empty(ids, np.int32)
        self.filled = 0
        window.open_runs = []
        window.rows = {}
        window.pending = set()
        window.flying = set()
        window.open_bucket = self.current

    def add(self, segment_id: int, bucket: int, blob: bytes) -> None:
        if bucket < self.cutoff:
            return
        window = self.window
        window.rows.setdefault(bucket, []).append(segment_id)
        records = np.frombuffer(blob, dtype=_RECORD)  # a view of the blob, no copy
        if bucket >= self.current:
            window.open_runs.append(
                _Run(records["hi"].astype(np.uint64), records["lo"].astype(np.uint64))
            )
            return
        start, end = self.filled, self.filled + len(records)
        if end > len(self.hi):  # more than announced: grow (not on the worker's path)
            grow = max(end, 2 * len(self.hi))
            self.hi = np.resize(self.hi, grow)
            self.lo = np.resize(self.lo, grow)
            self.bucket = np.resize(self.bucket, grow)
        self.hi[start:end] = records["hi"]
        self.lo[start:end] = records["lo"]
        self.bucket[start:end] = bucket
        self.filled = end

    def finish(self) -> None:
        window = self.window
        n = self.filled
        order = _order(self.hi[:n])
        # One array at a time, each old one freed before the next is made.
        hi = self.hi[:n][order]
        self.hi = np.empty(0, np.uint64)
        lo = self.lo[:n][order]
        self.lo = np.empty(0, np.uint64)
        bucket = self.bucket[:n][order]
        self.bucket = np.empty(0, np.int32)
        window.closed_hi, window.closed_lo, window.closed_bucket = hi, lo, bucket
        window._compact_open()


@dataclass(slots=True)
class DedupWindow:
    window_seconds: float
    closed_hi: U64 = field(default_factory=lambda: np.empty(0, np.uint64))
    closed_lo: U64 = field(default_factory=lambda: np.empty(0, np.uint64))
    closed_bucket: npt.NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    open_bucket: int = -1
    open_runs: list[_Run] = field(default_factory=list)
    pending: set[bytes] = field(default_factory=set)
    flying: set[bytes] = field(default_factory=set)
    # Database rows per bucket, so an hour's rows can be merged into one.
    rows: dict[int, list[int]] = field(default_factory=dict)

    @property
    def held(self) -> int:
        """Ids remembered (persisted, in flight and pending)."""
        persisted = len(self.closed_hi) + sum(len(r.hi) for r in self.open_runs)
        return persisted + len(self.flying) + len(self.pending)

    def load(self, rows: Iterable[tuple[int, int, bytes]], now: float) -> None:
        """Rebuild from `(segment_id, bucket, blob)` rows, dropping expired hours."""
        rows = list(rows)
        loading = self.loader(now, sum(len(blob) for _, _, blob in rows) // _RECORD.itemsize)
        for segment_id, bucket, blob in rows:
            loading.add(segment_id, bucket, blob)
        loading.finish()

    def loader(self, now: float, ids: int) -> WindowLoad:
        """Rebuild from segments given one at a time (`ids`: at most how many
        they hold), so a reload never holds every blob at once."""
        return WindowLoad(self, now, ids)

    def _expire_before(self, now: float) -> int:
        return int((now - self.window_seconds) // BUCKET_SECONDS)

    def _set_closed(self, parts: Sequence[tuple[U64, U64, npt.NDArray[np.int32]]]) -> None:
        if not parts:
            self.closed_hi = np.empty(0, np.uint64)
            self.closed_lo = np.empty(0, np.uint64)
            self.closed_bucket = np.empty(0, np.int32)
            return
        hi = np.concatenate([p[0] for p in parts])
        lo = np.concatenate([p[1] for p in parts])
        bucket = np.concatenate([p[2] for p in parts])
        order = _order(hi)
        self.closed_hi, self.closed_lo, self.closed_bucket = hi[order], lo[order], bucket[order]

    def _compact_open(self) -> None:
        # Merge the newest run into the one before while it is at least half
        # as big: a binary counter, so the open hour has O(log n) runs.
        runs = self.open_runs
        while len(runs) >= 2 and len(runs[-1].hi) * 2 >= len(runs[-2].hi):
            last, before = runs.pop(), runs.pop()
            runs.append(_merge_runs([before, last]))

    def seen(self, digests: Sequence[bytes]) -> list[bool]:
        """For a batch of ids, whether each is remembered already (persisted,
        in flight or pending). Adds nothing: the caller `remember`s each id
        once its event is applied."""
        if not digests:
            return []
        return self.seen_buffer(b"".join(digests))

    def seen_buffer(self, buffer: bytes) -> list[bool]:
        """`seen` for digests packed 16 bytes each (the native core's `Batch.digests`)."""
        flags = self.persisted(buffer)
        pending = self.pending
        flying = self.flying
        if pending or flying:
            for i in range(len(flags)):
                if not flags[i]:
                    key = buffer[16 * i : 16 * i + 16]
                    flags[i] = key in pending or key in flying
        return flags

    def persisted(self, buffer: bytes) -> list[bool]:
        """For packed digests, whether each is in the stored hours (one
        vectorised lookup; pending and flying ids are the caller's to check)."""
        if not buffer:
            return []
        words = np.frombuffer(buffer, dtype=_RECORD)
        q_hi = words["hi"].astype(np.uint64)
        q_lo = words["lo"].astype(np.uint64)
        found = _contains(self.closed_hi, self.closed_lo, q_hi, q_lo)
        for run in self.open_runs:
            found |= _contains(run.hi, run.lo, q_hi, q_lo)
        flags: list[bool] = found.tolist()
        return flags

    def remember(self, digest: bytes) -> None:
        self.pending.add(digest)

    def check(self, digests: Sequence[bytes]) -> list[bool]:
        """Duplicate flags for a batch in arrival order; new ids become pending."""
        flags = self.seen(digests)
        pending = self.pending
        for i, key in enumerate(digests):
            if flags[i]:
                continue
            if key in pending:  # a repeat inside this batch
                flags[i] = True
            else:
                pending.add(key)
        return flags

    def plan_flush(self, now: float) -> FlushPlan:
        """What the next flush writes; the pending ids become the flying ones."""
        assert not self.flying, "one flush at a time"
        self.flying, self.pending = self.pending, set()
        bucket = max(int(now // BUCKET_SECONDS), self.open_bucket)
        if self.flying:
            records = np.frombuffer(b"".join(self.flying), dtype=_RECORD)
            # Sorted by the high word in numpy: far cheaper than sorting bytes objects.
            records = records[np.argsort(records["hi"], kind="stable")]
            blob, count = records.tobytes(), len(records)
        else:
            blob, count = b"", 0
        compaction = None
        for old in sorted(self.rows):
            ids = self.rows[old]
            if old < bucket and len(ids) > 1 and old >= self._expire_before(now):
                mask = self.closed_bucket == old
                if old == self.open_bucket:
                    run = _merge_runs(self.open_runs)
                    hi, lo = run.hi, run.lo
                else:
                    hi, lo = self.closed_hi[mask], self.closed_lo[mask]
                compaction = (old, tuple(ids), _blob(hi, lo), len(hi))
                break  # one hour per flush keeps each flush short
        return FlushPlan(bucket, blob, count, compaction, self._expire_before(now))

    def commit(self, plan: FlushPlan, new_row: int | None, merged_row: int | None) -> None:
        """The flush's transaction committed: make memory match the rows."""
        if plan.bucket != self.open_bucket:
            self._close_open_hour()
            self.open_bucket = plan.bucket
        if new_row is not None and plan.count:
            hi, lo = _words(plan.blob)
            self.open_runs.append(_Run(hi, lo))
            self.rows.setdefault(plan.bucket, []).append(new_row)
            self._compact_open()
        self.flying = set()
        if plan.compaction is not None and merged_row is not None:
            self.rows[plan.compaction[0]] = [merged_row]
        expired = [b for b in self.rows if b < plan.expire_before]
        for bucket in expired:
            del self.rows[bucket]
        if expired and len(self.closed_bucket):
            keep = self.closed_bucket >= plan.expire_before
            self.closed_hi = self.closed_hi[keep]
            self.closed_lo = self.closed_lo[keep]
            self.closed_bucket = self.closed_bucket[keep]

    def abort(self) -> None:
        """The flush failed: its ids are pending again, for the next one."""
        self.pending |= self.flying
        self.flying = set()

    def _close_open_hour(self) -> None:
        if not self.open_runs:
            return
        parts = [(self.closed_hi, self.closed_lo, self.closed_bucket)]
        parts += [
            (r.hi, r.lo, np.full(len(r.hi), self.open_bucket, np.int32)) for r in self.open_runs
        ]
        self._set_closed(parts)
        self.open_runs = []


def blob_contains(blob: bytes, key: bytes) -> bool:
    """Whether one stored segment (`FlushPlan.blob`) holds the 16-byte digest `key`."""
    hi, lo = _words(blob)
    q_hi, q_lo = _words(key)
    return bool(_contains(hi, lo, q_hi, q_lo)[0])
