"""Member retention can never reach a period that still accepts late events.

A late event is accepted up to `max_lateness` after its timestamp. If the
members of its period were already deleted, its member would be inserted
again and counted twice, so configuration refuses a retention shorter than
the lateness window plus a day's margin.
"""

from __future__ import annotations

import pytest

from tally.config import MEMBER_RETENTION_MARGIN, ConfigError, format_duration, load_settings
from tally.store.retention import SHORTEST_PERIOD_SECONDS, Policy

DAY = 86400.0


def test_the_defaults_keep_members_for_the_lateness_window_and_a_92_day_quarter() -> None:
    settings = load_settings({}, environ={})
    assert settings.max_lateness == 35 * DAY
    assert settings.member_retention == 127 * DAY  # 35d + the longest quarter, 92d
    assert settings.retention_interval == 600
    assert settings.retention_batch_size == 10_000
    assert settings.retention_pause == 0.5


@pytest.mark.parametrize("retention", ["30d", "35d", "35.5d", "859000s"])
def test_a_retention_inside_the_lateness_window_and_its_margin_is_refused(retention: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({}, environ={"TALLY_MEMBER_RETENTION": retention})
    message = str(refused.value)
    assert "TALLY_MEMBER_RETENTION" in message
    assert "max_lateness (35d) + 1d = 36d" in message
    assert "counted again" in message


def test_the_default_retention_follows_a_longer_lateness() -> None:
    """Not given, it is max_lateness + 92 days (TALLY_UNIQUE_WINDOW), so a longer lateness window
    alone cannot make a worker refuse to start (or delete too early)."""
    settings = load_settings({}, environ={"TALLY_MAX_LATENESS": "200d"})
    assert settings.member_retention == 292 * DAY
    with pytest.raises(ConfigError, match=r"max_lateness \(200d\) \+ 1d = 201d"):
        load_settings({}, environ={"TALLY_MAX_LATENESS": "200d", "TALLY_MEMBER_RETENTION": "125d"})


def test_the_flag_is_named_when_the_flag_was_given() -> None:
    with pytest.raises(ConfigError, match="--member-retention: is 2d"):
        load_settings({"member_retention": "2d"}, environ={})


@pytest.mark.parametrize(
    ("lateness", "retention"), [("35d", "36d"), ("35d", "125d"), ("1h", "25h"), ("200d", "0")]
)
def test_a_retention_past_lateness_and_margin_or_zero_is_accepted(
    lateness: str, retention: str
) -> None:
    settings = load_settings(
        {}, environ={"TALLY_MAX_LATENESS": lateness, "TALLY_MEMBER_RETENTION": retention}
    )
    assert settings.member_retention == 0 or (
        settings.member_retention >= settings.max_lateness + MEMBER_RETENTION_MARGIN
    )


def test_no_accepted_event_can_belong_to_a_period_retention_deletes() -> None:
    """The oldest event a worker accepts at time T has timestamp T - max_lateness;
    its period ends after that instant. A pass at T deletes periods ending at
    or before T - member_retention, a day earlier at the latest."""
    settings = load_settings({}, environ={"TALLY_MEMBER_RETENTION": "36d"})
    now = 1_800_000_000.0
    oldest_accepted = now - settings.max_lateness
    cutoff = Policy.from_settings(settings).member_cutoff(now)
    assert cutoff is not None
    assert oldest_accepted - cutoff == MEMBER_RETENTION_MARGIN
    # Periods are judged by their end; the shortest-period bound only narrows
    # which periods are looked at, never which are deleted.
    assert all(0 <= s < 366 * DAY for s in SHORTEST_PERIOD_SECONDS.values())


def test_zero_keeps_members_forever() -> None:
    settings = load_settings({}, environ={"TALLY_MEMBER_RETENTION": "0"})
    assert Policy.from_settings(settings).member_cutoff(1_800_000_000.0) is None


def test_durations_are_shown_in_their_largest_whole_unit() -> None:
    assert [format_duration(s) for s in (36 * DAY, 5400.0, 90.0, 1.5)] == [
        "36d",
        "90m",
        "90s",
        "1.5s",
    ]
