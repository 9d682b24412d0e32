"""Usage windows: which stored periods make up a query window, and how the
rollups of those periods combine, exactly (pure; docs/api.md, "Usage").

A window `[start, end)` (POSIX seconds) is cut into buckets by `windowSize`
periods of the window's zone (the first and last clipped to the window).
Each bucket must be a union of stored periods of the metric: periods of its
`timeUnits` in its `timezone`. `plan` finds such a cover or refuses the
window naming the unit and zone that would answer it. Nothing is ever
approximated: a bucket is answered from whole stored periods or not at all.
"""

from __future__ import annotations

import calendar
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Context, Decimal, Inexact, Rounded
from zoneinfo import ZoneInfo

from tally.contracts.metric import AggregationType
from tally.core.periods import TimeUnit, period_bounds

# Largest first: a cover takes the largest stored period that fits.
UNIT_ORDER = (
    TimeUnit.YEAR,
    TimeUnit.QUARTER,
    TimeUnit.MONTH,
    TimeUnit.WEEK,
    TimeUnit.DAY,
    TimeUnit.HOUR,
)
MAX_BUCKETS = 10_000
# Stored periods of one whole window (all its buckets): planning costs about
# this many period computations (some 30 us each, so ~1.5 s, in a thread),
# and the reads send this many to PostgreSQL. Five years of hours.
MAX_PERIODS = 50_000
# The longest a period of each unit can be in any zone (DST, skipped days),
# generously: a window needs at least span / LONGEST[largest unit] periods.
LONGEST = {
    TimeUnit.YEAR: 368 * 86400,
    TimeUnit.QUARTER: 94 * 86400,
    TimeUnit.MONTH: 33 * 86400,
    TimeUnit.WEEK: 9 * 86400,
    TimeUnit.DAY: 2 * 86400,
    TimeUnit.HOUR: 2 * 3600,
}
# Exact decimal arithmetic: a sum that would round raises instead.
EXACT = Context(prec=4000, traps=[Inexact, Rounded])


@dataclass(frozen=True, slots=True)
class Period:
    unit: TimeUnit
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Bucket:
    start: int
    end: int
    periods: tuple[Period, ...]


class WindowRefused(ValueError):
    """The window cannot be answered exactly; `field` is the query parameter
    to change, `unit` and `zone` (when known) what would make it answerable."""

    def __init__(
        self, field: str, reason: str, unit: TimeUnit | None = None, zone: str | None = None
    ) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason
        self.unit = unit
        self.zone = zone


def buckets(start: int, end: int, size: TimeUnit | None, zone: ZoneInfo) -> list[tuple[int, int]]:
    """`[start, end)` cut at the boundaries of `size` periods in `zone`."""
    if size is None:
        return [(start, end)]
    cut: list[tuple[int, int]] = []
    t = start
    while t < end:
        if len(cut) >= MAX_BUCKETS:
            raise WindowRefused(
                "windowSize", f"more than {MAX_BUCKETS} windows: use a larger windowSize"
            )
        _, period_end = period_bounds(t, size, zone)
        cut.append((t, min(period_end, end)))
        t = min(period_end, end)
    return cut


def _too_many_periods() -> WindowRefused:
    return WindowRefused(
        "from",
        f"the window is more than {MAX_PERIODS} stored periods: shorten it, or query a metric"
        " with larger timeUnits",
    )


def _greedy(
    start: int, end: int, units: Sequence[TimeUnit], zone: ZoneInfo, budget: int
) -> list[Period] | None:
    periods: list[Period] = []
    t = start
    while t < end:
        for unit in units:
            first, last = period_bounds(t, unit, zone)
            if first == t and last <= end:
                periods.append(Period(unit, first, last))
                t = last
                break
        else:
            return None
        if len(periods) > budget:
            raise _too_many_periods()
    return periods


def cover(
    start: int,
    end: int,
    units: Collection[TimeUnit],
    zone: ZoneInfo,
    budget: int = MAX_PERIODS,
) -> tuple[Period, ...] | None:
    """Stored periods of `units` in `zone` whose union is exactly `[start, end)`,
    or None; WindowRefused past `budget` periods. Largest first; weeks do not
    nest in months, so a cover without weeks and one with only hours, days and
    weeks are tried too."""
    ordered: list[TimeUnit] = [u for u in UNIT_ORDER if u in units]
    tries: list[list[TimeUnit]] = [ordered, [u for u in ordered if u is not TimeUnit.WEEK]]
    tries.append([u for u in ordered if u in (TimeUnit.WEEK, TimeUnit.DAY, TimeUnit.HOUR)])
    seen: list[list[TimeUnit]] = []
    for attempt in tries:
        if not attempt or attempt in seen:
            continue
        seen.append(attempt)
        found = _greedy(start, end, attempt, zone, budget)
        if found is not None:
            return tuple(found)
    return None


def _coarsest_boundary_unit(instants: Iterable[int], zone: ZoneInfo) -> TimeUnit | None:
    """The largest unit whose periods in `zone` start at every one of `instants`."""
    points = sorted(set(instants))
    for unit in UNIT_ORDER:
        if all(period_bounds(t, unit, zone)[0] == t for t in points):
            return unit
    return None


def plan(
    start: int,
    end: int,
    size: TimeUnit | None,
    window_zone: ZoneInfo,
    units: Collection[TimeUnit],
    metric_zone: ZoneInfo,
) -> list[Bucket]:
    """The buckets of the window, each with the stored periods that make it up;
    WindowRefused when one of them is not a union of stored periods."""
    if end <= start:
        raise WindowRefused("to", "must be after from")
    largest = next((u for u in UNIT_ORDER if u in units), None)
    if largest is not None and (end - start) // LONGEST[largest] > MAX_PERIODS:
        raise _too_many_periods()  # refused before computing any period
    cut = buckets(start, end, size, window_zone)
    planned: list[Bucket] = []
    used = 0
    for first, last in cut:
        found = cover(first, last, units, metric_zone, MAX_PERIODS - used)
        if found is None:
            raise _refusal(cut, size, window_zone, units, metric_zone)
        used += len(found)
        planned.append(Bucket(first, last, found))
    return planned


def _refusal(
    cut: list[tuple[int, int]],
    size: TimeUnit | None,
    window_zone: ZoneInfo,
    units: Collection[TimeUnit],
    metric_zone: ZoneInfo,
) -> WindowRefused:
    stored = ", ".join(u.value for u in UNIT_ORDER if u in units)
    what = f"this metric stores {stored} periods in {metric_zone.key}"
    needed = _coarsest_boundary_unit([t for pair in cut for t in pair], window_zone)
    if needed is None:
        start, end = cut[0][0], cut[-1][1]
        on_hour = period_bounds(start, TimeUnit.HOUR, window_zone)[0] == start
        return WindowRefused(
            "to"
            if on_hour and period_bounds(end, TimeUnit.HOUR, window_zone)[0] != end
            else "from",
            f"from and to must fall on the start of an hour in {window_zone.key}: {what},"
            " and no union of them has these bounds",
            TimeUnit.HOUR,
            window_zone.key,
        )
    if size is not None and UNIT_ORDER.index(needed) < UNIT_ORDER.index(size):
        needed = size  # a coarser unit would not cut the windows
    # timeUnits cannot change: name the metric that would answer (a new one,
    # which has no history before its creation).
    if window_zone.key == metric_zone.key:
        hint = f"a metric with '{needed.value}' in its timeUnits would answer it"
    else:
        hint = (
            f"a metric with '{needed.value}' in its timeUnits and timezone"
            f" '{window_zone.key}' would answer it"
        )
    shape = f"windowSize {size.value}" if size is not None else "this from and to"
    return WindowRefused(
        "windowTimeZone" if window_zone.key != metric_zone.key else "windowSize",
        f"{shape} in {window_zone.key} is not a union of stored periods ({what}); {hint}",
        needed,
        window_zone.key,
    )


# -- combining the rollups of a bucket ---------------------------------------


@dataclass(frozen=True, slots=True)
class Rollup:
    """One stored row, as the combination needs it."""

    value: Decimal | None
    value_text: str | None
    value_sum: Decimal | None
    latest_at: int | None
    latest_id: str | None
    event_count: int


@dataclass(frozen=True, slots=True)
class Combined:
    value: Decimal | None  # None: no value (no rows of MAX, MIN, AVG, LATEST)
    value_text: str | None  # a STRING LATEST's value
    event_count: int


def average(total: Decimal, events: int) -> Decimal:
    """tally.average_value, exactly: the quotient to 12 decimals, a half away
    from zero, decided by integers (no division rounded on the way)."""
    sign, digits, exponent = total.as_tuple()
    assert isinstance(exponent, int)
    mantissa = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    scale = exponent + 12
    numerator = mantissa * 10**scale if scale >= 0 else mantissa
    denominator = events if scale >= 0 else events * 10**-scale
    quotient = abs(numerator) // denominator
    if 2 * (abs(numerator) - quotient * denominator) >= denominator:
        quotient += 1
    if numerator < 0:
        quotient = -quotient
    return Decimal(quotient).scaleb(-12, context=EXACT)


def combine(kind: AggregationType, rows: Sequence[Rollup]) -> Combined:
    """The rollup of a union of disjoint periods, from the periods' rollups.
    UNIQUE is not combinable from values (members are): callers give it one row."""
    events = sum(row.event_count for row in rows)
    numbers = [row.value for row in rows if row.value is not None]
    if kind in (AggregationType.COUNT, AggregationType.SUM):
        total = Decimal(0)
        for number in numbers:
            total = EXACT.add(total, number)
        return Combined(total, None, events)
    if kind is AggregationType.UNIQUE:
        if len(rows) > 1:
            raise ValueError("a UNIQUE union is the distinct count of its members, not of values")
        return Combined(numbers[0] if numbers else Decimal(0), None, events)
    if kind is AggregationType.MAX:
        return Combined(max(numbers) if numbers else None, None, events)
    if kind is AggregationType.MIN:
        return Combined(min(numbers) if numbers else None, None, events)
    if kind is AggregationType.AVG:
        total = Decimal(0)
        for row in rows:
            total = EXACT.add(total, row.value_sum if row.value_sum is not None else Decimal(0))
        return Combined(average(total, events) if events else None, None, events)
    # LATEST: the greatest (latest_at, latest_id); ids by code point, like COLLATE "C".
    ranked = [row for row in rows if row.latest_at is not None]
    if not ranked:
        return Combined(None, None, events)
    winner = max(ranked, key=lambda row: (row.latest_at, row.latest_id or ""))
    return Combined(winner.value, winner.value_text, events)


# -- rolling and calendar summaries (local days) -----------------------------


class PeriodType:
    ROLLING = "rolling"
    CALENDAR = "calendar"


ROLLING_DAYS = {"7-day": 7, "30-day": 30, "90-day": 90}
PERIOD_VALUES = ("day", "week", "month", "quarter", "year", *ROLLING_DAYS)
PERIOD_DEFINITIONS = ("as_of_date", "trailing_30_days", "calendar_month", "month_to_date")


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _minus(day: date, value: str) -> date:
    """`day` less one `value` (a unit or an N-day span), in calendar arithmetic."""
    if value in ROLLING_DAYS:
        return day - timedelta(days=ROLLING_DAYS[value])
    if value == "day":
        return day - timedelta(days=1)
    if value == "week":
        return day - timedelta(days=7)
    return _add_months(day, {"month": -1, "quarter": -3, "year": -12}[value])


def _calendar_start(day: date, value: str) -> date:
    if value == "day":
        return day
    if value == "week":
        return day - timedelta(days=day.weekday())
    if value == "month":
        return day.replace(day=1)
    if value == "quarter":
        return day.replace(month=(day.month - 1) // 3 * 3 + 1, day=1)
    return day.replace(month=1, day=1)


DayRange = tuple[date, date]  # [first, last) local dates


def summary_days(as_of: date, period_type: str, period_value: str) -> tuple[DayRange, DayRange]:
    """The current and the previous period as local dates `[first, after)`.

    Rolling: the period ends with as_of's day, inclusive (a 7-day window is
    as_of and the 6 days before); calendar: the whole calendar period holding
    as_of (7-day and the like are rolling only). The previous period is the
    equal one just before."""
    if period_type == PeriodType.ROLLING:
        after = as_of + timedelta(days=1)
        first = _minus(after, period_value)
        return (first, after), (_minus(first, period_value), first)
    if period_value in ROLLING_DAYS:
        raise WindowRefused("periodValue", f"{period_value} is a rolling period only")
    first = _calendar_start(as_of, period_value)
    if period_value in ("day", "week"):
        after = first + timedelta(days=1 if period_value == "day" else 7)
    else:
        after = _add_months(first, {"month": 1, "quarter": 3, "year": 12}[period_value])
    previous = _calendar_start(first - timedelta(days=1), period_value)
    return (first, after), (previous, first)


def definition_days(as_of: date, definition: str) -> tuple[DayRange, DayRange]:
    """Exante's period_definition as local dates (see summary_days)."""
    if definition == "as_of_date":
        return summary_days(as_of, PeriodType.ROLLING, "day")
    if definition == "trailing_30_days":
        return summary_days(as_of, PeriodType.ROLLING, "30-day")
    if definition == "calendar_month":
        return summary_days(as_of, PeriodType.CALENDAR, "month")
    # month_to_date: the month's first day through as_of; the previous is the
    # same days of the month before (clamped to its end).
    first = as_of.replace(day=1)
    after = as_of + timedelta(days=1)
    before = _add_months(first, -1)
    return (first, after), (before, min(before + (after - first), first))


def day_start(day: date, zone: ZoneInfo) -> int:
    """The instant the local day `day` starts in `zone` (its day period's start)."""
    noon = int(datetime.combine(day, time(12), zone).timestamp())
    return period_bounds(noon, TimeUnit.DAY, zone)[0]


def instants(days: DayRange, zone: ZoneInfo) -> tuple[int, int]:
    return day_start(days[0], zone), day_start(days[1], zone)
