"""The pure window logic (tally.core.windows): covers are exact unions of
real stored periods or refusals; combinations equal a recomputation from
the raw values (tests/reference.py); summary spans have the stated shape."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.config import load_settings
from tally.contracts.metric import AggregationType
from tally.core.periods import TimeUnit, period_bounds, zone
from tally.core.windows import (
    ROLLING_DAYS,
    Rollup,
    WindowRefused,
    average,
    combine,
    cover,
    day_start,
    definition_days,
    plan,
    summary_days,
)
from tally.store.usage import MemberLimits, refuse_deleted_members
from tests import reference

ZONES = ["UTC", "America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe", "Europe/Berlin"]
UNITS = list(TimeUnit)
START = int(datetime(2023, 1, 1, tzinfo=UTC).timestamp())
SPAN = 3 * 366 * 86400


def periods_from(t: int, unit: TimeUnit, tz_name: str, count: int) -> tuple[int, int]:
    """The start of the period holding t and the end of `count` periods later."""
    tz = zone(tz_name)
    first, end = period_bounds(t, unit, tz)
    for _ in range(count - 1):
        end = period_bounds(end, unit, tz)[1]
    return first, end


@settings(max_examples=150, deadline=None)
@given(
    st.sets(st.sampled_from(UNITS), min_size=1),
    st.sampled_from(ZONES),
    st.integers(START, START + SPAN),
    st.integers(1, 40),
    st.data(),
)
def test_a_union_of_stored_periods_is_covered_exactly(
    units: set[TimeUnit], tz_name: str, t: int, count: int, data: st.DataObject
) -> None:
    unit = data.draw(st.sampled_from(sorted(units)))
    start, end = periods_from(t, unit, tz_name, count if unit is not TimeUnit.YEAR else 1)
    (bucket,) = plan(start, end, None, zone(tz_name), units, zone(tz_name))
    assert (bucket.start, bucket.end) == (start, end)
    at = start
    for period in bucket.periods:
        assert period.unit in units
        assert period.start == at
        assert period_bounds(period.start, period.unit, zone(tz_name)) == (period.start, period.end)
        at = period.end
    assert at == end


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(ZONES), st.integers(START, START + SPAN), st.integers(1, 10))
def test_windows_cut_by_size_are_each_covered_and_partition_the_window(
    tz_name: str, t: int, count: int
) -> None:
    tz = zone(tz_name)
    start, end = periods_from(t, TimeUnit.DAY, tz_name, count * 7)
    planned = plan(start, end, TimeUnit.WEEK, tz, {TimeUnit.HOUR, TimeUnit.DAY}, tz)
    assert planned[0].start == start
    assert planned[-1].end == end
    for before, after in itertools.pairwise(planned):
        assert before.end == after.start
    for bucket in planned:
        assert bucket.periods[0].start == bucket.start
        assert bucket.periods[-1].end == bucket.end


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(ZONES), st.integers(START, START + SPAN), st.integers(1, 3599))
def test_a_bound_inside_every_stored_period_is_refused(tz_name: str, t: int, offset: int) -> None:
    tz = zone(tz_name)
    start = period_bounds(t, TimeUnit.HOUR, tz)[0] + offset
    with pytest.raises(WindowRefused) as refused:
        plan(start, start + 86400, None, tz, set(UNITS), tz)
    assert refused.value.unit is TimeUnit.HOUR


def test_a_kathmandu_day_over_utc_hours_names_the_unit_and_zone_to_add() -> None:
    kathmandu = zone("Asia/Kathmandu")
    start = day_start(date(2026, 3, 1), kathmandu)
    with pytest.raises(WindowRefused) as refused:
        plan(start, start + 86400, TimeUnit.DAY, kathmandu, {TimeUnit.HOUR}, zone("UTC"))
    assert refused.value.field == "windowTimeZone"
    assert (refused.value.unit, refused.value.zone) == (TimeUnit.DAY, "Asia/Kathmandu")
    assert "'day'" in refused.value.reason
    assert "Asia/Kathmandu" in refused.value.reason


def test_weeks_and_months_without_days_still_cover_what_weeks_alone_can() -> None:
    utc = zone("UTC")
    # Monday 2024-01-01 to Monday 2024-02-05: five weeks; January then February overshoots.
    start = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(2024, 2, 5, tzinfo=UTC).timestamp())
    found = cover(start, end, {TimeUnit.WEEK, TimeUnit.MONTH}, utc)
    assert found is not None
    assert [p.unit for p in found] == [TimeUnit.WEEK] * 5


numbers = st.decimals(min_value=-(10**12), max_value=10**12, places=6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(numbers, min_size=1, max_size=5), min_size=1, max_size=6))
def test_combining_period_rollups_equals_the_raw_values(groups: list[list[Decimal]]) -> None:
    raw = [v for group in groups for v in group]

    def rows(kind: str) -> list[Rollup]:
        made = []
        for group in groups:
            value = {
                "SUM": sum(group, Decimal(0)),
                "MAX": max(group),
                "MIN": min(group),
                "AVG": reference.average(sum(group, Decimal(0)), len(group)),
            }[kind]
            made.append(Rollup(value, None, sum(group, Decimal(0)), None, None, len(group)))
        return made

    assert combine(AggregationType.SUM, rows("SUM")).value == sum(raw, Decimal(0))
    assert combine(AggregationType.MAX, rows("MAX")).value == max(raw)
    assert combine(AggregationType.MIN, rows("MIN")).value == min(raw)
    averaged = combine(AggregationType.AVG, rows("AVG"))
    assert averaged.value == reference.average(sum(raw, Decimal(0)), len(raw))
    assert averaged.event_count == len(raw)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.text(max_size=3), numbers),
        min_size=1,
        max_size=8,
        unique_by=lambda w: (w[0], w[1]),  # periods are disjoint: no two share a winner
    )
)
def test_latest_is_the_greatest_time_then_id_in_any_order(
    winners: list[tuple[int, str, Decimal]],
) -> None:
    rows = [Rollup(v, None, None, at, ident, 1) for at, ident, v in winners]
    expected = max(winners, key=lambda w: (w[0], w[1].encode()))[2]
    assert combine(AggregationType.LATEST, rows).value == expected
    assert combine(AggregationType.LATEST, rows[::-1]).value == expected


@settings(max_examples=300, deadline=None)
@given(numbers, st.integers(1, 10**9))
def test_average_is_the_references(total: Decimal, events: int) -> None:
    assert average(total, events) == reference.average(total, events)


def test_average_keeps_every_digit_of_a_large_total() -> None:
    assert str(average(Decimal("1e20"), 3)) == "33333333333333333333.333333333333"


days = st.dates(date(2000, 1, 1), date(2100, 12, 31))


@given(days, st.sampled_from(sorted(ROLLING_DAYS)))
def test_rolling_n_days_end_with_as_of_and_the_previous_is_just_before(
    as_of: date, value: str
) -> None:
    (first, after), (previous, previous_after) = summary_days(as_of, "rolling", value)
    n = ROLLING_DAYS[value]
    assert after == as_of + timedelta(days=1)
    assert (after - first).days == n
    assert previous_after == first
    assert (first - previous).days == n


@given(days, st.sampled_from(["day", "week", "month", "quarter", "year"]))
def test_a_calendar_period_holds_as_of_and_follows_the_previous(as_of: date, value: str) -> None:
    (first, after), (previous, previous_after) = summary_days(as_of, "calendar", value)
    assert first <= as_of < after
    assert previous < previous_after == first
    assert summary_days(previous, "calendar", value)[0] == (previous, first)


@given(days)
def test_month_to_date_is_the_first_through_as_of(as_of: date) -> None:
    (first, after), (previous, previous_after) = definition_days(as_of, "month_to_date")
    assert first == as_of.replace(day=1)
    assert after == as_of + timedelta(days=1)
    assert previous == (first - timedelta(days=1)).replace(day=1)
    assert previous_after <= first
    assert (previous_after - previous).days == min((after - first).days, (first - previous).days)


def test_a_rolling_only_value_is_refused_for_calendar() -> None:
    with pytest.raises(WindowRefused) as refused:
        summary_days(date(2026, 3, 15), "calendar", "30-day")
    assert refused.value.field == "periodValue"


def test_the_default_member_retention_covers_the_longest_unique_window_served() -> None:
    """Members are kept max_lateness + TALLY_UNIQUE_WINDOW by default, so the
    longest UNIQUE union the API serves still finds every member."""
    assert load_settings({}, environ={}).unique_window == 92 * 86400
    assert load_settings({}, environ={}).member_retention == (35 + 92) * 86400
    settings = load_settings({}, environ={"TALLY_UNIQUE_WINDOW": "180d"})
    assert settings.member_retention == (35 + 180) * 86400


def test_a_unique_union_longer_than_the_window_or_past_retention_is_refused() -> None:
    utc = zone("UTC")
    now = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp())
    limits = MemberLimits(retention=125 * 86400, window=90 * 86400)
    long = plan(now - 120 * 86400, now, None, utc, {TimeUnit.DAY}, utc)
    with pytest.raises(WindowRefused, match="TALLY_UNIQUE_WINDOW"):
        refuse_deleted_members(AggregationType.UNIQUE, long, limits, now)
    old = plan(now - 200 * 86400, now - 150 * 86400, None, utc, {TimeUnit.DAY}, utc)
    with pytest.raises(WindowRefused, match="TALLY_MEMBER_RETENTION"):
        refuse_deleted_members(AggregationType.UNIQUE, old, limits, now)
    recent = plan(now - 90 * 86400, now, None, utc, {TimeUnit.DAY}, utc)
    refuse_deleted_members(AggregationType.UNIQUE, recent, limits, now)
    refuse_deleted_members(AggregationType.SUM, long, limits, now)  # values are kept


@pytest.mark.parametrize("tz_name", ["UTC", "America/New_York", "Australia/Lord_Howe"])
@pytest.mark.parametrize("quarter", [1, 4, 7, 10])
def test_every_calendar_quarter_is_a_unique_union_the_defaults_serve(
    tz_name: str, quarter: int
) -> None:
    """Q3 and Q4 are 92 local days (and a DST hour): the default window serves
    the whole quarter, and early in a quarter the previous one too."""
    settings = load_settings({}, environ={})
    limits = MemberLimits(settings.member_retention, settings.unique_window)
    local = zone(tz_name)
    first = date(2026, quarter, 1)
    current, previous = summary_days(first, "calendar", "quarter")
    for days, now in ((current, current[1]), (previous, first + timedelta(days=1))):
        start, end = day_start(days[0], local), day_start(days[1], local)
        planned = plan(start, end, None, local, {TimeUnit.DAY}, local)
        assert len(planned[0].periods) in (90, 91, 92)
        refuse_deleted_members(AggregationType.UNIQUE, planned, limits, day_start(now, local))


def test_a_single_old_period_with_members_read_is_refused_past_retention() -> None:
    utc = zone("UTC")
    now = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp())
    limits = MemberLimits(retention=125 * 86400, window=90 * 86400)
    one = plan(now - 200 * 86400, now - 199 * 86400, None, utc, {TimeUnit.DAY}, utc)
    with pytest.raises(WindowRefused, match="TALLY_MEMBER_RETENTION"):
        refuse_deleted_members(AggregationType.UNIQUE, one, limits, now)


def test_the_period_budget_spans_every_bucket_and_refuses_huge_windows_at_once() -> None:
    utc = zone("UTC")
    ten_years = (START, START + 10 * 365 * 86400)
    with pytest.raises(WindowRefused) as refused:
        plan(*ten_years, TimeUnit.YEAR, utc, {TimeUnit.HOUR}, utc)
    assert refused.value.field == "from"
    assert "50000 stored periods" in refused.value.reason
    first = int(datetime(1, 1, 1, tzinfo=UTC).timestamp())
    last = int(datetime(9999, 1, 1, tzinfo=UTC).timestamp())
    with pytest.raises(WindowRefused, match="50000 stored periods"):
        plan(first, last, TimeUnit.YEAR, utc, {TimeUnit.HOUR}, utc)
    # Summed over buckets (each year alone is within it): ten years of days are served.
    served = plan(*ten_years, TimeUnit.YEAR, utc, {TimeUnit.DAY}, utc)
    assert sum(len(b.periods) for b in served) == 10 * 365


def test_refusals_name_the_bound_off_the_hour_and_a_metric_that_would_answer() -> None:
    utc = zone("UTC")
    with pytest.raises(WindowRefused) as refused:
        plan(START, START + 86400 + 1800, None, utc, {TimeUnit.HOUR}, utc)
    assert refused.value.field == "to"
    with pytest.raises(WindowRefused) as refused:
        plan(START + 1800, START + 86400, None, utc, {TimeUnit.HOUR}, utc)
    assert refused.value.field == "from"
    with pytest.raises(WindowRefused) as refused:
        plan(START, START + 7 * 86400, TimeUnit.DAY, utc, {TimeUnit.MONTH}, utc)
    assert "a metric with 'day' in its timeUnits would answer it" in refused.value.reason
    assert "add " not in refused.value.reason
