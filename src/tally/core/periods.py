"""Calendar periods (hour ... year) in IANA time zones, as integer epoch seconds.

Semantics of ``period_bounds(ts, unit, zone)``:

Let L be the local wall-clock time of the instant ``ts`` in ``zone``, S be L truncated
to ``unit`` (hour: minutes, seconds and microseconds zeroed; day: midnight; week:
midnight of the ISO Monday; month: the 1st; quarter: the 1st of Jan/Apr/Jul/Oct;
year: Jan 1) and N be S plus one unit in local calendar arithmetic. The period is
``[start, end)`` with

* start = the earliest instant whose local wall time is S (and which is <= ts); if S
  does not exist (it falls in a DST or offset-change gap), the instant the gap ends;
* end = the earliest instant whose local wall time is N (and which is > ts); if N is
  in a gap, the instant the gap ends.

So a repeated wall-clock hour joins one period (America/Los_Angeles, 2024-11-03: the
hour from 01:00 is 08:00Z-10:00Z, the day is 25 h), a skipped one shortens the period
before it (2024-03-10: [01:00, 03:00) is 09:00Z-10:00Z, the day is 23 h), and an
instant exactly on a boundary belongs to the period that starts there.

Precisely, "L" above is the latest wall time shown at or before ``ts``: while the clock
repeats after a fall-back it is the wall time just before the fall-back. That changes
nothing unless a fall-back jumps back across a truncation point: Antarctica/Troll
(03:00 -> 01:00 each October) and Pacific/Chatham (03:45 -> 02:45 each April) for
hours, America/St_Johns 1988-2010 (00:01 -> 23:01 the previous day) for hours, days
and once (2009-11-01) a month. There the literal rule gives overlapping periods; this
one keeps periods a partition of the time line (every instant in exactly one period,
each end the next start), e.g. Chatham's hour labelled 03:00 then lasts 2 h.

Every boundary is a whole second (tz offsets are whole seconds), so a float ``ts`` is
floored first. The code assumes a zone's transitions are further apart than the
jumps they make, which holds for the whole IANA database from 1900 on.
"""

from __future__ import annotations

import enum
import math
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["PeriodCache", "TimeUnit", "native_bounds", "period_bounds", "period_end", "zone"]


class TimeUnit(enum.StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"  # ISO week, starting Monday
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"


_ZONES: dict[str, ZoneInfo] = {}


def zone(name: str) -> ZoneInfo:
    """The ZoneInfo for an IANA name such as ``"Europe/Berlin"`` (cached)."""
    found = _ZONES.get(name)
    if found is None:
        try:
            found = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            # ZoneInfo raises KeyError, ValueError or IsADirectoryError ("America")
            # depending on the name; callers validating config want one clear type.
            raise ValueError(f"unknown time zone {name!r} (expected an IANA name)") from exc
        _ZONES[name] = found
    return found


def _wall(t: int, tz: ZoneInfo) -> datetime:
    """Naive local wall time of the integer instant ``t``."""
    return datetime.fromtimestamp(t, tz).replace(tzinfo=None)


def _truncate(w: datetime, unit: TimeUnit) -> datetime:
    if unit is TimeUnit.HOUR:
        return w.replace(minute=0, second=0, microsecond=0)
    day = w.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit is TimeUnit.DAY:
        return day
    if unit is TimeUnit.WEEK:
        return day - timedelta(days=day.weekday())
    if unit is TimeUnit.MONTH:
        return day.replace(day=1)
    if unit is TimeUnit.QUARTER:
        return day.replace(month=(day.month - 1) // 3 * 3 + 1, day=1)
    return day.replace(month=1, day=1)


def _next(s: datetime, unit: TimeUnit) -> datetime:
    """``s`` (a truncation point) plus one unit, in wall-clock arithmetic."""
    if unit is TimeUnit.HOUR:
        return s + timedelta(hours=1)
    if unit is TimeUnit.DAY:
        return s + timedelta(days=1)
    if unit is TimeUnit.WEEK:
        return s + timedelta(days=7)
    if unit is TimeUnit.YEAR:
        return s.replace(year=s.year + 1)
    months = s.month - 1 + (3 if unit is TimeUnit.QUARTER else 1)
    return s.replace(year=s.year + months // 12, month=months % 12 + 1)


def _first_at_or_after(w: datetime, tz: ZoneInfo) -> int:
    """The earliest instant whose wall time is ``w``, or, if ``w`` is skipped by a gap,
    the instant that ends the gap (the first instant showing a wall time after ``w``)."""
    # PEP 495: for an ambiguous w, fold=0/1 give its two instants; for a skipped w
    # they give instants on both sides of the transition; otherwise they agree.
    c0 = int(w.replace(tzinfo=tz, fold=0).timestamp())
    c1 = int(w.replace(tzinfo=tz, fold=1).timestamp())
    exists = [c for c in (c0, c1) if _wall(c, tz) == w]
    if exists:
        return min(exists)
    # Gap: the wall time is monotone between the two candidates, so binary search
    # for the transition (rare path: a few instants per zone per year).
    lo, hi = min(c0, c1), max(c0, c1)  # wall(lo) < w <= wall(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _wall(mid, tz) >= w:
            hi = mid
        else:
            lo = mid
    return hi


def _label(s: int, tz: ZoneInfo) -> datetime:
    """The latest wall time shown at or before ``s`` (see the module docstring)."""
    local = datetime.fromtimestamp(s, tz)
    w = local.replace(tzinfo=None)
    if not local.fold:
        return w
    # Second pass through a repeated range: the clock showed later wall times just
    # before the fall-back. Find the transition (the first instant with fold=1) after
    # the first occurrence of w; the wall time one second earlier is the latest shown.
    lo = int(w.replace(tzinfo=tz, fold=0).timestamp())  # before the transition
    hi = s
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).fold:
            hi = mid
        else:
            lo = mid
    return max(w, _wall(hi - 1, tz))


def _bounds(s: int, unit: TimeUnit, tz: ZoneInfo) -> tuple[int, int]:
    start_wall = _truncate(_label(s, tz), unit)
    start = _first_at_or_after(start_wall, tz)
    end = _first_at_or_after(_next(start_wall, unit), tz)
    return start, end


def period_bounds(ts: float, unit: TimeUnit, zone: ZoneInfo) -> tuple[int, int]:
    """The period ``[start, end)`` of ``unit`` in ``zone`` containing the instant ``ts``."""
    # Boundaries are whole seconds, so flooring never moves ts across one, and it keeps
    # fromtimestamp's microsecond rounding from pushing ts onto the next boundary.
    return _bounds(math.floor(ts), unit, zone)


def native_bounds(unit: str, zone_name: str, second: int) -> tuple[int, int]:
    """The period of `unit` in `zone_name` holding the whole second `second`:
    what the native core asks on a cache miss (native/src/periods.rs)."""
    return _bounds(second, TimeUnit(unit), zone(zone_name))


def period_end(start: int, unit: TimeUnit, zone: ZoneInfo) -> int:
    """The end of the period starting at ``start``; ValueError if no period starts there."""
    first, end = _bounds(start, unit, zone)
    if first != start:
        raise ValueError(f"{start} is not the start of a {unit} period in {zone.key}")
    return end


SLOT_SECONDS = 900  # seconds; every real UTC offset since ~1980 is a multiple of 15 minutes
_MAX_ENTRIES = 100_000


class PeriodCache:
    """``period_bounds`` for one (unit, zone) pair, memoised per 15-minute UTC slot.

    A slot is cached only when it lies wholly inside one period, so any instant in a
    cached slot has that period; slots cut by a boundary (odd historical offsets,
    transitions at odd instants) are recomputed every time, which is correct, only slower.
    """

    __slots__ = ("cached", "unit", "zone")

    def __init__(self, unit: TimeUnit, zone: ZoneInfo) -> None:
        self.unit = unit
        self.zone = zone
        self.cached: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        """Number of cached slots (for metrics and tests)."""
        return len(self.cached)

    def bounds(self, ts: float) -> tuple[int, int]:
        slot = int(ts // SLOT_SECONDS)
        hit = self.cached.get(slot)
        if hit is not None:
            return hit
        result = _bounds(math.floor(ts), self.unit, self.zone)
        slot_start = slot * SLOT_SECONDS
        if result[0] <= slot_start and slot_start + SLOT_SECONDS <= result[1]:
            if len(self.cached) >= _MAX_ENTRIES:
                # Event times cluster around "now"; a rare full reset is cheaper and
                # simpler than LRU bookkeeping on every hit.
                self.cached.clear()
            self.cached[slot] = result
        return result
