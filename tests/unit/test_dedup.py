"""The dedup window against a plain dict of first-seen times.

A simulated table of segment rows stands in for PostgreSQL: each flush
applies its plan to the rows exactly as the flush transaction would, and a
reload rebuilds the window from those rows, as a new owner would.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tally.core.dedup import BUCKET_SECONDS, DedupWindow, FlushPlan, digest

WINDOW = 6 * 3600.0


class Rows:
    """tally.dedup_segments for one partition."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[int, bytes]] = {}
        self.next_id = 1

    def apply(self, plan: FlushPlan) -> tuple[int | None, int | None]:
        new_row = merged_row = None
        if plan.count:
            new_row = self._insert(plan.bucket, plan.blob)
        if plan.compaction is not None:
            bucket, replaced, blob, _count = plan.compaction
            for row in replaced:
                del self.rows[row]
            merged_row = self._insert(bucket, blob)
        for row, (bucket, _) in list(self.rows.items()):
            if bucket < plan.expire_before:
                del self.rows[row]
        return new_row, merged_row

    def _insert(self, bucket: int, blob: bytes) -> int:
        row = self.next_id
        self.next_id += 1
        self.rows[row] = (bucket, blob)
        return row

    def load(self) -> list[tuple[int, int, bytes]]:
        return [(row, bucket, blob) for row, (bucket, blob) in sorted(self.rows.items())]


steps = st.lists(
    st.one_of(
        st.tuples(st.just("batch"), st.lists(st.integers(0, 400), max_size=30)),
        st.tuples(st.just("flush"), st.just(0)),
        st.tuples(st.just("fly"), st.just(0)),
        st.tuples(st.just("land"), st.just(0)),
        st.tuples(st.just("fail"), st.just(0)),
        st.tuples(st.just("advance"), st.integers(1, 4 * 3600)),
        st.tuples(st.just("reload"), st.just(0)),
        st.tuples(st.just("crash"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=500, deadline=None)
@given(steps=steps)
def test_window_matches_first_seen_reference(steps: list[tuple[str, object]]) -> None:
    now = 1_800_000_000.0
    rows = Rows()
    window = DedupWindow(WINDOW)
    window.load([], now)
    durable: dict[str, float] = {}  # id -> when its flush committed
    pending: dict[str, float] = {}  # accepted, not yet durable (flying ones included)
    plan: FlushPlan | None = None
    flying: set[str] = set()
    flown_at = now
    for action, arg in steps:
        if action == "batch":
            ids = [f"event-{n}" for n in arg]  # type: ignore[union-attr]
            flags = window.check([digest(i) for i in ids])
            for event_id, flag in zip(ids, flags, strict=True):
                seen = event_id in pending or event_id in durable
                if flag != seen:
                    # Remembered longer than the window is allowed, by at most an hour.
                    age = now - durable[event_id] if event_id in durable else None
                    assert flag, (event_id, seen)
                    assert age is not None, event_id
                    assert WINDOW <= age <= WINDOW + 2 * BUCKET_SECONDS, (event_id, age)
                if not flag:
                    pending[event_id] = now
        elif action in ("flush", "fly") and plan is None:
            # A flush begins: the pending ids fly; batches meanwhile see them.
            plan, flying, flown_at = window.plan_flush(now), set(pending), now
            if action == "flush":
                action = "land"
        if action == "land" and plan is not None:
            new_row, merged_row = rows.apply(plan)
            window.commit(plan, new_row, merged_row)
            durable.update({i: flown_at for i in flying})
            pending = {i: t for i, t in pending.items() if i not in flying}
            plan, flying = None, set()
        elif action == "fail" and plan is not None:
            window.abort()  # nothing was written; the ids are pending again
            plan, flying = None, set()
        elif action == "advance":
            now += arg  # type: ignore[operator]
            # Forget what the window may forget; what it still remembers is checked above.
            durable = {i: t for i, t in durable.items() if now - t < WINDOW}
        elif action in ("reload", "crash"):
            if plan is not None:  # the flush under way fails with the worker
                window.abort()
                plan, flying = None, set()
            if action == "reload":  # a clean hand-over: flush on revocation first
                handover = window.plan_flush(now)
                window.commit(handover, *rows.apply(handover))
                durable.update(dict.fromkeys(pending, now))
            pending = {}  # a crash never flushed them: the next owner re-reads those events
            window = DedupWindow(WINDOW)
            window.load(rows.load(), now)


def test_within_one_batch_the_first_arrival_counts() -> None:
    window = DedupWindow(WINDOW)
    window.load([], 0.0)
    assert window.check([digest("a"), digest("b"), digest("a"), digest("a")]) == [
        False,
        False,
        True,
        True,
    ]


def test_memory_per_remembered_id_is_about_20_bytes() -> None:
    now = 1_800_000_000.0
    rows = Rows()
    window = DedupWindow(86400)
    window.load([], now)
    for hour in range(3):
        window.check([digest(f"{hour}-{n}") for n in range(50_000)])
        plan = window.plan_flush(now + hour * 3600)
        window.commit(plan, *rows.apply(plan))
    window.commit(plan := window.plan_flush(now + 4 * 3600), *rows.apply(plan))
    held = window.held
    assert held == 150_000
    nbytes = window.closed_hi.nbytes + window.closed_lo.nbytes + window.closed_bucket.nbytes
    nbytes += sum(r.hi.nbytes + r.lo.nbytes for r in window.open_runs)
    assert 16 <= nbytes / held <= 20


def test_a_reload_one_segment_at_a_time_peaks_near_36_bytes_per_id() -> None:
    """Issue 11 item 9: reloads peaked at 84 bytes per id (every blob, each
    hour's copies and their concatenation at once). A bound, measured by
    tracemalloc (bytes, not time): the arrays' 20, the sort order's 8 and one
    array being reordered, 8."""
    from tally.bench.memory import reload_memory

    measured = reload_memory(200_000)
    assert measured["reload, one segment at a time: peak"] < 40
    assert measured["reload, one segment at a time: held after"] < 21
