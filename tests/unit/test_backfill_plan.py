"""The pure parts of a backfill: the replayed dedup window, the retention
refusal, progress and ETA."""

from __future__ import annotations

from tally.backfill.plan import (
    LogStart,
    Progress,
    ReplayedWindow,
    retention_refusal,
    time_runs,
    warm_up_time,
)
from tally.core.dedup import digest

HOUR = 3600.0


def packed(*ids: str) -> bytes:
    return b"".join(digest(i) for i in ids)


def test_an_id_is_a_duplicate_within_the_window_and_inside_one_batch() -> None:
    window = ReplayedWindow(86400)
    assert list(window.check(packed("a", "b", "a"), 10 * HOUR)) == [0, 0, 1]
    assert list(window.check(packed("b", "c"), 20 * HOUR)) == [1, 0]


def test_an_id_expires_with_its_hour_like_the_live_window() -> None:
    window = ReplayedWindow(2 * HOUR)
    window.check(packed("a"), 10 * HOUR + 10)  # bucket 10
    # (12h30 - 2h) // 1h = 10: bucket 10 still held; (13h - 2h) // 1h = 11: expired.
    assert list(window.check(packed("a"), 12.5 * HOUR)) == [1]
    # A duplicate does not renew the id (the live window keeps its first hour).
    assert list(window.check(packed("a"), 13 * HOUR)) == [0]
    assert list(window.check(packed("a"), 13.5 * HOUR)) == [1]


def test_a_forgotten_id_counts_again_and_no_window_means_no_dedup() -> None:
    window = ReplayedWindow(HOUR)
    window.check(packed("a"), 0)
    window.forget(digest("a"))
    assert list(window.check(packed("a"), 1)) == [0]
    assert list(ReplayedWindow(0).check(packed("a", "a"), 0)) == [0, 0]


def test_the_replay_starts_a_window_and_an_hour_before_from() -> None:
    assert warm_up_time(100 * HOUR, 24 * HOUR) == 75 * HOUR
    assert warm_up_time(100 * HOUR, 0) == 100 * HOUR


def test_retention_refuses_only_when_it_deleted_what_the_backfill_needs() -> None:
    assert retention_refusal("t[0]", LogStart(0, 5.0), None, HOUR) is None
    assert retention_refusal("t[0]", LogStart(50, 5.0), 10.0, HOUR) is None
    refusal = retention_refusal("t[0]", LogStart(50, 20.0), 10.0, HOUR)
    assert refusal is not None
    assert "t[0]: retention deleted its records before offset 50" in refusal
    assert "still available: offset 50 on, first record at 1970-01-01T00:00:20Z" in refusal
    assert "--from 1970-01-01T02:00:20Z" in refusal
    earliest = retention_refusal("t[0]", LogStart(50, 20.0), None, HOUR)
    assert earliest is not None
    assert "the whole partition" in earliest


def test_progress_gives_an_eta_at_the_current_rate() -> None:
    assert Progress(250, 1000, 50.0).eta == 15.0
    assert Progress(1000, 1000, 0.0).eta == 0.0
    assert Progress(0, 1000, 0.0).eta is None
    line = Progress(250, 1000, 50.0, 20.0).line("m")
    assert "250 / 1,000 records (25.0%), 50 records/s, 20 events/s, ETA 15 s" in line


def test_a_fetch_spanning_hours_is_judged_in_runs_of_about_a_second() -> None:
    """Review item 5: each run's clock is its own latest time, so a record
    from 09:00 in a fetch that reaches 12:00 is not judged at 12:00."""
    hour = 3_600_000
    stamps = [0, 400, 1000, 1001, hour, hour + 999, 3 * hour]
    assert time_runs(stamps) == [(0, 3), (3, 4), (4, 6), (6, 7)]
    assert time_runs([]) == []
    assert time_runs([5, 5, 5]) == [(0, 3)]
    # Out-of-order CreateTime stamps: a run's span is its max minus its min.
    assert time_runs([2000, 500, 2400]) == [(0, 1), (1, 2), (2, 3)]
