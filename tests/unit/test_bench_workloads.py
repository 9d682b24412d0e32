"""The bench's live workload and its freshness arithmetic (pure; no services)."""

from __future__ import annotations

import numpy as np
import pytest

from tally.bench import e2e
from tally.bench.freshness import visible_times
from tally.synthetic import events


def test_live_workload_is_ordered_with_a_late_tail_and_only_shifts_with_the_clock() -> None:
    count = 20_000
    first = list(events(e2e.workload("live", 7, anchor=1_800_000_000.0), count))
    later = list(events(e2e.workload("live", 7, anchor=1_800_003_600.0), count))
    # the same events, an hour apart
    strip = [{k: v for k, v in d.items() if k != "timestamp"} for d in first]
    assert strip == [{k: v for k, v in d.items() if k != "timestamp"} for d in later]
    times = [np.datetime64(d["timestamp"].rstrip("Z")) for d in first]
    shifted = [np.datetime64(d["timestamp"].rstrip("Z")) for d in later]
    assert {b - a for a, b in zip(times, shifted, strict=True)} == {np.timedelta64(3600, "s")}

    seconds = np.array([(t - times[0]) / np.timedelta64(1, "ms") / 1000 for t in times])
    nominal = np.arange(count) * e2e.LIVE_SPAN_SECONDS / count
    late = nominal - seconds > 0.001
    assert 0.005 < late.mean() < 0.015  # about 1 % late
    assert (nominal - seconds)[late].max() <= e2e.LATE_SECONDS
    assert (nominal - seconds)[late].max() > e2e.LATE_SECONDS / 2
    on_time = seconds[~late]
    assert (np.diff(on_time) >= 0).all()  # in arrival order: any partition of it is too
    assert first[-1]["timestamp"] < "2027-01-15T08:00:00.000Z"  # ends at the anchor


def test_backfill_workload_is_unchanged() -> None:
    """The events the reused backfill topics and docs/performance.md's runs hold."""
    documents = list(events(e2e.workload("backfill", 7), 3))
    assert [(d["id"], d["timestamp"]) for d in documents] == [
        ("evt_7_0000000000_d2128b2f33", "2026-11-16T12:14:37.784Z"),
        ("evt_7_0000000001_39f28c105d", "2026-11-16T18:23:54.402Z"),
        ("evt_7_0000000002_1a2e44158b", "2026-11-16T00:21:00.047Z"),
    ]


def test_an_event_is_visible_at_the_first_poll_that_stored_past_it() -> None:
    polls = [(10.0, {0: -1, 1: -1}), (10.1, {0: 2}), (10.2, {0: 5, 1: 1}), (10.3, {0: 5, 1: 3})]
    batches = [[9.95, 0, 0, 3], [10.05, 0, 3, 2], [10.0, 1, 0, 3]]
    sent, seen = visible_times(polls, batches)
    pairs = sorted(zip(sent.tolist(), seen.tolist(), strict=True))
    assert pairs == sorted(
        [
            (9.95, 10.1),  # offset 0: stored 2 at 10.1
            (9.95, 10.1),  # offset 1
            (9.95, 10.2),  # offset 2: stored 5 at 10.2
            (10.05, 10.2),
            (10.05, 10.2),
            (10.0, 10.2),  # partition 1, offset 0: stored 1 at 10.2
            (10.0, 10.3),
            (10.0, 10.3),
        ]
    )


def test_an_event_never_stored_is_never_visible() -> None:
    sent, seen = visible_times([(1.0, {0: 1})], [[0.5, 0, 0, 2]])
    assert seen.tolist() == [1.0, np.inf]
    assert sent.tolist() == pytest.approx([0.5, 0.5])
