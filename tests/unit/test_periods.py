"""Tests for tally.core.periods: hand-written expectations plus property tests.

Expected values below are written by hand from the tz rules (not computed by the code
under test). The brute-force reference at the end walks the clock independently.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.core import periods
from tally.core.periods import PeriodCache, TimeUnit, period_bounds, period_end, zone


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _sec(iso: str) -> int:
    value = _ts(iso)
    assert value == int(value), iso
    return int(value)


# (zone, unit, instant, expected start, expected end)
# fmt: off
CASES: list[tuple[str, str, str, str, str]] = [
    # --- UTC, every unit ---
    ("UTC", "hour", "2024-05-15T13:45:30.25+00:00", "2024-05-15T13:00:00+00:00", "2024-05-15T14:00:00+00:00"),
    ("UTC", "day", "2024-05-15T13:45:30.25+00:00", "2024-05-15T00:00:00+00:00", "2024-05-16T00:00:00+00:00"),
    ("UTC", "week", "2024-05-15T13:45:30.25+00:00", "2024-05-13T00:00:00+00:00", "2024-05-20T00:00:00+00:00"),
    ("UTC", "month", "2024-05-15T13:45:30.25+00:00", "2024-05-01T00:00:00+00:00", "2024-06-01T00:00:00+00:00"),
    ("UTC", "quarter", "2024-05-15T13:45:30.25+00:00", "2024-04-01T00:00:00+00:00", "2024-07-01T00:00:00+00:00"),
    ("UTC", "year", "2024-05-15T13:45:30.25+00:00", "2024-01-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00"),
    # on a boundary / one microsecond before it
    ("UTC", "hour", "2024-05-15T14:00:00+00:00", "2024-05-15T14:00:00+00:00", "2024-05-15T15:00:00+00:00"),
    ("UTC", "hour", "2024-05-15T13:59:59.999999+00:00", "2024-05-15T13:00:00+00:00", "2024-05-15T14:00:00+00:00"),
    ("UTC", "day", "2024-05-16T00:00:00+00:00", "2024-05-16T00:00:00+00:00", "2024-05-17T00:00:00+00:00"),
    ("UTC", "day", "2024-05-15T23:59:59.999999+00:00", "2024-05-15T00:00:00+00:00", "2024-05-16T00:00:00+00:00"),
    # ISO weeks across a year end
    ("UTC", "week", "2024-12-30T00:00:00+00:00", "2024-12-30T00:00:00+00:00", "2025-01-06T00:00:00+00:00"),
    ("UTC", "week", "2024-12-29T23:59:59.999999+00:00", "2024-12-23T00:00:00+00:00", "2024-12-30T00:00:00+00:00"),
    ("UTC", "week", "2025-01-01T08:00:00+00:00", "2024-12-30T00:00:00+00:00", "2025-01-06T00:00:00+00:00"),
    ("UTC", "week", "2021-01-03T12:00:00+00:00", "2020-12-28T00:00:00+00:00", "2021-01-04T00:00:00+00:00"),
    ("UTC", "week", "2021-01-04T00:00:00+00:00", "2021-01-04T00:00:00+00:00", "2021-01-11T00:00:00+00:00"),
    # leap days (2024 leap, 2023 and 2100 not)
    ("UTC", "day", "2024-02-29T23:59:59.999999+00:00", "2024-02-29T00:00:00+00:00", "2024-03-01T00:00:00+00:00"),
    ("UTC", "day", "2024-03-01T00:00:00+00:00", "2024-03-01T00:00:00+00:00", "2024-03-02T00:00:00+00:00"),
    ("UTC", "week", "2024-02-29T12:00:00+00:00", "2024-02-26T00:00:00+00:00", "2024-03-04T00:00:00+00:00"),
    ("UTC", "month", "2024-02-29T12:00:00+00:00", "2024-02-01T00:00:00+00:00", "2024-03-01T00:00:00+00:00"),
    ("UTC", "month", "2023-02-28T23:59:59.999999+00:00", "2023-02-01T00:00:00+00:00", "2023-03-01T00:00:00+00:00"),
    ("UTC", "day", "2100-02-28T23:00:00+00:00", "2100-02-28T00:00:00+00:00", "2100-03-01T00:00:00+00:00"),
    # quarters
    ("UTC", "quarter", "2024-03-31T23:59:59.999999+00:00", "2024-01-01T00:00:00+00:00", "2024-04-01T00:00:00+00:00"),
    ("UTC", "quarter", "2024-04-01T00:00:00+00:00", "2024-04-01T00:00:00+00:00", "2024-07-01T00:00:00+00:00"),
    ("UTC", "quarter", "2024-09-30T23:59:59.999999+00:00", "2024-07-01T00:00:00+00:00", "2024-10-01T00:00:00+00:00"),
    ("UTC", "quarter", "2024-11-15T00:00:00+00:00", "2024-10-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00"),
    ("UTC", "year", "2024-12-31T23:59:59.999999+00:00", "2024-01-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00"),
    ("UTC", "year", "2025-01-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00"),
    ("UTC", "year", "1900-01-01T00:00:00+00:00", "1900-01-01T00:00:00+00:00", "1901-01-01T00:00:00+00:00"),
    ("UTC", "year", "2199-12-31T23:59:59+00:00", "2199-01-01T00:00:00+00:00", "2200-01-01T00:00:00+00:00"),
    # --- Los Angeles, fall back 2024-11-03 02:00 PDT -> 01:00 PST (09:00Z) ---
    ("America/Los_Angeles", "hour", "2024-11-03T00:59:59.999999-07:00", "2024-11-03T00:00:00-07:00", "2024-11-03T01:00:00-07:00"),
    ("America/Los_Angeles", "hour", "2024-11-03T01:00:00-07:00", "2024-11-03T08:00:00+00:00", "2024-11-03T10:00:00+00:00"),
    ("America/Los_Angeles", "hour", "2024-11-03T01:30:00-07:00", "2024-11-03T08:00:00+00:00", "2024-11-03T10:00:00+00:00"),
    ("America/Los_Angeles", "hour", "2024-11-03T01:00:00-08:00", "2024-11-03T08:00:00+00:00", "2024-11-03T10:00:00+00:00"),
    ("America/Los_Angeles", "hour", "2024-11-03T01:30:00-08:00", "2024-11-03T08:00:00+00:00", "2024-11-03T10:00:00+00:00"),
    ("America/Los_Angeles", "hour", "2024-11-03T09:59:59.999999+00:00", "2024-11-03T08:00:00+00:00", "2024-11-03T10:00:00+00:00"),
    ("America/Los_Angeles", "hour", "2024-11-03T02:00:00-08:00", "2024-11-03T10:00:00+00:00", "2024-11-03T11:00:00+00:00"),
    ("America/Los_Angeles", "day", "2024-11-03T12:00:00-08:00", "2024-11-03T00:00:00-07:00", "2024-11-04T00:00:00-08:00"),
    ("America/Los_Angeles", "week", "2024-11-03T12:00:00-08:00", "2024-10-28T00:00:00-07:00", "2024-11-04T00:00:00-08:00"),
    ("America/Los_Angeles", "month", "2024-11-15T12:00:00-08:00", "2024-11-01T00:00:00-07:00", "2024-12-01T00:00:00-08:00"),
    # spring forward 2024-03-10 02:00 PST -> 03:00 PDT (10:00Z)
    ("America/Los_Angeles", "hour", "2024-03-10T01:30:00-08:00", "2024-03-10T09:00:00+00:00", "2024-03-10T10:00:00+00:00"),
    ("America/Los_Angeles", "hour", "2024-03-10T09:59:59.999999+00:00", "2024-03-10T09:00:00+00:00", "2024-03-10T10:00:00+00:00"),
    ("America/Los_Angeles", "hour", "2024-03-10T03:00:00-07:00", "2024-03-10T10:00:00+00:00", "2024-03-10T11:00:00+00:00"),
    ("America/Los_Angeles", "hour", "2024-03-10T03:30:00-07:00", "2024-03-10T10:00:00+00:00", "2024-03-10T11:00:00+00:00"),
    ("America/Los_Angeles", "day", "2024-03-10T12:00:00-07:00", "2024-03-10T00:00:00-08:00", "2024-03-11T00:00:00-07:00"),
    ("America/Los_Angeles", "quarter", "2024-03-10T12:00:00-07:00", "2024-01-01T00:00:00-08:00", "2024-04-01T00:00:00-07:00"),
    ("America/Los_Angeles", "year", "2024-03-10T12:00:00-07:00", "2024-01-01T00:00:00-08:00", "2025-01-01T00:00:00-08:00"),
    # --- Berlin, spring forward 2024-03-31 02:00 CET -> 03:00 CEST (01:00Z) ---
    ("Europe/Berlin", "hour", "2024-03-31T01:59:59.999999+01:00", "2024-03-31T01:00:00+01:00", "2024-03-31T03:00:00+02:00"),
    ("Europe/Berlin", "hour", "2024-03-31T03:00:00+02:00", "2024-03-31T03:00:00+02:00", "2024-03-31T04:00:00+02:00"),
    ("Europe/Berlin", "hour", "2024-03-31T03:15:00+02:00", "2024-03-31T03:00:00+02:00", "2024-03-31T04:00:00+02:00"),
    ("Europe/Berlin", "day", "2024-03-31T12:00:00+02:00", "2024-03-31T00:00:00+01:00", "2024-04-01T00:00:00+02:00"),
    # fall back 2024-10-27 03:00 CEST -> 02:00 CET (01:00Z)
    ("Europe/Berlin", "hour", "2024-10-27T02:30:00+02:00", "2024-10-27T00:00:00+00:00", "2024-10-27T02:00:00+00:00"),
    ("Europe/Berlin", "hour", "2024-10-27T02:30:00+01:00", "2024-10-27T00:00:00+00:00", "2024-10-27T02:00:00+00:00"),
    ("Europe/Berlin", "hour", "2024-10-27T03:00:00+01:00", "2024-10-27T03:00:00+01:00", "2024-10-27T04:00:00+01:00"),
    ("Europe/Berlin", "day", "2024-10-27T12:00:00+01:00", "2024-10-27T00:00:00+02:00", "2024-10-28T00:00:00+01:00"),
    ("Europe/Berlin", "month", "2024-10-27T12:00:00+01:00", "2024-10-01T00:00:00+02:00", "2024-11-01T00:00:00+01:00"),
    ("Europe/Berlin", "quarter", "2024-10-27T12:00:00+01:00", "2024-10-01T00:00:00+02:00", "2025-01-01T00:00:00+01:00"),
    ("Europe/Berlin", "year", "2024-10-27T12:00:00+01:00", "2024-01-01T00:00:00+01:00", "2025-01-01T00:00:00+01:00"),
    # --- Lord Howe, 30-minute DST: fall back 2024-04-07 02:00 +11 -> 01:30 +10:30 ---
    ("Australia/Lord_Howe", "hour", "2024-04-07T00:30:00+11:00", "2024-04-07T00:00:00+11:00", "2024-04-07T01:00:00+11:00"),
    ("Australia/Lord_Howe", "hour", "2024-04-07T01:45:00+11:00", "2024-04-07T01:00:00+11:00", "2024-04-07T02:00:00+10:30"),
    ("Australia/Lord_Howe", "hour", "2024-04-07T01:45:00+10:30", "2024-04-07T01:00:00+11:00", "2024-04-07T02:00:00+10:30"),
    ("Australia/Lord_Howe", "hour", "2024-04-07T02:00:00+10:30", "2024-04-07T02:00:00+10:30", "2024-04-07T03:00:00+10:30"),
    ("Australia/Lord_Howe", "day", "2024-04-07T12:00:00+10:30", "2024-04-07T00:00:00+11:00", "2024-04-08T00:00:00+10:30"),
    # spring forward 2024-10-06 02:00 +10:30 -> 02:30 +11 (15:30Z on the 5th)
    ("Australia/Lord_Howe", "hour", "2024-10-06T01:30:00+10:30", "2024-10-06T01:00:00+10:30", "2024-10-06T02:30:00+11:00"),
    ("Australia/Lord_Howe", "hour", "2024-10-06T02:30:00+11:00", "2024-10-06T02:30:00+11:00", "2024-10-06T03:00:00+11:00"),
    ("Australia/Lord_Howe", "hour", "2024-10-06T02:45:00+11:00", "2024-10-06T02:30:00+11:00", "2024-10-06T03:00:00+11:00"),
    ("Australia/Lord_Howe", "day", "2024-10-06T12:00:00+11:00", "2024-10-06T00:00:00+10:30", "2024-10-07T00:00:00+11:00"),
    # --- Kathmandu +05:45: hours start at :15 UTC ---
    ("Asia/Kathmandu", "hour", "2024-06-01T12:00:00+00:00", "2024-06-01T11:15:00+00:00", "2024-06-01T12:15:00+00:00"),
    ("Asia/Kathmandu", "hour", "2024-06-01T12:15:00+00:00", "2024-06-01T12:15:00+00:00", "2024-06-01T13:15:00+00:00"),
    ("Asia/Kathmandu", "day", "2024-06-01T12:00:00+00:00", "2024-05-31T18:15:00+00:00", "2024-06-01T18:15:00+00:00"),
    # --- transitions at midnight ---
    # Havana falls back 01:00 -04 -> 00:00 -05 (midnight repeats), springs 00:00 -05 -> 01:00 -04
    ("America/Havana", "hour", "2024-11-03T00:30:00-05:00", "2024-11-03T00:00:00-04:00", "2024-11-03T01:00:00-05:00"),
    ("America/Havana", "day", "2024-11-03T00:30:00-05:00", "2024-11-03T00:00:00-04:00", "2024-11-04T00:00:00-05:00"),
    ("America/Havana", "day", "2024-03-09T23:59:59.999999-05:00", "2024-03-09T00:00:00-05:00", "2024-03-10T01:00:00-04:00"),
    ("America/Havana", "day", "2024-03-10T01:00:00-04:00", "2024-03-10T01:00:00-04:00", "2024-03-11T00:00:00-04:00"),
    ("America/Havana", "week", "2024-03-10T12:00:00-04:00", "2024-03-04T00:00:00-05:00", "2024-03-11T00:00:00-04:00"),
    # Sao Paulo 2018-11-04: midnight does not exist (00:00 -03 -> 01:00 -02)
    ("America/Sao_Paulo", "day", "2018-11-03T23:59:59.999999-03:00", "2018-11-03T00:00:00-03:00", "2018-11-04T01:00:00-02:00"),
    ("America/Sao_Paulo", "day", "2018-11-04T01:00:00-02:00", "2018-11-04T01:00:00-02:00", "2018-11-05T00:00:00-02:00"),
    ("America/Sao_Paulo", "month", "2018-11-04T01:00:00-02:00", "2018-11-01T00:00:00-03:00", "2018-12-01T00:00:00-02:00"),
    # ... and 2019-02-17 00:00 -02 -> 2019-02-16 23:00 -03: the 16th is 25 h
    ("America/Sao_Paulo", "hour", "2019-02-16T23:30:00-03:00", "2019-02-16T23:00:00-02:00", "2019-02-17T00:00:00-03:00"),
    ("America/Sao_Paulo", "day", "2019-02-16T23:30:00-03:00", "2019-02-16T00:00:00-02:00", "2019-02-17T00:00:00-03:00"),
    # Santiago: 24:00 -03 -> 23:00 -04 (2024-04-06 is 25 h), 24:00 -04 -> 01:00 -03 (no midnight)
    ("America/Santiago", "day", "2024-04-06T23:30:00-04:00", "2024-04-06T00:00:00-03:00", "2024-04-07T00:00:00-04:00"),
    ("America/Santiago", "day", "2024-09-08T01:00:00-03:00", "2024-09-08T01:00:00-03:00", "2024-09-09T00:00:00-03:00"),
    ("America/Santiago", "day", "2024-09-08T03:59:59.999999+00:00", "2024-09-07T00:00:00-04:00", "2024-09-08T01:00:00-03:00"),
    # --- fall-backs that jump back across a truncation point (periods stay a partition;
    # the instant is labelled by the latest wall time shown so far) ---
    # Troll 2024-10-27 03:00 +02 -> 01:00 +00: the hour labelled 02:00 runs 00:00Z-03:00Z
    ("Antarctica/Troll", "hour", "2024-10-27T01:30:00+02:00", "2024-10-26T23:00:00+00:00", "2024-10-27T00:00:00+00:00"),
    ("Antarctica/Troll", "hour", "2024-10-27T02:30:00+02:00", "2024-10-27T00:00:00+00:00", "2024-10-27T03:00:00+00:00"),
    ("Antarctica/Troll", "hour", "2024-10-27T01:30:00+00:00", "2024-10-27T00:00:00+00:00", "2024-10-27T03:00:00+00:00"),
    ("Antarctica/Troll", "hour", "2024-10-27T03:00:00+00:00", "2024-10-27T03:00:00+00:00", "2024-10-27T04:00:00+00:00"),
    ("Antarctica/Troll", "hour", "2024-03-31T00:59:59.999999+00:00", "2024-03-31T00:00:00+00:00", "2024-03-31T01:00:00+00:00"),
    ("Antarctica/Troll", "hour", "2024-03-31T03:30:00+02:00", "2024-03-31T03:00:00+02:00", "2024-03-31T04:00:00+02:00"),
    # Chatham 2024-04-07 03:45 +13:45 -> 02:45 +12:45
    ("Pacific/Chatham", "hour", "2024-04-07T02:30:00+13:45", "2024-04-07T02:00:00+13:45", "2024-04-07T03:00:00+13:45"),
    ("Pacific/Chatham", "hour", "2024-04-07T02:50:00+12:45", "2024-04-07T03:00:00+13:45", "2024-04-07T04:00:00+12:45"),
    ("Pacific/Chatham", "hour", "2024-04-07T03:50:00+12:45", "2024-04-07T03:00:00+13:45", "2024-04-07T04:00:00+12:45"),
    # St John's 2009-11-01 00:01 -02:30 -> 2009-10-31 23:01 -03:30 (crosses midnight and month)
    ("America/St_Johns", "day", "2009-10-31T23:59:59-02:30", "2009-10-31T00:00:00-02:30", "2009-11-01T00:00:00-02:30"),
    ("America/St_Johns", "day", "2009-10-31T23:30:00-03:30", "2009-11-01T00:00:00-02:30", "2009-11-02T00:00:00-03:30"),
    ("America/St_Johns", "month", "2009-10-31T23:30:00-03:30", "2009-11-01T00:00:00-02:30", "2009-12-01T00:00:00-03:30"),
    # --- historical odd offset: Monrovia -00:44:30 ---
    ("Africa/Monrovia", "hour", "1960-06-01T10:44:29+00:00", "1960-06-01T09:44:30+00:00", "1960-06-01T10:44:30+00:00"),
    ("Africa/Monrovia", "hour", "1960-06-01T10:44:30+00:00", "1960-06-01T10:44:30+00:00", "1960-06-01T11:44:30+00:00"),
]
# fmt: on


@pytest.mark.parametrize(
    ("zone_name", "unit", "instant", "start", "end"),
    CASES,
    ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES],
)
def test_expected_bounds(zone_name: str, unit: str, instant: str, start: str, end: str) -> None:
    tz = zone(zone_name)
    expected = (_sec(start), _sec(end))
    assert period_bounds(_ts(instant), TimeUnit(unit), tz) == expected
    assert PeriodCache(TimeUnit(unit), tz).bounds(_ts(instant)) == expected
    assert period_end(expected[0], TimeUnit(unit), tz) == expected[1]


def test_period_lengths_on_transition_days() -> None:
    la = zone("America/Los_Angeles")
    s, e = period_bounds(_ts("2024-11-03T12:00:00-08:00"), TimeUnit.DAY, la)
    assert e - s == 25 * 3600
    s, e = period_bounds(_ts("2024-03-10T12:00:00-07:00"), TimeUnit.DAY, la)
    assert e - s == 23 * 3600
    lh = zone("Australia/Lord_Howe")
    s, e = period_bounds(_ts("2024-04-07T01:45:00+10:30"), TimeUnit.HOUR, lh)
    assert e - s == 90 * 60
    s, e = period_bounds(_ts("2024-10-06T02:45:00+11:00"), TimeUnit.HOUR, lh)
    assert e - s == 30 * 60


def test_zone_lookup() -> None:
    assert zone("Europe/Berlin") is zone("Europe/Berlin")
    assert zone("Europe/Berlin").key == "Europe/Berlin"
    for bad in ["Mars/Olympus_Mons", "America", "", "../etc/passwd", "/etc/localtime"]:
        with pytest.raises(ValueError, match="unknown time zone"):
            zone(bad)


def test_period_end_rejects_non_start() -> None:
    with pytest.raises(ValueError, match="not the start"):
        period_end(_sec("2024-05-15T13:00:01+00:00"), TimeUnit.HOUR, zone("UTC"))


def test_timeunit_values() -> None:
    assert [u.value for u in TimeUnit] == ["hour", "day", "week", "month", "quarter", "year"]
    assert TimeUnit("week") is TimeUnit.WEEK


def test_cache_skips_slots_cut_by_a_boundary() -> None:
    # Monrovia's hours start at :44:30 UTC, inside the 15-minute slot [10:30Z, 10:45Z).
    cache = PeriodCache(TimeUnit.HOUR, zone("Africa/Monrovia"))
    before, after = _ts("1960-06-01T10:44:00+00:00"), _ts("1960-06-01T10:44:45+00:00")
    assert cache.bounds(before) == (
        _sec("1960-06-01T09:44:30+00:00"),
        _sec("1960-06-01T10:44:30+00:00"),
    )
    assert cache.bounds(after) == (
        _sec("1960-06-01T10:44:30+00:00"),
        _sec("1960-06-01T11:44:30+00:00"),
    )
    assert cache.bounds(before)[1] == cache.bounds(after)[0]
    assert len(cache) == 0


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(periods, "_MAX_ENTRIES", 10)
    cache = PeriodCache(TimeUnit.DAY, zone("UTC"))
    base = _ts("2024-01-01T00:00:00+00:00")
    for i in range(35):
        cache.bounds(base + i * 900)
        assert 1 <= len(cache) <= 10
    assert cache.bounds(base + 900.5) == period_bounds(base + 900.5, TimeUnit.DAY, zone("UTC"))


# ---------------------------------------------------------------- property tests

ZONES = [
    "UTC",
    "America/Los_Angeles",
    "America/New_York",
    "Europe/Berlin",
    "Europe/London",
    "Europe/Dublin",  # negative DST in the tz source
    "Europe/Moscow",
    "Australia/Lord_Howe",
    "Australia/Adelaide",
    "Asia/Kathmandu",
    "Asia/Kolkata",
    "Asia/Tehran",
    "Asia/Pyongyang",
    "Pacific/Chatham",
    "Pacific/Apia",  # skipped 2011-12-30
    "Pacific/Kiritimati",
    "Pacific/Auckland",
    "America/St_Johns",
    "America/Havana",
    "America/Santiago",
    "America/Asuncion",
    "America/Sao_Paulo",
    "America/Caracas",
    "Africa/Casablanca",
    "Antarctica/Troll",
]

MIN_TS = _sec("1970-01-01T00:00:00+00:00")
MAX_TS = _sec("2100-01-01T00:00:00+00:00")


def _offset(t: int, tz: ZoneInfo) -> int:
    off = datetime.fromtimestamp(t, tz).utcoffset()
    assert off is not None
    return int(off.total_seconds())


@functools.cache
def _transitions(zone_name: str, year: int) -> tuple[int, ...]:
    """Offset changes in a UTC year, found by a daily scan plus bisection (independent
    of the code under test; tz transitions are always days apart)."""
    tz = ZoneInfo(zone_name)
    t = _sec(f"{year}-01-01T00:00:00+00:00")
    stop = t + 366 * 86400
    found = []
    while t < stop:
        if _offset(t, tz) != _offset(t + 86400, tz):
            lo, hi = t, t + 86400
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if _offset(mid, tz) != _offset(lo, tz) else (mid, hi)
            found.append(hi)
        t += 86400
    return tuple(found)


@st.composite
def zoned_instants(draw: st.DrawFn) -> tuple[str, float]:
    """(zone, ts): uniform in 1970-2100, or within two days of a real transition."""
    name = draw(st.sampled_from(ZONES))
    micros = draw(st.integers(0, 999_999))
    if draw(st.booleans()):
        sec = draw(st.integers(MIN_TS, MAX_TS))
    else:
        year = draw(st.integers(1970, 2099))
        near = _transitions(name, year) or (_sec(f"{year}-07-01T00:00:00+00:00"),)
        sec = draw(st.sampled_from(near)) + draw(
            st.one_of(st.integers(-7200, 7200), st.integers(-2 * 86400, 2 * 86400))
        )
    return name, sec + micros / 1_000_000


units = st.sampled_from(list(TimeUnit))


def _trunc(w: datetime, unit: TimeUnit) -> datetime:
    """Independent truncation of a naive wall time."""
    if unit is TimeUnit.HOUR:
        return datetime(w.year, w.month, w.day, w.hour)
    if unit is TimeUnit.DAY:
        return datetime(w.year, w.month, w.day)
    if unit is TimeUnit.WEEK:
        monday = w.toordinal() - (w.isocalendar().weekday - 1)
        return datetime.fromordinal(monday)
    if unit is TimeUnit.MONTH:
        return datetime(w.year, w.month, 1)
    if unit is TimeUnit.QUARTER:
        return datetime(w.year, (w.month - 1) // 3 * 3 + 1, 1)
    return datetime(w.year, 1, 1)


def _wall(t: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(t, tz).replace(tzinfo=None)


def _is_boundary(b: int, unit: TimeUnit, tz: ZoneInfo) -> bool:
    """b shows a truncation point, or b ends a gap that skipped one."""
    w = _wall(b, tz)
    return _trunc(w, unit) == w or _trunc(w, unit) > _wall(b - 1, tz)


@settings(max_examples=500, deadline=None)
@given(zoned_instants(), units)
def test_invariants(zi: tuple[str, float], unit: TimeUnit) -> None:
    name, ts = zi
    tz = zone(name)
    start, end = period_bounds(ts, unit, tz)
    assert start <= ts < end
    assert _is_boundary(start, unit, tz)
    assert _is_boundary(end, unit, tz)
    assert period_bounds(start, unit, tz) == (start, end)
    assert period_bounds(end - 1e-6, unit, tz) == (start, end)
    assert period_bounds(end - 1, unit, tz) == (start, end)
    assert period_bounds(end, unit, tz)[0] == end
    assert period_end(start, unit, tz) == end


@settings(max_examples=500, deadline=None)
@given(zoned_instants(), units, st.lists(st.integers(-4 * 3600, 4 * 3600), max_size=30))
def test_cache_matches_uncached(zi: tuple[str, float], unit: TimeUnit, deltas: list[int]) -> None:
    name, ts = zi
    tz = zone(name)
    cache = PeriodCache(unit, tz)
    for t in [ts, *(ts + d / 7 for d in deltas), *(ts + d for d in deltas), ts]:
        assert cache.bounds(t) == period_bounds(t, unit, tz)


# ------------------------------------------------------ brute-force reference (hour, day)

STEP = 3600  # walk an hour at a time; exact because pieces without a transition are monotone
WINDOW = 6 * 3600  # fall-backs in ZONES are at most 2 h, so a value recurs within this

# Zones/units whose clock jumps back across an hour/day boundary, so a truncated wall
# value occurs in two separate runs (see the module docstring of tally.core.periods).
NON_CONTIGUOUS = {
    ("Antarctica/Troll", TimeUnit.HOUR),  # 03:00 +02 -> 01:00 +00 every October
    ("Pacific/Chatham", TimeUnit.HOUR),  # 03:45 -> 02:45 every April
    ("America/St_Johns", TimeUnit.HOUR),  # 00:01 -> 23:01 (22:01 in 1988), 1988-2010
    ("America/St_Johns", TimeUnit.DAY),
}


def _pieces(lo: int, hi: int, tz: ZoneInfo) -> list[tuple[int, int]]:
    """Split [lo, hi] (closed) into pieces of constant offset, on which the wall clock is
    strictly increasing. Transitions are days apart, so there is at most one in range."""
    if _offset(lo, tz) == _offset(hi, tz):
        return [(lo, hi)]
    a, b = lo, hi  # first instant with the new offset, by bisection
    while b - a > 1:
        mid = (a + b) // 2
        a, b = (a, mid) if _offset(mid, tz) != _offset(lo, tz) else (mid, b)
    return [(lo, b - 1), (b, hi)]


def _run(s: int, unit: TimeUnit, tz: ZoneInfo) -> tuple[int, int, bool]:
    """The maximal run [a, b) around s of instants with s's truncated wall time, and
    whether it is clean (only smaller values for hours before it, larger after it)."""

    def key(t: int) -> datetime:
        return _trunc(_wall(t, tz), unit)

    v = key(s)

    def first_other(p: int, q: int) -> int:  # monotone piece, key(p) or key(q) != v
        if key(p) != v:
            return p
        while q - p > 1:
            mid = (p + q) // 2
            p, q = (mid, q) if key(mid) == v else (p, mid)
        return q

    def last_other(p: int, q: int) -> int:  # monotone piece, key(p) or key(q) != v
        if key(q) != v:
            return q
        while q - p > 1:
            mid = (p + q) // 2
            p, q = (p, mid) if key(mid) == v else (mid, q)
        return p

    def end_after(x: int) -> int:
        while True:
            for p, q in _pieces(x, x + STEP, tz):
                if key(p) != v or key(q) != v:
                    return first_other(p, q)
            x += STEP

    def start_before(x: int) -> int:
        while True:
            for p, q in reversed(_pieces(x - STEP, x, tz)):
                if key(p) != v or key(q) != v:
                    return last_other(p, q) + 1
            x -= STEP

    a, b = start_before(s), end_after(s)
    # Clean: nothing at or above v in the window before, nothing at or below v after
    # (a piece's largest value is at its right end, its smallest at its left end).
    before = all(key(q) < v for _, q in _pieces(a - WINDOW, a - 1, tz))
    after = all(key(p) > v for p, _ in _pieces(b, b + WINDOW, tz))
    return a, b, before and after


def _check_against_reference(name: str, ts: float, unit: TimeUnit, unclean: set[object]) -> None:
    tz = zone(name)
    start, end = period_bounds(ts, unit, tz)
    a, b, clean = _run(math.floor(ts), unit, tz)
    if clean:
        assert (start, end) == (a, b), (name, ts, unit)
    else:
        # The run is still inside one period; record where this happens.
        assert start <= a < b <= end, (name, ts, unit)
        unclean.add((name, unit))


@settings(max_examples=500, deadline=None)
@given(zoned_instants(), st.sampled_from([TimeUnit.HOUR, TimeUnit.DAY]))
def test_matches_brute_force(zi: tuple[str, float], unit: TimeUnit) -> None:
    unclean: set[object] = set()
    _check_against_reference(zi[0], zi[1], unit, unclean)
    assert unclean <= NON_CONTIGUOUS


def _around_transitions(years: tuple[int, ...]) -> Callable[[str], list[float]]:
    def instants(name: str) -> list[float]:
        out: list[float] = []
        for year in years:
            for t in _transitions(name, year):
                out += [t + d for d in (-3601, -1800, -1, 0, 1, 900, 1800, 3599, 5400, 9000)]
        return out

    return instants


_NEAR = _around_transitions((1988, 2009, 2024, 2077))


def test_brute_force_near_transitions() -> None:
    """Deterministic sweep around the transitions of every zone in four years."""
    unclean: set[object] = set()
    for name in ZONES:
        for ts in _NEAR(name):
            for unit in (TimeUnit.HOUR, TimeUnit.DAY):
                _check_against_reference(name, ts + 0.5, unit, unclean)
    assert unclean == NON_CONTIGUOUS


def test_utc_is_plain_arithmetic() -> None:
    utc = zone("UTC")
    t = _ts("2024-05-15T13:45:30+00:00")
    start, end = period_bounds(t, TimeUnit.HOUR, utc)
    assert (start, end) == (int(t // 3600) * 3600, int(t // 3600) * 3600 + 3600)
    assert datetime.fromtimestamp(start, UTC).minute == 0
