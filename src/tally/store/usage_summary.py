"""The reads behind the usage summaries: a customer's day rollups (and, for
a UNIQUE union, members) over a current and a previous period, in the
metric's zone, from one snapshot (tally.store.usage has the query's reads)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tally.contracts.group import names_of
from tally.contracts.metric import AggregationType, UsageMetricDefinition
from tally.core.periods import TimeUnit, zone
from tally.core.windows import Bucket, Combined, WindowRefused, combine, plan
from tally.store.pool import Connection
from tally.store.usage import (
    MemberLimits,
    Projection,
    adjusted_in,
    bucket_members,
    bucket_rollups,
    refuse_deleted_members,
)


@dataclass(frozen=True, slots=True)
class Summary:
    current: Combined
    previous: Combined | None  # None: refused, `previous_refused` says why
    previous_refused: str | None
    timeseries: list[tuple[int, int, Combined]]


async def _day_values(
    connection: Connection,
    metric: UsageMetricDefinition,
    customer: str,
    start: int,
    end: int,
    limits: MemberLimits,
    now: float,
) -> tuple[Combined, list[tuple[int, int, Combined]]]:
    """The total of `[start, end)` and its value per local day, from day rollups."""
    local = zone(metric.timezone)
    kind = metric.aggregation_type
    days = plan(start, end, TimeUnit.DAY, local, {TimeUnit.DAY}, local)
    whole = [Bucket(start, end, tuple(p for day in days for p in day.periods))]
    merged = Projection(())
    daily = await bucket_rollups(
        connection, metric.uid, [customer], (), merged, days, limits.max_rows, "periodValue"
    )
    if kind is AggregationType.UNIQUE:
        grouped = bool(names_of(metric))
        if grouped or len(days) > 1:
            # A union of days, or of groups: members, when retention kept them all.
            refuse_deleted_members(kind, whole, limits, now, ("periodValue", "asOf"))
            if await adjusted_in(connection, metric.uid, [customer], whole):
                raise WindowRefused(
                    "periodValue",
                    "a day rollup in this period was adjusted by hand, so the union of its"
                    " members is not its value",
                )
        if grouped:
            # Each group's day row counts its own members: merge groups by members too.
            found = await bucket_members(connection, metric.uid, [customer], (), merged, days)
            daily_values = {n: Combined(c, None, e) for (_, _, n), (c, e) in found.items()}
        else:
            daily_values = {n: combine(kind, rows) for (_, _, n), rows in daily.items()}
        if grouped or len(days) > 1:
            found = await bucket_members(connection, metric.uid, [customer], (), merged, whole)
            count, events = found.get((customer, "", 0), (Decimal(0), 0))
            total = Combined(count, None, events)
        else:  # one day of one group: its stored row
            total = daily_values.get(0, Combined(Decimal(0), None, 0))
    else:
        daily_values = {n: combine(kind, rows) for (_, _, n), rows in daily.items()}
        total = combine(kind, [row for rows in daily.values() for row in rows])
    empty = kind in (AggregationType.COUNT, AggregationType.SUM, AggregationType.UNIQUE)
    nothing = Combined(Decimal(0) if empty else None, None, 0)
    series = [(d.start, d.end, daily_values.get(n, nothing)) for n, d in enumerate(days)]
    return total, series


async def run_summary(
    connection: Connection,
    metric: UsageMetricDefinition,
    customer: str,
    current: tuple[int, int],
    previous: tuple[int, int],
    limits: MemberLimits,
    now: float,
) -> Summary:
    if TimeUnit.DAY not in metric.time_units:
        raise WindowRefused(
            "periodValue",
            "summaries are computed from day rollups: this metric's timeUnits"
            f" ({', '.join(u.value for u in metric.time_units)}) have no 'day'",
            TimeUnit.DAY,
            metric.timezone,
        )
    # One snapshot for every read behind the answer.
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        total, series = await _day_values(connection, metric, customer, *current, limits, now)
        try:
            before, _ = await _day_values(connection, metric, customer, *previous, limits, now)
        except WindowRefused as exc:
            return Summary(total, None, exc.reason, series)
    return Summary(total, before, None, series)
